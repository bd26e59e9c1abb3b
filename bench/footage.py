"""Real-footage shapes through `edit.py --train` on the demo weights: frame count and aspect.

Renders two videos that are not the working size (a 512x512 square and a 256x384 portrait,
2 s at 8 fps: 16 frames), each with an edited first frame saved at another resolution of the
same aspect, runs the edit as a user would (no --height/--width: the working size follows the
video's aspect at the model's own area) and checks what came back: as many output frames as
sampled frames, the frames' aspect ratio the video's, the resolved size in config.json.

    python bench/footage.py                      # --train-steps 20 per clip (short: shapes only)
    python bench/footage.py --train-steps 250 --keep /tmp/footage
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from media import save_video  # noqa: E402

FPS, SECONDS = 8, 2


def render(width: int, height: int) -> np.ndarray:
    """(16, height, width, 3) uint8: a disc crossing a gradient, a square bouncing."""
    n = FPS * SECONDS
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([80 + 100 * x / width, 60 + 120 * y / height, 140 + 0 * x], -1)
    frames = []
    for t in range(n):
        f = base.copy()
        cx, cy = width * (0.2 + 0.6 * t / (n - 1)), height * 0.4
        disc = (x - cx) ** 2 + (y - cy) ** 2 < (0.12 * min(width, height)) ** 2
        f[disc] = (230, 60, 40)
        sq = int(height * (0.6 + 0.25 * abs(np.sin(t / 3))))
        side = int(0.1 * min(width, height))
        f[sq - side: sq + side, int(0.6 * width) - side: int(0.6 * width) + side] = (40, 200, 90)
        frames.append(f)
    return np.clip(np.stack(frames), 0, 255).astype(np.uint8)


def case(name: str, width: int, height: int, root: Path, args) -> dict:
    frames = render(width, height)
    video = root / f"{name}.mp4"
    save_video(frames, video, FPS)
    edited = frames[0].copy()
    red = (edited[..., 0] > 200) & (edited[..., 1] < 100)
    edited[red] = (60, 90, 230)                                   # the disc turned blue
    frame = root / f"{name}_edit.png"
    Image.fromarray(edited).resize((width // 2, height // 2), Image.LANCZOS).save(frame)
    out = root / f"runs_{name}"
    cmd = [sys.executable, "edit.py", "--video", str(video), "--edited-frame", str(frame),
           "--train", "--train-steps", str(args.train_steps), "--weights", args.weights,
           "--out-dir", str(out), "--sample-fps", str(FPS), "--num-frames", "8",
           "--steps", str(args.steps), "--device", "cpu"]
    start = time.time()
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    seconds = time.time() - start
    if result.returncode:
        raise SystemExit(f"{name}: edit.py failed:\n{result.stderr[-2000:]}")
    (run,) = out.iterdir()
    config = json.loads((run / "config.json").read_text())
    pngs = sorted((run / f"{name}_edit_frames").glob("*.png"))
    size = Image.open(pngs[0]).size
    lines = [s for s in result.stdout.splitlines() if "frames sampled" in s]
    return {"case": name, "video": f"{width}x{height}", "sampled": len(frames),
            "output frames": len(pngs), "output size": f"{size[0]}x{size[1]}",
            "aspect video / output": f"{width / height:.3f} / {size[0] / size[1]:.3f}",
            "config size": f"{config['width']}x{config['height']}", "seconds": round(seconds),
            "clips line": lines[0] if lines else ""}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python bench/footage.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", default=str(ROOT / "demo" / "weights"))
    p.add_argument("--train-steps", type=int, default=20)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--keep", default="", help="folder to keep the videos and runs in")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep or tmp)
        root.mkdir(parents=True, exist_ok=True)
        rows = [case("square", 512, 512, root, args), case("portrait", 256, 384, root, args)]
    ok = True
    for r in rows:
        print(json.dumps(r))
        ok &= r["output frames"] == r["sampled"]
        w, h = map(int, r["output size"].split("x"))
        vw, vh = map(int, r["video"].split("x"))
        ok &= abs(w / h - vw / vh) < 1e-9
    print("every sampled frame edited, aspect kept" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
