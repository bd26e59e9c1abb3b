"""Inversion: from a clean latent x0 back to the latent at sigma_0 that Euler sampling maps onto
it (I2VEdit, docs/method.md §4; reference `utils/euler_utils.py:44-118`, described in
docs/method.md §4.1).

`invert_euler` is I2VEdit's inversion: walk the sampling intervals backwards, s = N-1 ... 0,
evaluate the denoiser at the *lower* end sigma_{s+1} and take an Euler step up to sigma_s. The
last interval's lower end, sigma_N = 0, is replaced by a geometric continuation
(`inversion_sigmas`), so x0 is treated as a sample at sigma_{N-1}^2 / sigma_{N-2}. It is explicit
Euler on the reversed ODE, and the sampler is explicit Euler forwards, so the two do not cancel:
the round trip (invert, then sample) has a first-order error that halves as the steps double
(about 21 % at 25 steps for N(0.3, 0.25^2) data; bench/inversion_error.py).

`invert_exact` instead solves each sampler step backwards: it finds x_s with
euler_step(x_s, D(x_s, sigma_s), sigma_s, sigma_{s+1}) = x_{s+1} by fixed-point iteration (a few
extra denoiser calls per step), so Euler sampling from its output returns x0 up to the iteration
tolerance. Not in the paper; offered because the reference's round trip is visibly lossy.

Both pass step=s to the denoiser, the index the sampler uses for the same interval, so records
made during inversion line up with sampling step s with no `N - i - 1` arithmetic (the step has one
source, the loop, instead of counters that must be kept in step).
For `invert_euler` the record of step s is computed at sigma_{s+1} (the lower end; sigma_N
continued), not at the sigma the sampler evaluates step s at: that one-level offset is the
reference's. Both return the latent at sigmas[0] itself, *not* divided by sqrt(sigma_0^2 + 1):
a pipeline that multiplies its starting noise by sqrt(sigma_0^2 + 1) (SVD's "init_noise_sigma",
I2VEdit's stored inverted latent) must divide by that factor; `sample_euler` takes it as is.
"""

import torch
from tqdm import tqdm

from edm.sample import euler_step
from edm.schedule import inversion_sigmas


@torch.no_grad()
def invert_euler(denoise, x0: torch.Tensor, sigmas: torch.Tensor, progress: bool = False
                 ) -> torch.Tensor:
    """x0 (clean) -> x at sigmas[0], the reference's Euler inversion (float32).

    sigmas is the *sampling* schedule (ending in 0); one denoiser call per step."""
    sigmas = inversion_sigmas(sigmas)
    x = x0.float()
    for s in tqdm(reversed(range(len(sigmas) - 1)), total=len(sigmas) - 1, disable=not progress,
                  desc="inverting"):
        # The sampler's Euler step, taken from the lower end upwards: d is evaluated at
        # sigma_{s+1} because x is only known there.
        x0_hat = denoise(x, sigmas[s + 1], s).float()
        x = euler_step(x, x0_hat, sigmas[s + 1], sigmas[s])
    return x


@torch.no_grad()
def invert_exact(denoise, x0: torch.Tensor, sigmas: torch.Tensor, iterations: int = 10,
                 tol: float = 1e-6, progress: bool = False) -> torch.Tensor:
    """x0 (clean) -> x at sigmas[0] such that `sample_euler` over `sigmas` returns x0 (float32).

    Sampler step s is x_{s+1} = x_s + (sigma_{s+1} - sigma_s) d(x_s, sigma_s), with
    d = (x - D(x, sigma)) / sigma. Given x_{s+1}, x_s is its fixed point
        x_s <- x_{s+1} - (sigma_{s+1} - sigma_s) d(x_s, sigma_s),
    started from one Euler-inversion step (error O(h^2), so few iterations are needed).
    The iteration's Jacobian is r (I - dD/dx) with r = 1 - sigma_{s+1}/sigma_s in (0, 1]; it
    contracts when D is a smoothing map (eigenvalues of dD/dx in [0, 1], true of the optimal
    denoiser of a Gaussian), is fastest at high noise (r small) and at low noise (D close to
    the identity) and slowest at sigma near the data scale: at worst a factor 0.39 per
    iteration for the Gaussian of unit variance at 25 steps, 0.73 at 10 steps, 0.21 at 50.
    Isolating x_s the other way, x_s = (x_{s+1} - r D(x_s)) / (1 - r), would have factor
    r / (1 - r), above 1 on the last Karras steps; hence this form.

    The last step has sigma_N = 0, where the sampler returns x_N = D(x_{N-1}, sigma_{N-1}); the
    same update then reads x_{N-1} <- x_N + (x_{N-1} - D(x_{N-1}, sigma_{N-1})) (r = 1), which
    converges because D is nearly the identity at sigma_{N-1} = 0.002. Only the initial guess
    of that step needs the continued sigma of `inversion_sigmas`.

    Each step stops after `iterations` updates, or earlier once an update moves x by less than
    `tol` relative to |x| (float32 rounding floors this near 1e-7). The denoiser is called
    1 + (number of updates) times with the same step s: first at sigma_{s+1} (the guess), then
    at sigma_s, so a recorder that keeps the last call of step s gets sigma_s, the converged
    x_s, and thus what the sampler will see.
    """
    sigmas_inv = inversion_sigmas(sigmas)
    x = x0.float()
    for s in tqdm(reversed(range(len(sigmas) - 1)), total=len(sigmas) - 1, disable=not progress,
                  desc="inverting"):
        sigma, sigma_next = sigmas[s], sigmas[s + 1]
        x_next = x
        x = euler_step(x_next, denoise(x_next, sigmas_inv[s + 1], s).float(), sigmas_inv[s + 1],
                       sigmas_inv[s])
        for _ in range(iterations):
            d = (x - denoise(x, sigma, s).float()) / sigma
            x_new = x_next - (sigma_next - sigma) * d
            # |x_new - x| is also the residual |x_{s+1} - euler_step(x)| of the old x.
            converged = (x_new - x).norm() <= tol * x_new.norm()
            x = x_new
            if converged:
                break
    return x
