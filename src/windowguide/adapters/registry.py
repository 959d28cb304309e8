"""Which family module knows a pipeline or a network: one small table, filled by the modules.

Every module of ``windowguide.adapters`` that defines ``FAMILY`` (a ``Family``) is a model family:
``from_pipeline``, ``patch``, the guiders and the CLI ask this registry by the pipeline's class, the
network's class or the call's kind, and know no family by name. Adding a family is adding one module.

``from_pipeline`` is the one entry from a loaded diffusers pipeline to what windowguide's samplers need:

    import windowguide as wg
    m = wg.from_pipeline(pipe)                      # DiTPipeline, StableDiffusionPipeline, FluxPipeline, ...
    cond, null = m.encode(class_labels=[207, 360])  # or m.encode(prompt="...", negative_prompt="")
    x = wg.sample(m.denoiser, m.shape(), seeds=[0, 1], sampler="ddim", steps=50, sigmas=m.sigmas(50),
                  guidance=wg.CFG(3.0, null=null), cond=cond)
    images = m.decode(m.pipeline_latents(x, m.sigmas(50)))   # uint8 [N, H, W, 3]

Weight convention: diffusers' ``guidance_scale`` s is our w = s - 1 (families whose pipeline writes
CFG as P_cond + s (P_cond - P_uncond) say so in their module).
"""
from __future__ import annotations

import functools
import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from ..errors import WindowguideError

if TYPE_CHECKING:
    from .base import PipelineModel


@dataclass(frozen=True)
class Patched:
    """How a classic pipeline runs its network and its CFG, for ``windowguide.patch``.

    ``rows``: which rows of a call are the conditional ones: 'batched' (uncond then cond in one call),
    'cond_first' (cond then uncond in one call), 'interleaved' (uncond, cond, uncond, ... per view),
    'separate' (the conditional call comes first at each timestep, the unconditional one is a second
    call). ``scale``: the call argument of the CFG scale (None: the pipeline has no CFG); ``offset``:
    scale = offset + w (1 for diffusers' P_u + s (P_c - P_u), 0 for the original P_c + s (P_c - P_u));
    either way a shift d of P_c moves the result by (1 + w) d. ``cfg_now(pipe, call)``: whether this
    call holds CFG's rows (a pipeline that drops them on some steps). ``negative``: the pipeline runs its CFG only
    when given a negative prompt (true CFG). ``reads_cfg``: the pipeline keeps ``guidance_scale`` and
    ``do_classifier_free_guidance`` as properties up to date during its loop. ``own_negative``: a call
    argument that marks the pipeline's own extra negative call (SD3's skip-layer call)."""
    net: str = "transformer"
    scale: str | None = "guidance_scale"
    rows: str = "batched"
    offset: float = 1.0
    cfg_now: Callable | None = None
    negative: bool = False
    reads_cfg: bool = False
    own_negative: str | None = None
    cfg_possible: Callable[[Any], bool] = lambda pipe: True


@dataclass(frozen=True)
class Family:
    """What windowguide knows of one model family (see each module's docstring).

    ``build(pipe, crop_positions, guidance_embed) -> PipelineModel``; ``read_call(net, named) -> Call |
    None``; ``model(net, crop_positions, vae_factor) -> model(x, t, cond)``; ``multiple(net) -> int``;
    ``sigma(t, schedule) -> sigma`` of a network call's timestep (``schedule``: the pipeline's VP
    schedule, None for flow); ``network_t(ts)``: a scheduler's timesteps as the network's;
    ``skip(net, layers)``: the skip-layer negative in the network's prediction space, where the
    family's network can skip blocks; ``guider_layout(call, out, delta)``: a change Delta of the
    network's prediction as the modular pipeline hands predictions to its guider (by default the
    network output's own layout)."""
    kind: str
    pipelines: tuple[str, ...] = ()
    networks: tuple[str, ...] = ()
    build: Callable | None = None
    read_call: Callable | None = None
    model: Callable | None = None
    multiple: Callable | None = None
    sigma: Callable | None = None
    skip: Callable | None = None
    network_t: Callable = lambda ts: ts
    guider_layout: Callable = None
    flow: bool = False
    patched: dict[str, Patched] = field(default_factory=dict)
    net_attr: str = "transformer"
    check: Callable | None = None       # check(pipe): refuse, by name, a pipeline of the family windowguide cannot run

    def __post_init__(self):
        if self.guider_layout is None:
            object.__setattr__(self, "guider_layout", output_layout)


