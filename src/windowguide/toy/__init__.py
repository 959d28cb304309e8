"""2-D experiments whose ground truth is known exactly (``windowguide toy NAME``)."""
from . import leaves, tree, triangle

EXPERIMENTS = {"triangle": triangle, "tree": tree, "leaves": leaves}

__all__ = ["EXPERIMENTS", "triangle", "tree", "leaves"]
