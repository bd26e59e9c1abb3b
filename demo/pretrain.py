"""Pretrain the embedded demo model: a tiny SVD, built with exactly our architecture code
(svd/), trained from scratch on the procedural world of demo/world.py.

Configuration (`demo_config`): the released structure at small width. The U-Net keeps SVD's four
levels, two resnets per down block and transformers on the first three levels, so the temporal
layers the I2VEdit selector treats as coarse exist here too (down_blocks.2, mid, up_blocks.1).
The VAE downsamples by 4 (64x64 frames -> 16x16 latents, enough for attention maps to mean
something); the image encoder is the tiny ViT of CLIPConfig.tiny().

Three stages, each plain Adam on one objective:
1. VAE: encoder + temporal decoder as an autoencoder of the posterior mean, L1 + L2 on pixels,
   every residual block starting as the identity (start_as_identity) and half the videos
   shifted in colour (shift_levels), so that all three colour levels are kept; the scaling
   factor is then set so that diffusion latents have unit std (SD's 0.18215 was chosen the
   same way).
1b. Decoder: a short fine-tune of the temporal decoder alone on whole 8-frame videos (the
   encoder, hence the latents, stay as they are).
2. Image-to-video: U-Net and image encoder together (VAE frozen) with SVD's objective: EDM noise
   sigma ~ lognormal, v-preconditioning (svd/sampling.py), loss weight (sigma^2 + 1) / sigma^2 on
   x0, conditioned on the first frame (CLIP context + noise-augmented image latent) and the ids
   [fps - 1, motion bucket (from the scene's speed), noise aug]. The conditions are dropped
   (zeroed, like the unconditional branch of guidance) 10% of the time so that classifier-free
   guidance has an unconditional model to push against.

The result is written in the diffusers folder layout (unet/, vae/, image_encoder/ with
config.json and the fp16 variant safetensors) and loads through svd.weights.load_svd like the
official weights.

    python -m demo.pretrain --out demo/weights                # all stages
    python -m demo.pretrain --out demo/weights --stage unet   # stage 2 only, VAE from --out
"""

import argparse
import json
import math
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from cli import fail
from demo import world
from demo.folder import save_folder
from demo.measure import batch, colour_response, latent_std, vae_psnr
from edm import edm_loss_weight
from svd.blocks import ResBlock, TemporalResBlock
from svd.clip import CLIPVisionEncoder, preprocess
from svd.conditioning import Conditions
from svd.config import CLIPConfig, SVDConfig, UNetConfig, VAEConfig
from svd.layers import Attention
from svd.sampling import v_denoise
from svd.unet import UNet
from svd.vae import VAE
from svd.weights import SVD, WeightsError, load_svd

NOISE_AUG = 0.02                 # SVD's conditioning-image noise, as at edit time


class Diverged(RuntimeError):
    """A training loss stopped being finite; main() turns it into one error line."""


def demo_config() -> SVDConfig:
    # GroupNorm always has 32 groups (as in SVD), so a 32-channel layer normalises every channel
    # on its own, and the norm right before an output conv (conv_norm_out of the VAE encoder and
    # decoder and of the U-Net) then erases each channel's mean and scale: a frame's absolute
    # colours are lost (a first version at width 32 decoded every background greyish). With
    # three channels per group they can be carried (e.g. a channel, its negative and a constant
    # share one mean), hence 96 there. (Keeping all three colour levels also needs the VAE's
    # blocks to start as the identity: start_as_identity.)
    vae = VAEConfig(block_out_channels=(96, 96, 96), layers_per_block=1)   # downsample 4
    unet = UNetConfig(block_out_channels=(96, 64, 64, 64), num_attention_heads=(6, 4, 4, 4),
                      cross_attention_dim=32, addition_time_embed_dim=32,
                      num_frames=world.NUM_FRAMES,                   # head dim 16
                      sample_size=world.SIZE // vae.downsample_factor)   # trained on 64 x 64
    return SVDConfig(unet=unet, vae=vae, clip=CLIPConfig.tiny())


# ---------------------------------------------------------------------------------------------
# Learning-rate schedule (data batches and VAE measurements: demo/measure.py)
# ---------------------------------------------------------------------------------------------

def cosine_lr(step: int, total: int, peak: float, warmup: int = 100) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup))))


# ---------------------------------------------------------------------------------------------
# Stage 1: the VAE
# ---------------------------------------------------------------------------------------------

