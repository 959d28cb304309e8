"""The windowguide ComfyUI nodes inside ComfyUI's own KSampler path, on tiny models built with ComfyUI's
classes (run in a subprocess by tests/test_comfyui.py)."""
import pytest
import torch

from harness import close, conditioning, counted, ksample, ours, tiny_sd15
import windowguide as wg
from windowguide.comfyui import nodes


@pytest.fixture(scope="module")
def sd15():
    return tiny_sd15()


def test_mswg_weight_zero_is_the_unpatched_sampler_bit_for_bit(sd15):
    pos, neg = conditioning(1), conditioning(2)
    plain = ksample(sd15, pos, neg, 3.0)
    (m,) = nodes.SlidingWindowGuidance().patch(sd15, 0.0, True, 0.625, 2, 0.0, 1.0)
    assert torch.equal(ksample(m, pos, neg, 3.0), plain)


def test_mswg_equals_windowguides_sampler_with_one_crop_call_per_step(sd15):
    pos, neg = conditioning(1), conditioning(2)
    (m,) = nodes.SlidingWindowGuidance().patch(sd15, 0.5, True, 0.625, 2, 0.0, 1.0)
    m, calls = counted(m)
    out = ksample(m, pos, neg, 3.0)
    ref = ours(sd15, pos, neg, 3.0, wg.MSWG(0.5, window=10))
    assert close(sd15, out, ref)
    # per step: the conditional and unconditional batch in one call, then all 4 crops in one call
    assert calls == [(2, 4, 16, 16), (4, 4, 10, 10)] * 4
