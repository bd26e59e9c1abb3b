"""Backbone benchmark and full-size parity: our SVD U-Net / VAE / CLIP against diffusers.

Random weights at the released configuration (the official weights cannot be downloaded here);
both implementations get the same state dict.

    python bench/backbone.py --parity            # full-size parity, fp32 and bf16 (CPU or GPU)
    python bench/backbone.py --speed             # U-Net forward time and peak memory (GPU)

Parity runs at a small latent on the CPU (the whole U-Net is exercised; 2 frames, 32x32
latents by default) and at 14 x 72 x 128 on a GPU. Speed: one U-Net forward, batch 1 (one CFG
half), 14 frames, 576x1024 (latent 72x128), bf16, ours and diffusers side by side in one run.
Needs diffusers and transformers (test requirements).
"""

import argparse
import gc
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from svd.clip import CLIPVisionEncoder
from svd.config import CLIPConfig, UNetConfig, VAEConfig
from svd.unet import UNet
from svd.vae import VAE


def random_state(model: torch.nn.Module, seed: int) -> dict:
    """Seeded random weights, scaled per tensor like a trained network (fan-in), so activations
    stay O(1) through 1.5 B parameters."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, p in model.state_dict().items():
        if name.endswith("weight") and p.ndim == 1:
            t = 1 + 0.1 * torch.randn(p.shape, generator=g)
        elif p.ndim >= 2:
            t = torch.randn(p.shape, generator=g) / (p[0].numel() ** 0.5)
        else:
            t = 0.1 * torch.randn(p.shape, generator=g)
        state[name] = t
    return state


def diffusers_models():
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    clip_cfg = CLIPVisionConfig(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                                num_attention_heads=16, image_size=224, patch_size=14,
                                projection_dim=1024, hidden_act="gelu")
    def released_vae():
        return AutoencoderKLTemporalDecoder(
            block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
            down_block_types=("DownEncoderBlock2D",) * 4)

    return (UNetSpatioTemporalConditionModel, released_vae,
            lambda: CLIPVisionModelWithProjection(clip_cfg))


def max_rel(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    diff = (a.float() - b.float()).abs().max().item()
    return diff, diff / b.float().abs().max().item()


def parity(device: str, frames: int, latent: int, only: list[str], bf16: bool) -> None:
    DUNet, DVAE, DCLIP = diffusers_models()
    torch.manual_seed(0)
    sample = torch.randn(1, frames, 8, latent, latent)
    ctx, ids = torch.randn(1, 1, 1024), torch.tensor([[6.0, 127.0, 0.02]])
    image = torch.rand(1, 3, 8 * latent, 8 * latent) * 2 - 1
    z = torch.randn(frames, 4, latent, latent)
    pixels = torch.randn(1, 3, 224, 224)

    jobs = [("unet", UNet, UNetConfig(), DUNet,
             lambda m: m(sample.to(device, m_dtype(m)), 1.2, ctx.to(device, m_dtype(m)),
                         ids.to(device, m_dtype(m))),
             lambda m: m(sample.to(device, m_dtype(m)), 1.2, ctx.to(device, m_dtype(m)),
                         ids.to(device, m_dtype(m))).sample),
            ("vae.decode", VAE, VAEConfig(), DVAE,
             lambda m: m.decode(z.to(device, m_dtype(m)), num_frames=frames),
             lambda m: m.decode(z.to(device, m_dtype(m)), num_frames=frames).sample),
            ("vae.encode", VAE, VAEConfig(), DVAE,
             lambda m: m.encode(image.to(device, m_dtype(m))),
             lambda m: m.encode(image.to(device, m_dtype(m))).latent_dist.mean),
            ("clip", CLIPVisionEncoder, CLIPConfig(), DCLIP,
             lambda m: m(pixels.to(device, m_dtype(m))),
             lambda m: m(pixel_values=pixels.to(device, m_dtype(m))).image_embeds)]
    for name, ours_cls, cfg, theirs_cls, run_ours, run_theirs in jobs:
        if name.split(".")[0] not in only:
            continue
        theirs = theirs_cls()
        state = random_state(theirs, seed=len(name))
        theirs.load_state_dict(state)
        ours = ours_cls(cfg)
        ours.load_state_dict(state, strict=True)
        del state
        # fp32: ours against diffusers directly. bf16: both against the fp32 reference, since
        # two bf16 implementations differ by rounding alone; ours should be no worse than theirs.
        with torch.no_grad():
            ours.to(device, torch.float32).eval()
            theirs.to(device, torch.float32).eval()
            ref = run_theirs(theirs).float()
            diff, rel = max_rel(run_ours(ours), ref)
            print(f"{name:11s} fp32  max abs diff {diff:.2e} (relative to max {rel:.2e}, "
                  f"reference std {ref.std():.3f})", flush=True)
            if not bf16:
                continue
            ours.to(torch.bfloat16)
            theirs.to(torch.bfloat16)
            a, b = run_ours(ours).float(), run_theirs(theirs).float()
            print(f"{name:11s} bf16  vs fp32 reference: ours {max_rel(a, ref)[0]:.2e}, "
                  f"diffusers {max_rel(b, ref)[0]:.2e}; ours vs diffusers {max_rel(a, b)[0]:.2e}",
                  flush=True)
        del ours, theirs
        gc.collect()


def m_dtype(m: torch.nn.Module) -> torch.dtype:
    return next(m.parameters()).dtype


def speed(frames: int, repeats: int) -> None:
    assert torch.cuda.is_available(), "--speed needs a GPU"
    DUNet, _, _ = diffusers_models()
    device, dtype = "cuda", torch.bfloat16
    sample = torch.randn(1, frames, 8, 72, 128, device=device, dtype=dtype)
    ctx = torch.randn(1, 1, 1024, device=device, dtype=dtype)
    ids = torch.tensor([[6.0, 127.0, 0.02]], device=device, dtype=dtype)
    rows = []
    for name, build, call in [
        ("ours", lambda: UNet(UNetConfig()), lambda m: m(sample, 1.2, ctx, ids)),
        ("diffusers", lambda: DUNet(), lambda m: m(sample, 1.2, ctx, ids).sample),
    ]:
        model = build().to(device, dtype).eval()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        with torch.no_grad():
            call(model)                                    # warm-up
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(repeats):
                call(model)
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / repeats
        peak = torch.cuda.max_memory_allocated() / 2**30
        rows.append((name, seconds, peak))
        del model
        gc.collect()
        torch.cuda.empty_cache()
    print(f"U-Net forward, batch 1, {frames} frames, 576x1024, bf16, {torch.cuda.get_device_name()}")
    for name, seconds, peak in rows:
        print(f"  {name:10s} {1000 * seconds:8.1f} ms   peak {peak:6.2f} GiB")
    print(f"  ratio ours/diffusers: time {rows[0][1] / rows[1][1]:.2f}, memory {rows[0][2] / rows[1][2]:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parity", action="store_true")
    parser.add_argument("--speed", action="store_true")
    parser.add_argument("--frames", type=int, default=None)
    parser.add_argument("--latent", type=int, default=None, help="square latent size for --parity")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", nargs="+", default=["unet", "vae", "clip"],
                        choices=["unet", "vae", "clip"], help="components for --parity")
    parser.add_argument("--no-bf16", action="store_true",
                        help="skip the bf16 comparison (bf16 convolutions are very slow on CPUs)")
    args = parser.parse_args()
    on_gpu = torch.cuda.is_available()
    if args.parity:
        parity("cuda" if on_gpu else "cpu", args.frames or (14 if on_gpu else 2),
               args.latent or (72 if on_gpu else 32), args.only,
               not args.no_bf16)
    if args.speed:
        speed(args.frames or 14, args.repeats)
