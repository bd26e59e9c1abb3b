"""Round-trip error of EDM inversion (invert, then sample with the same Euler sampler).

    python bench/inversion_error.py

Two denoisers: the optimal one for N(0.3, 0.5^2) data (closed form, so the only error is the
inverter's), and the tiny SVD U-Net with random weights behind SVD's v-preconditioning
(conditional branch, no guidance). Prints ||x0' - x0|| / ||x0|| for the reference's Euler
inversion and for the exact (fixed-point) inversion with 10 iterations per step, and the
denoiser calls each used.
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from edit import v_denoise  # noqa: E402
from edm import invert_euler, invert_exact, karras_sigmas, sample_euler  # noqa: E402
from svd.conditioning import Conditions  # noqa: E402
from svd.config import UNetConfig  # noqa: E402
from svd.unet import UNet  # noqa: E402
from tests.helpers import randomize_  # noqa: E402


def counted(denoise):
    calls = [0]

    def wrapped(x, sigma, step):
        calls[0] += 1
        return denoise(x, sigma, step)
    return wrapped, calls


def table(name, denoise, x0, steps_list):
    print(f"\n{name}")
    print(f"{'steps':>6} {'Euler inversion':>16} {'calls':>6} {'exact (10 it.)':>16} {'calls':>6}")
    for steps in steps_list:
        sigmas = karras_sigmas(steps)
        row = []
        for invert, kwargs in ((invert_euler, {}), (invert_exact, {"iterations": 10})):
            d, calls = counted(denoise)
            xT = invert(d, x0, sigmas, **kwargs)
            back = sample_euler(denoise, xT, sigmas)
            row += [((back - x0).norm() / x0.norm()).item(), calls[0]]
        print(f"{steps:>6} {row[0]:>16.3e} {row[1]:>6} {row[2]:>16.3e} {row[3]:>6}")


def main():
    torch.manual_seed(0)
    mu, s = 0.3, 0.5
    x0 = mu + s * torch.randn(20000)
    table("analytic denoiser, N(0.3, 0.5^2) data", lambda x, sigma, step:
          (s ** 2 * x + sigma ** 2 * mu) / (s ** 2 + sigma ** 2), x0, [10, 25, 50, 100, 200])

    unet = randomize_(UNet(UNetConfig.tiny()).eval(), seed=0, std=0.05)
    cond = Conditions(torch.randn(1, 1, 32), torch.randn(1, 4, 16, 16),
                      torch.tensor([[6.0, 127.0, 0.02]]))
    latents = torch.randn(1, 3, 4, 16, 16)
    with torch.no_grad():
        table("tiny SVD U-Net (random weights), 3 frames, 16x16 latents",
              lambda x, sigma, step: v_denoise(unet, x, sigma, cond), latents, [10, 25, 50])


if __name__ == "__main__":
    main()
