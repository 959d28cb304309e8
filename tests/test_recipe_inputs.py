"""Recipe and window inputs that passed silently (#39 items 17, 18): SPEC numbers in ASCII only, an
exponent with '+', a bounded recipe, CFG channels checked against the model, windows that cover the
whole latent refused (core and the ComfyUI window), messages that never echo megabytes."""
import pytest
import torch

import windowguide as wg
from windowguide import spec
from windowguide.errors import WindowguideError
from windowguide.integrations.comfyui import Window
from windowguide.models.checkpoint import load_denoiser


def _build(text):
    return spec.build(text, spec.Context(net=None, load=spec.no_weak_models))


def test_spec_numbers_are_ascii_and_an_exponent_may_carry_a_plus():
    assert _build("cfg:w=1e+0+mswg:w=5e-1").terms[0].weight == 1.0
    for bad in ("cfg:w=1_0", "cfg:w=\u0663", "cfg:w=nan", "cfg:w=0x10", "mswg:w=1,window=1_6"):
        with pytest.raises(WindowguideError):
            _build(bad)
    with pytest.raises(WindowguideError, match="100 terms; accepted: at most 64 in one recipe"):
        _build("+".join(["cfg:w=1"] * 100))
    with pytest.raises(WindowguideError) as e:
        _build("cfg:w=" + "9" * 1_000_000)
    assert len(str(e.value)) < 2000                       # the input is not echoed whole


def test_cfg_channels_and_whole_image_windows_are_checked_against_the_model():
    mirror, info, net = load_denoiser("mirror")
    cond = torch.tensor([0])
    with pytest.raises(WindowguideError, match="channels=99: this model's samples have 3 channels"):
        wg.sample(mirror, info["shape"], [0], steps=1, guidance="cfg:w=1,channels=99", cond=cond)
    with pytest.raises(WindowguideError, match="covers the whole 24x24 image"):
        wg.sample(mirror, info["shape"], [0], steps=1, guidance="swg:w=1,window=24,n=1", cond=cond)
    with pytest.raises(WindowguideError, match="not a multiple of 4"):
        wg.sample(mirror, (3, 22, 24), [0], steps=1, cond=cond)
    for window, said in ((float("inf"), "window inf"), (1.0, "one window would cover it all"),
                         (64.0, "one window would cover it all")):
        with pytest.raises(WindowguideError, match=said):
            Window(window).pixels(64, 8)
    assert Window(0.625).pixels(64, 8) == 40
