"""End-to-end SVD image-to-video: time and peak memory, ours and diffusers' pipeline, one run.

    python bench/generate.py                 # GPU: 14 frames, 576x1024, bf16, 25 steps
    python bench/generate.py --frames 4 --height 128 --width 128 --steps 3   # quick CPU check

Random weights at the released configuration (timing does not depend on the values); both
pipelines get the same state dicts. The diffusers pipeline decodes all frames at once
(`decode_chunk_size = frames`), and so do we. Needs diffusers and transformers.
"""

import argparse
import gc
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from bench.backbone import random_state
from image_to_video import generate_video
from svd.backbone import SVDBackbone
from svd.clip import CLIPVisionEncoder
from svd.config import SVDConfig
from svd.unet import UNet
from svd.vae import VAE
from svd.weights import SVD


def build_both(dtype, device):
    from diffusers import (AutoencoderKLTemporalDecoder, EulerDiscreteScheduler,
                           StableVideoDiffusionPipeline, UNetSpatioTemporalConditionModel)
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    cfg = SVDConfig()
    builders = {
        "unet": (UNetSpatioTemporalConditionModel, lambda: UNet(cfg.unet)),
        "vae": (lambda: AutoencoderKLTemporalDecoder(
            block_out_channels=(128, 256, 512, 512), layers_per_block=2,
            down_block_types=("DownEncoderBlock2D",) * 4), lambda: VAE(cfg.vae)),
        "image_encoder": (lambda: CLIPVisionModelWithProjection(CLIPVisionConfig(
            hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
            image_size=224, patch_size=14, projection_dim=1024, hidden_act="gelu")),
            lambda: CLIPVisionEncoder(cfg.clip)),
    }
    theirs, ours = {}, {}
    for i, (name, (build_theirs, build_ours)) in enumerate(builders.items()):
        # One component at a time, cast right away: host memory stays near one fp32 copy.
        theirs[name] = build_theirs()
        state = random_state(theirs[name], seed=i)
        theirs[name].load_state_dict(state)
        theirs[name].to(device, dtype).eval().requires_grad_(False)
        ours[name] = build_ours()
        ours[name].load_state_dict(state, strict=True)
        ours[name].to(device, dtype).eval().requires_grad_(False)
        del state
        gc.collect()
    scheduler = EulerDiscreteScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type="v_prediction", interpolation_type="linear", use_karras_sigmas=True,
        sigma_min=0.002, sigma_max=700.0, timestep_spacing="leading", timestep_type="continuous",
        steps_offset=1)
    pipe = StableVideoDiffusionPipeline(vae=theirs["vae"], image_encoder=theirs["image_encoder"],
                                        unet=theirs["unet"], scheduler=scheduler,
                                        feature_extractor=CLIPImageProcessor())
    pipe.set_progress_bar_config(disable=True)
    return SVD(ours["unet"], ours["vae"], ours["image_encoder"], cfg), pipe


def measure(run, device) -> tuple[float, float]:
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    run()
    if device == "cuda":
        torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    return time.perf_counter() - start, peak


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=14)
    parser.add_argument("--height", type=int, default=576)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--dtype", default="bfloat16")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = getattr(torch, args.dtype)
    svd, pipe = build_both(dtype, device)
    backbone = SVDBackbone(svd)                   # fps 7, motion bucket 127, aug 0.02: the pipe's
    pixels = np.random.default_rng(0).integers(0, 256, (args.height, args.width, 3), dtype=np.uint8)
    image_pil = Image.fromarray(pixels)
    image = torch.from_numpy(pixels).permute(2, 0, 1)[None].float().div(255).mul(2).sub(1).to(device)

    def ours():
        generate_video(backbone, image, num_frames=args.frames, steps=args.steps,
                       generator=torch.Generator(device).manual_seed(0))

    def theirs():
        pipe(image_pil, height=args.height, width=args.width, num_frames=args.frames,
             num_inference_steps=args.steps, decode_chunk_size=args.frames,
             generator=torch.Generator(device).manual_seed(0), output_type="pt")

    rows = []
    for name, run in [("ours", ours), ("diffusers", theirs)]:
        if device == "cuda":
            measure(run, device)          # warm-up: kernels, allocator
        seconds, peak = measure(run, device)
        rows.append((name, seconds, peak))
        gc.collect()
    print(f"image-to-video, {args.frames} frames, {args.height}x{args.width}, {args.steps} steps, "
          f"CFG, {args.dtype}, {torch.cuda.get_device_name() if device == 'cuda' else 'CPU'}")
    for name, seconds, peak in rows:
        print(f"  {name:10s} {seconds:8.2f} s   peak {peak:6.2f} GiB")
    print(f"  ratio ours/diffusers: time {rows[0][1] / rows[1][1]:.2f}, "
          f"memory {rows[0][2] / rows[1][2]:.2f}")


if __name__ == "__main__":
    main()