def output_layout(call, out, delta):
    """Delta in the layout of the network's output (its sample replaced in a zero output)."""
    import torch
    sample = out[0] if isinstance(out, tuple) else out.sample
    return call.write((torch.zeros_like(sample),), delta)[0]


@functools.lru_cache(maxsize=1)
def family_modules() -> tuple:
    """The modules of this package that define ``FAMILY``, in module-name order."""
    from .. import adapters
    found = []
    for info in sorted(pkgutil.iter_modules(adapters.__path__), key=lambda i: i.name):
        module = importlib.import_module(f"{adapters.__name__}.{info.name}")
        if isinstance(getattr(module, "FAMILY", None), Family):
            found.append(module)
    return tuple(found)


def families() -> tuple[Family, ...]:
    """Every ``FAMILY`` of the modules of this package, in module-name order."""
    return tuple(module.FAMILY for module in family_modules())


def family_presets() -> dict:
    """Every family's ``PRESETS`` (the model card's and the papers' settings for it), by name."""
    out = {}
    for module in family_modules():
        out.update(getattr(module, "PRESETS", {}))
    return out


def pipeline_names() -> tuple[str, ...]:
    """The pipeline classes ``from_pipeline`` accepts, over all families."""
    return tuple(n for f in families() for n in f.pipelines)


def patched_names() -> tuple[str, ...]:
    """The pipeline classes ``windowguide.patch`` can patch, over all families."""
    return tuple(n for f in families() for n in f.patched)


def network_names() -> tuple[str, ...]:
    """The network classes whose calls a family can read."""
    return tuple(n for f in families() for n in f.networks)


def by_pipeline(pipe: Any, patched: bool = False) -> Family:
    """The family of a pipeline (for ``patch``: one whose loop it can patch)."""
    name = type(pipe).__name__
    for f in families():
        if name in (f.patched if patched else f.pipelines):
            return f
    if patched:
        raise WindowguideError(f"windowguide.patch does not support {name}; supported: {', '.join(patched_names())}")
    raise WindowguideError(f"{name} is not supported (yet); supported pipelines: {', '.join(pipeline_names())}")


def by_network(net: Any) -> Family:
    """The family that reads calls of this network's class (a clear error naming the known ones)."""
    name = type(net).__name__
    for f in families():
        if name in f.networks:
            return f
    raise WindowguideError(f"windowguide cannot read calls of {name}; supported networks: {', '.join(network_names())}")


def by_kind(kind: str) -> Family:
    """The family of a call's kind ('sd', 'flux', ...)."""
    for f in families():
        if f.kind == kind:
            return f
    raise WindowguideError(f"no model family of kind {kind!r}; known: {', '.join(f.kind for f in families())}")


def default_cfg_weight(pipe) -> float | None:
    """The CFG weight w of a pipeline's own default scale (its ``__call__``'s default, scale = offset +
    w); None when the pipeline runs no CFG (guidance-distilled) or is not one windowguide patches."""
    import inspect
    name = type(pipe).__name__
    for f in families():
        rules = f.patched.get(name)
        if rules is not None and rules.scale is not None:
            default = inspect.signature(type(pipe).__call__).parameters[rules.scale].default
            return None if default is None else float(default) - rules.offset
    return None


