"""Panoramas on flow transformers: the fused window states against a brute-force loop over the windows,
each window's network call at its place on the canvas (FLUX's image ids) or as its own image (SD3)."""
import pytest
import torch

import windowguide as wg
import windowguide.fusion
import pipes
from windowguide.windows import regions_of_call


def _places(size, window, stride):
    p = list(range(0, size - window + 1, stride))
    return p if p[-1] == size - window else p + [size - window]


def brute_force(den, canvas, seed, window, stride, sigmas, cond, place):
    """MultiDiffusion by hand: every step, each window takes a flow Euler step from its crop (in flow
    coordinates: x_t = x / (1 + sigma), t = sigma / (1 + sigma), v = (x_t - D) / t), and the canvas is
    the mean of the window states over each pixel."""
    c, h, w = canvas
    z = torch.randn(1, c, h, w, generator=torch.Generator().manual_seed(seed))
    x = z * (1 + float(sigmas[0]))
    for s0, s1 in zip(sigmas[:-1].tolist(), sigmas[1:].tolist()):
        acc, count = torch.zeros_like(x), torch.zeros_like(x)
        for top in _places(h, window, stride):
            for left in _places(w, window, stride):
                xw = x[..., top:top + window, left:left + window]
                region = torch.tensor([[top, left, h, w]]) if place else None
                with regions_of_call(region):
                    d = den(xw, torch.tensor([s0]), cond)
                t0, t1 = s0 / (1 + s0), s1 / (1 + s1)
                x_t = xw / (1 + s0)
                x_next = (x_t + (t1 - t0) * (x_t - d) / t0) * (1 + s1)
                acc[..., top:top + window, left:left + window] += x_next
                count[..., top:top + window, left:left + window] += 1
        x = acc / count
    return x


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_flow_panorama_equals_a_brute_force_loop_over_the_windows(family, tmp_path):
    pipe = pipes.tiny_flux(tmp_path) if family == "flux" else pipes.tiny_sd3(tmp_path)
    m = wg.from_pipeline(pipe)
    extra = dict(max_sequence_length=6) if family == "flux" else {}
    pos, neg = m.encode(prompt="a red cat", negative_prompt="blue dog", **extra)
    null = neg                                   # one null for the whole batch of windows
    canvas, window, stride = (4, 8, 24), 8, 4
    sigmas = m.sigmas(3, shape=(4, window, window))
    g = wg.CFG(2.0, null=null)
    with torch.no_grad():
        fused = wg.fusion.panorama(m.denoiser, canvas, [3], window=window, stride=stride, mode="multidiffusion",
                                   sampler="flow_euler", sigmas=sigmas, guidance=g, cond=pos)
        place = family == "flux"                  # FLUX's windows at their place; SD3 crops its own grid centre
        ref = brute_force(wg.guidance.guided(m.denoiser, g), canvas, 3, window, stride, sigmas, pos, place)
        assert (fused - ref).abs().max() <= 1e-4
        if family == "flux":                      # the place matters: windows as their own images differ
            own = brute_force(wg.guidance.guided(m.denoiser, g), canvas, 3, window, stride, sigmas, pos, False)
            assert (fused - own).abs().max() > 1e-3


def test_flux_panorama_crops_inside_windows_are_placed_on_the_canvas(tmp_path):
    """M-SWG inside each window: a crop's ids are the canvas's at (window place + crop place)."""
    pipe = pipes.tiny_flux(tmp_path)
    m = wg.from_pipeline(pipe)
    pos, _ = m.encode(prompt="a red cat", max_sequence_length=6)
    seen = []
    hook = pipe.transformer.register_forward_pre_hook(
        lambda mod, args, kw: seen.append(kw["img_ids"].clone()), with_kwargs=True)
    try:
        with torch.no_grad():
            wg.fusion.panorama(m.denoiser, (4, 8, 16), [0], window=8, stride=8, sampler="flow_euler",
                               sigmas=m.sigmas(1, shape=(4, 8, 8)), guidance=wg.MSWG(0.5, window=6), cond=pos)
    finally:
        hook.remove()
    corners = {(int(ids[0, 1]), int(ids[0, 2])) for ids in seen}
    # windows at columns 0 and 8 (ids /2: 0 and 4), crops of 6 at 0 and 2 inside each (ids: +0, +1)
    assert corners == {(0, 0), (0, 4), (0, 1), (1, 0), (1, 1), (0, 5), (1, 4), (1, 5)}


@pytest.mark.parametrize("family", ["sd3", "zimage"])
def test_cli_panorama_of_a_flow_pipeline_folder(family, tmp_path):
    from windowguide.cli import main
    from windowguide.files import read_png
    pipe = pipes.tiny_sd3(tmp_path) if family == "sd3" else pipes.tiny_zimage()
    pipe.save_pretrained(tmp_path / family)
    out = tmp_path / "p"
    assert main(["panorama", "--model", str(tmp_path / family), "--prompt", "a red cat", "--width", "48",
                 "--height", "16", "--stride", "4", "--steps", "2", "--seeds", "0", "--mode", "gf",
                 "--out", str(out)]) == 0
    assert read_png(str(out / "panorama_000000.png")).shape == (16, 48, 3)
    import json
    settings = json.loads((out / "settings.json").read_text())
    assert settings["sampler"] == "flow_euler" and settings["family"] == family
