"""Streaming fusion (#36 item 1): with ``view_batch`` each view batch of windows is stepped and folded into
the canvas accumulators at once. On a network whose outputs do not depend on its batch, the result equals
the all-windows-at-once loop bit for bit, for every fusion mode, sampler, VCF, style alignment, guidance
inside the windows (per-sample CFG nulls, step ranges), long videos and upscaling."""
import itertools

import numpy as np
import pytest
import torch

import windowguide as wg
from windowguide.fusion import panorama, view_batches
from windowguide.guidance import StepRange
from windowguide.video import long_video
from windowguide.windows import layout


class Elementwise(wg.Denoiser):
    """D = x / (1 + sigma^2) + 0.1 tanh(x) + c: every output value depends on its own input value only."""
    multiple, null_cond = 1, torch.tensor(0.0)

    def forward(self, x, sigma, cond):
        c = cond.view(-1, *[1] * (x.dim() - 1)) if cond is not None else 0.0
        return x / (1 + sigma.view(-1, *[1] * (x.dim() - 1)) ** 2) + 0.1 * torch.tanh(x) + c


CASES = [dict(mode=m, sampler=s, vcf=v, style_alpha=a) for m, s, v, a in itertools.product(
    ["multidiffusion", "gf"], ["ddim", "ddpm", "euler", "heun"], [False, True], [0.0, 0.3])
    if not (v and s not in ("ddpm",))]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_streamed_panorama_equals_the_whole_step(case):
    g = wg.CFG(0.7, null=torch.tensor([0.2, -0.1])) + wg.MSWG(0.4, window=6, steps=StepRange(0, 2))
    kw = dict(window=8, stride=4, steps=4, cond=torch.tensor([0.3, -0.2]), guidance=g,
              circular=case["mode"] == "multidiffusion", **case)
    with torch.no_grad():
        whole = panorama(Elementwise(), (4, 8, 28), [5, 6], **kw)
        for view in (1, 2, 5):
            assert torch.equal(panorama(Elementwise(), (4, 8, 28), [5, 6], view_batch=view, **kw), whole), view


def test_streamed_video_and_upscale_equal_the_whole_step():
    with torch.no_grad():
        kw = dict(stride=(2, 8, 8), sampler="ddpm", steps=3, vcf=True, style_alpha=0.2,
                  guidance=wg.MSWG(0.5, window=(6, 6, 6)))
        whole = long_video(Elementwise(), (1, 16, 8, 8), [1], (8, 8, 8), **kw)
        assert torch.equal(long_video(Elementwise(), (1, 16, 8, 8), [1], (8, 8, 8), view_batch=2, **kw), whole)
        image = (np.arange(16 * 24 * 3) % 251).astype(np.uint8).reshape(16, 24, 3)
        up = dict(scale=1, strength=0.6, steps=4, window=8, stride=4, sampler="ddpm", vcf=True)
        assert np.array_equal(wg.upscale(Elementwise(), image, view_batch=3, **up), wg.upscale(Elementwise(), image, **up))


def test_a_real_network_streams_within_float_tolerance():
    from windowguide.models.checkpoint import load_denoiser
    scenes, _, _ = load_denoiser("scenes")
    kw = dict(window=24, stride=8, steps=3, mode="gf", sampler="ddpm", vcf=True, cond=torch.tensor([1]))
    with torch.no_grad():
        whole = panorama(scenes, (3, 24, 72), [0], **kw)
        streamed = panorama(scenes, (3, 24, 72), [0], view_batch=2, **kw)
    assert (whole - streamed).abs().max() < 1e-4            # the UNet's kernels may differ by batch in the last bits


def test_view_batches_keep_the_noise_streams_whole():
    lay = layout(8, 40, 8, stride=4)                      # 9 windows
    assert view_batches(lay, 64, 2) == [[0, 1], [2, 3], [4, 5], [6, 7], [8]]
    assert view_batches(lay, 3, 2) == [list(range(0, 16))[:9]]       # 16 windows of 3 values: all in one run
    assert view_batches(lay, 12, 3) == [[0, 1, 2, 3], [4, 5, 6, 7, 8]]  # 4 x 12 = 48 values; 12 < 16 joins


