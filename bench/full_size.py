"""Full-size smoke: the whole method with the released architecture (random weights), two clips.

    python bench/full_size.py                         # CPU: 64x128, 14 frames, 2 clips, bf16
    python bench/full_size.py --device cuda --height 576 --width 1024

A synthetic video of two clips sharing one frame, through edit.py's flow as bench/memory.py
runs it (`flow`: inversion of both clips in float32 with clip 0's skip-interval K/V recomputed
for clip 1, motion-LoRA training per clip with gradient checkpointing, the edit of the chain,
decode). Prints, per phase, wall time and peak memory (CPU: the process's resident high-water
mark, VmHWM, reset at each phase; CUDA: max_memory_allocated), whether the frames are finite,
the CPU model and thread count or the GPU's name.
"""

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.memory import flow, synthetic_clips  # noqa: E402
from bench.random_svd import random_svd  # noqa: E402
from demo.pretrain import cpu_name  # noqa: E402

GiB = 2 ** 30


def resident(key: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


class PhaseClock:
    """`switch(name)` ends the phase running (its time and peak are printed) and starts `name`."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")
        self.name, self.start = None, 0.0
        self.rows: dict[str, list[float]] = {}

    def _peak(self) -> int:
        if self.cuda:
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated()
        return resident("VmHWM")

    def _reset(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        else:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")                                 # VmHWM := VmRSS

    def switch(self, name: str | None) -> None:
        now = time.perf_counter()
        if self.name is not None:
            sec, peak = now - self.start, self._peak()
            row = self.rows.setdefault(self.name, [0.0, 0])
            row[0], row[1] = row[0] + sec, max(row[1], peak)
            print(f"  {self.name:22s} {sec:8.1f} s   peak {peak / GiB:6.2f} GiB", flush=True)
        self.name, self.start = name, time.perf_counter()
        self._reset()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--frames", type=int, default=14)
    parser.add_argument("--steps", type=int, default=2, help="inversion/edit steps")
    parser.add_argument("--train-steps", type=int, default=2)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    args = parser.parse_args()
    dev = args.device
    where = (torch.cuda.get_device_name() if dev.startswith("cuda")
             else f"{cpu_name()}, {torch.get_num_threads()} threads")
    print(f"full-size smoke: released architecture, random weights, {args.dtype}, "
          f"{args.height}x{args.width}, {args.frames} frames x 2 clips, {args.steps} steps, "
          f"{args.train_steps} LoRA steps; {where}", flush=True)
    start = time.perf_counter()
    svd = random_svd(getattr(torch, args.dtype), dev, seed=0)
    held = resident("VmRSS") if not dev.startswith("cuda") else torch.cuda.memory_allocated()
    print(f"  weights built in {time.perf_counter() - start:.0f} s, "
          f"{'resident' if not dev.startswith('cuda') else 'allocated'} {held / GiB:.2f} GiB")
    clips = [c.to(dev) for c in synthetic_clips(2, args.frames, args.height, args.width)]
    clock = PhaseClock(dev)
    frames = flow(svd, clips, args.steps, args.train_steps, 4, 14, clock.switch,
                  without_checkpointing=False)
    clock.switch(None)
    print(f"  total {time.perf_counter() - start:.0f} s; {len(frames)} frames, finite: "
          f"{bool(torch.isfinite(frames).all())}")


if __name__ == "__main__":
    main()
