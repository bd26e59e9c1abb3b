"""EDM schedule, preconditioning, Euler sampler, inverters and training-noise distribution.

Oracles: the numbers printed in docs/svd.md §5.2 and docs/method.md §3.4, diffusers'
`EulerDiscreteScheduler` configured as SVD's scheduler_config.json, and the closed-form optimal
denoiser of Gaussian data (so the only error in a round trip is the inverter's).
"""

import functools
import math

import pytest
import torch

from edm import (edm_loss_weight, euler_step, invert_euler, invert_exact, inversion_sigmas,
                 karras_sigmas, sample_euler, sample_training_sigmas, stratified_uniform,
                 training_sigma, v_preconditioning)

MU, S = 0.3, 0.25   # data N(MU, S^2) per element (the "s = 0.5^2": standard deviation 0.25)
STEPS = (10, 25, 50, 100, 200)


def gaussian_denoiser(x, sigma, step):
    """The optimal denoiser for N(MU, S^2) data: E[x0 | x0 + sigma n = x]."""
    return (S ** 2 * x + sigma ** 2 * MU) / (S ** 2 + sigma ** 2)


def gaussian_data(n=20000, seed=0):
    return MU + S * torch.randn(n, generator=torch.Generator().manual_seed(seed))


def round_trip_error(invert, steps, **kwargs) -> float:
    """||x0' - x0|| / ||x0|| after inverting x0 and sampling back over the same schedule."""
    x0 = gaussian_data()
    sigmas = karras_sigmas(steps)
    back = sample_euler(gaussian_denoiser, invert(gaussian_denoiser, x0, sigmas, **kwargs), sigmas)
    return ((back - x0).norm() / x0.norm()).item()


@functools.cache
def round_trip_table() -> dict[str, dict[int, float]]:
    table = {"euler": {n: round_trip_error(invert_euler, n) for n in STEPS},
             "exact": {n: round_trip_error(invert_exact, n, iterations=10) for n in STEPS}}
    print(f"\nround trip ||x0' - x0|| / ||x0||, N({MU}, {S}^2) data, analytic denoiser")
    print(f"{'steps':>6} {'Euler inversion':>16} {'exact (10 it.)':>15}")
    for n in STEPS:
        print(f"{n:>6} {table['euler'][n]:>16.4%} {table['exact'][n]:>15.2e}")
    return table


def svd_scheduler(steps):
    from diffusers import EulerDiscreteScheduler
    scheduler = EulerDiscreteScheduler(  # the release's scheduler_config.json (docs/svd.md §5.2)
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type="v_prediction", interpolation_type="linear", use_karras_sigmas=True,
        sigma_min=0.002, sigma_max=700.0, timestep_spacing="leading", timestep_type="continuous",
        steps_offset=1)
    scheduler.set_timesteps(steps)
    return scheduler


# --- schedule and preconditioning -----------------------------------------------------------------

def test_karras_schedule_matches_spec_and_diffusers():
    sigmas = karras_sigmas(25)
    assert sigmas.shape == (26,) and sigmas.dtype == torch.float32 and sigmas[-1] == 0
    spec = {0: "700", 1: "545.729", 5: "182.547", 12: "15.590", 20: "0.157", 23: "0.00788",
            24: "0.002"}
    for i, printed in spec.items():        # docs/svd.md §5.2: equal to the digits printed there
        decimals = len(printed.split(".")[1]) if "." in printed else 0
        assert round(sigmas[i].item(), decimals) == float(printed), (i, sigmas[i])
    scheduler = svd_scheduler(25)
    torch.testing.assert_close(sigmas, scheduler.sigmas.float(), rtol=1e-6, atol=0)
    c_noise = v_preconditioning(sigmas[:-1])[3]           # the U-Net's "timesteps"
    torch.testing.assert_close(c_noise, scheduler.timesteps.float(), rtol=1e-6, atol=1e-7)
    assert math.isclose(c_noise[0].item(), 1.63777, rel_tol=1e-5)
    assert math.isclose(c_noise[1].item(), 1.57553, rel_tol=1e-5)
    assert math.isclose(c_noise[-2].item(), -1.21078, rel_tol=1e-5)
    assert math.isclose(c_noise[-1].item(), -1.55365, rel_tol=1e-5)
    assert math.isclose(scheduler.init_noise_sigma, math.sqrt(700.0 ** 2 + 1), rel_tol=1e-6)


def test_preconditioning_values():
    c_skip, c_out, c_in, c_noise = v_preconditioning(torch.tensor(700.0))   # docs/svd.md §5.1
    assert math.isclose(c_in.item(), 1.4286e-3, rel_tol=1e-4)
    assert math.isclose(c_skip.item(), 2.0408e-6, rel_tol=1e-4)
    assert math.isclose(c_out.item(), -0.999999, rel_tol=1e-6)
    assert math.isclose(c_noise.item(), 1.6378, rel_tol=1e-4)


