"""The bare demo's motion-LoRA step against this box's large-matrix-product throughput, in one run.

    python bench/demo_step.py                 # 20 timed steps; the default demo scene
    python bench/demo_step.py --steps 50

The step is `train_motion_lora`'s, exactly as `python edit.py` runs it (demo/weights, the default
scene's clip, the demo's settings: 8 frames at 64x64, rank 32, dropout 0.1, no gradient
checkpointing). Its FLOPs are counted by torch's FlopCounterMode (matrix products and
convolutions, forward and backward) as the difference between a 2-step and a 1-step run, so the
set-up (VAE encode of the clip) cancels; its time likewise, between runs of 3 and 3 + --steps
steps. The reference is a 4096 x 4096 float32 matrix product on the same threads, median of 5.
Machines of one kind differ by 2x in speed: the ratio is what compares.
"""

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from configs import train_config  # noqa: E402
from demo import world  # noqa: E402
from demo.evaluate import WEIGHTS, edit_config, to_model  # noqa: E402
from demo.pretrain import cpu_name  # noqa: E402
from demo.run import default_scene  # noqa: E402
from motion_lora import train_motion_lora  # noqa: E402
from svd.backbone import SVDBackbone  # noqa: E402
from svd.weights import load_svd  # noqa: E402


def matmul_gflops(n: int = 4096, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * n ** 3 / statistics.median(times) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    args = parser.parse_args()
    seed, kind = default_scene()
    ex = world.example(seed, kind)
    cfg = edit_config(ex)
    backbone = SVDBackbone.for_run(load_svd(WEIGHTS), cfg)
    video = to_model(ex["source"])

    def run(steps: int) -> float:
        start = time.perf_counter()
        train_motion_lora(backbone, video, 0, replace(train_config(cfg), steps=steps),
                          progress=False)
        return time.perf_counter() - start

    counts = {}
    for steps in (1, 2):
        with FlopCounterMode(display=False) as counter:
            run(steps)
        counts[steps] = counter.get_flop_counts()["Global"]
    per_op = {str(op).split(".")[1]: (counts[2][op] - counts[1].get(op, 0)) / 1e9
              for op in counts[2]}
    gflop = sum(per_op.values())

    warmup = 3
    seconds = (run(warmup + args.steps) - run(warmup)) / args.steps
    peak = matmul_gflops()
    print(f"demo motion-LoRA step (scene {seed}, {kind.value}; {cpu_name()}, "
          f"{torch.get_num_threads()} threads)")
    print(f"  {gflop:.1f} GFLOP per step (" + ", ".join(f"{op} {g:.1f}" for op, g in
                                                      per_op.items()) + ")")
    print(f"  {seconds:.3f} s per step -> {gflop / seconds:.0f} GFLOP/s; 250 steps "
          f"{250 * seconds:.0f} s")
    print(f"  4096 x 4096 float32 matrix product: {peak:.0f} GFLOP/s; the step runs at "
          f"{100 * gflop / seconds / peak:.0f} % of it")


if __name__ == "__main__":
    main()
