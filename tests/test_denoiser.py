import pytest
import torch

from windowguide.denoiser import EDMDenoiser, EpsDenoiser, FlowDenoiser, VDenoiser, VPSchedule, as_denoiser


def noisy(sigma, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0, n = torch.randn(4, 3, 6, 6, generator=g), torch.randn(4, 3, 6, 6, generator=g)
    return x0, n, x0 + sigma.view(-1, 1, 1, 1) * n


@pytest.mark.parametrize("t", [0, 37, 500, 999])
def test_oracle_eps_and_v_models_give_back_x0(t):
    schedule = VPSchedule.linear()
    sigma = schedule.sigma_at(t).float().expand(4)
    x0, n, x = noisy(sigma)
    a = schedule.alphas_cumprod[t].float()
    seen = []

    def eps_model(x_vp, tt, cond):
        seen.append(tt)
        torch.testing.assert_close(x_vp, a.sqrt() * x0 + (1 - a).sqrt() * n, rtol=1e-5, atol=1e-5)
        return n

    def v_model(x_vp, tt, cond):   # v = alpha eps - sigma_vp x0
        return a.sqrt() * n - (1 - a).sqrt() * x0
    torch.testing.assert_close(EpsDenoiser(eps_model, schedule)(x, sigma), x0, rtol=1e-4, atol=1e-4 * (1 + sigma[0].item()))
    torch.testing.assert_close(VDenoiser(v_model, schedule)(x, sigma), x0, rtol=1e-4, atol=1e-4)
    assert seen[0].tolist() == [float(t)] * 4          # the exact training timestep reaches the model


@pytest.mark.parametrize("t", [0.05, 0.5, 0.97])
def test_oracle_flow_model_gives_back_x0(t):
    sigma = torch.full((4,), t / (1 - t))
    x0, n, x = noisy(sigma)

    def velocity(x_t, tt, cond):
        torch.testing.assert_close(x_t, (1 - t) * x0 + t * n, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(tt, torch.full((4,), t * 1000), rtol=1e-5, atol=1e-3)
        return n - x0
    torch.testing.assert_close(FlowDenoiser(velocity, time_scale=1000)(x, sigma), x0, rtol=1e-4, atol=1e-4)


def test_plain_callables_become_edm_denoisers_and_bad_sigma_is_rejected():
    d = as_denoiser(lambda x, s, c: x * 0)
    assert isinstance(d, EDMDenoiser)
    x = torch.zeros(2, 1, 4, 4)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="finite and > 0"):
            d(x, bad)
    with pytest.raises(ValueError, match="NCHW"):
        d(torch.zeros(2, 4, 4), 1.0)
    with pytest.raises(TypeError, match="Denoiser or a callable"):
        as_denoiser(3)
    with pytest.raises(ValueError, match="strictly decreasing"):
        VPSchedule([0.5, 0.9])
