"""Motion-LoRA training step: time per step and peak memory, ours and diffusers + peft in one run.

    python bench/train_step.py                 # GPU: 14 frames, 512x896 (latent 64x112), bf16,
                                               # gradient checkpointing, rank 32, 20 timed steps
    python bench/train_step.py --tiny          # CPU smoke run of the same code on the tiny config

One step = EDM loss on the cached clip latents (random here: timing does not depend on the
weights), backward through the checkpointed U-Net into the fp32 adapters, AdamW. The issue's
target: 250 steps in <= 3 minutes on an H100 (0.72 s per step) with peak <= 24 GB.
"""

import argparse
import gc
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edm import edm_loss_weight, sample_training_sigmas, v_preconditioning  # noqa: E402
from lora import add_lora, lora_parameters  # noqa: E402
from svd.backbone import is_temporal_transformer_linear  # noqa: E402
from svd.config import UNetConfig  # noqa: E402
from svd.unet import UNet  # noqa: E402


def make_step(forward, params, latents, image, lr=5e-4):
    """One training step around `forward(net_in, c_noise) -> v` (ours and diffusers alike)."""
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    g = torch.Generator().manual_seed(0)

    def step():
        sigma = sample_training_sigmas(1, g)[0].to(latents.device)
        noise = torch.randn(latents.shape, generator=g).to(latents)
        c_skip, c_out, c_in, c_noise = v_preconditioning(sigma)
        x = latents + sigma * noise
        net_in = torch.cat([c_in * x, image], dim=2).to(torch.bfloat16 if latents.is_cuda
                                                         else torch.float32)
        x0 = c_skip * x + c_out * forward(net_in, c_noise).float()
        loss = (edm_loss_weight(sigma) * (x0 - latents) ** 2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


def measure(name, step, warmup, repeats, device):
    for _ in range(warmup):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / repeats
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    print(f"  {name:16s} {seconds:7.3f} s/step  -> 250 steps {250 * seconds / 60:5.2f} min   "
          f"peak {peak:6.2f} GiB", flush=True)
    return seconds, peak


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny config on the CPU")
    parser.add_argument("--frames", type=int, default=14)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=896)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--no-diffusers", action="store_true")
    args = parser.parse_args()
    device = "cpu" if args.tiny else "cuda"
    dtype = torch.float32 if args.tiny else torch.bfloat16
    cfg = UNetConfig.tiny() if args.tiny else UNetConfig()
    h, w = (16, 16) if args.tiny else (args.height // 8, args.width // 8)
    latents = torch.randn(1, args.frames, 4, h, w, device=device)
    image = torch.randn(1, 1, 4, h, w, device=device).expand(-1, args.frames, -1, -1, -1)
    ctx = torch.randn(1, 1, cfg.cross_attention_dim, device=device, dtype=dtype)
    ids = torch.tensor([[6.0, 127.0, 0.02]], device=device, dtype=dtype)
    print(f"motion-LoRA step: {args.frames} frames, latent {h}x{w}, {dtype}, rank {args.rank}, "
          f"gradient checkpointing, {torch.cuda.get_device_name() if device == 'cuda' else 'CPU'}")
    rows = {}

    unet = UNet(cfg).to(device, dtype).requires_grad_(False)
    add_lora(unet, is_temporal_transformer_linear, args.rank)
    params = lora_parameters(unet)
    for p in params:
        p.data = p.data.float()
        p.requires_grad_(True)
    unet.gradient_checkpointing = True
    rows["ours"] = measure("ours", make_step(lambda x, c: unet(x, c, ctx, ids), params, latents,
                                              image), 2, args.repeats, device)
    del unet, params
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()

    if not args.no_diffusers:
        from diffusers import UNetSpatioTemporalConditionModel
        from peft import LoraConfig, inject_adapter_in_model

        if args.tiny:
            from bench.oracles import diffusers_tiny_unet
            theirs = diffusers_tiny_unet()
        else:
            theirs = UNetSpatioTemporalConditionModel()
        theirs = theirs.to(device, dtype).requires_grad_(False)
        targets = [n for n, m in theirs.named_modules()
                   if isinstance(m, torch.nn.Linear) and "temporal_transformer_blocks." in n]
        inject_adapter_in_model(LoraConfig(r=args.rank, lora_alpha=args.rank,
                                           target_modules=targets), theirs)
        params = [p for n, p in theirs.named_parameters() if "lora_" in n]
        for p in params:
            p.data = p.data.float()
            p.requires_grad_(True)
        theirs.enable_gradient_checkpointing()
        theirs.train()
        rows["diffusers+peft"] = measure(
            "diffusers + peft", make_step(lambda x, c: theirs(x, c, ctx, ids).sample, params,
                                          latents, image), 2, args.repeats, device)
        print(f"  ratio ours/diffusers: time {rows['ours'][0] / rows['diffusers+peft'][0]:.2f}, "
              f"memory {rows['ours'][1] / rows['diffusers+peft'][1]:.2f}")


if __name__ == "__main__":
    main()
