import math

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, FlowMatchEulerDiscreteScheduler

import windowguide as wg
from windowguide.denoiser import EDMDenoiser, EpsDenoiser, FlowDenoiser, VPSchedule
from windowguide.sampling import flow_sigmas, karras_sigmas, sigmas_from_flow_t

from helpers import InvariantNet, gaussian_denoiser, mixture_denoiser, sample_stats

MU = torch.tensor([1.0, -0.5])
COV = torch.tensor([[1.0, 0.6], [0.6, 0.8]])
N = 3000
# Monte-Carlo error of N samples: mean ~ sqrt(var/N) = 0.018, covariance entries ~ sqrt(2/N) var = 0.026;
# the tolerances are about 4 standard errors plus the sampler's discretisation error.
MEAN_TOL, COV_TOL = 0.08, 0.12


def vp_gaussian(mu, cov, schedule):
    """The exact eps-prediction of the Gaussian data, as a VP model eps(x_vp, t): eps = (x - D) / sigma."""
    D = gaussian_denoiser(mu, cov)

    def eps(x_vp, t, cond):
        sigma = schedule.sigmas[t.round().long()].float()
        x = x_vp * (1 + sigma.view(-1, 1, 1, 1) ** 2).sqrt()
        return (x - D(x, sigma)) / sigma.view(-1, 1, 1, 1)
    return eps


def flow_gaussian(mu, cov):
    """The exact flow velocity u = (x_t - E[x0 | x_t]) / t of the Gaussian data."""
    D = gaussian_denoiser(mu, cov)

    def u(x_t, t, cond):
        s = (t / (1 - t)).double()
        x0 = D((x_t.double() / (1 - t.double().view(-1, 1, 1, 1))).float(), s.float())
        return (x_t - x0) / t.view(-1, 1, 1, 1)
    return u


@pytest.mark.parametrize("sampler, steps, options, denoiser", [
    ("euler", 64, {}, "ve"),
    ("heun", 24, {}, "ve"),
    ("heun", 64, {"churn": 10.0}, "ve"),
    ("ddim", 50, {}, "vp"),
    ("ddim", 50, {"eta": 0.5}, "vp"),
    ("ddpm", 100, {}, "vp"),
    ("flow_euler", 64, {}, "flow"),
])
def test_exact_gaussian_denoiser_recovers_the_data_distribution(sampler, steps, options, denoiser):
    schedule = VPSchedule.linear()
    d = {"ve": lambda: EDMDenoiser(gaussian_denoiser(MU, COV)),
         "vp": lambda: EpsDenoiser(vp_gaussian(MU, COV, schedule), schedule),
         "flow": lambda: FlowDenoiser(flow_gaussian(MU, COV))}[denoiser]()
    x = wg.sample(d, (2, 1, 1), seeds=range(N), steps=steps, sampler=sampler, **options)
    mean, cov = sample_stats(x)
    assert (mean - MU.double()).abs().max() < MEAN_TOL, mean
    assert (cov - COV.double()).abs().max() < COV_TOL, cov


def test_heun_on_an_exact_mixture_recovers_weights_and_modes():
    means = torch.tensor([[-2.0, 0.0], [2.0, 1.0], [0.0, -2.5]])
    weights = torch.tensor([0.5, 0.3, 0.2])
    std = 0.3
    x = wg.sample(EDMDenoiser(mixture_denoiser(means, weights, std)), (2, 1, 1), seeds=range(N), steps=32)
    f = x.flatten(1)
    nearest = torch.cdist(f, means).argmin(1)
    frac = torch.bincount(nearest, minlength=3).float() / N
    assert (frac - weights).abs().max() < 0.04, frac
    for k in range(3):
        comp = f[nearest == k]
        assert (comp.mean(0) - means[k]).abs().max() < 0.05
        assert (comp.std(0) - std).abs().max() < 0.05


class TinyEps(torch.nn.Module):
    """A small random conv net as an eps-predictor, the same module for both peers. It predicts a
    bounded x0 = tanh(conv(x_vp)), turned into eps = (x_vp - sqrt(a_t) x0) / sqrt(1 - a_t), so the
    samples stay in a realistic range."""

    def __init__(self, alphas_cumprod):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.alphas_cumprod = alphas_cumprod
        self.conv = torch.nn.Conv2d(2, 2, 3, padding=1)
        with torch.no_grad():
            for p in self.conv.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward(self, x, t, cond=None):
        a = self.alphas_cumprod[torch.as_tensor(t).long()].reshape(-1, 1, 1, 1).to(x.dtype)
        x0 = torch.tanh(self.conv(x) * torch.cos(torch.as_tensor(t, dtype=x.dtype).reshape(-1, 1, 1, 1) / 300))
        return (x - a.sqrt() * x0) / (1 - a).sqrt()


