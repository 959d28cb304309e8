import json

import pytest

from windowguide.cli import main


def test_toy_triangle_reproduces_the_papers_ordering(tmp_path):
    path = tmp_path / "t.json"
    assert main(["toy", "triangle", "--json", str(path), "--out", str(tmp_path)]) == 0
    report = json.loads(path.read_text())
    r = report["mean_distance"]
    # the paper's setup (geometry, global-seed noise, the authors' metric) gives the paper's numbers
    assert r["exact"] < 1e-3
    for name, paper in (("guided", 5.8e-2), ("positive", 1.2e-1), ("negative", 2.4e-1)):
        assert abs(r[name] / paper - 1) < 0.10, (name, r[name])
    # the true nearest-point distance: a 2-D N(0, d^2) error gives about d sqrt(pi/2)
    assert abs(report["nearest_point_distance"]["positive"] - 0.1 * (3.14159 / 2) ** 0.5) < 0.02
    assert (tmp_path / "triangle_trajectories.png").exists()


def test_unknown_subcommand_exits_with_usage():
    with pytest.raises(SystemExit):
        main(["toy", "nope"])
