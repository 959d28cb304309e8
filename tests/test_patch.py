"""windowguide.patch: the pipeline's own loop with windowguide's terms added to its CFG."""
import pytest
import torch

import windowguide as wg
from test_pipelines import _tiny_sd
from windowguide.errors import WindowguideError


@pytest.fixture(scope="module", params=["epsilon", "v_prediction"])
def sd_pipe(request, tmp_path_factory):
    return _tiny_sd(tmp_path_factory.mktemp("clip"), request.param)


def _run(pipe, **kw):
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        return pipe("a red cat", negative_prompt="blue dog", height=32, width=32, num_inference_steps=4,
                    guidance_scale=3.5, latents=latents, output_type="latent", **kw).images


def test_weight_zero_and_removal_leave_the_pipeline_bit_for_bit(sd_pipe):
    before = _run(sd_pipe)
    with wg.patch(sd_pipe, "mswg:w=0,window=10"):
        zero = _run(sd_pipe)
    after = _run(sd_pipe)
    assert torch.equal(zero, before) and torch.equal(after, before)
    assert "forward" not in vars(sd_pipe.unet)


def test_patched_pipeline_equals_windowguides_sampler_and_adds_only_the_crops(sd_pipe):
    m = wg.from_pipeline(sd_pipe)
    pos, neg = m.encode(prompt="a red cat", negative_prompt="blue dog")
    calls = []
    hook = sd_pipe.unet.register_forward_pre_hook(lambda mod, args: calls.append(args[0].shape))
    try:
        with wg.patch(sd_pipe, "mswg:w=0.5,window=10"):
            patched = _run(sd_pipe)
    finally:
        hook.remove()
    with torch.no_grad():
        x = wg.sample(m.denoiser, (4, 16, 16), [7], sampler="ddim", sigmas=m.sigmas(4), cond=pos,
                      guidance=wg.CFG(2.5, null=neg[0]) + wg.MSWG(0.5, window=10))
    assert (m.pipeline_latents(x, m.sigmas(4)) - patched).abs().max() <= 1e-4
    # per step: the pipeline's own call (uncond + cond) and one call of the 4 crops, nothing more
    assert [tuple(c) for c in calls] == [(2, 4, 16, 16), (4, 4, 10, 10)] * 4


def test_patch_refuses_cfg_terms_and_other_families(sd_pipe):
    with pytest.raises(WindowguideError, match="guidance_scale is the CFG"):
        with wg.patch(sd_pipe, "cfg:w=1+mswg:w=0.5,window=10"):
            pass
    assert "forward" not in vars(sd_pipe.unet)
