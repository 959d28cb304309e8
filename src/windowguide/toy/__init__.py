"""2-D experiments whose ground truth is known exactly (``windowguide toy NAME``)."""
from . import triangle

EXPERIMENTS = {"triangle": triangle}

__all__ = ["EXPERIMENTS", "triangle"]