def test_preconditioning_is_the_v_parameterisation():
    # With alpha = 1/sqrt(1 + sigma^2) and sigma_vp = sigma/sqrt(1 + sigma^2), the network sees
    # z = alpha x0 + sigma_vp eps and is trained towards v = alpha eps - sigma_vp x0.
    # Float64 data, float32 coefficients (relative error ~6e-8): at sigma = 0.002 the v-target
    # x0 - c_skip x cancels to ~sigma and the rounding of c_skip is divided by c_out ~ sigma,
    # hence 1e-4 on v.
    g = torch.Generator().manual_seed(0)
    x0, eps = (torch.randn(1000, generator=g, dtype=torch.float64) for _ in range(2))
    for sigma in (0.002, 0.3, 1.0, 17.0, 700.0):
        c_skip, c_out, c_in, _ = (c.double() for c in v_preconditioning(torch.tensor(sigma)))
        alpha, sigma_vp = 1 / math.sqrt(1 + sigma ** 2), sigma / math.sqrt(1 + sigma ** 2)
        x = x0 + sigma * eps
        torch.testing.assert_close(c_in * x, alpha * x0 + sigma_vp * eps, rtol=1e-6, atol=1e-6)
        v_target = (x0 - c_skip * x) / c_out              # the F for which D(x) = x0
        torch.testing.assert_close(v_target, alpha * eps - sigma_vp * x0, rtol=1e-4, atol=1e-4)


def test_loss_weight_makes_x0_loss_the_v_loss():
    assert math.isclose(edm_loss_weight(torch.tensor(0.5)).item(), 5.0)
    g = torch.Generator().manual_seed(1)
    x0, eps, F = (torch.randn(1000, generator=g, dtype=torch.float64) for _ in range(3))
    for sigma in (0.01, 0.7, 30.0):
        c_skip, c_out, _, _ = (c.double() for c in v_preconditioning(torch.tensor(sigma)))
        x = x0 + sigma * eps
        weighted = edm_loss_weight(torch.tensor(sigma, dtype=torch.float64)) * (
            c_skip * x + c_out * F - x0) ** 2
        v_loss = (F - (x0 - c_skip * x) / c_out) ** 2    # lambda = 1 / c_out^2
        torch.testing.assert_close(weighted, v_loss, rtol=1e-6, atol=1e-8)


# --- Euler sampler --------------------------------------------------------------------------------

def test_euler_sampler_matches_diffusers_step():
    """Every step of our sampler equals scheduler.step on the same v-prediction network output."""
    steps = 25
    scheduler, sigmas = svd_scheduler(steps), karras_sigmas(steps)
    g = torch.Generator().manual_seed(0)
    W = torch.randn(8, 8, generator=g) / 8 ** 0.5

    def network(z, c_noise):                              # some smooth v-prediction "U-Net"
        return torch.tanh(z @ W + c_noise)

    ours = []

    def denoise(x, sigma, step):                          # c_skip x + c_out F(c_in x, c_noise)
        ours.append(x.clone())
        c_skip, c_out, c_in, c_noise = v_preconditioning(sigma)
        return c_skip * x + c_out * network(c_in * x, c_noise)

    x_T = torch.randn(2, 3, 8, generator=g) * sigmas[0]
    x_ours = sample_euler(denoise, x_T, sigmas)

    x = x_T.clone()
    for s, t in enumerate(scheduler.timesteps):
        torch.testing.assert_close(ours[s], x, rtol=1e-5, atol=1e-5)
        z = scheduler.scale_model_input(x, t)             # c_in x
        torch.testing.assert_close(z, v_preconditioning(sigmas[s])[2] * x, rtol=1e-6, atol=1e-7)
        x = scheduler.step(network(z, t), t, x).prev_sample
    torch.testing.assert_close(x_ours, x, rtol=1e-5, atol=1e-5)


def test_last_euler_step_returns_denoised():
    g = torch.Generator().manual_seed(0)
    x, x0_hat = torch.randn(5, generator=g), torch.randn(5, generator=g)
    step = euler_step(x, x0_hat, torch.tensor(0.002), torch.tensor(0.0))
    torch.testing.assert_close(step, x0_hat, rtol=1e-6, atol=1e-6)    # up to float32 rounding


# --- inversion ------------------------------------------------------------------------------------

def test_inversion_sigmas_continue_geometrically():
    sigmas = karras_sigmas(25)
    inv = inversion_sigmas(sigmas)
    assert torch.equal(inv[:-1], sigmas[:-1])
    assert math.isclose(inv[-1].item(), (sigmas[-2] ** 2 / sigmas[-3]).item(), rel_tol=1e-6)
    assert math.isclose(inv[-1].item(), 5.07e-4, rel_tol=1e-3)   # docs/method.md §4.1
    assert sigmas[-1] == 0                     # the sampling schedule is untouched


