"""bench fronts: the Pareto computation, evaluation counting of banded guidance, the toy's w(sigma)."""
import itertools

import pytest
import torch
from hypothesis import given, settings, strategies as st

import windowguide as wg
from windowguide.bench import fronts


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6)), min_size=1, max_size=25))
def test_pareto_front_equals_a_brute_force_dominance_check(points):
    brute = [i for i, p in enumerate(points)
             if not any(q[0] <= p[0] and q[1] <= p[1] and q != p for q in points)]
    assert fronts.pareto_front(points) == brute


def test_pareto_front_in_three_dimensions_and_front_dominance():
    g = torch.Generator().manual_seed(0)
    pts = torch.randint(0, 5, (40, 3), generator=g).tolist()
    brute = [i for i, p in enumerate(pts) if not any(fronts.dominates(q, p) for q in pts)]
    assert fronts.pareto_front(pts) == brute
    a, b = [(0, 2), (1, 1), (2, 0)], [(1, 2), (2, 1)]
    assert fronts.front_dominates(a, b) and not fronts.front_dominates(b, a) and not fronts.front_dominates(a, a)


class Net(wg.Denoiser):
    multiple, null_cond = 1, None

    def __init__(self):
        self.evaluations = 0

    def forward(self, x, sigma, cond):
        self.evaluations += x.shape[0]
        return x / (1 + sigma.view(-1, 1, 1, 1) ** 2)


@pytest.mark.parametrize("first, last", [(0, 2), (3, 5), (2, 5)])
def test_a_band_restriction_saves_exactly_the_crop_evaluations_of_the_steps_it_leaves_out(first, last):
    net, n = Net(), 6
    g = wg.Interval(wg.MSWG(0.5, window=6), steps=(first, last))
    with torch.no_grad():
        wg.sample(net, (1, 8, 8), [0, 1], steps=n, sampler="heun", guidance=g)
    per_step = [2 if i < n - 1 else 1 for i in range(n)]        # Heun: the last step is one Euler evaluation
    crops = 4                                                     # 2 x 2 windows of 6 on 8
    expected = 2 * (sum(per_step) + crops * sum(per_step[first:last + 1]))
    assert net.evaluations == expected


def test_the_weight_schedule_reproduces_the_toys_w_star_where_it_was_fitted():
    sigmas, w = fronts.toy_weight_schedule(steps=12)
    mean = sum(w) / len(w)
    schedule = fronts.schedule_from(sigmas, w, mean)
    assert all(abs(schedule(s) - v) <= 1e-9 * max(1.0, abs(v)) for s, v in zip(sigmas, w))
    twice = fronts.schedule_from(sigmas, w, 2 * mean)
    assert abs(twice(sigmas[3]) - 2 * w[3]) < 1e-9
    between = schedule((sigmas[4] * sigmas[5]) ** 0.5)                    # halfway in log sigma
    assert min(w[4], w[5]) - 1e-9 <= between <= max(w[4], w[5]) + 1e-9


def test_quick_fronts_run_reports_fronts_bands_and_the_schedule(tmp_path):
    s = fronts.FrontSettings(datasets=("mirror",), weights=(0.4,), seed_sets=2, samples=8, steps=4,
                             methods=("M-SWG",))
    report = fronts.run(str(tmp_path / "f.json"), out_dir=str(tmp_path), settings=s, progress=False)
    rep = report["datasets"][0]
    assert set(rep["points"]) == {"none", "M-SWG"} and (tmp_path / "mirror_fronts.png").exists()
    assert rep["points"]["M-SWG"][0]["evaluations"] == 7 * 5      # 7 Heun evaluations, each 1 + 4 crops
    banded = rep["bands"]["M-SWG"]["banded"]
    assert 0 < banded["cost"] < 1
    assert "M-SWG w(sigma)" in fronts.format_report(report)
