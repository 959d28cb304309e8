"""facebookresearch DiT checkpoints (``DiT-XL-2-256x256.pt``) to diffusers' ``DiTTransformer2DModel``.

The file is a state dict read with ``torch.load(weights_only=True)`` (a training checkpoint's 'ema'
or 'model' entry is taken). Renaming, as diffusers' own conversion does:

    x_embedder.proj                  -> pos_embed.proj
    t_embedder.mlp.0 / .2            -> transformer_blocks.i.norm1.emb.timestep_embedder.linear_1 / _2  (every i)
    y_embedder.embedding_table       -> transformer_blocks.i.norm1.emb.class_embedder.embedding_table   (every i)
    blocks.i.adaLN_modulation.1      -> transformer_blocks.i.norm1.linear
    blocks.i.attn.qkv                -> transformer_blocks.i.attn1.to_q | to_k | to_v   (split in 3 along rows)
    blocks.i.attn.proj               -> transformer_blocks.i.attn1.to_out.0
    blocks.i.mlp.fc1 / fc2           -> transformer_blocks.i.ff.net.0.proj / ff.net.2
    final_layer.adaLN_modulation.1   -> proj_out_1;   final_layer.linear -> proj_out_2
    pos_embed (fixed sin-cos)        -> dropped (diffusers recomputes it)

The head count is not in the weights: the DiT sizes' (S 6, B 12, L 16, XL 16) by hidden width.
Note: diffusers' DiT computes the timestep sinusoid with frequencies 10000^(-i / (128 - 1)) where the
original (``TimestepEmbedder.timestep_embedding``) uses 10000^(-i / 128); the phases drift apart with t
(on random weights the outputs differ by 54 % RMS at t = 999). ``match_original_timesteps(model)``
sets the frequencies back to the original's, after which diffusers' model computes the original
network (tested to 1e-5). ``windowguide convert`` writes ``"windowguide_timesteps": "original"`` into the
folder's config.json and windowguide's pipeline loader (``from_pipeline``, ``sample --model``) applies
``match_original_timesteps`` whenever it sees that key. Plain diffusers cannot keep the original
frequencies (its ``Timesteps`` shift is not a config option): it warns that it ignores the key, and a
user of the folder outside windowguide must call ``match_original_timesteps(model)`` after loading.
"""
from __future__ import annotations

import math
import re

import torch

from ..errors import WindowguideError

HEADS_BY_WIDTH = {384: 6, 768: 12, 1024: 16, 1152: 16}
# Bounds on what a file may declare (the largest DiT, XL/2 at 512 px: 28 layers, width 1152, 1000 classes,
# 64 x 64 latents of 4 channels); a file past them is refused before any network is built.
LIMITS = dict(num_layers=64, hidden=4096, classes=100_000, tokens=128 * 128, in_channels=64, patch_size=16)


class TrainingArgs:
    """DiT's ``train.py`` checkpoints hold ``args``, an ``argparse.Namespace``: read as this inert
    record of its attributes (nothing in it is called)."""