def diffusers_loop(scheduler, model, seeds, shape, steps, **step_kwargs):
    scheduler.set_timesteps(steps)
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    latents = torch.stack([torch.randn(shape, generator=g) for g in gens]) * scheduler.init_noise_sigma
    with torch.no_grad():
        for t in scheduler.timesteps:
            eps = model(latents, t)
            latents = scheduler.step(eps, t, latents, generator=gens if len(gens) > 1 else gens[0],
                                     **step_kwargs).prev_sample
    return latents


@pytest.mark.parametrize("config, eta", [
    (dict(), 0.0),
    (dict(steps_offset=1, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012), 0.0),
    (dict(timestep_spacing="trailing"), 0.0),
    (dict(), 0.7),
])
def test_ddim_matches_diffusers_scheduler(config, eta):
    sched = DDIMScheduler(clip_sample=False, **config)
    model = TinyEps(sched.alphas_cumprod)
    ref = diffusers_loop(sched, model, [0], (2, 8, 8), 20, eta=eta)
    schedule = VPSchedule(sched.alphas_cumprod)
    sigmas = schedule.step_sigmas(20, sched.config.timestep_spacing, sched.config.steps_offset)
    out = wg.sample(EpsDenoiser(model, schedule), (2, 8, 8), seeds=[0], sampler="ddim", sigmas=sigmas, eta=eta)
    assert (out * (1 + sigmas[-1] ** 2) ** -0.5 - ref).abs().max() <= 1e-5


@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_ddim_default_schedule_is_the_schedulers_config(eta):
    """SD's scheduler config (steps_offset 1, set_alpha_to_one False) reaches the default schedule,
    without passing sigmas; and the same options given to ``sample`` directly."""
    from windowguide.adapters.base import schedule_of
    sd = dict(steps_offset=1, set_alpha_to_one=False, beta_schedule="scaled_linear", beta_start=0.00085,
              beta_end=0.012)
    sched = DDIMScheduler(clip_sample=False, **sd)
    model = TinyEps(sched.alphas_cumprod)
    ref = diffusers_loop(sched, model, [3], (2, 8, 8), 20, eta=eta)
    final = VPSchedule.scaled_linear().sigmas[0]
    out = wg.sample(EpsDenoiser(model, schedule_of(sched)), (2, 8, 8), seeds=[3], sampler="ddim", steps=20, eta=eta)
    assert (out / (1 + final ** 2).sqrt() - ref).abs().max() <= 1e-5
    direct = wg.sample(EpsDenoiser(model, VPSchedule.scaled_linear()), (2, 8, 8), seeds=[3], sampler="ddim",
                       steps=20, eta=eta, steps_offset=1, set_alpha_to_one=False)
    assert (out - direct).abs().max() <= 1e-4           # (float32 vs float64 alphas)
    plain = wg.sample(EpsDenoiser(model, VPSchedule.scaled_linear()), (2, 8, 8), seeds=[3], sampler="ddim",
                      steps=20, eta=eta)
    assert (plain - out).abs().max() > 1e-3          # the offset matters


def test_ddpm_matches_diffusers_scheduler():
    sched = DDPMScheduler(clip_sample=False)
    model = TinyEps(sched.alphas_cumprod)
    ref = diffusers_loop(sched, model, [5], (2, 8, 8), 50)
    out = wg.sample(EpsDenoiser(model, VPSchedule(sched.alphas_cumprod)), (2, 8, 8), seeds=[5], steps=50,
                    sampler="ddpm")
    assert (out - ref).abs().max() <= 1e-5