def start_as_identity(vae: VAE) -> None:
    """Zero the last layer of every residual branch of `vae` (resnet conv2, attention to_out), so
    that each block starts as the identity and colour levels ride the skip paths from step 0.
    Why: from the default initialisation, every training tried (seeds, widths, latent channels,
    losses, learning rates) dropped one colour channel's frame-wide level of three within its
    first 125-500 steps and did not get it back (colour_response); with no GroupNorm at all, or
    starting from the identity, all three survive (demo/NOTES.md §3)."""
    for module in vae.modules():
        if isinstance(module, (ResBlock, TemporalResBlock)):
            last = module.conv2
        elif isinstance(module, Attention):
            last = module.to_out[0]
        else:
            continue
        torch.nn.init.zeros_(last.weight)
        torch.nn.init.zeros_(last.bias)


def shift_levels(frames: torch.Tensor, rng: np.random.Generator, strength: float,
                 p: float = 0.5) -> torch.Tensor:
    """frames (B, F, 3, H, W) in [-1, 1] -> the same with, for a fraction p of the videos, each
    colour channel moved by its own uniform offset in [-strength, strength] (then clipped).
    Why: a dropped colour level then costs much more of the loss. On its own it did not keep the
    default-initialised training from dropping one; with start_as_identity it is part of the
    measured recipe (whether that needs it was not tested)."""
    B = frames.shape[0]
    offsets = rng.uniform(-strength, strength, (B, 1, 3, 1, 1)) * (rng.random((B, 1, 1, 1, 1)) < p)
    return (frames + torch.from_numpy(offsets).float()).clamp(-1, 1)


def train_vae(vae: VAE, steps: int, batch_size: int, lr: float, rng: np.random.Generator,
              log, short_clips: float = 0.85, decoder_only: bool = False,
              level_shift: float = 0.0, bf16: bool = False) -> list[float]:
    """Encoder and temporal decoder as a deterministic autoencoder on the posterior mean (SVD
    only ever uses the mean), with a small penalty that keeps the latents' scale bounded. Most
    steps see `batch_size` scenes of 2 frames each (many scenes per step learn faster than one
    scene's 8 similar frames); the last (1 - short_clips) see whole 8-frame videos, so that the
    temporal layers of the decoder learn the clip length they are used at.

    decoder_only: the encoder stays frozen, so the latents a U-Net was trained on do not change
    (Stable Diffusion's VAE decoder was fine-tuned the same way).
    level_shift: strength of shift_levels (0 = off). bf16: autocast the forward pass to bfloat16
    (2.6x faster on a CPU with AMX; weights, optimiser and loss stay fp32)."""
    vae.train().requires_grad_(True)
    if decoder_only:
        vae.encoder.requires_grad_(False)
        vae.quant_conv.requires_grad_(False)
    opt = torch.optim.Adam([p for p in vae.parameters() if p.requires_grad], lr=lr)
    losses = []
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, steps, lr)
        short = step < short_clips * steps
        frames, _ = batch(rng.integers(world.HELD_OUT_SEEDS, 2**31 - 1, batch_size if short else 1))
        if short:
            frames = frames[:, :2]
        if level_shift:
            frames = shift_levels(frames, rng, level_shift)
        x = frames.flatten(0, 1)                                          # (B*F, 3, H, W)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            with torch.set_grad_enabled(not decoder_only):
                mean = vae.encode(x)
            recon = vae.decode(mean, frames.shape[1])
        mean, recon = mean.float(), recon.float()
        loss = (recon - x).abs().mean() + ((recon - x) ** 2).mean() + 1e-4 * (mean ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):
            raise Diverged(f"VAE loss is {losses[-1]} at step {step}"
                           + (" (bf16 autocast: this happened on an AMD EPYC CPU without AMX; "
                              "rerun with --no-bf16)" if bf16 else ""))
        if step % 50 == 0 or step == steps - 1:
            log(f"vae step {step}/{steps} loss {np.mean(losses[-50:]):.4f}")
        if step % 250 == 249:
            vae.eval()
            log(f"vae step {step + 1}: held-out PSNR {vae_psnr(vae, range(4)):.2f} dB (4 videos), "
                f"colour response {colour_response(vae)}")
            vae.train()
    vae.eval().requires_grad_(False)
    return losses


# ---------------------------------------------------------------------------------------------
# Stage 2: image-to-video (U-Net + image encoder)
# ---------------------------------------------------------------------------------------------

