"""The papers' robust claims, checked on the toy experiments' reports (models trained on first use)."""
import pytest

from windowguide.toy import leaves, tree


@pytest.fixture(scope="module")
def tree_report():
    return tree.run(weights=(1.0,), n_per_class=500, plot=False)


def at(report_table, method, w=1.0):
    return next(r for r in report_table[method] if r["weight"] == (0.0 if method == "none" else w))


def test_tree_autoguidance_and_sgg_have_fewer_outliers_than_no_guidance(tree_report):
    t = tree_report["table"]
    assert at(t, "autoguidance")["outliers"] < at(t, "none")["outliers"]
    assert at(t, "sgg")["outliers"] < at(t, "none")["outliers"]
    assert at(t, "autoguidance")["log_density"] > at(t, "none")["log_density"]


def test_tree_weight_decayed_model_guides_without_losing_coverage(tree_report):
    t = tree_report["table"]
    assert at(t, "weight_decay")["log_density"] > at(t, "none")["log_density"]
    assert at(t, "weight_decay")["coverage"] >= at(t, "cfg")["coverage"]


def test_leaves_regimes():
    _, coarse, _ = leaves.cell(4, 3, 1000)      # the paper's cell: well-fitted model, 4 classes of depth 3
    assert coarse["autoguidance"][0]["outliers"] < coarse["cfg"][0]["outliers"]
    assert coarse["autoguidance"][0]["coverage"] >= coarse["cfg"][0]["coverage"]
    _, fine, _ = leaves.cell(24, 1, 1000)       # the paper's cell: under-fitted model, 24 classes of depth 1
    assert fine["cfg"][0]["log_density"] > fine["autoguidance"][0]["log_density"]
    assert fine["sgg"][0]["coverage"] > fine["cfg"][0]["coverage"]
