"""What inverting in float32 buys over inverting at the run dtype (bf16), at full architecture.

    python bench/inversion_dtype.py                       # 64x64 (8x8 latents), 14 frames, 25 steps
    python bench/inversion_dtype.py --height 64 --width 128 --steps 10

The released SVD architecture with random weights (bench/random_svd.py), stored in bf16 as a
user's `--dtype bfloat16` run holds them. A synthetic 14-frame clip is inverted by source.py's
`record_source` (SARP off, so both inversions see the same frames) and sampled back from the
inverted latent with the same Euler schedule and the same conditional denoiser (no guidance):
the round trip an edit with the unedited frame would make. Three ways:

    float32 / float32   inversion and sampling in float32 (the numerical floor of the method)
    float32 / bf16      edit.py's default: inversion in float32, the edit's sampling in bf16
    bf16 / bf16         --invert-at-run-dtype: both in bf16

Printed per way: ||x0' - x0|| / ||x0|| against the clip's float32 latent x0, and the inverted
latents' distance from the float32 inversion's. Random weights make the U-Net's output
meaningless but not its rounding: what is measured is how bf16 arithmetic through the 1.5 B
network moves the round trip, not the quality of an edit.
"""

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attention import StepState  # noqa: E402
from backbone import weights_in  # noqa: E402
from bench.memory import synthetic_clips  # noqa: E402
from bench.random_svd import random_svd  # noqa: E402
from configs import EditConfig  # noqa: E402
from demo.pretrain import cpu_name  # noqa: E402
from edm import karras_sigmas, sample_euler  # noqa: E402
from source import record_source  # noqa: E402
from svd.backbone import SVDBackbone  # noqa: E402


@torch.no_grad()
def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python bench/inversion_dtype.py",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--frames", type=int, default=14)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    print(f"released architecture, random weights stored in bf16; {args.height}x{args.width}, "
          f"{args.frames} frames, {args.steps} steps; {cpu_name()}, {torch.get_num_threads()} "
          "threads", flush=True)
    svd = random_svd(torch.bfloat16, args.device, seed=0)
    backbone = SVDBackbone(svd)             # EditConfig's conditioning: fps 7, bucket 127, 0.02
    video = synthetic_clips(1, args.frames, args.height, args.width)[0].to(args.device)
    with weights_in(torch.float32, svd.vae):
        x0 = backbone.encode(video)                                     # (1, F, 4, h, w)
    sigmas = karras_sigmas(args.steps).to(args.device)
    inverted = {}
    rows = []
    for inv, samp in (("float32", "float32"), ("float32", "bfloat16"), ("bfloat16", "bfloat16")):
        start = time.time()
        if inv not in inverted:
            cfg = EditConfig(steps=args.steps, num_frames=args.frames, height=args.height,
                             width=args.width, dtype="bfloat16", no_sarp=True,
                             invert_at_run_dtype=inv == "bfloat16", device=args.device)
            g = torch.Generator(args.device).manual_seed(0)
            inverted[inv] = record_source(backbone, video, 0, StepState(), cfg, None, g)
        source = inverted[inv]
        with weights_in(getattr(torch, samp), svd.unet):
            back = sample_euler(lambda x, s, step: backbone.denoise(x, s, source.cond),
                                source.inverted, sigmas, progress=True)
        err = ((back - x0).norm() / x0.norm()).item()
        dist = ((source.inverted - inverted["float32"].inverted).norm()
                / inverted["float32"].inverted.norm()).item()
        rows.append((inv, samp, err, dist, time.time() - start))
        print(f"  inversion {inv:8s} sampling {samp:8s}: round trip {err:.4f}, inverted latent "
              f"{dist:.4f} from the float32 one ({time.time() - start:.0f} s)", flush=True)
    print("\n| inversion / sampling | round-trip error | inverted latent vs float32 |")
    print("|---|---|---|")
    for inv, samp, err, dist, _ in rows:
        print(f"| {inv} / {samp} | {err:.4f} | {dist:.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
