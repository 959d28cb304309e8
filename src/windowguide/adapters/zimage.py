"""Z-Image (``ZImagePipeline``): a single-stream DiT on 2 x 2 patches of the VAE latent, a Qwen3 text
encoder whose embeddings are per-prompt lists of their own length, and a flow schedule with a dynamic
shift. Its network takes lists (one [C, 1, H, W] latent and one caption per sample), the reversed
time t_net = 1 - s (s = flow time) and returns the negated velocity; 3-axis RoPE positions are
(caption length + 1, row, col) with rows and columns counted from the image's corner.

CFG is written in the original formulation, ``guidance_scale`` s = our w (P = P_c + s (P_c - P_u), one
batch with the conditional rows first), optionally clamped: with ``cfg_normalization`` k the
combination's norm is kept <= k |P_c| (whole sample), and ``cfg_truncation`` c turns CFG off where
t_net > c. ``PipelineModel.family_guidance(g, cfg_normalization=k, cfg_truncation=c)`` puts both on
our CFG term. The condition is {embeds, mask} (the captions padded to one length; each call gets them
unpadded). A crop's positions are the canvas's at its place (``crop_positions='slice'``): rows and
columns offset by the crop's corner, per sample, so all crops of one size go in one call.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import torch

from ..denoiser import FlowDenoiser
from ..errors import WindowguideError
from ..windows import current_regions
from .base import PipelineModel, flow_sigma, negative_list, needs_parts, needs_prompt, token_shifted_sigmas, vae_decoder
from .netcall import Call, current_static, joint, rows_t, sample_of, with_sample
from .registry import Family, Patched
from ..presets import Preset, CARD


def padded(embeds: list[torch.Tensor], length: int = 0) -> dict:
    """Per-prompt caption embeddings of their own lengths as {embeds [B, L, D], mask [B, L]}, L at least
    ``length``."""
    n = max(length, *(e.shape[0] for e in embeds))
    out = embeds[0].new_zeros(len(embeds), n, embeds[0].shape[1])
    mask = torch.zeros(len(embeds), n, dtype=torch.bool, device=embeds[0].device)
    for i, e in enumerate(embeds):
        out[i, :e.shape[0]], mask[i, :e.shape[0]] = e, True
    return dict(embeds=out, mask=mask)


def captions(cond: dict) -> list[torch.Tensor]:
    """The padded captions {embeds, mask} as the per-prompt list of their own lengths Z-Image takes."""
    return [e[m] for e, m in zip(cond["embeds"], cond["mask"])]


@contextmanager
def image_positions_at(tr, corners: list[tuple[int, int]], tokens: tuple[int, int]):
    """Within the block, the n-th image grid the network makes (one per sample, in order) starts at
    ``corners[n]`` (row, col in tokens) instead of (0, 0): the crop's place on the canvas."""
    queue = list(corners)
    grid = type(tr).create_coordinate_grid

    def create_coordinate_grid(size, start=None, device=None):
        if queue and tuple(size) == (1, *tokens) and start is not None:
            top, left = queue.pop(0)
            start = (start[0], start[1] + top, start[2] + left)
        return grid(size, start, device)
    tr.create_coordinate_grid = create_coordinate_grid
    try:
        yield
    finally:
        del tr.create_coordinate_grid


def max_latent(tr) -> tuple[int, int]:
    """The largest canvas (latent rows, columns) whose image positions Z-Image's RoPE table covers
    (``axes_lens`` of the rows and columns, in tokens, times the patch)."""
    patch = tr.config.all_patch_size[0]
    lens = tr.config.axes_lens
    return int(lens[1]) * patch, int(lens[2]) * patch


def check_positions(tr, corners, tokens: tuple[int, int]) -> None:
    """Refuse crops whose positions run past the RoPE table (an IndexError deep in the network otherwise)."""
    lens = tr.config.axes_lens
    bottom = max(t for t, _ in corners) + tokens[0]
    right = max(l for _, l in corners) + tokens[1]
    if bottom > lens[1] or right > lens[2]:
        rows, cols = max_latent(tr)
        raise WindowguideError(f"Z-Image's positions reach row {bottom}, column {right} (tokens) but its RoPE table "
                               f"(axes_lens) has {lens[1]} x {lens[2]}; accepted: canvases up to {rows} x {cols} "
                               f"latent pixels (less a window for a circular one)")


