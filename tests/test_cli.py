import json

import pytest

from windowguide.cli import main


def test_toy_triangle_reproduces_the_papers_ordering(tmp_path):
    path = tmp_path / "t.json"
    assert main(["toy", "triangle", "--json", str(path), "--out", str(tmp_path)]) == 0
    r = json.loads(path.read_text())["mean_distance"]
    # paper: guided 5.8e-2 < positive 1.2e-1 < negative 2.4e-1; a 2-D N(0, d^2) error gives d sqrt(pi/2)
    assert r["exact"] < 1e-3
    assert r["guided"] < r["positive"] < r["negative"]
    assert abs(r["positive"] - 0.1 * (3.14159 / 2) ** 0.5) < 0.02
    assert (tmp_path / "triangle_trajectories.png").exists()


def test_unknown_subcommand_exits_with_usage():
    with pytest.raises(SystemExit):
        main(["toy", "nope"])
