"""Inversion: from a clean latent x0 back to the noise that the Euler sampler maps onto it.

`invert_euler` is I2VEdit's (and its reference code's) inversion: walk the sampling intervals
backwards, s = N-1 ... 0, evaluating the denoiser at the *lower* end sigma_{s+1} and stepping up
to sigma_s. The last interval's lower end is sigma_N = 0, replaced by a geometric continuation
(`inversion_sigmas`). It is explicit Euler on the reversed ODE, so the round trip
(invert, then sample) has first-order error: halving as the steps double.

`invert_exact` instead solves each sampler step backwards: it finds x_s with
euler_step(x_s, D(x_s, sigma_s), sigma_s, sigma_{s+1}) = x_{s+1} by fixed-point iteration
(a few extra denoiser calls per step), so sampling from its output returns x0 up to the
iteration tolerance.

Both pass step=s to the denoiser, the same index the sampler uses for that interval, so records
made during inversion line up with sampling step s with no index arithmetic. For the Euler
inversion the record of step s is computed at sigma_{s+1} (the lower end). Both return the
latent at sigmas[0], *not* divided by sqrt(sigma_0^2 + 1): a sampler that starts from
sqrt(sigma_0^2 + 1) * noise (SVD's reference) must be given inverted / sqrt(sigma_0^2 + 1)
as its noise.
"""

import torch
from tqdm import tqdm

from edm.sample import euler_step
from edm.schedule import inversion_sigmas


@torch.no_grad()
def invert_euler(denoise, x0: torch.Tensor, sigmas: torch.Tensor, progress: bool = False
                 ) -> torch.Tensor:
    """x0 (clean) -> x at sigmas[0], the reference's Euler inversion. Float32."""
    sig = inversion_sigmas(sigmas)
    x = x0.float()
    for s in tqdm(reversed(range(len(sigmas) - 1)), total=len(sigmas) - 1, disable=not progress,
                  desc="inverting"):
        lower, upper = sig[s + 1], sig[s]
        x0_hat = denoise(x, lower, s).float()
        x = x + (upper - lower) * (x - x0_hat) / lower
    return x


@torch.no_grad()
def invert_exact(denoise, x0: torch.Tensor, sigmas: torch.Tensor, iterations: int = 10,
                 tol: float = 1e-7, progress: bool = False) -> torch.Tensor:
    """x0 (clean) -> x at sigmas[0] such that Euler sampling over `sigmas` returns x0.

    Each sampler step s, x_{s+1} = E_s(x_s) = x_s + (sigma_{s+1} - sigma_s) (x_s - D(x_s)) / sigma_s,
    is solved for x_s by the fixed-point iteration x_s <- x_s + (x_{s+1} - E_s(x_s)), started
    from the Euler-inversion guess (one denoiser call per iteration). Its contraction factor is
    r (1 - dD/dx) with r = 1 - sigma_{s+1}/sigma_s <= 1: small at high noise (r small) and at low
    noise (D close to the identity), which is why this residual form is used rather than
    isolating x_s, whose factor r / (1 - r) exceeds 1 on the last Karras steps. The final step
    (sigma_N = 0, x_N = D(x_{N-1})) is the same iteration with r = 1. Iterations stop after
    `iterations` or once the residual is below `tol` relative to x_{s+1}.
    """
    sig = inversion_sigmas(sigmas)
    x = x0.float()
    for s in tqdm(reversed(range(len(sigmas) - 1)), total=len(sigmas) - 1, disable=not progress,
                  desc="inverting"):
        sigma, sigma_next = sigmas[s], sigmas[s + 1]
        target = x
        guess = x + (sig[s] - sig[s + 1]) * (x - denoise(x, sig[s + 1], s).float()) / sig[s + 1]
        for _ in range(iterations):
            residual = target - euler_step(guess, denoise(guess, sigma, s).float(), sigma, sigma_next)
            guess = guess + residual
            if residual.norm() <= tol * target.norm():
                break
        x = guess
    return x
