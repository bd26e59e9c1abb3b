"""`python edit.py` with no arguments: the whole method on one scene of the procedural world,
with the embedded tiny model (demo/weights), scored against the scene's ground truth.

It writes the scene's inputs (source video, edited first frame, ground-truth edit) under
`runs/demo/inputs-<seed>/`, then runs exactly what a user would type:

    python edit.py --video source.mp4 --edited-frame edited_first_frame.png --train \
        --weights demo/weights --height 64 --width 64 --num-frames 8 ...

and finally prints the edit's scores against the ground truth beside those of plain
image-to-video from the same edited frame (demo/evaluate.py defines the scores).
"""

from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from demo import world
from demo.evaluate import DEMO_SETTINGS, WEIGHTS, edit_config, scores, to_model, to_numpy
from svd.media import atomic_write, save_png
from svd.sampling import generate_video
from svd.weights import load_svd

SEED = 7                              # a held-out scene: a recoloured shape on a textured ground
KIND = world.EditKind.RECOLOUR
OUT_DIR = Path("runs") / "demo"


def save_lossless_video(frames: np.ndarray, path: Path, fps: int) -> None:
    """(F, H, W, 3) uint8 -> H.264 in 4:4:4 at quality 0, so the colours of 64x64 frames survive
    (4:2:0 would halve the colour resolution of the source the demo edits)."""
    import av

    def write(tmp: Path):
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=Fraction(fps))
            stream.width, stream.height = frames.shape[2], frames.shape[1]
            stream.pix_fmt = "yuv444p"
            stream.options = {"qp": "0"}
            for frame in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode())

    atomic_write(path, write)


def write_inputs(ex: dict, folder: Path) -> tuple[Path, Path]:
    """Source video, edited first frame and ground-truth edit -> (video path, frame path)."""
    folder.mkdir(parents=True, exist_ok=True)
    as_uint8 = lambda x: (x.clip(0, 1) * 255).round().astype(np.uint8)   # noqa: E731
    video, frame = folder / "source.mp4", folder / "edited_first_frame.png"
    save_lossless_video(as_uint8(ex["source"]), video, world.FPS)
    save_lossless_video(as_uint8(ex["edited"]), folder / "ground_truth.mp4", world.FPS)
    save_png(as_uint8(ex["edited"][0]), frame)
    print(f"demo scene {ex['seed']} ({ex['kind'].value} edit): wrote {video}, {frame} and "
          f"{folder / 'ground_truth.mp4'}")
    return video, frame


def read_frames(folder: Path) -> np.ndarray:
    """PNG frames written by edit.py -> (F, H, W, 3) in [0, 1]."""
    return np.stack([np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 255
                     for p in sorted(folder.glob("*.png"))])


def run_demo(edit_main) -> int:
    """Run edit.py's `main` on the demo scene, then print the scores."""
    ex = world.example(SEED, KIND)
    video, frame = write_inputs(ex, OUT_DIR / f"inputs-{SEED}")
    flags = ["--video", str(video), "--edited-frame", str(frame), "--train",
             "--weights", str(WEIGHTS), "--out-dir", str(OUT_DIR),
             "--motion-bucket-id", str(ex["motion_bucket_id"])]
    for name, value in DEMO_SETTINGS.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            flags += [flag] if value else []                          # a switch takes no value
        else:
            flags += [flag, str(value)]
    print("python edit.py " + " ".join(flags))
    status = edit_main(flags)
    if status != 0:
        return status
    run = max((p for p in OUT_DIR.iterdir() if p.name[0].isdigit()), key=lambda p: p.name)
    edited = scores(read_frames(run / f"{frame.stem}_frames"), ex)

    # The baseline: plain image-to-video from the same edited frame, same seed and settings.
    cfg = edit_config(ex)
    svd = load_svd(WEIGHTS)
    plain = generate_video(svd, to_model(ex["edited"][:1]), cfg.num_frames, cfg.steps,
                           cfg.min_guidance, cfg.max_guidance, cfg.fps, cfg.motion_bucket_id,
                           cfg.noise_aug_strength, torch.Generator().manual_seed(cfg.seed))
    baseline = scores(to_numpy(plain), ex)
    print("\nscores against the ground-truth edited video (traj: pixels, lower is better; "
          "PSNR: dB, higher is better)")
    print(f"{'':22s}{'traj':>8s}{'PSNR':>8s}{'bg PSNR':>9s}{'consistency':>13s}")
    for label, s in (("I2VEdit (this run)", edited), ("plain image-to-video", baseline)):
        print(f"{label:22s}{s['traj']:8.2f}{s['psnr']:8.2f}{s['bg']:9.2f}{s['cons']:13.2f}")
    print(f"outputs in {run}")
    return 0
