"""Deterministic Euler sampler (Karras et al. 2022, Algorithm 1 without 2nd-order correction;
the sampler of SVD's reference pipeline, diffusers `EulerDiscreteScheduler` with s_churn 0).

denoise(x, sigma, step) -> x0_hat is any EDM denoiser; step s is the interval
sigmas[s] -> sigmas[s+1] and is passed to the denoiser so that code recording or injecting
attention knows where it is without counters. The update runs in float32.
"""

import torch
from tqdm import tqdm


def euler_step(x: torch.Tensor, x0_hat: torch.Tensor, sigma, sigma_next) -> torch.Tensor:
    """One Euler step of the probability-flow ODE dx/dsigma = (x - x0_hat) / sigma."""
    d = (x - x0_hat) / sigma
    return x + (sigma_next - sigma) * d


@torch.no_grad()
def sample_euler(denoise, x: torch.Tensor, sigmas: torch.Tensor, progress: bool = False
                 ) -> torch.Tensor:
    """x at sigmas[0] -> x at sigmas[-1] (0: the clean sample). Float32 throughout."""
    x = x.float()
    for s in tqdm(range(len(sigmas) - 1), disable=not progress, desc="sampling"):
        x = euler_step(x, denoise(x, sigmas[s], s).float(), sigmas[s], sigmas[s + 1])
    return x
