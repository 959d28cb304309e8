"""Guidance recipes as short strings, for the command line.

    SPEC := 'none' | TERM ('+' TERM)*
    TERM := NAME [':' KEY=VALUE (',' KEY=VALUE)*]

| NAME  | term | keys (besides the common ones) |
|-------|------|------|
| cfg   | CFG with the model's null label, or with model= a separately trained unconditional network (EDM2's way) | model, channels (guide the first k channels only: DiT's own CFG is channels=3) |
| ag    | AutoGuidance by a weaker model | model (default: the main model's NAME-weak) |
| wd    | AutoGuidance by the weight-decayed model | model (default: NAME-wd) |
| swg   | SWG | window (several sizes joined by '/'; a video's TxHxW), n (windows per side) or stride, model (crops on a weak net) |
| mswg  | M-SWG | as swg |
| slg   | skip-layer guidance: the same net with blocks skipped | skip (blocks joined by '/', default mid) |
| sgg   | segmented: CFG at high noise, one other term at low noise | one split (split, tsplit, stepsplit, fsplit), cfg (weight), cfgend, and one of ag / wd / swg / mswg / slg = weight, plus that term's keys |

Common keys: w (the weight, 0 = off), wend (the weight reached at the term's last step: a linear
ramp), and where the term is on, in one unit: lo, hi (VE sigma in (lo, hi]); tlo, thi (flow time
t in (tlo, thi]); first, last (inclusive step indices, 0-based); start, stop (diffusers' step
fractions: on for int(start N) <= i < int(stop N)). A key may appear once.
Examples: ``cfg:w=1+mswg:w=0.5,window=16``, ``sgg:tsplit=0.75,cfg=3.5,slg=3``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

from .errors import WindowguideError
from .denoiser import UnconditionalDenoiser
from .guidance import CFG, SWG, AutoGuidance, Custom, Guidance, Segmented, StepRange, flow_t_range

SYNTAX = ("SPEC is 'none' or TERM+TERM+..., TERM = NAME[:key=value,...]; NAME in cfg, ag, wd, swg, mswg, "
          "slg, sgg; keys: w (weight), wend (ramp), lo/hi (sigma) or tlo/thi (flow t) or first/last (steps) "
          "or start/stop (step fractions); swg/mswg: window (a/b for several sizes), n or stride, model; "
          "cfg/ag/wd: model; slg: skip=mid; sgg: split|tsplit|stepsplit|fsplit, cfg, cfgend, and one of "
          "ag/wd/swg/mswg/slg = weight. Example: cfg:w=1+mswg:w=0.5,window=16")

KEYS = {"cfg": {"model", "channels"}, "ag": {"model"}, "wd": {"model"}, "swg": {"window", "n", "stride", "model"},
        "mswg": {"window", "n", "stride", "model"}, "slg": {"skip"}}
COMMON = {"w", "wend", "lo", "hi", "tlo", "thi", "first", "last", "start", "stop"}
SPLITS = ("split", "tsplit", "stepsplit", "fsplit")
LOW_TERMS = ("ag", "wd", "swg", "mswg", "slg")


MAX_TERMS = 64          # a recipe of more terms is a mistake (each term costs network evaluations)
MAX_LENGTH = 4096
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$", re.ASCII)
_TERM_SPLIT = re.compile(r"(?<![0-9.][eE])\+")     # '+' joins terms, but not in a number's exponent (1e+3)


def _error(msg: str) -> WindowguideError:
    return WindowguideError(f"{_cut(msg)}\n{SYNTAX}")


def _cut(text: str, limit: int = 300) -> str:
    """A message that never echoes megabytes of input: the first ``limit`` characters and the length."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def parse(spec: str) -> list[tuple[str, dict[str, str]]]:
    """'cfg:w=1+mswg:w=0.5' -> [('cfg', {'w': '1'}), ('mswg', {'w': '0.5'})]; [] for 'none'."""
    if not isinstance(spec, str):
        raise _error(f"a SPEC is a string, got {type(spec).__name__}")
    spec = spec.strip()
    if spec.lower() in ("none", ""):
        return []
    if len(spec) > MAX_LENGTH or not spec.isascii():
        raise _error(f"a SPEC is ASCII text of at most {MAX_LENGTH} characters, got {len(spec)} characters"
                     f"{'' if spec.isascii() else ' with non-ASCII ones'}: {spec!r}")
    parts = _TERM_SPLIT.split(spec)
    if len(parts) > MAX_TERMS:
        raise _error(f"{len(parts)} terms; accepted: at most {MAX_TERMS} in one recipe")
    terms = []
    for part in parts:
        name, _, rest = part.strip().partition(":")
        name = name.strip().lower()
        if name not in KEYS and name != "sgg":
            raise _error(f"unknown guidance {name!r} in {spec!r}")
        keys: dict[str, str] = {}
        for item in filter(None, (s.strip() for s in rest.split(","))):
            key, eq, value = item.partition("=")
            key = key.strip().lower()
            if not eq or not value.strip() or not key:
                raise _error(f"{item!r} in {spec!r} is not key=value")
            if key in keys:
                raise _error(f"{name}: key {key!r} given twice in {spec!r}")
            keys[key] = value.strip()
        terms.append((name, keys))
    return terms


