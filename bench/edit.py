"""Inversion + editing of one clip: wall time and peak GPU memory, per source-attention backend.

    python bench/edit.py                  # GPU: 14 frames, 576x1024, bf16, 25 steps, random weights
    python bench/edit.py --tiny           # CPU smoke run: tiny config, 3 frames, 32x32

Random weights are fine for timing (the work does not depend on the values). Counts: inversion
is 25 U-Net calls; editing 50 (two guidance branches) plus, with the default `recompute`
backend, 25 source calls, and spatial attention matching on every spatial self-attention of the
conditional branch. The issue's target: <= 30 s and <= 24 GB on an H100 (the reference takes
about 10 minutes per clip on an A100).
"""

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attention import StepState  # noqa: E402
from configs import EditConfig  # noqa: E402
from lora import add_lora  # noqa: E402
from refine import edit_clip  # noqa: E402
from source import record_source  # noqa: E402
from svd.backbone import SVDBackbone, is_temporal_transformer_linear  # noqa: E402
from svd.clip import CLIPVisionEncoder  # noqa: E402
from svd.config import SVDConfig  # noqa: E402
from svd.unet import UNet  # noqa: E402
from svd.vae import VAE  # noqa: E402
from svd.weights import SVD  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--frames", type=int, default=14)
    parser.add_argument("--height", type=int, default=576)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--backends", nargs="+", default=["recompute", "memory"])
    args = parser.parse_args()
    device = "cpu" if args.tiny else "cuda"
    dtype = torch.float32 if args.tiny else torch.bfloat16
    config = SVDConfig.tiny() if args.tiny else SVDConfig()
    frames_n, height, width = (3, 32, 32) if args.tiny else (args.frames, args.height, args.width)
    torch.manual_seed(0)
    with torch.device(device):
        svd = SVD(UNet(config.unet), VAE(config.vae), CLIPVisionEncoder(config.clip), config)
    for m in (svd.unet, svd.vae, svd.clip):
        m.to(dtype).eval()
    add_lora(svd.unet, is_temporal_transformer_linear, 32)
    frames = torch.rand(frames_n, 3, height, width, device=device) * 2 - 1
    edited = torch.rand(1, 3, height, width, device=device) * 2 - 1
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print(f"inversion + edit of one clip: {frames_n} frames, {height}x{width}, {dtype}, "
          f"{args.steps} steps, {name}")

    for backend in args.backends:
        cfg = EditConfig(steps=args.steps, num_frames=frames_n, source_attention=backend)
        backbone = SVDBackbone.for_run(svd, cfg)
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        state = StepState()
        source = record_source(backbone, frames, 0, state, cfg, None,
                               torch.Generator(device).manual_seed(0))
        if device == "cuda":
            torch.cuda.synchronize()
        inverted = time.perf_counter()
        latents = edit_clip(backbone, source, backbone.condition(
                            edited, torch.Generator(device).manual_seed(1)), state, cfg)
        backbone.decode(latents, chunk_size=frames_n)
        if device == "cuda":
            torch.cuda.synchronize()
        end = time.perf_counter()
        peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
        print(f"  {backend:9s} inversion {inverted - start:6.1f} s   edit+decode "
              f"{end - inverted:6.1f} s   total {end - start:6.1f} s   peak {peak:6.2f} GiB",
              flush=True)
        del source


if __name__ == "__main__":
    main()
