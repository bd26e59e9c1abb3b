"""Frames <-> SVD diffusion latents: the VAE posterior mean times the scaling factor, and back.
Shared by inversion, editing, LoRA training and plain image-to-video."""

import torch

from svd.weights import SVD


@torch.no_grad()
def encode_video(svd: SVD, frames: torch.Tensor, chunk_size: int = 0) -> torch.Tensor:
    """frames (F, 3, H, W) in [-1, 1] -> diffusion latents (1, F, 4, h, w) float32: the VAE
    posterior mean times the scaling factor (0.18215 for SVD). The encoder sees each frame on
    its own, so `chunk_size` frames at a time (0 = all) gives the same latents; it bounds the
    peak, which at 576x1024 is about 4.7 float32 tensors of (frames, 128, H, W): 19 GiB for 14
    frames at once (bench/NOTES.md)."""
    dtype = next(svd.vae.parameters()).dtype
    step = chunk_size or len(frames)
    latents = torch.cat([svd.vae.encode(frames[i:i + step].to(dtype)).float()
                         for i in range(0, len(frames), step)])
    return latents[None] * svd.config.vae.scaling_factor


@torch.no_grad()
def decode_latents(svd: SVD, latents: torch.Tensor, chunk_size: int = 0) -> torch.Tensor:
    """latents (B, F, 4, h, w) -> frames (B, F, 3, H, W) in [0, 1], float32."""
    B, F_ = latents.shape[:2]
    dtype = next(svd.vae.parameters()).dtype
    z = (latents / svd.config.vae.scaling_factor).flatten(0, 1).to(dtype)   # (B*F, 4, h, w)
    frames = svd.vae.decode(z, num_frames=F_, chunk_size=chunk_size or None).float()
    return (frames / 2 + 0.5).clamp(0, 1).reshape(B, F_, *frames.shape[1:])