def canonical(spec: str) -> str:
    """The SPEC with names and keys normalised (lower case, keys sorted), for comparing recipes."""
    return "+".join(name + (":" + ",".join(f"{k}={v}" for k, v in sorted(keys.items())) if keys else "")
                    for name, keys in parse(spec)) or "none"


@dataclass
class Context:
    """What building a term needs: the main net, and a loader for weak models by name or path."""
    net: Any
    load: Callable[[str], Any]
    model_name: str | None = None
    skip: Callable[[tuple[str, ...]], Callable] | None = None    # a pipeline's skip-layer negative, by block
    load_unconditional: Callable[[str], Any] | None = None       # cfg:model=...: an unconditional network


    def weak(self, keys: dict, suffix: str):
        """The weak model named by model=..., else the main model's NAME-suffix."""
        name = keys.get("model") or (f"{self.model_name}-{suffix}" if self.model_name else None)
        if name is None:
            raise _error(f"give the weak model as model=NAME_OR_PATH (the main model has no name to derive "
                         f"NAME-{suffix} from)")
        return self.load(name)


def no_weak_models(name: str):
    """A Context's loader where no weak model can be loaded: the error names the model asked for."""
    raise _error(f"model={name!r}: this recipe is built without a model to load weak networks from; pass the "
                 f"weak network itself (wg.AutoGuidance(weak_denoiser, w)) or build the recipe for a named model")