def zimage_call(tr, crop_positions: str = "slice") -> Callable:
    """The network as call(x [B, C, H, W], t_net [B], {embeds, mask}) -> its raw output [B, C, H, W]."""
    patch = tr.config.all_patch_size[0]

    def call(x, t, cond):
        args = (list(x.to(tr.dtype).unsqueeze(2).unbind(0)), t.to(tr.dtype), captions(cond))
        regions = current_regions()
        if crop_positions == "slice" and regions is not None:
            corners = [(int(r[0]) // patch, int(r[1]) // patch) for r in regions]
            check_positions(tr, corners, (x.shape[-2] // patch, x.shape[-1] // patch))
            with image_positions_at(tr, corners, (x.shape[-2] // patch, x.shape[-1] // patch)):
                out = tr(*args, **current_static()).sample
        else:
            out = tr(*args, **current_static()).sample
        return torch.stack([o.float() for o in out]).squeeze(2)
    return call


def zimage_flow_model(tr, crop_positions: str = "slice") -> Callable:
    """model(x_t, s, cond) -> velocity for ``FlowDenoiser``: t_net = 1 - s, velocity = -output."""
    call = zimage_call(tr, crop_positions)
    return lambda x, s, cond: -call(x, 1 - s, cond)


def read_call(net, kwargs: dict) -> Call | None:
    """One of the pipeline's network calls as a ``Call`` (module docstring); None for a call left alone."""
    if kwargs.get("controlnet_block_samples") is not None:
        return None
    if kwargs.get("siglip_feats") is not None or any(isinstance(v, list) for v in kwargs["x"]):
        raise WindowguideError("Z-Image with reference images (omni, editing): a crop cannot take them; "
                               "windowguide guides text-to-image calls only")
    xs = kwargs["x"]
    if any(v.shape != xs[0].shape or v.shape[1] != 1 for v in xs):
        raise WindowguideError("Z-Image calls with images of different sizes or several frames cannot be guided")
    x = torch.stack(xs).squeeze(2)
    dtype = xs[0].dtype
    return Call("zimage", x, rows_t(kwargs["t"], x.shape[0], x.device), padded(list(kwargs["cap_feats"])),
                lambda out: torch.stack(list(sample_of(out))).squeeze(2),
                lambda out, p: with_sample(out, p, lambda q: [r.unsqueeze(1).to(dtype) for r in q]),
                joint(kwargs))


def normalised_cfg(k: float) -> Callable:
    """Z-Image's cfg_normalization in D-space: with v = (x_t - D) / t, the guided velocity's norm (whole
    sample) is kept <= k |v_ref|:  v <- v min(1, k |v_ref| / |v|)."""
    def renorm(x, sigma, out, ref):
        s = sigma.view(-1, 1, 1, 1).to(out.dtype)
        t, x_t = s / (1 + s), x / (1 + s)
        v, v_ref = (x_t - out) / t, (x_t - ref) / t
        n, n_ref = v.flatten(1).norm(dim=1), v_ref.flatten(1).norm(dim=1)
        factor = torch.where(n > k * n_ref, k * n_ref / n, torch.ones_like(n)).view(-1, 1, 1, 1)
        return x_t - t * v * factor
    return renorm


def family_guidance(g, cfg_normalization: float | bool = False, cfg_truncation: float = 1.0):
    """Our CFG terms with the pipeline's cfg_normalization (a clamp of the guided norm) and
    cfg_truncation (CFG on only where t_net = 1 - s <= c, i.e. sigma >= (1 - c) / c)."""
    from dataclasses import replace
    from ..guidance import CFG, Guidance
    terms = []
    for t in Guidance.of(g):
        if isinstance(t, CFG):
            if cfg_normalization and float(cfg_normalization) > 0:
                t = replace(t, renorm=normalised_cfg(float(cfg_normalization)))
            if cfg_truncation is not None and float(cfg_truncation) < 1:
                c = float(cfg_truncation)
                t = replace(t, sigma_lo=max(t.sigma_lo, (1 - c) / c if c > 0 else float("inf")))
        terms.append(t)
    return Guidance(tuple(terms))


def build(pipe, crop_positions: str = "slice", guidance_embed=None) -> PipelineModel:
    """The ``PipelineModel`` of this family's pipeline (module docstring): denoiser, encode, schedule, decode."""
    tr = pipe.transformer
    vae = pipe.vae
    patch = tr.config.all_patch_size[0]

    @torch.no_grad()
    def encode(prompt=None, negative_prompt="", class_labels=None, max_sequence_length: int = 512):
        needs_prompt("Z-Image", prompt, class_labels)
        needs_parts(pipe, "Z-Image", "text_encoder", "tokenizer")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        negatives = negative_list(negative_prompt, len(prompts))
        pos, neg = pipe.encode_prompt(prompts, device=tr.device, negative_prompt=negatives,
                                      max_sequence_length=max_sequence_length)
        n = max(e.shape[0] for e in pos + neg)        # one length: CFG stacks cond and null in one batch here
        return padded(pos, n), padded(neg, n)


    size = 2 * (1024 // (2 * pipe.vae_scale_factor))
    m = PipelineModel("zimage", FlowDenoiser(zimage_flow_model(tr, crop_positions), time_scale=1.0, multiple=patch),
                      tr.config.in_channels, (size, size), patch, encode,
                      vae_decoder(vae, shift=vae.config.shift_factor or 0.0),
                      vae_factor=pipe.vae_scale_factor, max_latent=max_latent(tr),
                      sigma_schedule=token_shifted_sigmas(pipe.scheduler, (size, size)),
                      guidance_convention=family_guidance)
    m.denoiser.canvas_positions = crop_positions == "slice"     # panorama windows at their place
    return m


def cfg_now(pipe, call) -> bool:
    """Whether this call holds CFG's rows: the pipeline drops them where t_net > cfg_truncation."""
    c = getattr(pipe, "_cfg_truncation", None)
    return c is None or float(c) > 1 or float(call.t[0]) <= float(c)


FAMILY = Family(
    kind="zimage", pipelines=("ZImagePipeline",), networks=("ZImageTransformer2DModel",), build=build,
    read_call=read_call, model=lambda net, crop_positions="slice", vae_factor=None: zimage_call(net, crop_positions),
    multiple=lambda net: int(net.config.all_patch_size[0]), sigma=lambda t, schedule=None: flow_sigma(1 - t, 1.0),
    network_t=lambda ts: (1000 - ts) / 1000, flow=True,
    guider_layout=lambda call, out, delta: -delta,     # the modular loop hands its guider -stack(outputs)
    patched={"ZImagePipeline": Patched(rows="cond_first", offset=0.0, cfg_now=cfg_now)})

# the model card's and the papers' settings for this family (``windowguide sample --preset NAME``)
PRESETS = {
    "z-image": Preset("cfg:w=5", "Z-Image base (pipeline folder)", CARD.format(pipeline="ZImagePipeline"),
                      "guidance_scale 5.0 in the original formulation P_c + s (P_c - P_u): w = s = 5; 50 steps",
                      steps=50, sampler="flow_euler"),
}
