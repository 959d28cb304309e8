"""Wan (text-to-video) in all three directions on a tiny random WanPipeline built from configs: our sampler
against WanPipeline (unguided and with its CFG), ``wg.patch`` (weight 0 bit for bit, temporal M-SWG equal to
our sampler), the windowguide guider in the modular ``wan`` pipeline; a crop's RoPE against the whole
video's at its place; temporal fusion with one window against the pipeline."""
import pytest
import torch

import windowguide as wg
from pipes import tiny_wan
from windowguide.adapters.wan import latent_frames, wan_rope
from windowguide.errors import WindowguideError
from windowguide.video import long_video

SHAPE = (4, 6, 8, 8)          # the tiny VAE: time x1, space x2; the pipeline turns num_frames=5 into 6 frames
KW = dict(height=16, width=16, num_frames=5, num_inference_steps=4, max_sequence_length=8)


@pytest.fixture(scope="module")
def wan():
    return tiny_wan()


def _latents(seed=7):
    return torch.randn(1, *SHAPE, generator=torch.Generator().manual_seed(seed))


def _pipe(pipe, scale, **kw):
    with torch.no_grad():
        return pipe("a red cat", negative_prompt="blue dog", guidance_scale=scale, latents=_latents(),
                    output_type="latent", **KW, **kw).frames


def _ours(pipe, guidance=None, scale=1.0):
    m = wg.from_pipeline(pipe)
    pos, neg = m.encode(prompt="a red cat", negative_prompt="blue dog", max_sequence_length=8)
    g = wg.CFG(scale - 1, null=neg) if scale > 1 else None
    g = g + guidance if g is not None and guidance is not None else (guidance or g)
    with torch.no_grad():
        return wg.sample(m.denoiser, SHAPE, [7], sampler="flow_euler", sigmas=m.sigmas(4), cond=pos, guidance=g)


@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_our_sampler_equals_wan_pipeline(wan, scale):
    assert (_ours(wan, scale=scale) - _pipe(wan, scale)).abs().max() <= 1e-4


def test_patch_weight_zero_is_bit_for_bit_and_temporal_mswg_is_our_sampler(wan):
    ref = _pipe(wan, 3.0)
    with wg.patch(wan, wg.MSWG(0.0, window=(4, 8, 8))):
        assert torch.equal(_pipe(wan, 3.0), ref)
    g = wg.MSWG(0.7, window=(4, 8, 8))
    with wg.patch(wan, g):
        patched = _pipe(wan, 3.0)
    assert (patched - _ours(wan, g, 3.0)).abs().max() <= 1e-4 and (patched - ref).abs().max() > 1e-3


def test_guider_in_the_modular_wan_pipeline(wan):
    pytest.importorskip("ftfy")                 # the modular wan text encoder block cleans prompts with it
    import diffusers.modular_pipelines as mp
    from diffusers.guiders import ClassifierFreeGuidance
    from windowguide import guiders
    blocks = mp.WanBlocks().init_pipeline()
    blocks.update_components(**{k: v for k, v in wan.components.items() if v is not None and k in blocks._component_specs},
                             guider=ClassifierFreeGuidance(guidance_scale=3.0))

    def run(g):
        blocks.update_components(guider=g)
        with torch.no_grad():
            return blocks(prompt="a red cat", negative_prompt="blue dog", latents=_latents(), output="latents", **KW)
    cfg = run(ClassifierFreeGuidance(guidance_scale=3.0))
    assert torch.equal(run(guiders.SlidingWindowGuidance(guidance_scale=3.0, swg_scale=0.0)), cfg)
    swg = run(guiders.SlidingWindowGuidance(guidance_scale=3.0, swg_scale=0.5, window=(4, 8, 8)))
    assert (swg - _ours(wan, wg.MSWG(0.5, window=(4, 8, 8)), 3.0)).abs().max() <= 1e-4


def test_a_crops_rope_is_the_whole_videos_at_its_place(wan):
    rope = wan.transformer.rope
    full_cos, full_sin = wan_rope(rope, (6, 8, 8), None, 1)
    own_cos, own_sin = type(rope).forward(rope, torch.zeros(1, 4, 6, 8, 8))
    assert torch.equal(full_cos, own_cos) and torch.equal(full_sin, own_sin)
    regions = torch.tensor([[2, 2, 4, 6, 8, 8], [0, 0, 0, 6, 8, 8]])          # frames 2.., rows 2.., cols 4..
    cos, sin = wan_rope(rope, (3, 4, 4), regions, 2)
    grid = lambda f: f[0].view(6, 4, 4, -1)                                   # patches of 2 x 2 in space
    assert torch.equal(cos[0], grid(full_cos)[2:5, 1:3, 2:4].reshape(-1, 1, full_cos.shape[-1]))
    assert torch.equal(sin[1], grid(full_sin)[0:3, 0:2, 0:2].reshape(-1, 1, full_sin.shape[-1]))


def test_temporal_fusion_with_one_window_is_the_pipeline_and_longer_videos_run(wan):
    m = wg.from_pipeline(wan)
    pos, neg = m.encode(prompt="a red cat", negative_prompt="blue dog", max_sequence_length=8)
    with torch.no_grad():
        one = long_video(m.denoiser, SHAPE, [7], SHAPE[1:], stride=2, sampler="flow_euler", sigmas=m.sigmas(4),
                         cond=pos, guidance=wg.CFG(2.0, null=neg))
        assert (one - _pipe(wan, 3.0)).abs().max() <= 1e-4
        seen = []
        hook = wan.transformer.register_forward_pre_hook(lambda mod, a, kw: seen.append(kw["hidden_states"].shape),
                                                         with_kwargs=True)
        try:
            long = long_video(m.denoiser, (4, 10, 8, 8), [0], (6, 8, 8), stride=(2, 8, 8), mode="gf",
                              sampler="flow_euler", sigmas=m.sigmas(2), cond=pos,
                              guidance=wg.CFG(2.0, null=neg) + wg.MSWG(0.5, window=(4, 8, 8)))
        finally:
            hook.remove()
    assert long.shape == (1, 4, 10, 8, 8) and bool(torch.isfinite(long).all())
    assert all(s[2] in (6, 4) for s in seen)                    # clip-length windows and their M-SWG crops


def test_refusals():
    assert latent_frames(81) == 21
    with pytest.raises(WindowguideError, match="--frames 80"):
        latent_frames(80)
    two = tiny_wan()
    two.register_modules(transformer_2=two.transformer)
    with pytest.raises(WindowguideError, match="two experts"):
        wg.from_pipeline(two)
