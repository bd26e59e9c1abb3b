"""Noise-level schedules.

`karras_sigmas`: Karras et al. 2022 (arXiv 2206.00364) eq. 5, the schedule SVD samples with
(sigma_min 0.002, sigma_max 700, rho 7, then a final 0; docs/svd.md §5.2). Computed in
float64 and cast to float32 like diffusers' `EulerDiscreteScheduler(use_karras_sigmas=True)`,
which it matches to 1e-6 (tests/test_edm.py). Step s is the interval sigmas[s] -> sigmas[s+1], in
sampling order.

`inversion_sigmas`: I2VEdit's geometric continuation of the last interval, for inversion only
(docs/method.md §4.1; reference `utils/euler_utils.py:98-103`).
"""

import torch


def karras_sigmas(n: int, sigma_min: float = 0.002, sigma_max: float = 700.0,
                  rho: float = 7.0) -> torch.Tensor:
    """n noise levels from sigma_max down to sigma_min, then 0: (n + 1,) float32."""
    # Float64 first: diffusers builds the ramp in float64 NumPy, and rounding the ramp in float32
    # would already move sigma_max**(1/rho) by a few ulps.
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    max_inv, min_inv = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    sigmas = (max_inv + ramp * (min_inv - max_inv)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)]).float()


def inversion_sigmas(sigmas: torch.Tensor) -> torch.Tensor:
    """The sampling schedule with its final 0 replaced by sigma_{N-1}^2 / sigma_{N-2}.

    Euler inversion evaluates the denoiser at the lower end of each interval and divides by that
    sigma, so sigma_N = 0 cannot be used. I2VEdit continues the schedule geometrically (the
    ratio of the last two sigmas once more: 0.002^2 / 0.00788 = 5.07e-4 for 25 steps) and treats
    the clean latent as a sample at that sigma. For inversion only; sampling keeps the 0.
    """
    if len(sigmas) < 3 or sigmas[-1] != 0:
        raise ValueError("expected a sampling schedule of at least 2 steps ending in 0")
    out = sigmas.clone()
    out[-1] = sigmas[-2] ** 2 / sigmas[-3]
    return out
