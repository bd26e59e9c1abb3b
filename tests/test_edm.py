"""EDM schedule, preconditioning, Euler sampler and inverters."""

import math

import pytest
import torch

from edm import (edm_loss_weight, euler_step, invert_euler, invert_exact, inversion_sigmas,
                 karras_sigmas, sample_euler, sample_training_sigmas, v_preconditioning)
from edm.precondition import training_sigma

MU, S = 0.3, 0.5   # data N(MU, S^2) per element


def gaussian_denoiser(x, sigma, step):
    """The optimal denoiser for N(MU, S^2) data: E[x0 | x0 + sigma n = x]."""
    return (S ** 2 * x + sigma ** 2 * MU) / (S ** 2 + sigma ** 2)


def gaussian_data(n=20000, seed=0):
    return MU + S * torch.randn(n, generator=torch.Generator().manual_seed(seed))


def round_trip_error(invert, steps, **kwargs) -> float:
    x0 = gaussian_data()
    sigmas = karras_sigmas(steps)
    back = sample_euler(gaussian_denoiser, invert(gaussian_denoiser, x0, sigmas, **kwargs), sigmas)
    return ((back - x0).norm() / x0.norm()).item()


def svd_scheduler(steps):
    from diffusers import EulerDiscreteScheduler
    scheduler = EulerDiscreteScheduler(  # the release's scheduler_config.json (svd.md §5.2)
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type="v_prediction", interpolation_type="linear", use_karras_sigmas=True,
        sigma_min=0.002, sigma_max=700.0, timestep_spacing="leading", timestep_type="continuous",
        steps_offset=1)
    scheduler.set_timesteps(steps)
    return scheduler


def test_karras_schedule_matches_spec_and_diffusers():
    sigmas = karras_sigmas(25)
    assert sigmas.shape == (26,) and sigmas[-1] == 0
    spec = {0: "700", 1: "545.729", 5: "182.547", 12: "15.590", 20: "0.157", 23: "0.00788",
            24: "0.002"}
    for i, printed in spec.items():        # svd.md §5.2: equal to the digits printed there
        decimals = len(printed.split(".")[1]) if "." in printed else 0
        assert round(sigmas[i].item(), decimals) == float(printed), (i, sigmas[i])
    scheduler = svd_scheduler(25)
    torch.testing.assert_close(sigmas, scheduler.sigmas.float(), rtol=1e-6, atol=0)
    c_noise = v_preconditioning(sigmas[:-1])[3]
    torch.testing.assert_close(c_noise, scheduler.timesteps.float(), rtol=1e-6, atol=1e-7)
    assert math.isclose(c_noise[0].item(), 1.63777, rel_tol=1e-5)
    assert math.isclose(c_noise[-1].item(), -1.55365, rel_tol=1e-5)
    assert math.isclose(scheduler.init_noise_sigma, math.sqrt(700.0 ** 2 + 1), rel_tol=1e-6)


def test_preconditioning_values():
    c_skip, c_out, c_in, c_noise = v_preconditioning(torch.tensor(700.0))
    assert math.isclose(c_in.item(), 1.4286e-3, rel_tol=1e-4)
    assert math.isclose(c_skip.item(), 2.0408e-6, rel_tol=1e-4)
    assert math.isclose(c_out.item(), -0.999999, rel_tol=1e-6)
    assert math.isclose(c_noise.item(), 1.6378, rel_tol=1e-4)
    assert math.isclose(edm_loss_weight(torch.tensor(0.5)).item(), 5.0)


def test_euler_step_matches_diffusers_step():
    scheduler = svd_scheduler(25)
    sigmas = karras_sigmas(25)
    torch.manual_seed(0)
    x = torch.randn(1, 3, 4, 8, 8) * 10
    for s in (0, 7, 24):
        v = torch.randn_like(x)            # a v-prediction network output
        c_skip, c_out, _, _ = v_preconditioning(sigmas[s])
        ours = euler_step(x, c_skip * x + c_out * v, sigmas[s], sigmas[s + 1])
        scheduler._step_index = s
        theirs = scheduler.step(v, scheduler.timesteps[s], x).prev_sample
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_inversion_sigmas_continue_geometrically():
    sigmas = karras_sigmas(25)
    inv = inversion_sigmas(sigmas)
    assert torch.equal(inv[:-1], sigmas[:-1])
    assert math.isclose(inv[-1].item(), (sigmas[-2] ** 2 / sigmas[-3]).item(), rel_tol=1e-6)
    assert sigmas[-1] == 0                          # the sampling schedule is untouched


def test_inverter_passes_sampling_step_indices():
    sigmas = karras_sigmas(5)
    seen_sample, seen_invert = [], []
    sample_euler(lambda x, sig, s: seen_sample.append((s, sig.item())) or x, torch.zeros(2), sigmas)
    invert_euler(lambda x, sig, s: seen_invert.append((s, sig.item())) or x, torch.zeros(2), sigmas)
    assert [s for s, _ in seen_sample] == [0, 1, 2, 3, 4]
    assert [s for s, _ in seen_invert] == [4, 3, 2, 1, 0]
    # Inversion step s evaluates at the lower end of interval s, sigma_{s+1} (sigma_N continued).
    inv = inversion_sigmas(sigmas)
    assert all(math.isclose(sig, inv[s + 1].item()) for s, sig in seen_invert)


def test_euler_inversion_is_first_order():
    errors = {n: round_trip_error(invert_euler, n) for n in (10, 25, 50, 100, 200)}
    print("Euler inversion round-trip error:", {n: f"{e:.2%}" for n, e in errors.items()})
    assert 0.15 < errors[25] < 0.35 and 0.08 < errors[50] < 0.18
    for n in (25, 50, 100):                # first order: the error halves when steps double
        assert 1.7 < errors[n] / errors[2 * n] < 2.3, (n, errors)
    assert 2.0 < errors[10] / errors[25] < 3.0    # ... and shrinks 2.5x for 2.5x the steps


def test_exact_inversion_round_trip():
    error = round_trip_error(invert_exact, 25, iterations=10)
    print(f"exact inversion round-trip error at 25 steps: {error:.2e}")
    assert error <= 1e-4


def test_training_sigmas():
    g = torch.Generator().manual_seed(0)
    sigmas = sample_training_sigmas(20000, generator=g)
    assert sigmas.min() >= 0.002 * 0.999 and sigmas.max() <= 700 * 1.001
    again = sample_training_sigmas(20000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sigmas, again)
    # Stratified: the i-th of n draws comes from the i-th bin of u, and sigma falls with u.
    assert torch.all(sigmas[:-1] >= sigmas[1:])
    assert math.isclose(training_sigma(torch.tensor([0.0])).item(), 700.0, rel_tol=1e-4)
    assert math.isclose(training_sigma(torch.tensor([1.0])).item(), 0.002, rel_tol=1e-4)
    # Quantiles quoted in shared/docs/i2vedit-reference.md (5 %, 25 %, 50 %, 75 %, 95 %).
    q = sigmas.quantile(torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95]))
    for got, want in zip(q.tolist(), [0.043, 0.25, 0.71, 2.03, 12.1]):
        assert math.isclose(got, want, rel_tol=0.03), (got, want)
