"""U-Net speed on the CPU: ours against diffusers', same weights and inputs, alternating runs in
one process (machines of one kind differ by 2x in speed; only the ratio is compared).

    python bench/unet_speed.py                      # released configuration, 14 x 16 x 16, float32
    python bench/unet_speed.py --latent 16 32 --repeats 5 --dtype bfloat16

Forward: no grad. Forward + backward: the gradient with respect to the noisy latent with the
weights frozen (every op's backward runs, as in LoRA training, without 2 x 6 GB of weight
gradients). Each repeat runs ours, then diffusers', in the same order; the first repeat is a
warm-up and is not counted; the median of the others is printed. Needs diffusers.
"""

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.backbone import random_state  # noqa: E402
from demo.pretrain import cpu_name  # noqa: E402
from svd.config import UNetConfig  # noqa: E402
from svd.unet import UNet  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latent", type=int, nargs=2, default=(16, 16))
    parser.add_argument("--frames", type=int, default=14)
    parser.add_argument("--repeats", type=int, default=4, help="counted repeats (+1 warm-up)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--no-backward", action="store_true")
    args = parser.parse_args()
    from diffusers import UNetSpatioTemporalConditionModel

    dtype = getattr(torch, args.dtype)
    theirs = UNetSpatioTemporalConditionModel()
    theirs.load_state_dict(random_state(theirs, seed=0))
    ours = UNet(UNetConfig())
    ours.load_state_dict(theirs.state_dict(), strict=True)
    for m in (ours, theirs):
        m.to(dtype).eval().requires_grad_(False)
    gc.collect()
    h, w = args.latent
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(1, args.frames, 8, h, w, generator=g).to(dtype)
    ctx = torch.randn(1, 1, 1024, generator=g).to(dtype)
    ids = torch.tensor([[6.0, 127.0, 0.02]]).to(dtype)
    calls = {"ours": lambda x: ours(x, 1.2, ctx, ids),
             "diffusers": lambda x: theirs(x, 1.2, ctx, ids).sample}
    with torch.no_grad():
        diff = (calls["ours"](sample).float() - calls["diffusers"](sample).float()).abs().max()
    print(f"U-Net, released configuration, {args.frames} x {h} x {w} latents, {args.dtype}, "
          f"{cpu_name()}, {torch.get_num_threads()} threads; max |ours - diffusers| "
          f"{diff.item():.1e}", flush=True)

    def forward(call):
        with torch.no_grad():
            call(sample)

    def backward(call):
        x = sample.clone().requires_grad_(True)
        call(x).float().square().mean().backward()

    modes = [("forward", forward)] + ([] if args.no_backward else [("forward+backward", backward)])
    for label, run in modes:
        times = {name: [] for name in calls}
        for r in range(args.repeats + 1):
            for name, call in calls.items():
                start = time.perf_counter()
                run(call)
                if r:
                    times[name].append(time.perf_counter() - start)
        med = {name: statistics.median(t) for name, t in times.items()}
        print(f"  {label:17s} ours {med['ours']:7.2f} s   diffusers {med['diffusers']:7.2f} s   "
              f"speed ours/diffusers {med['diffusers'] / med['ours']:.2f}x   (runs: ours "
              + ", ".join(f"{t:.2f}" for t in times["ours"]) + "; diffusers "
              + ", ".join(f"{t:.2f}" for t in times["diffusers"]) + ")", flush=True)


if __name__ == "__main__":
    main()
