"""Guidance recipes from the page's controls: a preset, or method + weight + window + windows per side +
where the term is on (an interval of steps, or SGG's split)."""
from __future__ import annotations

from ..errors import WindowguideError

METHODS = ("none", "cfg", "swg", "mswg", "ag", "wd", "cfg+mswg", "sgg")


def recipe(method: str, weight: float = 1.0, window: int | None = None, n: int | None = None,
           first: int | None = None, last: int | None = None, split: float | None = None,
           cfg: float | None = None) -> str:
    """The SPEC of one set of controls: ``mswg`` -> 'mswg:w=W,window=K,n=N[,first=..,last=..]';
    ``cfg+mswg`` -> CFG of weight ``cfg`` (default 1) plus M-SWG; ``sgg`` -> CFG above the sigma
    ``split``, M-SWG below it."""
    if method not in METHODS:
        raise WindowguideError(f"method {method!r}: accepted: {', '.join(METHODS)}")
    if method == "none":
        return "none"
    interval = "".join(f",{k}={int(v)}" for k, v in (("first", first), ("last", last)) if v not in (None, ""))
    crops = "".join(f",{k}={int(v)}" for k, v in (("window", window), ("n", n)) if v not in (None, "", 0))
    if method == "sgg":
        if split in (None, ""):
            raise WindowguideError("sgg needs a split (the sigma where CFG hands over to M-SWG)")
        return f"sgg:split={split:g},cfg={1.0 if cfg in (None, '') else cfg:g},mswg={weight:g}{crops}"
    if method == "cfg+mswg":
        return f"cfg:w={1.0 if cfg in (None, '') else cfg:g}{interval}+mswg:w={weight:g}{crops}{interval}"
    return f"{method}:w={weight:g}{crops if method in ('swg', 'mswg') else ''}{interval}"


__all__ = ["METHODS", "recipe"]