def train_i2v(svd: SVD, steps: int, batch_size: int, lr: float, rng: np.random.Generator,
              log, save=None, save_every: int = 0, p_mean: float = 0.5, p_std: float = 1.4,
              drop: float = 0.1) -> list[float]:
    unet, clip, vae = svd.unet, svd.clip, svd.vae
    unet.train().requires_grad_(True)
    clip.train().requires_grad_(True)
    params = list(unet.parameters()) + list(clip.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    scale = svd.config.vae.scaling_factor
    losses = []
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, steps, lr)
        frames, buckets = batch(rng.integers(world.HELD_OUT_SEEDS, 2**31 - 1, batch_size))
        B, F_ = frames.shape[:2]
        first = frames[:, 0]                                              # (B, 3, H, W)
        with torch.no_grad():
            x0 = vae.encode(frames.flatten(0, 1)).unflatten(0, (B, F_)) * scale   # (B, F, 4, h, w)
            image_latent = vae.encode(first + NOISE_AUG * torch.randn_like(first))  # (B, 4, h, w)
        context = clip(preprocess(first, svd.config.clip))[:, None]   # (B, 1, C_ctx)
        keep = (torch.rand(B) >= drop).float()                            # condition dropout
        ids = torch.stack([torch.full((B,), world.FPS - 1.0), buckets,
                           torch.full((B,), NOISE_AUG)], dim=1)            # (B, 3)
        cond = Conditions(context * keep[:, None, None],
                          image_latent * keep[:, None, None, None], ids)
        sigma = (p_mean + p_std * torch.randn(B)).exp().reshape(B, 1, 1, 1, 1)
        x0_hat = v_denoise(unet, x0 + sigma * torch.randn_like(x0), sigma, cond)
        loss = (edm_loss_weight(sigma) * (x0_hat - x0) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):
            raise Diverged(f"U-Net loss is {losses[-1]} at step {step}")
        if step % 25 == 0 or step == steps - 1:
            log(f"i2v step {step}/{steps} loss {np.mean(losses[-100:]):.4f}")
        if save is not None and save_every and (step + 1) % save_every == 0:
            save(step + 1, losses)
    unet.eval().requires_grad_(False)
    clip.eval().requires_grad_(False)
    return losses


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------

