"""Preconditioning, training-noise distribution and loss weight.

`v_preconditioning`: SVD's v-prediction in EDM form (sgm `VScalingWithEDMcNoise`, sigma_data 1;
docs/svd.md §5.1): x0_hat = c_skip x + c_out F(c_in x, c_noise) with
c_skip = 1/(sigma^2+1), c_out = -sigma/sqrt(sigma^2+1), c_in = 1/sqrt(sigma^2+1),
c_noise = ln(sigma)/4. Checked against diffusers' `EulerDiscreteScheduler` (v_prediction,
continuous timesteps) in tests/test_edm.py.

`sample_training_sigmas`: the noise levels I2VEdit trains its motion LoRA on (docs/method.md
§3.4), the "interpolated cosine" log-SNR distribution of simple diffusion (Hoogeboom et al. 2023,
arXiv 2301.11093 §3.2, as implemented in k-diffusion's `rand_cosine_interpolated`): the cosine
log-SNR schedule shifted for 32- and 64-pixel noise resolutions, interpolated by u itself, u
stratified uniform. I2VEdit's constants (docs/method.md §3.4; reference i2vedit/train.py:570-575):
image_d 64, noise_d 32 -> 64, sigma_data 0.5, sigma_min 0.002, sigma_max 700. sigma_min and
sigma_max enter only as the ends of the log-SNR range, so sigma lies in [0.002, 700] by
construction (u = 1 and u = 0), with no clamp.

`edm_loss_weight`: lambda(sigma) = (sigma^2 + 1) / sigma^2, EDM's weight for sigma_data = 1
(docs/method.md §3.5), which is 1 / c_out^2: the weighted x0 loss equals the unweighted
loss on the network's v-target.
"""

import math

import torch


def v_preconditioning(sigma: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """sigma (any shape) -> (c_skip, c_out, c_in, c_noise), float32, same shape."""
    sigma = torch.as_tensor(sigma, dtype=torch.float32)
    c_skip = 1 / (sigma ** 2 + 1)
    c_out = -sigma / (sigma ** 2 + 1).sqrt()     # minus: v points from data towards noise
    c_in = 1 / (sigma ** 2 + 1).sqrt()           # unit-variance network input for unit data
    c_noise = 0.25 * sigma.log()                 # the U-Net's continuous "timestep"
    return c_skip, c_out, c_in, c_noise


def edm_loss_weight(sigma: torch.Tensor) -> torch.Tensor:
    """lambda(sigma) = (sigma^2 + 1) / sigma^2, the per-sample weight of the x0 loss."""
    return (sigma ** 2 + 1) / sigma ** 2


def _cosine_logsnr(t: torch.Tensor, logsnr_min: float, logsnr_max: float) -> torch.Tensor:
    """Cosine schedule in log-SNR, t = 0 -> logsnr_max, t = 1 -> logsnr_min.

    The plain cosine schedule has logSNR(t) = -2 ln tan(pi t / 2); t is rescaled onto the
    interval of angles atan(exp(-logsnr/2)) that spans [logsnr_min, logsnr_max]."""
    t_min = math.atan(math.exp(-0.5 * logsnr_max))
    t_max = math.atan(math.exp(-0.5 * logsnr_min))
    return -2 * torch.log(torch.tan(t_min + t * (t_max - t_min)))


def _shifted_cosine_logsnr(t, image_d, noise_d, logsnr_min, logsnr_max):
    """Simple diffusion's resolution shift: a schedule tuned at noise_d pixels, moved to image_d
    pixels by adding 2 ln(noise_d / image_d) to the log-SNR (ends kept at the given range)."""
    shift = 2 * math.log(noise_d / image_d)
    return _cosine_logsnr(t, logsnr_min - shift, logsnr_max - shift) + shift


def training_sigma(u: torch.Tensor, image_d: float = 64, noise_d_low: float = 32,
                   noise_d_high: float = 64, sigma_data: float = 0.5, sigma_min: float = 0.002,
                   sigma_max: float = 700.0) -> torch.Tensor:
    """u in [0, 1] -> sigma (float32); u = 0 gives sigma_max, u = 1 gives sigma_min.

        lambda_min = -2 ln(sigma_min / sigma_data),  lambda_max = -2 ln(sigma_max / sigma_data)
        lambda(u)  = lerp(shifted(u; noise_d_low), shifted(u; noise_d_high), u)
        sigma      = sigma_data exp(-lambda(u) / 2)

    (The names follow k-diffusion: logsnr_min belongs to sigma_min, i.e. it is the *larger*
    log-SNR.) Math in float64 so that the ends are exact after the cast.
    """
    u = torch.as_tensor(u).double()
    logsnr_min = -2 * math.log(sigma_min / sigma_data)
    logsnr_max = -2 * math.log(sigma_max / sigma_data)
    low = _shifted_cosine_logsnr(u, image_d, noise_d_low, logsnr_min, logsnr_max)
    high = _shifted_cosine_logsnr(u, image_d, noise_d_high, logsnr_min, logsnr_max)
    # Interpolating by u itself: the 32-pixel shift (more noise) dominates at high noise levels,
    # the unshifted 64-pixel schedule at low ones.
    logsnr = torch.lerp(low, high, u)
    return (sigma_data * torch.exp(-logsnr / 2)).float()


def stratified_uniform(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """n draws in [0, 1), the i-th uniform in [i/n, (i+1)/n) (float64, CPU).

    Stratification lowers the variance of a batch's loss; with I2VEdit's batch of one it is a
    plain uniform draw."""
    return (torch.arange(n, dtype=torch.float64)
            + torch.rand(n, generator=generator, dtype=torch.float64)) / n


def sample_training_sigmas(n: int, generator: torch.Generator | None = None,
                           **kwargs) -> torch.Tensor:
    """n training noise levels (float32, CPU), in stratum order: sigma decreases along the
    result. kwargs override `training_sigma`'s constants (I2VEdit's by default)."""
    return training_sigma(stratified_uniform(n, generator), **kwargs)
