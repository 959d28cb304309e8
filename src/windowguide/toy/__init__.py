"""2-D experiments whose ground truth is known exactly (``windowguide toy NAME``)."""
from . import tree, triangle

EXPERIMENTS = {"triangle": triangle, "tree": tree}

__all__ = ["EXPERIMENTS", "triangle", "tree"]
