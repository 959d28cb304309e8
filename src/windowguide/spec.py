"""Guidance recipes as short strings, for the command line.

    SPEC := 'none' | TERM ('+' TERM)*
    TERM := NAME [':' KEY=VALUE (',' KEY=VALUE)*]

| NAME  | term | keys (besides w, lo, hi) |
|-------|------|------|
| cfg   | CFG with the model's null label | |
| ag    | AutoGuidance by a weaker model | model (default: the main model's NAME-weak) |
| wd    | AutoGuidance by the weight-decayed model | model (default: NAME-wd) |
| swg   | SWG | window, n (windows per side), stride |
| mswg  | M-SWG | window, n, stride |
| slg   | skip-layer guidance: the same net with blocks skipped | skip (blocks joined by '/', default mid) |
| sgg   | segmented: CFG above split, one other term below | split, cfg (weight), and one of ag / wd / swg / mswg / slg = weight, plus that term's keys |

w is the weight (0 = off); lo, hi restrict the term to sigma in (lo, hi] (a guidance interval).
Example: ``cfg:w=1+mswg:w=0.5,window=16`` or ``sgg:split=0.75,cfg=2,ag=1``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from .guidance import CFG, SWG, AutoGuidance, Custom, Guidance, Segmented

SYNTAX = ("SPEC is 'none' or TERM+TERM+..., TERM = NAME[:key=value,...]; NAME in cfg, ag, wd, swg, mswg, "
          "slg, sgg; keys: w (weight), lo, hi (sigma interval); swg/mswg: window, n, stride; ag/wd: model; "
          "slg: skip=mid; sgg: split, cfg, and one of ag/wd/swg/mswg/slg = weight. "
          "Example: cfg:w=1+mswg:w=0.5,window=16")

KEYS = {"cfg": set(), "ag": {"model"}, "wd": {"model"}, "swg": {"window", "n", "stride"},
        "mswg": {"window", "n", "stride"}, "slg": {"skip"}}
LOW_TERMS = ("ag", "wd", "swg", "mswg", "slg")


def _error(msg: str) -> ValueError:
    return ValueError(f"{msg}\n{SYNTAX}")


def parse(spec: str) -> list[tuple[str, dict[str, str]]]:
    """'cfg:w=1+mswg:w=0.5' -> [('cfg', {'w': '1'}), ('mswg', {'w': '0.5'})]; [] for 'none'."""
    spec = spec.strip()
    if spec.lower() in ("none", ""):
        return []
    terms = []
    for part in spec.split("+"):
        name, _, rest = part.strip().partition(":")
        name = name.strip().lower()
        if name not in KEYS and name != "sgg":
            raise _error(f"unknown guidance {name!r} in {spec!r}")
        keys: dict[str, str] = {}
        for item in filter(None, (s.strip() for s in rest.split(","))):
            key, eq, value = item.partition("=")
            if not eq or not value.strip():
                raise _error(f"{item!r} in {spec!r} is not key=value")
            keys[key.strip().lower()] = value.strip()
        terms.append((name, keys))
    return terms


@dataclass
class Context:
    """What building a term needs: the main net, and a loader for weak models by name or path."""
    net: Any
    load: Callable[[str], Any]
    model_name: str | None = None

    def weak(self, keys: dict, suffix: str):
        """The weak model named by model=..., else the main model's NAME-suffix."""
        name = keys.get("model") or (f"{self.model_name}-{suffix}" if self.model_name else None)
        if name is None:
            raise _error(f"give the weak model as model=NAME_OR_PATH (the main model has no name to derive "
                         f"NAME-{suffix} from)")
        return self.load(name)


def _number(keys: dict, key: str, default: Any, cast=float) -> Any:
    if key not in keys:
        return default
    try:
        return cast(keys[key])
    except ValueError:
        raise _error(f"{key}={keys[key]!r} is not a number") from None


def _term(name: str, keys: dict, ctx: Context, weight: float | None = None):
    """One term; its weight is ``weight`` if given (inside sgg) else the key w."""
    allowed = KEYS[name] | {"w", "lo", "hi"}
    bad = sorted(set(keys) - allowed)
    if bad:
        raise _error(f"{name} does not take {bad}; it takes {sorted(allowed)}")
    if weight is None:
        if "w" not in keys:
            raise _error(f"{name} needs a weight w=...")
        weight = _number(keys, "w", 0.0)
    rng = dict(sigma_lo=_number(keys, "lo", 0.0), sigma_hi=_number(keys, "hi", float("inf")))
    if name == "cfg":
        return CFG(weight, **rng)
    if name in ("ag", "wd"):
        return AutoGuidance(ctx.weak(keys, "weak" if name == "ag" else "wd"), weight, **rng)
    if name in ("swg", "mswg"):
        return SWG(weight, window=_number(keys, "window", 16, int), windows_per_side=_number(keys, "n", 2, int),
                   stride=_number(keys, "stride", None, int), masked=name == "mswg", **rng)
    blocks = tuple(keys.get("skip", "mid").split("/"))
    net = ctx.net
    if not hasattr(net, "block_names"):
        raise _error("slg needs a built-in UNet (its blocks can be skipped)")
    unknown = sorted(set(blocks) - set(net.block_names()))
    if unknown:
        raise _error(f"slg: unknown blocks {unknown}; this net has {net.block_names()}")
    return Custom(lambda x, sigma, cond: net(x, sigma, cond, skip=blocks), weight, name=f"slg:{'/'.join(blocks)}",
                  **rng)


def _segmented(keys: dict, ctx: Context) -> Guidance:
    low = [k for k in LOW_TERMS if k in keys]
    if "split" not in keys or "cfg" not in keys or len(low) != 1:
        raise _error(f"sgg needs split=, cfg= and exactly one of {LOW_TERMS} = weight, got {sorted(keys)}")
    name = low[0]
    rest = {k: v for k, v in keys.items() if k not in ("split", "cfg", name)}
    high = CFG(_number(keys, "cfg", 0.0))
    return Segmented(high, _term(name, rest, ctx, _number(keys, name, 0.0)), _number(keys, "split", 0.0))


def build(spec: str, ctx: Context) -> Guidance:
    """The Guidance a SPEC string describes (see the module docstring)."""
    terms = []
    for name, keys in parse(spec):
        if name == "sgg":
            terms.extend(_segmented(keys, ctx))
        else:
            terms.append(_term(name, keys, ctx))
    return Guidance(tuple(terms))