def cpu_name() -> str:
    """The CPU's model name (Linux /proc/cpuinfo; elsewhere what platform reports), for the
    record of where the weights were trained."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "CPU"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m demo.pretrain", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="demo/weights", help="diffusers folder to write")
    p.add_argument("--stage", choices=["all", "vae", "decoder", "unet"], default="all",
                   help="all = vae, then decoder, then unet; decoder and unet start from --out")
    p.add_argument("--vae-steps", type=int, default=3000)
    p.add_argument("--vae-batch", type=int, default=4, help="scenes per step (2 frames each)")
    p.add_argument("--vae-lr", type=float, default=1e-3)
    p.add_argument("--vae-level-shift", type=float, default=0.3,
                   help="per-channel colour offsets for half the VAE's training videos (0 = off)")
    p.add_argument("--vae-identity-init", action=argparse.BooleanOptionalAction, default=True,
                   help="start every VAE residual block as the identity (start_as_identity)")
    p.add_argument("--decoder-steps", type=int, default=800,
                   help="decoder fine-tune on whole videos, encoder frozen (0 = none)")
    p.add_argument("--decoder-lr", type=float, default=2e-4)
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=False,
                   help="bfloat16 autocast in the VAE stages (fp32 weights): 2.6x faster on a "
                        "CPU with AMX, NaN at the second step on an AMD EPYC without it")
    p.add_argument("--unet-steps", type=int, default=1300)
    p.add_argument("--unet-batch", type=int, default=4)
    p.add_argument("--unet-lr", type=float, default=1e-3)
    p.add_argument("--init", default="", help="start stage unet from this folder's U-Net and encoder")
    p.add_argument("--save-every", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    start = time.time()
    info_path = out / "pretraining.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    info["device"] = f"{cpu_name()}, {torch.get_num_threads()} threads"

    def log(msg):
        # Printed and appended to pretraining.log beside the weights, so the run can be read later.
        line = f"[{(time.time() - start) / 60:6.1f} min] {msg}"
        print(line, flush=True)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "pretraining.log", "a") as f:
            f.write(line + "\n")

    log("python -m demo.pretrain " + " ".join(sys.argv[1:] if argv is None else argv)
        + f"  ({info['device']})")

    def seeded() -> np.random.Generator:
        # Every stage starts from the seed, so running the stages one by one gives what "all" gives.
        torch.manual_seed(args.seed)
        return np.random.default_rng(args.seed)

    cfg = demo_config()
    if args.stage in ("all", "vae"):
        rng, t0 = seeded(), time.time()
        vae = VAE(cfg.vae)
        if args.vae_identity_init:
            start_as_identity(vae)
        vae_losses = train_vae(vae, args.vae_steps, args.vae_batch, args.vae_lr, rng, log,
                               level_shift=args.vae_level_shift, bf16=args.bf16)
        std = latent_std(vae, range(world.HELD_OUT_SEEDS, world.HELD_OUT_SEEDS + 16))
        cfg = replace(cfg, vae=replace(cfg.vae, scaling_factor=round(1.0 / std, 5)))
        vae.config = cfg.vae
        psnr = vae_psnr(vae, range(50))               # held-out seeds
        info["vae"] = {"steps": args.vae_steps, "batch_videos": args.vae_batch, "lr": args.vae_lr,
                       "identity_init": args.vae_identity_init,
                       "level_shift": args.vae_level_shift, "bf16": args.bf16,
                       "minutes": round((time.time() - t0) / 60, 1),
                       "final_loss": float(np.mean(vae_losses[-50:])),
                       "heldout_psnr_db": round(psnr, 2), "scaling_factor": cfg.vae.scaling_factor,
                       "colour_response_rgb": colour_response(vae)}
        info.pop("vae_decoder_finetune", None)         # of an earlier VAE
        log(f"VAE held-out PSNR {psnr:.2f} dB, scaling factor {cfg.vae.scaling_factor}, "
            f"colour response (R, G, B) {info['vae']['colour_response_rgb']}")
        unet, clip = UNet(cfg.unet), CLIPVisionEncoder(cfg.clip)
        # The only parameter our modules leave uninitialised (they are built to be loaded).
        torch.nn.init.normal_(clip.vision_model.embeddings.class_embedding, std=0.02)
        save_folder(SVD(unet, vae, clip, cfg), out, info)
    if args.stage in ("all", "decoder") and args.decoder_steps:
        rng, t0 = seeded(), time.time()
        svd = load_svd(out)
        # Whole 8-frame videos only: the short clips of stage vae leave the temporal layers
        # under-trained for the length they decode at (held-out PSNR 29.99 -> 31.89 dB, demo/NOTES.md §2).
        losses = train_vae(svd.vae, args.decoder_steps, 1, args.decoder_lr, rng, log,
                           short_clips=0.0, decoder_only=True,
                           level_shift=args.vae_level_shift, bf16=args.bf16)
        psnr = vae_psnr(svd.vae, range(50))
        info["vae_decoder_finetune"] = info.get("vae_decoder_finetune", []) + [{
            "steps": args.decoder_steps, "videos_per_step": 1, "lr": args.decoder_lr,
            "level_shift": args.vae_level_shift, "bf16": args.bf16,
            "minutes": round((time.time() - t0) / 60, 1),
            "final_loss": float(np.mean(losses[-50:])), "heldout_psnr_db": round(psnr, 2)}]
        info["vae"].setdefault("heldout_psnr_db_before_decoder_finetune",
                               info["vae"]["heldout_psnr_db"])
        info["vae"]["heldout_psnr_db"] = round(psnr, 2)
        # The decoder cannot bring back a level the frozen encoder has already lost.
        info["vae"]["colour_response_rgb"] = colour_response(svd.vae)
        log(f"VAE held-out PSNR after decoder fine-tuning {psnr:.2f} dB, colour response "
            f"(R, G, B) {info['vae']['colour_response_rgb']}")
        save_folder(svd, out, info)
    if args.stage in ("all", "unet"):
        rng, t0 = seeded(), time.time()
        svd = load_svd(out)
        earlier = None
        if args.init:
            init = load_svd(args.init)
            svd.unet.load_state_dict(init.unet.state_dict())
            svd.clip.load_state_dict(init.clip.state_dict())
            # The record of the training continued here, so pretraining.json tells the whole story.
            init_info = Path(args.init) / "pretraining.json"
            if init_info.is_file():
                earlier = json.loads(init_info.read_text()).get("unet")

        def save(step, losses):
            info["unet"] = {"steps": step, "batch_videos": args.unet_batch, "lr": args.unet_lr,
                            "seed": args.seed, "device": info["device"],
                            "minutes": round((time.time() - t0) / 60, 1),
                            "final_loss": float(np.mean(losses[-100:]))}
            if earlier is not None:
                info["unet"]["continued_from"] = earlier
            save_folder(svd, out, info)
            log(f"saved {out} at step {step}")

        losses = train_i2v(svd, args.unet_steps, args.unet_batch, args.unet_lr, rng, log,
                           save, args.save_every)
        save(args.unet_steps, losses)
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except (WeightsError, Diverged) as e:   # stages unet/decoder read --out (and --init) first
        raise SystemExit(fail(e))
