"""Every golden case (tests/golden_cases.py) gives the array recorded in tests/golden.json, bit for bit:
the restructured engine computes what the engine before it computed."""
import json

import pytest

import golden_cases

with open(golden_cases.GOLDEN) as f:
    RECORDED = json.load(f)


def test_every_case_is_recorded():
    assert sorted(RECORDED) == sorted(golden_cases.CASES)


@pytest.mark.parametrize("name", sorted(golden_cases.CASES))
def test_golden(name):
    assert golden_cases.compute(name) == RECORDED[name], f"{name} changed"
