"""``windowguide ui`` in a real browser (headless Chromium through Selenium; .ci/run installs both): the page's
images equal the CLI's PNGs for the same seeds, two browser tabs at once keep their own results, every tab
runs and is screenshotted, and a refused input shows the CLI's message on the page."""
import os

import numpy as np
import pytest

import ui_browser as ub
from windowguide.cli import main
from windowguide.files import read_png

pytestmark = pytest.mark.skipif(ub.missing() is not None, reason=ub.missing() or "")


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    with ub.server(str(tmp_path_factory.mktemp("ui") / "server.log")) as address:
        yield address


def _cli(tmp_path, name, spec, seeds, steps=6):
    out = tmp_path / name
    assert main(["sample", "--model", "mirror", "--guidance", spec, "--seeds", seeds, "--steps", str(steps),
                 "--sampler", "heun", "--out", str(out)]) == 0
    lo, _, hi = seeds.partition("-")
    return [read_png(str(out / f"{s:06d}.png")) for s in range(int(lo), int(hi or lo) + 1)]


def test_compare_in_the_browser_equals_the_cli_and_every_tab_runs(url, tmp_path):
    got = {}
    with ub.browser() as d:                 # the compare tab runs with run_compare's defaults: seeds 0-1, 6 steps, w 0.7
        shots = ub.every_tab(d, url, str(tmp_path / "shots"), compared=got)
    for key, spec in (("none", "none"), ("mswg", "mswg:w=0.7,window=16,n=2")):
        want = _cli(tmp_path, key, spec, "0-1")
        assert len(got[key]) == 2 and all(np.array_equal(a, b) for a, b in zip(got[key], want))
        assert f"--guidance {spec} --seeds 0-1 --steps 6 --sampler heun" in got["command"]
    assert os.path.getsize(shots[0]) > 10_000 and len(shots) == 3


def test_two_tabs_at_once_keep_their_own_results(url, tmp_path):
    with ub.browser() as d:
        d.get(url)
        ub.wait(d, lambda d: ub.by_css(d, "#compare-run"))
        first = d.current_window_handle
        ub.fill(d, "compare-seeds", "2")
        ub.fill(d, "compare-steps", 5)
        ub.fill(d, "compare-w-1", 1.5)
        d.switch_to.new_window("tab")
        d.get(url)
        ub.wait(d, lambda d: ub.by_css(d, "#compare-run"))
        second = d.current_window_handle
        ub.fill(d, "compare-seeds", "4")
        ub.fill(d, "compare-steps", 5)
        ub.fill(d, "compare-w-1", 0.3)
        ub.by_css(d, "#compare-run")[0].click()
        d.switch_to.window(first)
        ub.by_css(d, "#compare-run")[0].click()       # both queued at once
        ub.wait(d, lambda d: ub.gallery_count(d, "compare-out-1") == 1)
        got_first = ub.images(d, "compare-out-1")
        d.switch_to.window(second)
        ub.wait(d, lambda d: ub.gallery_count(d, "compare-out-1") == 1)
        got_second = ub.images(d, "compare-out-1")
    assert np.array_equal(got_first[0], _cli(tmp_path, "a", "mswg:w=1.5,window=16,n=2", "2", 5)[0])
    assert np.array_equal(got_second[0], _cli(tmp_path, "b", "mswg:w=0.3,window=16,n=2", "4", 5)[0])


def test_a_refused_input_shows_the_clis_message(url):
    with ub.browser() as d:
        d.get(url)
        ub.wait(d, lambda d: ub.by_css(d, "#compare-run"))
        ub.fill(d, "compare-window-1", 99)
        ub.by_css(d, "#compare-run")[0].click()
        ub.wait(d, lambda d: "window 99" in ub.page_text(d), timeout=60)
        ub.tab(d, "Sweep")
        ub.fill(d, "sweep-weights", "a,b")
        ub.by_css(d, "#sweep-run")[0].click()
        ub.wait(d, lambda d: "weights 'a,b'" in ub.page_text(d), timeout=60)