def default_guidance(pipe, flow: bool) -> str:
    """The SPEC every command uses on a pipeline when ``--guidance`` is not given: VP pipelines diffusers'
    SD scale 7.5 (cfg:w=6.5); flow pipelines their own ``__call__``'s default scale, and no CFG at all
    for a guidance-distilled one (FLUX.1-dev, whose true CFG would double the network evaluations)."""
    w = 6.5 if not flow else default_cfg_weight(pipe)
    return f"cfg:w={w:g}" if w else "none"


def from_pipeline(pipe: Any, crop_positions: str = "slice", guidance_embed: float | None = None) -> PipelineModel:
    """The ``PipelineModel`` of a loaded diffusers pipeline (its family module builds it).

    ``crop_positions`` (DiT and the transformers with positional ids): a crop's positional input.
    'slice' (default): the crop's part of the whole canvas's grid, its true location; 'stretch': DiT:
    the sin-cos grid of the crop's size spread over the trained range (diffusers' own, like the M-SWG
    authors' resize of the trained embedding), FLUX-like: the ids of the crop's own grid. Default
    'slice' because, measured on a small DiT trained on mirror (``windowguide bench positions``), a
    crop's prediction is then 2.5 to 3.5 times closer to the whole image's prediction of that region at
    t <= 300: the crop loses long-range context, not also its position (SWG's weak model should err
    like the model, only more). FLUX with 'slice' makes one call per window position, 'stretch' one
    call for all crops. ``guidance_embed``: a guidance-distilled model's guidance input (FLUX.1-dev's
    ``guidance_scale``, FLUX.2 [dev]'s; not a CFG, no extra evaluation); None: the family's pipeline's
    default (3.5 for FLUX.1, 4.0 for FLUX.2)."""
    if crop_positions not in ("stretch", "slice"):
        raise WindowguideError(f"crop_positions {crop_positions!r}: accepted: 'stretch', 'slice'")
    from .base import scheduler_x0_clip
    family = by_pipeline(pipe)
    m = family.build(pipe, crop_positions, guidance_embed)
    m.x0_clip = scheduler_x0_clip(getattr(pipe, "scheduler", None))   # clip_sample / thresholding
    m.denoiser.x0_clip = m.x0_clip                 # so that wg.sample takes the scheduler's steps by default
    m.scheduler_note = scheduler_note(getattr(pipe, "scheduler", None), m.flow)
    if m.scheduler_note:
        import warnings
        warnings.warn(m.scheduler_note, stacklevel=2)
    return m


# Schedulers whose update windowguide's samplers reproduce step for step (DDIM / DDPM on the VP families,
# the flow Euler on the flow families); any other is said, never silently replaced.
SINGLE_STEP = {"DDIMScheduler", "DDPMScheduler", "FlowMatchEulerDiscreteScheduler"}


def scheduler_note(scheduler, flow: bool) -> str | None:
    """None when windowguide's samplers take the pipeline scheduler's own steps; else the sentence that
    says which sampler runs instead (a multistep solver such as DPMSolverMultistep or UniPC, or a
    stochastic flow Euler, is not reproduced: wg.sample's result is then not the pipeline's)."""
    if scheduler is None:
        return None
    name = type(scheduler).__name__
    runs = "flow_euler" if flow else "ddim (or ddpm)"
    if name not in SINGLE_STEP:
        return (f"the pipeline's scheduler is {name}, whose update windowguide's samplers do not reproduce; "
                f"wg.sample / windowguide sample run {runs} on its sigmas, which differs from the pipeline's own "
                f"output (wg.patch and the guiders run inside the pipeline's scheduler and match it)")
    if getattr(scheduler.config, "stochastic_sampling", False):
        return (f"the pipeline's {name} has stochastic_sampling=True; windowguide's {runs} samples it "
                f"deterministically, which differs from the pipeline's own output (wg.patch and the guiders "
                f"run inside the pipeline's scheduler and match it)")
    return None
