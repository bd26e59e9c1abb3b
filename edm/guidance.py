"""Classifier-free guidance of an EDM denoiser, per frame (SVD's pipeline and I2VEdit's edit).

x0_hat = x0_uncond + w_f (x0_cond - x0_uncond), with w_f rising linearly from the first frame's
scale to the last's. Guiding x0_hat is the same as guiding the network's output, since x0_hat
is affine in it with the same c_skip x on both branches.
"""

import torch


def frame_guidance(num_frames: int, min_scale: float, max_scale: float) -> torch.Tensor:
    """Per-frame guidance scale (1, F, 1, 1, 1), linear from the first frame to the last."""
    return torch.linspace(min_scale, max_scale, num_frames).reshape(1, num_frames, 1, 1, 1)


def guided(denoise_uncond, denoise_cond, scale: torch.Tensor):
    """denoise(x, sigma, step) of classifier-free guidance from the two branches' denoisers
    (each (x, sigma, step) -> x0_hat), unconditional first; `scale` broadcasts against x."""

    def denoise(x: torch.Tensor, sigma: torch.Tensor, step: int) -> torch.Tensor:
        x0_uncond = denoise_uncond(x, sigma, step)
        x0_cond = denoise_cond(x, sigma, step)
        return x0_uncond + scale.to(x.device) * (x0_cond - x0_uncond)

    return denoise
