"""Reconstruction: edit a clip with its own, unedited first frame; the method should give the
source back. Compares the full method with its ablations and with plain image-to-video: the
relative L2 error of the sampled latents against the source's latents, and PSNR of the decoded
frames against the source passed through the VAE (the best any latent method can do with it).

    python bench/reconstruction.py                    # tiny random weights, CPU, about a minute
    python bench/reconstruction.py --weights demo/weights --world-seeds 0 1 2 3 4 \
        --train-steps 60 --rank 16 --lr 3e-3   # the embedded demo model, world scenes, short LoRA

Prints one line per variant. With random weights the VAE decoder scrambles the pixels, so the
latent error is the figure to read there; with trained weights both are.
"""

import argparse
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attention import StepState  # noqa: E402
from configs import EditConfig, TrainConfig  # noqa: E402
from edm import frame_guidance, guided, karras_sigmas, sample_euler  # noqa: E402
from lora import load_lora_state_dict, lora_scale, set_lora_scale  # noqa: E402
from motion_lora import train_motion_lora  # noqa: E402
from refine import edit_clip  # noqa: E402
from source import record_source  # noqa: E402
from svd.backbone import SVDBackbone  # noqa: E402
from svd.config import SVDConfig  # noqa: E402
from svd.weights import load_svd  # noqa: E402


def moving_square(frames: int, size: int) -> torch.Tensor:
    """A red square crossing a dark gradient background, (F, 3, size, size) in [-1, 1]."""
    video = torch.linspace(-0.8, -0.2, size).expand(frames, 3, size, size).clone()
    side = size * 3 // 8
    for t in range(frames):
        x = round(t * (size - side) / max(frames - 1, 1))
        video[t, 0, size // 4: size // 4 + side, x: x + side] = 0.9
        video[t, 1:, size // 4: size // 4 + side, x: x + side] = -0.7
    return video


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Frames in [0, 1]."""
    return float(10 * torch.log10(1 / ((a - b) ** 2).mean()))


def reconstruct(svd, video: torch.Tensor, bucket: int, args) -> dict[str, tuple[float, ...]]:
    """video (F, 3, H, W) in [-1, 1] -> {variant: (latent error %, PSNR vs the VAE's
    reconstruction, PSNR vs the source pixels)}."""
    frames = len(video)
    cfg = EditConfig(steps=args.steps, num_frames=frames, max_guidance=2.0,
                     motion_bucket_id=bucket)
    backbone = SVDBackbone.for_run(svd, cfg)          # cfg's fps, motion bucket, noise aug
    latents = backbone.encode(video)                                    # (1, F, 4, h, w)
    target = backbone.decode(latents)[0]                                # the VAE's best
    pixels = video / 2 + 0.5
    results = {"VAE alone": (0.0, float("inf"), psnr(target, pixels))}

    def report(name, out):
        decoded = backbone.decode(out)[0]
        results[name] = (100 * float((out - latents).norm() / latents.norm()),
                         psnr(decoded, target), psnr(decoded, pixels))

    sigmas = karras_sigmas(args.steps)
    g = torch.Generator().manual_seed(cfg.seed)
    cond = backbone.condition(video[:1], g)
    noise = torch.randn(latents.shape, generator=g) * (sigmas[0] ** 2 + 1).sqrt()

    def branch(c):
        return lambda x, sigma, step: backbone.denoise(x, sigma, c)

    denoise = guided(branch(backbone.uncondition(cond)), branch(cond),
                     frame_guidance(frames, 1.0, 2.0))
    with lora_scale(svd.unet, 0.0):                                     # a previous video's
        report("plain image-to-video", sample_euler(denoise, noise, sigmas))

    lora = train_motion_lora(backbone, video, 0, TrainConfig(
        steps=args.train_steps, rank=args.rank, lr=args.lr, dropout=0.0, motion_bucket_id=bucket),
        progress=False)
    set_lora_scale(svd.unet, 1.0)
    report("LoRA, plain image-to-video", sample_euler(denoise, noise, sigmas))
    variants = {
        "full method": cfg,
        "full, no SARP": replace(cfg, no_sarp=True),
        "full, no temporal selector": replace(cfg, no_temporal_selector=True),
        "full, no spatial matching": replace(cfg, no_spatial_matching=True),
        "LoRA + inversion, no attention injection": replace(
            cfg, no_spatial_matching=True, no_temporal_selector=True),
        "inversion only (no LoRA, no injection)": replace(
            cfg, no_spatial_matching=True, no_temporal_selector=True, lora_scale=0.0),
    }
    for name, vcfg in variants.items():
        state = StepState()
        source = record_source(backbone, video, 0, state, vcfg, None,
                               torch.Generator().manual_seed(vcfg.seed))
        load_lora_state_dict(svd.unet, lora)
        out = edit_clip(backbone, source, backbone.condition(
                        video[:1], torch.Generator().manual_seed(vcfg.seed)), state, vcfg)
        report(name, out)
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", default="", help="default: tiny random weights")
    parser.add_argument("--world-seeds", type=int, nargs="+", default=[],
                        help="source videos from these scenes of demo/world.py (64x64, 8 "
                             "frames) instead of the moving square")
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=25, help="inversion/editing steps")
    parser.add_argument("--train-steps", type=int, default=60)
    parser.add_argument("--lr", type=float, default=3e-3, help="LoRA lr (paper 5e-4 over 250)")
    parser.add_argument("--rank", type=int, default=8)
    args = parser.parse_args(argv)
    torch.manual_seed(0)

    if args.weights:
        svd = load_svd(args.weights)
    else:
        from bench.oracles import save_oracle_folder
        root = Path(tempfile.mkdtemp())
        save_oracle_folder(root, SVDConfig.tiny(), seed=3)
        svd = load_svd(root)

    if args.world_seeds:
        from demo import world
        examples = [world.example(s, world.EditKind.RECOLOUR) for s in args.world_seeds]
        videos = [(torch.from_numpy(ex["source"]).permute(0, 3, 1, 2) * 2 - 1,
                   ex["motion_bucket_id"]) for ex in examples]
    else:
        videos = [(moving_square(args.frames, args.size), 127)]
    runs = [reconstruct(svd, video, bucket, args) for video, bucket in videos]
    print(f"mean over {len(runs)} video(s): latent error against the source latents; PSNR of "
          "the decoded frames against the VAE's reconstruction and against the source pixels")
    for name in runs[0]:
        error, vs_vae, vs_pixels = (sum(r[name][i] for r in runs) / len(runs) for i in range(3))
        print(f"{name:44s} latent error {error:6.2f} %   PSNR {vs_vae:6.2f} dB (VAE)   "
              f"{vs_pixels:6.2f} dB (source)")


if __name__ == "__main__":
    main()
