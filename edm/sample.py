"""Deterministic Euler sampler (Karras et al. 2022, arXiv 2206.00364, Algorithm 1 without the
2nd-order correction; the sampler of SVD's reference pipeline, docs/svd.md §5.2: diffusers
`EulerDiscreteScheduler` with s_churn 0, which it matches step for step in tests/test_edm.py).

denoise(x, sigma, step) -> x0_hat is any EDM denoiser; step s is the interval
sigmas[s] -> sigmas[s+1] and is passed to the denoiser so that code recording or injecting
attention knows where it is without counters. The update runs in float32 whatever precision the
denoiser runs in, as diffusers upcasts inside `step`: at sigma = 700 a bf16 latent would lose
the small per-step change.
"""

import torch
from tqdm import tqdm


def euler_step(x: torch.Tensor, x0_hat: torch.Tensor, sigma, sigma_next) -> torch.Tensor:
    """One Euler step of the probability-flow ODE dx/dsigma = d = (x - x0_hat) / sigma, from
    sigma to sigma_next (either direction). sigma_next = 0 gives x0_hat (up to rounding)."""
    d = (x - x0_hat) / sigma
    return x + (sigma_next - sigma) * d


@torch.no_grad()
def sample_euler(denoise, x: torch.Tensor, sigmas: torch.Tensor, progress: bool = False
                 ) -> torch.Tensor:
    """x at sigmas[0] -> x at sigmas[-1] (0: the clean sample), float32.

    x is the latent at sigma_0 itself, i.e. noise already multiplied by sigma_0 (SVD: by
    sqrt(sigma_0^2 + 1), its "init_noise_sigma")."""
    x = x.float()
    for s in tqdm(range(len(sigmas) - 1), disable=not progress, desc="sampling"):
        x0_hat = denoise(x, sigmas[s], s).float()
        x = euler_step(x, x0_hat, sigmas[s], sigmas[s + 1])
    return x
