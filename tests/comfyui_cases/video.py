"""Video latents in ComfyUI: the M-SWG node's crops cut in frames as well as in space, and the fusion
sampler's windows along time, on a tiny Wan 2.1 transformer built with ComfyUI's own classes."""
import pytest
import torch

from harness import captured, close, counted, ksample, ours
import comfy.samplers
import comfy.supported_models as supported
import windowguide as wg
from tiny_models import patcher
from windowguide.comfyui import nodes
from windowguide.integrations import comfyui as host

SHAPE = (1, 16, 4, 8, 8)          # one clip of 4 latent frames, 8 x 8 latent pixels


@pytest.fixture(scope="module")
def wan():
    """A Wan 2.1 text-to-video transformer (ComfyUI's WAN21_T2V: 1 x 2 x 2 patches, RoPE in 3-D), tiny."""
    cfg = {"image_model": "wan2.1", "model_type": "t2v", "patch_size": (1, 2, 2), "text_len": 8, "in_dim": 16,
           "dim": 32, "ffn_dim": 64, "freq_dim": 32, "text_dim": 16, "out_dim": 16, "num_heads": 2, "num_layers": 1}
    return patcher(supported.WAN21_T2V(cfg), seed=0)


def text(seed):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, 8, 16, generator=g), {}]]


def test_mswg_crops_in_frames_and_space_equal_windowguides_sampler(wan):
    """window_frames=2 on a 4-frame clip: the node equals windowguide's Euler with M-SWG of (2, 6, 6) crops
    (2 per axis: 8 crops in one call), ComfyUI's CFG beside it."""
    model, calls = counted(wan)
    guided = nodes.SlidingWindowGuidance.execute(model, 0.5, True, 0.625, 2, 0.0, 1.0, window_frames=2)[0]
    got = ksample(guided, text(1), text(2), 2.0, steps=3, shape=SHAPE)
    want = ours(wan, text(1), text(2), 2.0, guidance=wg.MSWG(0.5, window=(2, 6, 6), windows_per_side=2), steps=3,
                shape=SHAPE)
    assert close(wan, got, want, tol=1e-4)
    assert (1 * 8, 16, 2, 6, 6) in calls                 # the 8 crops of 2 frames x 6 x 6, in one call
    plain = ksample(wan, text(1), text(2), 2.0, steps=3, shape=SHAPE)
    assert float((got - plain).abs().max()) > 1e-4       # the crops changed the result


def test_window_frames_longer_than_the_clip_is_said(wan):
    guided = nodes.SlidingWindowGuidance.execute(wan, 0.5, True, 0.625, 2, 0.0, 1.0, window_frames=9)[0]
    with pytest.raises(wg.WindowguideError, match="window_frames 9 on a clip of 4 latent frames"):
        ksample(guided, text(1), text(2), 2.0, steps=1, shape=SHAPE)


def _fused(model, shape, frames, frame_stride, steps=3, mode="multidiffusion"):
    sampler = host.fusion_sampler(mode=mode, window=shape[-1], stride=shape[-1], window_frames=frames,
                                  frame_stride=frame_stride)
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "normal", steps)
    noise = torch.randn(*shape, generator=torch.Generator().manual_seed(3))
    return comfy.sample.sample_custom(model, noise, 1.0, sampler, sigmas, text(1), text(2), torch.zeros(shape),
                                      disable_pbar=True, seed=3)


def test_fusion_along_time_equals_a_brute_force_loop(wan):
    """An 8-frame clip from windows of 4 frames at stride 2 (3 windows along time, the whole frame in
    space), uniform weights under Euler: each step's denoised clip is the per-frame mean of the windows'
    predictions (for Euler, state fusion is prediction fusion), written here as a plain loop over windows."""
    import comfy.sample
    shape = (1, 16, 8, 8, 8)
    got = _fused(wan, shape, frames=4, frame_stride=2)
    seen = captured(wan, text(1), text(2), 1.0, 3, shape=shape)
    sampling = wan.get_model_object("model_sampling")
    sigmas = comfy.samplers.calculate_sigmas(sampling, "normal", 3).double()
    noise = torch.randn(*shape, generator=torch.Generator().manual_seed(3))
    x = sampling.noise_scaling(sigmas[0], noise, wan.model.process_latent_in(torch.zeros(shape)), True).double()
    wan.pre_run()
    try:
        with torch.no_grad():
            for s, s_next in zip(sigmas[:-1], sigmas[1:]):
                total, count = torch.zeros_like(x), torch.zeros_like(x)
                for t0 in (0, 2, 4):
                    crop = x[:, :, t0:t0 + 4].float()
                    d = comfy.samplers.calc_cond_batch(wan.model, [seen["cond"]], crop, s.float().view(1),
                                                       {"transformer_options": {}})[0]
                    total[:, :, t0:t0 + 4] += d.double()
                    count[:, :, t0:t0 + 4] += 1
                d = total / count
                x = x + (s_next - s) * (x - d) / s
    finally:
        wan.cleanup()
    want = wan.model.process_latent_out(sampling.inverse_noise_scaling(sigmas[-1], x.float()))
    assert close(wan, got, want, tol=1e-4)


def test_one_window_along_time_is_comfyuis_sampler(wan):
    shape = (1, 16, 4, 8, 8)
    got = _fused(wan, shape, frames=4, frame_stride=2, mode="gf")
    want = ksample(wan, text(1), text(2), 1.0, steps=3, shape=shape)
    assert close(wan, got, want, tol=1e-5)
