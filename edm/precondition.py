"""Preconditioning and training-noise distribution.

`v_preconditioning`: SVD's v-prediction in EDM form (sgm `VScalingWithEDMcNoise`, sigma_data 1):
x0_hat = c_skip x + c_out F(c_in x, c_noise) with c_skip = 1/(sigma^2+1),
c_out = -sigma/sqrt(sigma^2+1), c_in = 1/sqrt(sigma^2+1), c_noise = ln(sigma)/4.

`sample_training_sigmas`: the noise levels I2VEdit trains its motion LoRA on, the "interpolated
cosine" log-SNR distribution of simple diffusion (Hoogeboom et al. 2023, arXiv 2301.11093 §3.2,
as implemented in k-diffusion): the cosine schedule shifted for 32- and 64-pixel resolutions,
interpolated by u itself. I2VEdit's constants: image_d 64, noise_d 32 -> 64, sigma_data 0.5,
sigma in [0.002, 700] (shared/docs/i2vedit-reference.md, train.py:570-575).

`edm_loss_weight`: lambda(sigma) = (sigma^2 + 1) / sigma^2, EDM's weight for sigma_data = 1,
which makes the x0 loss equal to an unweighted loss on the network's v-target.
"""

import math

import torch


def v_preconditioning(sigma: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """sigma (any shape) -> (c_skip, c_out, c_in, c_noise), float32, same shape."""
    sigma = torch.as_tensor(sigma, dtype=torch.float32)
    c_skip = 1 / (sigma ** 2 + 1)
    c_out = -sigma / (sigma ** 2 + 1).sqrt()
    c_in = 1 / (sigma ** 2 + 1).sqrt()
    c_noise = 0.25 * sigma.log()
    return c_skip, c_out, c_in, c_noise


def edm_loss_weight(sigma: torch.Tensor) -> torch.Tensor:
    return (sigma ** 2 + 1) / sigma ** 2


def _cosine_logsnr(t: torch.Tensor, logsnr_min: float, logsnr_max: float) -> torch.Tensor:
    """Cosine schedule in log-SNR, t = 0 -> logsnr_max, t = 1 -> logsnr_min."""
    t_min = math.atan(math.exp(-0.5 * logsnr_max))
    t_max = math.atan(math.exp(-0.5 * logsnr_min))
    return -2 * torch.log(torch.tan(t_min + t * (t_max - t_min)))


def _shifted_cosine_logsnr(t, image_d, noise_d, logsnr_min, logsnr_max):
    shift = 2 * math.log(noise_d / image_d)
    return _cosine_logsnr(t, logsnr_min - shift, logsnr_max - shift) + shift


def training_sigma(u: torch.Tensor, image_d: float = 64, noise_d_low: float = 32,
                   noise_d_high: float = 64, sigma_data: float = 0.5, sigma_min: float = 0.002,
                   sigma_max: float = 700.0) -> torch.Tensor:
    """u in [0, 1] -> sigma; u = 0 gives sigma_max, u = 1 gives sigma_min. Float64 math."""
    u = u.double()
    logsnr_min = -2 * math.log(sigma_min / sigma_data)
    logsnr_max = -2 * math.log(sigma_max / sigma_data)
    low = _shifted_cosine_logsnr(u, image_d, noise_d_low, logsnr_min, logsnr_max)
    high = _shifted_cosine_logsnr(u, image_d, noise_d_high, logsnr_min, logsnr_max)
    logsnr = torch.lerp(low, high, u)
    return (sigma_data * torch.exp(-logsnr / 2)).float()


def sample_training_sigmas(n: int, generator: torch.Generator | None = None,
                           **kwargs) -> torch.Tensor:
    """n training noise levels from stratified u: one uniform draw in each of n equal bins of
    [0, 1] (with n = 1, as in I2VEdit's batch of one, a plain uniform)."""
    u = (torch.arange(n, dtype=torch.float64) + torch.rand(n, generator=generator,
                                                           dtype=torch.float64)) / n
    return training_sigma(u, **kwargs)