def read_dit(path: str) -> dict[str, torch.Tensor]:
    """The network of a DiT file: a state dict, or a training checkpoint {model, ema, opt, args}
    whose 'ema' (else 'model') is taken; read with weights_only, argparse.Namespace as a record."""
    try:
        with torch.serialization.safe_globals([(TrainingArgs, "argparse.Namespace")]):
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WindowguideError(f"{path}: not a weights-only torch file: {_torch_reason(e)}") from None
    if isinstance(sd, dict):
        for key in ("ema", "model"):
            if key in sd and isinstance(sd[key], dict):
                sd = sd[key]
                break
    if not isinstance(sd, dict) or "x_embedder.proj.weight" not in sd:
        raise WindowguideError(f"{path}: not a DiT state dict (no x_embedder.proj.weight)")
    bad = [k for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise WindowguideError(f"{path}: entries that are not named tensors: {[str(k)[:40] for k in bad[:3]]}")
    for k, v in sd.items():       # a declared shape must be backed by its storage's bytes
        if not v.is_contiguous() or v.numel() * v.element_size() > v.untyped_storage().nbytes():
            raise WindowguideError(f"{path}: tensor {k} of shape {tuple(v.shape)} is not a plain contiguous tensor "
                                   f"backed by its data (strides {v.stride()})")
    return sd


def _torch_reason(e: Exception) -> str:
    """torch's refusal without its advice to turn weights_only off (never do that for a file from
    elsewhere): the paragraph that names the offending global, whole."""
    parts = [" ".join(p.split()) for p in str(e).split("\n\n") if p.strip()]
    kept = [p for p in parts if "weights_only" not in p and not p.startswith("Check the documentation")
            and "Weights only load failed" not in p]
    return f"{type(e).__name__}: {' '.join(kept) if kept else (parts[0][:300] if parts else 'no detail')}"


def dit_config(sd: dict, heads: int | None = None) -> dict:
    """DiTTransformer2DModel arguments read off the weights' shapes, checked against ``LIMITS``."""
    try:
        config = _config(sd, heads)
    except WindowguideError:
        raise
    except (KeyError, IndexError, AttributeError, TypeError, ValueError) as e:
        raise WindowguideError(f"not a DiT state dict windowguide can read: {type(e).__name__} {e}") from None
    over = {k: v for k, v in (("num_layers", config["num_layers"]), ("in_channels", config["in_channels"]),
                              ("patch_size", config["patch_size"]),
                              ("classes", config["num_embeds_ada_norm"] + 1),
                              ("hidden", config["num_attention_heads"] * config["attention_head_dim"]),
                              ("tokens", (config["sample_size"] // config["patch_size"]) ** 2)) if v > LIMITS[k]}
    if over:
        raise WindowguideError(f"the DiT file declares {over}; accepted at most {({k: LIMITS[k] for k in over})}")
    if config["num_embeds_ada_norm"] < 1:
        raise WindowguideError(f"the DiT class table has {config['num_embeds_ada_norm'] + 1} rows; it needs the "
                               f"classes and the null class")
    return config


def _config(sd: dict, heads: int | None) -> dict:
    w = sd["x_embedder.proj.weight"]
    if w.ndim != 4 or w.shape[2] != w.shape[3]:
        raise ValueError(f"x_embedder.proj.weight of shape {tuple(w.shape)}, expected [width, C, p, p]")
    hidden, channels, patch = w.shape[0], w.shape[1], w.shape[2]
    indices = {int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))}
    if not indices:
        raise ValueError("no blocks.N. weights")
    layers = max(indices) + 1
    if indices != set(range(layers)):
        raise ValueError(f"blocks {sorted(set(range(layers)) - indices)[:5]} are missing (the file names block "
                         f"{max(indices)})")
    heads = heads or HEADS_BY_WIDTH.get(hidden)
    if not heads or hidden % heads:
        raise WindowguideError(f"DiT width {hidden}: the head count is not in the weights; known widths "
                               f"{sorted(HEADS_BY_WIDTH)}")
    tokens = sd["pos_embed"].shape[1] if "pos_embed" in sd else None
    if tokens is None or math.isqrt(tokens) ** 2 != tokens:
        raise WindowguideError("DiT state dict: pos_embed is missing or not square; cannot tell the input size")
    return dict(num_attention_heads=heads, attention_head_dim=hidden // heads, in_channels=channels,
                out_channels=sd["final_layer.linear.weight"].shape[0] // patch ** 2, num_layers=layers,
                sample_size=math.isqrt(tokens) * patch, patch_size=patch,
                num_embeds_ada_norm=sd["y_embedder.embedding_table.weight"].shape[0] - 1)


def to_diffusers(sd: dict, layers: int) -> dict[str, torch.Tensor]:
    """The renaming of the module docstring."""
    out = {"pos_embed.proj.weight": sd["x_embedder.proj.weight"], "pos_embed.proj.bias": sd["x_embedder.proj.bias"],
           "proj_out_1.weight": sd["final_layer.adaLN_modulation.1.weight"],
           "proj_out_1.bias": sd["final_layer.adaLN_modulation.1.bias"],
           "proj_out_2.weight": sd["final_layer.linear.weight"], "proj_out_2.bias": sd["final_layer.linear.bias"]}
    for i in range(layers):
        b, o = f"blocks.{i}.", f"transformer_blocks.{i}."
        for p in ("weight", "bias"):
            out[f"{o}norm1.emb.timestep_embedder.linear_1.{p}"] = sd[f"t_embedder.mlp.0.{p}"]
            out[f"{o}norm1.emb.timestep_embedder.linear_2.{p}"] = sd[f"t_embedder.mlp.2.{p}"]
            out[f"{o}norm1.linear.{p}"] = sd[f"{b}adaLN_modulation.1.{p}"]
            q, k, v = sd[f"{b}attn.qkv.{p}"].chunk(3, dim=0)
            out.update({f"{o}attn1.to_q.{p}": q, f"{o}attn1.to_k.{p}": k, f"{o}attn1.to_v.{p}": v})
            out[f"{o}attn1.to_out.0.{p}"] = sd[f"{b}attn.proj.{p}"]
            out[f"{o}ff.net.0.proj.{p}"] = sd[f"{b}mlp.fc1.{p}"]
            out[f"{o}ff.net.2.{p}"] = sd[f"{b}mlp.fc2.{p}"]
        out[f"{o}norm1.emb.class_embedder.embedding_table.weight"] = sd["y_embedder.embedding_table.weight"]
    return {k: v.contiguous().clone() for k, v in out.items()}


def match_original_timesteps(model):
    """Make a diffusers DiTTransformer2DModel use the original DiT's timestep frequencies
    10000^(-i / half) (diffusers: 10000^(-i / (half - 1))); returns the model."""
    for block in model.transformer_blocks:
        block.norm1.emb.time_proj.downscale_freq_shift = 0
    return model


def convert_dit(path: str, out_dir: str, heads: int | None = None):
    """Write a diffusers DiTTransformer2DModel folder (config.json + safetensors); returns the model."""
    from diffusers import DiTTransformer2DModel
    sd = read_dit(path)
    try:
        config = dit_config(sd, heads)
        converted = to_diffusers(sd, config["num_layers"])
    except WindowguideError as e:
        raise WindowguideError(f"{path}: {e}") from None
    except (KeyError, IndexError, RuntimeError) as e:
        raise WindowguideError(f"{path}: the DiT weights do not map onto diffusers' DiT (missing or misshapen "
                               f"{' '.join(str(e).split())[:200]})") from None
    with torch.device("meta"):                 # shapes first: nothing is allocated for a file that does not fit
        expected = {k: tuple(v.shape) for k, v in DiTTransformer2DModel(**config).state_dict().items()}
    got = {k: tuple(v.shape) for k, v in converted.items()}
    if expected != got:
        wrong = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
        raise WindowguideError(f"{path}: the DiT weights do not fit {config} (missing "
                               f"{sorted(set(expected) - set(got))[:3]}, unexpected {sorted(set(got) - set(expected))[:3]}, "
                               f"shape {wrong[:3]})")
    model = DiTTransformer2DModel(**config)
    model.load_state_dict(converted, strict=True)
    # the folder says that it is the original network, whose timestep frequencies diffusers' class lacks:
    # windowguide's loader restores them; plain diffusers warns that it ignores the key
    model.register_to_config(windowguide_timesteps="original")
    match_original_timesteps(model)
    _write_folder(model, out_dir)
    return model


def _write_folder(model, out_dir: str) -> None:
    """save_pretrained into a new folder beside ``out_dir``, read it back, then put it in place: a
    failed conversion never replaces a good folder."""
    import os
    import shutil
    import tempfile
    from diffusers import DiTTransformer2DModel
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(out_dir)}.", suffix=".tmp")
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        back = DiTTransformer2DModel.from_pretrained(tmp, local_files_only=True)
        if any(not torch.equal(a, b) for a, b in zip(back.state_dict().values(), model.state_dict().values())):
            raise WindowguideError(f"{out_dir}: the written folder does not read back as the converted network")
        if os.path.isdir(out_dir):
            old = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(out_dir)}.old.", suffix=".tmp")
            os.rmdir(old)
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


__all__ = ["read_dit", "dit_config", "to_diffusers", "convert_dit", "match_original_timesteps", "HEADS_BY_WIDTH"]
