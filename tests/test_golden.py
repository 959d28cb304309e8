"""Every golden case (tests/golden_cases.py) gives the array recorded in tests/golden.json, bit for bit:
the restructured engine computes what the engine before it computed."""
import json

import pytest

import golden_cases

with open(golden_cases.GOLDEN) as f:
    RECORDED = json.load(f)


@pytest.fixture(scope="module", autouse=True)
def _free_the_pipelines():
    """The tiny pipelines the cases share are dropped after this module (nothing later keeps them alive)."""
    yield
    golden_cases._PIPES.clear()


def test_every_case_is_recorded():
    assert sorted(RECORDED) == sorted(golden_cases.CASES)


@pytest.mark.parametrize("name", sorted(golden_cases.CASES))
def test_golden(name):
    assert golden_cases.compute(name) == RECORDED[name], f"{name} changed"