def test_flow_euler_matches_diffusers_flow_match_scheduler():
    g = torch.Generator().manual_seed(1)
    conv = torch.nn.Conv2d(2, 2, 3, padding=1)
    with torch.no_grad():
        for p in conv.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def velocity(x_t, timestep, cond=None):   # SD3-style timestep = 1000 t; x0 = tanh(conv(x_t)), u = (x_t - x0) / t
        t = torch.as_tensor(timestep, dtype=x_t.dtype).reshape(-1, 1, 1, 1) / 1000
        return (x_t - torch.tanh(conv(x_t))) / t

    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    sched.set_timesteps(12)
    latents = torch.randn(1, 2, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        for t in sched.timesteps:
            latents = sched.step(velocity(latents, t), t, latents).prev_sample
    out = wg.sample(FlowDenoiser(velocity, time_scale=1000), (2, 8, 8), seeds=[3], sampler="flow_euler",
                    sigmas=sigmas_from_flow_t(sched.sigmas))
    assert (out - latents).abs().max() <= 1e-5


def test_vp_timesteps_match_diffusers_spacing():
    schedule = VPSchedule.linear()
    for spacing in ("leading", "trailing", "linspace"):
        for offset in ((0, 1) if spacing == "leading" else (0,)):
            s = DDIMScheduler(timestep_spacing=spacing, steps_offset=offset)
            s.set_timesteps(17)
            assert schedule.timesteps(17, spacing, offset) == s.timesteps.tolist()


def test_vp_schedule_matches_diffusers_alphas_and_interpolates_in_log_sigma():
    sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    schedule = VPSchedule.scaled_linear()
    torch.testing.assert_close(schedule.alphas_cumprod.float(), sched.alphas_cumprod)
    grid = schedule.sigmas[[0, 10, 500, 999]].float()
    assert schedule.timestep(grid).tolist() == [0.0, 10.0, 500.0, 999.0]
    mid = (schedule.sigmas[100] * schedule.sigmas[101]).sqrt()   # geometric mean: halfway in log sigma
    assert schedule.timestep(mid.view(1)).item() == pytest.approx(100.5, abs=1e-6)
    with pytest.raises(ValueError, match="above the schedule's largest sigma"):
        schedule.timestep(torch.tensor([80.0]))


def test_samples_do_not_depend_on_batch_size():
    d = EDMDenoiser(InvariantNet())
    for sampler, opts in (("ddpm", {}), ("heun", {"churn": 5.0}), ("euler", {})):
        a = wg.sample(d, (3, 8, 8), seeds=[4, 9, 2], steps=6, sampler=sampler, **opts)
        b = wg.sample(d, (3, 8, 8), seeds=[4, 9, 2], steps=6, sampler=sampler, batch_size=1, **opts)
        c = wg.sample(d, (3, 8, 8), seeds=[9], steps=6, sampler=sampler, **opts)
        assert torch.equal(a, b) and torch.equal(a[1:2], c)


def test_karras_and_flow_schedules_follow_their_formulas():
    s = karras_sigmas(5, 0.002, 80, 7)
    assert s[0].item() == pytest.approx(80) and s[-2].item() == pytest.approx(0.002) and s[-1] == 0
    ramp = 0.25
    assert s[1].item() == pytest.approx((80 ** (1 / 7) + ramp * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7)


@pytest.mark.parametrize("steps", [1, 2, 4, 28, 50])
@pytest.mark.parametrize("shift", [1.0, 3.0, 0.5])
def test_flow_schedule_equals_diffusers_flow_match_scheduler(steps, shift):
    from diffusers import FlowMatchEulerDiscreteScheduler
    sched = FlowMatchEulerDiscreteScheduler(shift=shift)
    sched.set_timesteps(steps)
    f = flow_sigmas(steps, shift=shift)
    t = (f / (1 + f)).float()
    assert f[-1] == 0 and len(f) == steps + 1
    torch.testing.assert_close(t[1:], sched.sigmas[1:].float(), atol=1e-6, rtol=0)
    assert abs(t[0].item() - sched.sigmas[0].item()) <= 1.1e-6      # t = 1 is held at 1 - 1e-6


def test_flow_schedule_sd3_last_nonzero_time():
    f = flow_sigmas(28, shift=3.0)
    shift = lambda t: 3 * t / (1 + 2 * t)                # shifted twice, as diffusers does
    assert (f[-2] / (1 + f[-2])).item() == pytest.approx(shift(shift(1e-3)), rel=1e-7)   # 0.00893


@pytest.mark.parametrize("kwargs, match", [
    (dict(sampler="dpm"), "unknown sampler 'dpm'"),
    (dict(shape=(3, 8)), "shape must be"),
    (dict(seeds=[]), "no seeds given"),
    (dict(seeds="0-x"), "bad seed range"),
    (dict(eta=0.5), "does not take"),
    (dict(sigmas=[1.0, 2.0, 0.0]), "strictly decreasing"),
    (dict(sigmas=[1.0, float("nan"), 0.0]), "finite"),
    (dict(sampler="ddim", sigmas=[1.0, 0.5, 0.0], eta=1.5), "eta must be"),
    (dict(batch_size=0), "batch_size"),
    (dict(cond=torch.zeros(5, dtype=torch.long)), "batch size 5"),
])
def test_bad_sample_calls_name_the_value(kwargs, match):
    args = dict(shape=(3, 8, 8), seeds=[0, 1], steps=2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        wg.sample(EDMDenoiser(InvariantNet()), **args)


def test_seed_strings_parse():
    assert wg.parse_seeds("0-3,7") == [0, 1, 2, 3, 7]
    assert wg.parse_seeds(5) == [5]
    assert math.isclose(1, 1)


@pytest.mark.parametrize("spacing", ["trailing", "linspace"])
@pytest.mark.parametrize("steps", [3, 7])
@pytest.mark.parametrize("eta", [0.0, 0.6])
def test_ddim_with_trailing_and_linspace_spacing_steps_as_diffusers(spacing, steps, eta):
    """Replayed: diffusers' DDIM steps from t to t - T // N, not to the next timestep of the list (0.10
    off at N = 3 trailing, 18-29 with linspace); ``VPSchedule.ddim_targets`` gives those targets."""
    sched = DDIMScheduler(clip_sample=False, timestep_spacing=spacing)
    model = TinyEps(sched.alphas_cumprod)
    ref = diffusers_loop(sched, model, [2], (2, 8, 8), steps, eta=eta)
    schedule = VPSchedule(sched.alphas_cumprod, spacing=spacing)
    out = wg.sample(EpsDenoiser(model, schedule), (2, 8, 8), seeds=[2], sampler="ddim", steps=steps, eta=eta)
    final = float(schedule.ddim_targets(steps)[-1])
    assert (out / (1 + final ** 2) ** 0.5 - ref).abs().max() <= 1e-5


@pytest.mark.parametrize("kind", ["clip", "threshold"])
@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_clip_sample_and_thresholding_match_diffusers_schedulers(kind, sampler):
    """Replayed: clip_sample (the default of DDIMScheduler() and DDPMScheduler()) was ignored; with x0
    far outside [-1, 1] the results differed by up to 1.0."""
    from windowguide.adapters.base import scheduler_x0_clip
    config = dict(clip_sample=True, clip_sample_range=0.8) if kind == "clip" else dict(
        clip_sample=False, thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=1.5)
    sched = (DDIMScheduler if sampler == "ddim" else DDPMScheduler)(**config)

    class Loud(TinyEps):                        # x0 out to +-3, so the clipping acts
        def forward(self, x, t, cond=None):
            a = self.alphas_cumprod[torch.as_tensor(t).long()].reshape(-1, 1, 1, 1).to(x.dtype)
            x0 = 3 * torch.tanh(self.conv(x))
            return (x - a.sqrt() * x0) / (1 - a).sqrt()
    model = Loud(sched.alphas_cumprod)
    steps = 10
    ref = diffusers_loop(sched, model, [4], (2, 8, 8), steps)
    clip = scheduler_x0_clip(sched)
    out = wg.sample(EpsDenoiser(model, VPSchedule(sched.alphas_cumprod)), (2, 8, 8), seeds=[4], sampler=sampler,
                    steps=steps, x0_clip=clip)
    assert (out - ref).abs().max() <= 1e-4                    # float32 through 10 steps (measured <= 1.8e-5)
    plain = wg.sample(EpsDenoiser(model, VPSchedule(sched.alphas_cumprod)), (2, 8, 8), seeds=[4], sampler=sampler,
                      steps=steps)
    assert (plain - ref).abs().max() > 1e-2                   # without it, a visible difference


def test_zero_terminal_snr_schedules_start_from_pure_noise():
    """rescale_betas_zero_snr=True: alpha_bar = 0 at t = 999 (sigma = inf) was refused; it is now a tiny
    alpha_bar (min(2^-24, alpha_bar_998 / 4), as diffusers' Euler schedulers take 2^-24), and DDIM on a
    v-prediction model follows diffusers' DDIM (which keeps the exact 0) to that clamp's error."""
    from windowguide.denoiser import VDenoiser
    sched = DDIMScheduler(clip_sample=False, rescale_betas_zero_snr=True, timestep_spacing="trailing",
                          prediction_type="v_prediction")
    assert float(sched.alphas_cumprod[-1]) == 0.0
    conv = torch.nn.Conv2d(2, 2, 3, padding=1)
    with torch.no_grad():
        for p in conv.parameters():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(0)) * 0.5)

    def v_model(x, t, cond=None):                 # a v-predictor of a bounded x0 = tanh(conv(x_vp))
        a = sched.alphas_cumprod[torch.as_tensor(t).long()].reshape(-1, 1, 1, 1).to(x.dtype)
        x0 = torch.tanh(conv(x))
        eps = x if float(a.max()) == 0 else (x - a.sqrt() * x0) / (1 - a).sqrt()
        return a.sqrt() * eps - (1 - a).sqrt() * x0
    ref = diffusers_loop(sched, v_model, [1], (2, 8, 8), 10)
    schedule = VPSchedule(sched.alphas_cumprod, spacing="trailing")
    assert schedule.zero_terminal_snr and float(schedule.sigmas[-1]) > 4000
    out = wg.sample(VDenoiser(v_model, schedule), (2, 8, 8), seeds=[1], sampler="ddim", steps=10)
    assert schedule.ddim_targets(10) is None and float(schedule.step_sigmas(10)[-1]) == 0.0   # ends at x0
    assert torch.isfinite(out).all()
    assert (out - ref).abs().max() <= 1e-3
