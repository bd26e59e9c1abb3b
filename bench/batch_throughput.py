"""batch.py throughput on the CPU: two torchrun ranks of one thread against one process of two.

The same job list runs twice into fresh output folders, each time from a cold start (process
launch, model load, every job, summary), and the wall time of the whole command is what counts:

    2 ranks x 1 thread   python -m torch.distributed.run --nproc-per-node 2 batch.py ... --threads 1
    1 rank  x 2 threads  python batch.py ... --threads 2

The jobs are those of tests/test_batch.py without the broken one: the demo model, small
videos of a moving square (one clip each), --train with a few LoRA steps, a few Euler steps.

    python bench/batch_throughput.py                           # 4 jobs, 32x32, 4 frames
    python bench/batch_throughput.py --size 64 --frames 8 --train-steps 10 --steps 10
"""

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere
from demo.pretrain import cpu_name  # noqa: E402
from media import save_video  # noqa: E402

WEIGHTS = ROOT / "demo" / "weights"


def write_jobs(folder: Path, args) -> Path:
    """`args.jobs` videos (a square moving right over a flat ground of its own shade), their
    edited first frames (the square recoloured) and the job list -> the list's path."""
    lines = []
    for k in range(args.jobs):
        frames = np.full((args.frames, args.size, args.size, 3), 40 + 20 * k, np.uint8)
        side, step = args.size * 3 // 8, max(1, args.size // 16)
        for t in range(args.frames):
            frames[t, side // 2: side // 2 + side, step * t: step * t + side] = (220, 40, 40)
        save_video(frames, folder / f"src{k}.mp4", fps=args.frames)
        edited = frames[0].copy()
        edited[side // 2: side // 2 + side, :side] = (40, 220, 40)
        Image.fromarray(edited).save(folder / f"edit{k}.png")
        # sample_fps = the video's own rate: exactly `frames` frames, one clip
        lines.append(dict(name=f"job{k}", video=f"src{k}.mp4", edited_frame=f"edit{k}.png",
                          seed=k, train=True, train_steps=args.train_steps, steps=args.steps,
                          num_frames=args.frames, sample_fps=args.frames, fps=args.frames,
                          height=args.size, width=args.size, no_gradient_checkpointing=True))
    path = folder / "jobs.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timed(command: list[str], out: Path) -> tuple[float, list[dict]]:
    """Run one batch command -> (wall seconds, its summary rows)."""
    start = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"failed ({result.returncode}): {' '.join(command)}\n{result.stderr[-2000:]}")
    rows = [json.loads(line) for line in (out / "summary.jsonl").read_text().splitlines()]
    if any(row["status"] != "done" for row in rows):
        sys.exit(f"not every job finished: {rows}")
    return seconds, rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python bench/batch_throughput.py",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=4)
    p.add_argument("--size", type=int, default=32, help="frame side, a multiple of 32")
    p.add_argument("--frames", type=int, default=4, help="frames per video (one clip)")
    p.add_argument("--train-steps", type=int, default=2)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--weights", default=str(WEIGHTS))
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        jobs = write_jobs(Path(tmp), args)
        common = ["--jobs", str(jobs), "--weights", args.weights, "--device", "cpu"]
        setups = {
            "2 ranks x 1 thread": lambda out: [
                sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                "--master-port", str(free_port()), "batch.py", *common, "--out-dir", str(out),
                "--threads", "1"],
            "1 rank x 2 threads": lambda out: [
                sys.executable, "batch.py", *common, "--out-dir", str(out), "--threads", "2"],
        }
        print(f"CPU: {cpu_name()}; {args.jobs} jobs of {args.frames} frames at {args.size}x"
              f"{args.size}, --train {args.train_steps} LoRA steps, {args.steps} Euler steps")
        print(f"{'setup':20s}{'wall s':>9s}{'jobs/min':>10s}{'mean job s':>12s}")
        for label, command in setups.items():
            out = Path(tmp) / label.replace(" ", "_")
            seconds, rows = timed(command(out), out)
            mean_job = sum(row["seconds"] for row in rows) / len(rows)
            print(f"{label:20s}{seconds:9.1f}{60 * args.jobs / seconds:10.1f}{mean_job:12.1f}",
                  flush=True)
    print("wall: the whole command (launch, model load per process, jobs, summary); mean job: "
          "batch.py's own per-job seconds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
