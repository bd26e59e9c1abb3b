"""`python edit.py` with no arguments: the whole method on one scene of the procedural world,
with the embedded tiny model (demo/weights), scored against the scene's ground truth.

    python edit.py                          # the default scene (rule below)
    python edit.py --scene 7 --kind recolour    # another held-out scene, another edit kind

It writes the scene's inputs (source video, edited first frame, ground-truth edit) under
`runs/demo/inputs-<seed>/`, then runs exactly what a user would type:

    python edit.py --video source.mp4 --edited-frame edited_first_frame.png --train \
        --weights demo/weights --height 64 --width 64 --num-frames 8 ...

and finally prints the edit's scores against the ground truth beside those of plain
image-to-video from the same edited frame (demo/evaluate.py defines the scores), including the
share of frames in which the edited object is found, and writes a picture strip (rows: source,
ground truth, plain image-to-video, I2VEdit) into the run folder.

The default scene, by rule: the first held-out evaluation scene (`world.evaluation_example`:
seed s has edit kind s mod 4) whose kind is one the method is for, a motion-preserving local
edit (`METHOD_KINDS`: reshape, pattern). Recolour and style edits are where the method loses
in this world (demo/NOTES.md, "Where the method loses"); `--kind` shows them.
"""

import argparse

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from demo import world
from demo.evaluate import (DEMO_SETTINGS, WEIGHTS, Variant, edit_config, picture_grid, scores,
                           to_model, to_numpy)
from image_to_video import generate_video
from media import save_png, save_video
from svd.backbone import SVDBackbone
from svd.weights import load_svd

METHOD_KINDS = (world.EditKind.RESHAPE, world.EditKind.PATTERN)
OUT_DIR = Path("runs") / "demo"


def default_scene() -> tuple[int, world.EditKind]:
    """The first held-out evaluation seed whose edit kind is in METHOD_KINDS."""
    seed = next(s for s in range(world.HELD_OUT_SEEDS)
                if world.evaluation_example_kind(s) in METHOD_KINDS)
    return seed, world.evaluation_example_kind(seed)


def parse_demo_args(argv: list[str]) -> tuple[int, world.EditKind]:
    """--scene S (a held-out seed; default by the rule above) and --kind K (default: the
    scene's evaluation kind) -> (seed, kind). Bad values: argparse's one-line error, exit 2."""
    parser = argparse.ArgumentParser(
        prog="python edit.py", description="The embedded demo: I2VEdit on one held-out scene "
        "of the procedural world with the tiny model in demo/weights, scored against the "
        "scene's ground truth (all other flags: python edit.py --help).")
    parser.add_argument("--scene", type=int, default=None,
                        help=f"held-out seed, 0 to {world.HELD_OUT_SEEDS - 1} (default "
                             f"{default_scene()[0]}: the first reshape or pattern scene)")
    parser.add_argument("--kind", choices=[k.value for k in world.EditKind], default=None,
                        help="edit kind (default: the scene's own, seed mod 4 in the order "
                             + ", ".join(k.value for k in world.EditKind) + ")")
    args = parser.parse_args(argv)
    if args.scene is None:
        seed, kind = default_scene()
    else:
        if not 0 <= args.scene < world.HELD_OUT_SEEDS:
            parser.error(f"--scene must be a held-out seed, 0 to {world.HELD_OUT_SEEDS - 1}")
        seed, kind = args.scene, world.evaluation_example_kind(args.scene)
    return seed, world.EditKind(args.kind) if args.kind else kind


def write_inputs(ex: dict, folder: Path) -> tuple[Path, Path]:
    """Source video, edited first frame and ground-truth edit -> (video path, frame path)."""
    folder.mkdir(parents=True, exist_ok=True)
    as_uint8 = lambda x: (x.clip(0, 1) * 255).round().astype(np.uint8)   # noqa: E731
    video, frame = folder / "source.mp4", folder / "edited_first_frame.png"
    # Lossless, so that the colours of 64x64 frames survive (4:2:0 would halve the colour
    # resolution of the source the demo edits).
    save_video(as_uint8(ex["source"]), video, world.FPS, lossless=True)
    save_video(as_uint8(ex["edited"]), folder / "ground_truth.mp4", world.FPS, lossless=True)
    save_png(as_uint8(ex["edited"][0]), frame)
    print(f"demo scene {ex['seed']} ({ex['kind'].value} edit): wrote {video}, {frame} and "
          f"{folder / 'ground_truth.mp4'}")
    return video, frame


def read_frames(folder: Path) -> np.ndarray:
    """PNG frames written by edit.py -> (F, H, W, 3) in [0, 1]."""
    return np.stack([np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 255
                     for p in sorted(folder.glob("*.png"))])


def run_demo(edit_main, argv: list[str] | None = None) -> int:
    """Run edit.py's `main` on a demo scene (`argv`: the demo's flags), then print the scores
    and write the picture strip."""
    seed, kind = parse_demo_args(argv or [])
    ex = world.example(seed, kind)
    video, frame = write_inputs(ex, OUT_DIR / f"inputs-{seed}-{kind.value}")
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
    backbone = SVDBackbone.for_run(load_svd(WEIGHTS), cfg)
    plain = generate_video(backbone, to_model(ex["edited"][:1]), cfg.num_frames, cfg.steps,
                           cfg.min_guidance, cfg.max_guidance,
                           torch.Generator().manual_seed(cfg.seed))
    baseline = scores(to_numpy(plain), ex)
    print("\nscores against the ground-truth edited video (traj: pixels, lower is better; "
          "PSNR: dB, higher is better)")
    print(f"{'':22s}{'traj':>8s}{'PSNR':>8s}{'bg PSNR':>9s}{'consistency':>13s}{'found':>8s}")
    for label, s in (("I2VEdit (this run)", edited), ("plain image-to-video", baseline)):
        print(f"{label:22s}{s['traj']:8.2f}{s['psnr']:8.2f}{s['bg']:9.2f}{s['cons']:13.2f}"
              f"{s['found']:8.0%}")
    print(f"found: the share of frames 1-{len(ex['edited']) - 1} in which the mask of the "
          "edit's colour matches the ground truth's (IoU >= 0.5) at least as well as the "
          "unedited source's")
    picture = run / "demo_strip.png"
    picture_grid(ex, {Variant.PLAIN: to_numpy(plain),
                      Variant.FULL: read_frames(run / f"{frame.stem}_frames")}, picture, zoom=2)
    print(f"wrote {picture} (rows: source, ground truth, plain image-to-video, I2VEdit)")
    print(f"outputs in {run}")
    return 0