def _number(keys: dict, key: str, default: Any, cast=float) -> Any:
    if key not in keys:
        return default
    text = keys[key]
    if text.lower().lstrip("+-") in ("nan", "inf", "infinity"):
        raise _error(f"{key}={text!r} must be finite")
    try:
        if not _NUMBER.match(text) or (cast is int and not re.match(r"^[+-]?\d+$", text)):
            raise ValueError(text)               # ASCII digits only: no '1_0', no Unicode digits, no 'nan'
        value = cast(text)
    except ValueError:
        raise _error(f"{key}={keys[key]!r} is not a{'n integer' if cast is int else ' number'}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise _error(f"{key}={keys[key]!r} must be finite")
    return value


def _window(keys: dict) -> Any:
    if "window" not in keys or keys["window"] == "auto":
        return "auto"          # 5/8 of each side, rounded up to the model's factor (windows.default_window)
    sizes = [_size(v) for v in keys["window"].split("/")]
    return sizes[0] if len(sizes) == 1 else sizes


def _size(text: str) -> Any:
    """One window size: 'K' (square; on a video: K x K in space, the whole clip in time) or 'TxHxW' (video:
    crops in time and space, e.g. 6x24x24 for crops in time only on a 24 x 24 latent)."""
    if "x" not in text:
        return _number({"window": text}, "window", None, int)
    parts = text.split("x")
    if len(parts) != 3:
        raise _error(f"window {text!r}: accepted: K, or TxHxW for a video (e.g. 6x24x24)")
    return tuple(_number({"window": v}, "window", None, int) for v in parts)


def _where(keys: dict) -> dict:
    """The term's sigma range and step range from the one unit given."""
    units = [u for u in (("lo", "hi"), ("tlo", "thi"), ("first", "last"), ("start", "stop"))
             if u[0] in keys or u[1] in keys]
    if len(units) > 1:
        raise _error(f"give where a term is on in one unit, got {[k for u in units for k in u if k in keys]}")
    rng: dict = {}
    if ("lo", "hi") in units:
        rng = dict(sigma_lo=_number(keys, "lo", 0.0), sigma_hi=_number(keys, "hi", float("inf")))
    elif ("tlo", "thi") in units:
        lo, hi = flow_t_range(_number(keys, "tlo", 0.0), _number(keys, "thi", 1.0))
        rng = dict(sigma_lo=lo, sigma_hi=hi)
    elif ("first", "last") in units:
        rng = dict(steps=StepRange(_number(keys, "first", 0, int), _number(keys, "last", 2 ** 62, int)))
    elif ("start", "stop") in units:
        rng = dict(steps=StepRange(_number(keys, "start", 0.0), _number(keys, "stop", 1.0), True))
    if "wend" in keys:
        rng["weight_end"] = _number(keys, "wend", None)
    return rng


def _term(name: str, keys: dict, ctx: Context, weight: float | None = None):
    """One term; its weight is ``weight`` if given (inside sgg) else the key w."""
    allowed = KEYS[name] | COMMON
    bad = sorted(set(keys) - allowed)
    if bad:
        raise _error(f"{name} does not take {bad}; it takes {sorted(allowed)}")
    if weight is None:
        if "w" not in keys:
            raise _error(f"{name} needs a weight w=...")
        weight = _number(keys, "w", 0.0)
    rng = _where(keys)
    if name == "cfg":
        if "model" in keys:                     # CFG whose negative is a separately trained unconditional net
            if ctx.load_unconditional is None:
                raise _error("cfg:model=... (an unconditional network) is not available here")
            return AutoGuidance(UnconditionalDenoiser(ctx.load_unconditional(keys["model"])), weight, **rng)
        if getattr(ctx.net, "cfg_needs_unconditional_net", False):
            raise _error("cfg on an EDM2 network needs EDM2's unconditional network: EDM2 trains without label "
                         "dropout, so its null label is no model it learned; write cfg:w=W,model=UNCOND.safetensors "
                         "(e.g. edm2-img512-xs-uncond-2147483-0.015.pkl converted), or --preset edm2-xxl-cfg-fid "
                         "--weak FILE")
        return CFG(weight, channels=_number(keys, "channels", None, int), **rng)
    if name in ("ag", "wd"):
        return AutoGuidance(ctx.weak(keys, "weak" if name == "ag" else "wd"), weight, **rng)
    if name in ("swg", "mswg"):
        if "stride" in keys and "n" in keys:
            raise _error(f"{name}: give n (windows per side) or stride, not both")
        net = ctx.load(keys["model"]) if "model" in keys else None
        return SWG(weight, window=_window(keys), windows_per_side=_number(keys, "n", 2, int),
                   stride=_number(keys, "stride", None, int), masked=name == "mswg", net=net, **rng)
    blocks = tuple(keys.get("skip", "mid").split("/"))
    if ctx.skip is not None:                  # a transformer pipeline: blocks are layer indices
        return Custom(ctx.skip(blocks), weight, name=f"slg:{'/'.join(blocks)}", **rng)
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
    splits = [k for k in SPLITS if k in keys]
    if len(splits) != 1 or "cfg" not in keys or len(low) != 1:
        raise _error(f"sgg needs one of {SPLITS}, cfg= and exactly one of {LOW_TERMS} = weight, got {sorted(keys)}")
    name = low[0]
    rest = {k: v for k, v in keys.items() if k not in ("cfg", "cfgend", name, *SPLITS)}
    bad = sorted(set(rest) - (KEYS[name] | {"wend"}))
    if bad:
        raise _error(f"sgg with {name} does not take {bad}; besides the split, cfg, cfgend and {name}, it takes "
                     f"{sorted(KEYS[name] | {'wend'})}")
    high = CFG(_number(keys, "cfg", 0.0), weight_end=_number(keys, "cfgend", None))
    low_term = _term(name, rest, ctx, _number(keys, name, 0.0))
    split = splits[0]
    unit = {"split": "sigma_split", "tsplit": "t_split", "stepsplit": "step_split", "fsplit": "fraction_split"}
    value = _number(keys, split, None, int if split == "stepsplit" else float)
    return Segmented(high, low_term, **{unit[split]: value})


def build(spec: str, ctx: Context) -> Guidance:
    """The Guidance a SPEC string describes (see the module docstring)."""
    terms = []
    for name, keys in parse(spec):
        if name == "sgg":
            terms.extend(_segmented(keys, ctx))
        else:
            terms.append(_term(name, keys, ctx))
    return Guidance(tuple(terms))
