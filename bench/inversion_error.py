"""Round-trip error of EDM inversion (invert, then sample back with the same Euler sampler).

    python bench/inversion_error.py          # add --no-unet to skip the U-Net table

Two denoisers: the optimal one for N(0.3, 0.25^2) data per element (closed form, so the only
error is the inverter's; the same set-up as tests/test_edm.py), and the tiny SVD U-Net with
random weights behind SVD's v-preconditioning (conditional branch, no guidance). Prints
||x0' - x0|| / ||x0|| for the reference's Euler inversion (`invert_euler`) and for the exact
fixed-point inversion (`invert_exact`) with at most 10 and 50 iterations per step, and the
denoiser calls each used.
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from edm import invert_euler, invert_exact, karras_sigmas, sample_euler  # noqa: E402

MU, S = 0.3, 0.25
METHODS = (("Euler inversion", invert_euler, {}),
           ("exact, 10 it.", invert_exact, {"iterations": 10}),
           ("exact, 50 it.", invert_exact, {"iterations": 50}))


def counted(denoise):
    calls = [0]

    def wrapped(x, sigma, step):
        calls[0] += 1
        return denoise(x, sigma, step)
    return wrapped, calls


def table(name, denoise, x0, steps_list):
    print(f"\n{name}\n{'steps':>6}" + "".join(f" {m:>16} {'calls':>6}" for m, _, _ in METHODS))
    for steps in steps_list:
        sigmas = karras_sigmas(steps)
        row = f"{steps:>6}"
        for _, invert, kwargs in METHODS:
            d, calls = counted(denoise)
            back = sample_euler(denoise, invert(d, x0, sigmas, **kwargs), sigmas)
            row += f" {((back - x0).norm() / x0.norm()).item():>16.3e} {calls[0]:>6}"
        print(row)


def gaussian_denoiser(x, sigma, step):
    """E[x0 | x0 + sigma n = x] for x0 ~ N(MU, S^2)."""
    return (S ** 2 * x + sigma ** 2 * MU) / (S ** 2 + sigma ** 2)


def unet_table():
    from svd.sampling import v_denoise
    from svd.conditioning import Conditions
    from svd.config import UNetConfig
    from svd.unet import UNet
    from bench.oracles import randomize_

    unet = randomize_(UNet(UNetConfig.tiny()).eval(), seed=0, std=0.05)
    cond = Conditions(torch.randn(1, 1, 32), torch.randn(1, 4, 16, 16),
                      torch.tensor([[6.0, 127.0, 0.02]]))
    latents = torch.randn(1, 3, 4, 16, 16)
    with torch.no_grad():
        table("tiny SVD U-Net (random weights), 3 frames, 16x16 latents",
              lambda x, sigma, step: v_denoise(unet, x, sigma, cond), latents, [10, 25, 50])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--no-unet", action="store_true", help="analytic denoiser only")
    args = parser.parse_args()
    torch.manual_seed(0)
    x0 = MU + S * torch.randn(20000)
    table(f"analytic denoiser, N({MU}, {S}^2) data", gaussian_denoiser, x0, [10, 25, 50, 100, 200])
    if not args.no_unet:
        unet_table()


if __name__ == "__main__":
    main()