def test_streamed_regional_pairs_equal_the_whole_step():
    # the (region, window) pairs stream as windows do: each batch's pairs take their own rows of the condition
    from windowguide.regional import Region, regional_panorama
    regions = [Region(torch.tensor([0.5]), torch.ones(8, 28)), Region.box(torch.tensor([-0.4]), (8, 28), 0, 12, 8, 28)]
    g = wg.CFG(0.7, null=torch.tensor([0.2, -0.3])) + wg.MSWG(0.4, window=6)
    kw = dict(window=8, stride=4, steps=3, mode="gf", sampler="euler", guidance=g, circular=True)
    with torch.no_grad():
        whole = regional_panorama(Elementwise(), (4, 8, 28), [5, 6], regions, **kw)
        for view in (1, 3):
            assert torch.equal(regional_panorama(Elementwise(), (4, 8, 28), [5, 6], regions, view_batch=view, **kw),
                               whole), view
    assert not torch.equal(whole, regional_panorama(Elementwise(), (4, 8, 28), [5, 6], regions[:1], **kw))


class Limited(Elementwise):
    """Elementwise, except that a call of more than ``most`` samples runs out of memory (as a GPU would)."""

    def __init__(self, most):
        self.most, self.calls = most, []

    def forward(self, x, sigma, cond):
        self.calls.append(x.shape[0])
        if x.shape[0] > self.most:
            raise torch.OutOfMemoryError(f"simulated: {x.shape[0]} samples")
        return super().forward(x, sigma, cond)


@pytest.mark.parametrize("sampler, vcf", [("ddpm", True), ("euler", False), ("heun", False)])
def test_a_view_batch_that_runs_out_of_memory_is_halved_and_the_step_kept(sampler, vcf):
    kw = dict(window=8, stride=4, steps=3, mode="gf", sampler=sampler, vcf=vcf, cond=torch.tensor([0.3, -0.2]),
              guidance=wg.MSWG(0.4, window=6))
    with torch.no_grad():
        whole = panorama(Elementwise(), (4, 8, 40), [5, 6], **kw)              # 9 windows
        net = Limited(most=8)
        assert torch.equal(panorama(net, (4, 8, 40), [5, 6], **kw), whole)   # noise streams put back: bit for bit
    assert max(c for c in net.calls if c <= 8) <= 8 and any(c > 8 for c in net.calls)
    assert net.calls.count(max(net.calls)) == 1            # once halved, later steps keep the smaller batches
    with pytest.raises(wg.WindowguideError, match="ran out of memory and cannot be halved further"):
        panorama(Limited(most=1), (4, 8, 40), [5, 6], **kw)


def test_prediction_fusion_streams_with_per_window_nulls_and_halves_out_of_memory():
    # gaussian prediction fusion in view batches: each batch takes its own rows of the per-sample CFG nulls
    kw = dict(window=8, stride=4, steps=3, mode="gaussian", sampler="heun", cond=torch.tensor([0.3, -0.2]),
              guidance=wg.CFG(0.7, null=torch.tensor([0.2, -0.1])) + wg.MSWG(0.4, window=6))
    with torch.no_grad():
        whole = panorama(Elementwise(), (4, 8, 40), [5, 6], **kw)
        for view in (1, 3):
            assert torch.equal(panorama(Elementwise(), (4, 8, 40), [5, 6], view_batch=view, **kw), whole), view
        net = Limited(most=12)
        assert torch.equal(panorama(net, (4, 8, 40), [5, 6], **kw), whole)
    assert any(c > 12 for c in net.calls) and net.calls.count(max(net.calls)) == 1


def test_max_memory_chooses_the_view_batch_and_refuses_a_canvas_that_cannot_fit(tmp_path):
    from windowguide.cli import main
    from windowguide.memory import GIB, STATE_COPIES, WINDOW_COPIES, view_batch_for
    # 3 x 24 x 200 canvas, 23 windows of 24 x 24: canvas 6 copies, each window 4 copies, 4 bytes a value
    canvas, window = 4 * 3 * STATE_COPIES * 24 * 200, 4 * 3 * WINDOW_COPIES * 24 * 24
    assert view_batch_for(1, 3, (24, 200), (24, 24), 8, canvas + 7 * window, "p") == 7
    assert view_batch_for(1, 3, (24, 200), (24, 24), 8, canvas + 23 * window, "p") is None     # all fit
    args = ["panorama", "--model", "scenes", "--width", "200", "--steps", "2", "--seeds", "0"]
    assert main(args + ["--max-memory", str((canvas + 7 * window) / GIB), "--out", str(tmp_path / "a")]) == 0
    import json
    assert json.loads((tmp_path / "a" / "settings.json").read_text())["view_batch"] == 7
    assert main(args + ["--max-memory", str(canvas / 2 / GIB), "--out", str(tmp_path / "b")]) == 2
    assert not (tmp_path / "b").exists()                  # refused before the folder is claimed
