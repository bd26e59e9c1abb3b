"""The demo world as training batches, and the measurements of the tiny VAE that pretraining
logs and the tests assert: held-out reconstruction PSNR, latent spread (for the scaling factor)
and the colour response (whether each frame-wide colour level survives encode -> decode)."""

import numpy as np
import torch

from demo import world
from svd.vae import VAE


def batch(seeds) -> tuple[torch.Tensor, torch.Tensor]:
    """Training videos -> (frames (B, F, 3, H, W) in [-1, 1], motion bucket ids (B,))."""
    videos, buckets = zip(*(world.random_training_video(int(s)) for s in seeds))
    frames = torch.from_numpy(np.stack(videos)).permute(0, 1, 4, 2, 3) * 2 - 1
    return frames.contiguous(), torch.tensor(buckets, dtype=torch.float32)


@torch.no_grad()
def latent_std(vae: VAE, seeds) -> float:
    frames, _ = batch(seeds)
    return float(vae.encode(frames.flatten(0, 1)).std())


@torch.no_grad()
def vae_psnr(vae: VAE, seeds) -> float:
    """Mean PSNR (dB, frames in [0, 1]) of encode -> decode on the videos of `seeds`."""
    scores = []
    for s in seeds:
        frames, _ = batch([s])
        x = frames[0]
        recon = vae.decode(vae.encode(x), world.NUM_FRAMES)
        mse = (((recon.clamp(-1, 1) - x) / 2) ** 2).mean()
        scores.append(float(10 * torch.log10(1 / mse)))
    return float(np.mean(scores))


@torch.no_grad()
def colour_response(vae: VAE, seed: int = 0, shift: float = 0.2) -> list[float]:
    """How much of a uniform shift of one colour channel survives encode -> decode, per channel
    (1 = all of it). A VAE that has dropped a channel's frame-wide level shows ~0 there: the
    VAE shipped up to commit 51901e6 gave (0.96, 0.06, 0.81), having lost green; every VAE
    trained from the default initialisation lost one level of three, which start_as_identity
    prevents (demo/NOTES.md §3)."""
    frames, _ = batch([seed])
    x = frames[0]
    base = vae.decode(vae.encode(x), world.NUM_FRAMES)
    out = []
    for c in range(3):
        shifted = x.clone()
        shifted[:, c] += shift
        moved = vae.decode(vae.encode(shifted), world.NUM_FRAMES) - base     # (F, 3, H, W)
        out.append(round(float(moved[:, c].mean()) / shift, 3))
    return out
