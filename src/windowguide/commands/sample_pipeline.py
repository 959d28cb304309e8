"""``windowguide sample --model PIPELINE_DIR``: a local diffusers pipeline folder (never downloaded),
sampled with windowguide's guidance and samplers, written like every ``sample`` run (per-seed PNGs,
manifest, npz, grid, settings; resumable; torchrun-sharded).

The pipeline's own scheduler gives the schedule (VP models: its timesteps; SD3: the shifted flow
schedule); the default sampler is DDIM for VP models and flow-Euler for flow models, 50 and 28 steps
as the pipelines default. CFG's null condition is the negative prompt (``--negative-prompt``,
default empty) or DiT's null class.
"""
from __future__ import annotations

import os
from typing import Any

import torch

from .. import spec
from ..errors import WindowguideError, missing_module
from ..files import check_out_dir, write_png
from ..generate import parse_seeds, sample
from .runfolder import claim
from .common import MAX_STEPS, check_count, draw_missing, finish, labels_for, normalise_class, rank_device
from .sample import collect, png_path

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def is_pipeline_dir(path: str) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, "model_index.json"))


def load_pipeline(folder: str, device, dtype: str = "float32"):
    if dtype not in DTYPES:
        raise WindowguideError(f"--dtype {dtype!r}: accepted: {', '.join(DTYPES)}")
    try:
        from diffusers import DiffusionPipeline
    except ImportError as exc:
        raise missing_module("a pipeline folder", exc) from None
    import json
    from ..files import regular_file
    try:
        with open(regular_file(os.path.join(folder, "model_index.json"), "model_index.json")) as f:
            index = json.load(f)
        if not isinstance(index, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        raise WindowguideError(f"{folder}/model_index.json is not a pipeline's index ({e})") from None
    # components saved as absent (e.g. SD3 without T5) must be passed as None explicitly
    absent = {k: None for k, v in index.items() if isinstance(v, list) and v and v[0] is None}
    try:
        pipe = DiffusionPipeline.from_pretrained(folder, local_files_only=True, dtype=DTYPES[dtype], **absent)
    except (RuntimeError, ValueError, OSError, KeyError, TypeError, AttributeError, ImportError) as e:
        # e.g. weights of other shapes than the config's, a tokenizer file another version wrote
        text = " ".join(str(e).split())
        part = _failed_component(e.__traceback__)
        raise WindowguideError(f"{folder}: the pipeline does not load{f' (its component {part!r})' if part else ''}: "
                               f"{type(e).__name__}: {text[:300]}{' ...' if len(text) > 300 else ''}") from None
    check_weights(folder, pipe)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def _failed_component(tb) -> str | None:
    """The pipeline component diffusers was loading when it failed (``load_sub_model``'s ``name``)."""
    name = None
    while tb is not None:
        if tb.tb_frame.f_code.co_name == "load_sub_model":
            name = tb.tb_frame.f_locals.get("name", name)
        tb = tb.tb_next
    return name if isinstance(name, str) else None


def _stored_keys(sub: str) -> set[str] | None:
    """The tensor names saved in a component folder (safetensors files or their shard index)."""
    import glob
    import json
    from safetensors import safe_open
    index = glob.glob(os.path.join(sub, "*.safetensors.index.json"))
    if index:
        with open(index[0]) as f:
            return set(json.load(f).get("weight_map", {}))
    files = glob.glob(os.path.join(sub, "*.safetensors"))
    if not files:
        return None
    keys: set[str] = set()
    for path in files:
        with safe_open(path, "pt") as f:
            keys |= set(f.keys())
    return keys


def _as_loaded(comp, keys: set[str]) -> set[str]:
    """Stored tensor names as transformers renames them when it loads them (checkpoints of Qwen2.5-VL
    and others keep an older layout of names that ``from_pretrained`` converts)."""
    try:
        from transformers import PreTrainedModel
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, rename_source_key
    except ImportError:                         # an older transformers: names are loaded as stored
        return keys
    if not isinstance(comp, PreTrainedModel):
        return keys
    rules = get_model_conversion_mapping(comp)
    renamings = [r for r in rules if not isinstance(r, WeightConverter)]
    converters = [r for r in rules if isinstance(r, WeightConverter)]
    state = comp.state_dict()
    return {rename_source_key(k, renamings, converters, comp.base_model_prefix, state)[0] for k in keys}


def check_weights(folder: str, pipe) -> None:
    """Refuse a folder whose weights do not match its configs: a network whose config asks for layers
    the file lacks would otherwise run with those layers at random initialisation (diffusers only
    logs it). Tied weights (one tensor saved under one of its names) are not missing."""
    for name, comp in pipe.components.items():
        if not isinstance(comp, torch.nn.Module):
            continue
        stored = _stored_keys(os.path.join(folder, name))
        if stored is None:
            continue
        stored = _as_loaded(comp, stored)
        state = comp.state_dict()
        kept = {t.data_ptr() for k, t in state.items() if k in stored}
        missing = sorted(k for k, t in state.items() if k not in stored and t.data_ptr() not in kept)
        unexpected = sorted(stored - set(state))
        if missing or unexpected:
            raise WindowguideError(f"{folder}/{name}: the weights do not match its config (missing {missing[:3]}"
                                   f"{' ...' if len(missing) > 3 else ''}, unexpected {unexpected[:3]}"
                                   f"{' ...' if len(unexpected) > 3 else ''}); the network would run partly random")


def run(folder: str, guidance: str = "none", seeds: Any = "0-3", out: str = "runs/sample", prompt: str | None = None,
        negative_prompt: str = "", klass: Any = None, steps: int | None = None, sampler: str | None = None,
        batch_size: int = 4, device: Any = "cpu", dtype: str = "float32", height: int | None = None,
        width: int | None = None, progress: bool = True, crop_positions: str = "slice",
        guidance_embed: float | None = None) -> dict:
    from ..adapters.dit import sample_dit_learned_variance
    from ..adapters.registry import from_pipeline
    seeds = parse_seeds(seeds)
    check_count(batch_size, "--batch-size")
    r, device = rank_device(device)
    progress = progress and r.main
    check_out_dir(out)
    pipe = load_pipeline(folder, device, dtype)
    m = from_pipeline(pipe, crop_positions=crop_positions,
                      **({} if guidance_embed is None else dict(guidance_embed=guidance_embed)))
    flow = m.flow
    sampler = sampler or ("flow_euler" if flow else "ddim")
    if sampler == "dit_ddpm" and m.variance_probe is None:
        raise WindowguideError(f"--sampler dit_ddpm is DiT's learned-variance DDPM; this is a {m.family} pipeline")
    steps = steps or (28 if flow else 50)
    check_count(steps, "--steps", maximum=MAX_STEPS)
    from ..generate import SAMPLERS
    if sampler not in SAMPLERS and sampler != "dit_ddpm":
        raise WindowguideError(f"--sampler {sampler!r}: accepted: {', '.join(sorted(SAMPLERS))}, dit_ddpm (DiT)")
    factor = latent_factor(m, pipe)
    shape = m.shape(latent_side(height, factor, m.multiple, "--height"), latent_side(width, factor, m.multiple, "--width"))
    klass, cond_of, g = conditions_and_guidance(m, guidance, prompt, negative_prompt, klass)
    g = m.family_guidance(g)                  # the family's CFG convention (Qwen-Image's norm correction)
    from ..guidance import GuidedDenoiser
    GuidedDenoiser(m.denoiser, g).check(shape)
    sigmas = m.sigmas(steps, sampler=sampler, shape=shape) if sampler != "dit_ddpm" else None
    options = m.sampler_options(sampler, steps) if sampler != "dit_ddpm" else {}
    settings = dict(model=os.path.abspath(folder), family=m.family, prompt=prompt, negative_prompt=negative_prompt,
                    klass=klass, guidance=spec.canonical(guidance), steps=steps, sampler=sampler, shape=list(shape),
                    dtype=dtype, crop_positions=crop_positions, guidance_embed=guidance_embed)
    claim(out, "sample", settings)

    def draw(batch):
        with torch.no_grad():
            if sampler == "dit_ddpm":           # DiT's own: respaced DDPM with the learned variance
                x = sample_dit_learned_variance(m, batch, steps, g, cond_of(batch), device)
                images = m.decode(x)
            else:
                x = sample(m.denoiser, shape, batch, sampler=sampler, sigmas=sigmas, guidance=g, cond=cond_of(batch),
                           device=device, progress=progress, **options)
                images = m.decode(m.pipeline_latents(x, sigmas))
        for s, im in zip(batch, images):
            write_png(im, png_path(out, s))

    draw_missing(seeds, r, lambda s: png_path(out, s), batch_size, draw, progress)
    first = png_path(out, next(iter(seeds)))
    image_shape = None
    if os.path.exists(first):
        from ..files import read_png
        a = read_png(first)
        image_shape = (a.shape[2], a.shape[0], a.shape[1]) if a is not None else None
    finish(out, r, lambda: collect(out, m.num_classes, klass if m.num_classes else None, image_shape or shape))
    return settings


def latent_factor(m, pipe=None) -> int:
    """Pixels per latent pixel: the family's ``vae_factor`` (1 for a pixel-space model)."""
    return m.vae_factor


def latent_side(pixels: int | None, factor: int, multiple: int, flag: str) -> int | None:
    """The latent side of ``pixels`` image pixels, refused unless a positive multiple of factor * multiple."""
    if pixels is None:
        return None
    step = factor * multiple
    if isinstance(pixels, bool) or not isinstance(pixels, int) or pixels < step or pixels % step:
        near = max(step, (pixels // step) * step) if isinstance(pixels, int) else step
        raise WindowguideError(f"{flag} {pixels}: accepted: positive multiples of {step} pixels (the VAE's factor "
                               f"{factor} x the network's {multiple}), e.g. {near} or {near + step}")
    return pixels // factor


def conditions_and_guidance(m, guidance: str, prompt, negative_prompt, klass):
    """(class choice, seeds -> condition, Guidance) for a pipeline model: DiT's classes with its null
    class, or the prompt's embeddings with the negative prompt's as CFG's null; the SPEC built with the
    model's skip-layer negative."""
    if m.num_classes:
        if prompt is not None:
            raise WindowguideError(f"--prompt: this {m.family} pipeline takes class labels (--class), not a prompt")
        klass = normalise_class(klass, m.num_classes)
        null, cond_of = torch.tensor(m.num_classes), (lambda batch: labels_for(batch, m.num_classes, klass))
    elif m.unconditional:
        if prompt is not None or klass not in (None, "none"):
            raise WindowguideError("--prompt/--class: this pipeline is unconditional; leave them out")
        null, cond_of = None, (lambda batch: None)
    else:
        if klass is not None:
            raise WindowguideError(f"--class: this {m.family} pipeline takes a prompt (--prompt), not class labels")
        pos, neg = m.encode(prompt=prompt, negative_prompt=negative_prompt)
        null = {k: v[0] for k, v in neg.items()} if isinstance(neg, dict) else neg[0]
        cond_of = lambda batch: _repeat(pos, len(batch))
    m.denoiser.null_cond = null
    g = spec.build(guidance, spec.Context(net=None, load=no_weak, skip=_skipper(m)))
    from ..guidance import CFG
    if null is None and any(isinstance(t, CFG) for t in g):
        raise WindowguideError(f"cfg needs a condition; this {m.family} pipeline is unconditional (use swg/mswg, or "
                               f"--guidance none)")
    return klass, cond_of, g


def _repeat(cond, n: int):
    if isinstance(cond, dict):
        return {k: _repeat(v, n) for k, v in cond.items()}
    return cond.expand(n, *cond.shape[1:]).clone() if cond.shape[0] == 1 else cond


def no_weak(name: str):
    raise WindowguideError("a pipeline folder cannot take weak models by name yet (ag/wd); use cfg, swg, mswg, slg, sgg")


def _skipper(m):
    if m.skip_negative is None:
        return None

    def skip(blocks):
        try:
            layers = [int(b) for b in blocks]
        except ValueError:
            raise WindowguideError(f"slg on {m.family}: skip= takes layer indices such as 7/8/9, got {'/'.join(blocks)}") from None
        return m.skip_layers(layers)
    return skip


__all__ = ["run", "is_pipeline_dir", "load_pipeline"]