def test_inverters_pass_sampling_step_indices():
    sigmas = karras_sigmas(5)
    inv = inversion_sigmas(sigmas)
    seen = {"sample": [], "euler": [], "exact": []}

    def recorder(name):
        def denoise(x, sigma, step):
            seen[name].append((step, sigma.item()))
            return gaussian_denoiser(x, sigma, step)
        return denoise

    x0 = gaussian_data(10)
    sample_euler(recorder("sample"), x0 * 700, sigmas)
    invert_euler(recorder("euler"), x0, sigmas)
    invert_exact(recorder("exact"), x0, sigmas, iterations=3, tol=0)
    assert [s for s, _ in seen["sample"]] == [0, 1, 2, 3, 4]
    assert [s for s, _ in seen["euler"]] == [4, 3, 2, 1, 0]
    # Euler inversion step s evaluates at the lower end of interval s, sigma_{s+1} (sigma_N
    # continued); the sampler at its upper end.
    assert all(math.isclose(sig, inv[s + 1].item()) for s, sig in seen["euler"])
    assert all(math.isclose(sig, sigmas[s].item()) for s, sig in seen["sample"])
    # Exact inversion: per step one guess at sigma_{s+1}, then `iterations` calls at sigma_s.
    assert seen["exact"] == [(s, sig) for s in (4, 3, 2, 1, 0)
                             for sig in [inv[s + 1].item()] + [sigmas[s].item()] * 3]


def test_euler_inversion_is_first_order():
    errors = round_trip_table()["euler"]
    # The figures: about 21 % at 25 steps, 11 % at 50 (measured 20.6 % and 11.1 %).
    assert 0.19 < errors[25] < 0.23 and 0.10 < errors[50] < 0.12
    for n in (25, 50, 100):                # first order: the error halves when steps double
        assert 1.6 < errors[n] / errors[2 * n] < 2.5, (n, errors)
    assert 1.8 < errors[10] / errors[25] < 3.2     # ... and shrinks ~2.5x for 2.5x the steps


def test_exact_inversion_round_trip():
    errors = round_trip_table()["exact"]
    assert errors[25] <= 1e-4                      # measured 2.3e-5 with 10 iterations
    assert all(errors[n] <= 1e-4 for n in (25, 50, 100, 200)), errors
    # 10 steps converge slowest (contraction up to 0.8 per iteration): measured 1.8e-2.
    assert errors[10] < round_trip_table()["euler"][10] / 10


def test_exact_inversion_stops_early():
    calls = [0]

    def counted(x, sigma, step):
        calls[0] += 1
        return gaussian_denoiser(x, sigma, step)

    sigmas = karras_sigmas(25)
    invert_exact(counted, gaussian_data(), sigmas, iterations=10, tol=1e-5)
    assert calls[0] < 25 * 11              # converged steps (high and low noise) stop early


# --- training noise -------------------------------------------------------------------------------

def test_training_sigma_formula():
    # Ends are exact by construction; interior values are the quantiles quoted in
    # docs/method.md §3.4 (the q-quantile of sigma sits at u = 1 - q: sigma falls with u).
    sigma = training_sigma(torch.tensor([0.0, 1.0]))
    assert math.isclose(sigma[0].item(), 700.0, rel_tol=1e-6)
    assert math.isclose(sigma[1].item(), 0.002, rel_tol=1e-6)
    quoted = {0.05: "0.043", 0.25: "0.25", 0.5: "0.71", 0.75: "2.03", 0.95: "12.1"}
    for q, printed in quoted.items():
        decimals = len(printed.split(".")[1])
        assert round(training_sigma(torch.tensor(1 - q)).item(), decimals) == float(printed)


def test_training_sigmas_sampler():
    n = 20000
    sigmas = sample_training_sigmas(n, generator=torch.Generator().manual_seed(0))
    assert sigmas.shape == (n,) and sigmas.dtype == torch.float32
    assert sigmas.min() >= 0.002 and sigmas.max() <= 700
    again = sample_training_sigmas(n, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sigmas, again)
    # Stratified: the i-th u lies in [i/n, (i+1)/n), and the sampler is training_sigma(u).
    u = stratified_uniform(n, generator=torch.Generator().manual_seed(0))
    assert torch.equal((u * n).floor().long(), torch.arange(n))
    assert torch.equal(sigmas, training_sigma(u))
    assert torch.all(sigmas[:-1] >= sigmas[1:])
    # Empirical quantiles equal the formula at u = 1 - q, to within one stratum (rel. 2e-3).
    qs = torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95])
    empirical = sigmas.quantile(qs)
    torch.testing.assert_close(empirical, training_sigma(1 - qs.double()), rtol=2e-3, atol=0)
    assert sample_training_sigmas(1).shape == (1,)    # I2VEdit's batch of one: plain uniform


@pytest.mark.parametrize("bad", [torch.tensor([700.0, 0.0]), torch.tensor([700.0, 1.0, 0.5])])
def test_inversion_sigmas_rejects_short_or_unterminated(bad):
    with pytest.raises(ValueError):
        inversion_sigmas(bad)
