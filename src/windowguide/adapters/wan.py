"""Wan 2.1 / 2.2 text-to-video (``WanPipeline``, one transformer): a 3-D DiT predicting the flow velocity on
[B, 16, T, H, W] video latents (the VAE compresses time by 4 and space by 8), conditioned on UMT5
embeddings; its CFG is diffusers' P = P_u + s (P_c - P_u) with two separate calls (our w = s - 1). Its
3-D RoPE (frequencies over frames, rows and columns, ``WanRotaryPosEmbed``) is given to a crop at its true
place: the canvas's frequencies at the crop's frames, rows and columns, one set per row of the call
(``rope_at``), so a crop in time or space sees the positions it has in the whole video. The schedule is
the pipeline scheduler's own sigmas (FlowMatchEuler or UniPC's flow sigmas with its shift); windowguide's
``flow_euler`` takes those steps (UniPC's multistep update is not reproduced: give the pipeline a
``FlowMatchEulerDiscreteScheduler`` for step-for-step equality). A Wan 2.2 pipeline with a second,
low-noise transformer (``transformer_2``) is refused by name."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import torch

from ..denoiser import FlowDenoiser
from ..errors import WindowguideError
from ..windows import current_regions
from .base import Clip, PipelineModel, flow_sigma, needs_parts, needs_prompt
from .netcall import Call, current_static, joint, rows_t, sample_of, same_dtype_write
from .registry import Family, Patched

T_MAX = 1000           # Wan's transformer takes t = 1000 s


def wan_rope(rope, shape: tuple[int, int, int], regions: torch.Tensor | None, n: int):
    """(cos, sin) of Wan's RoPE for ``n`` rows of latent crops of ``shape`` (T, H, W); with ``regions``
    (``Layout.regions``: the crop's start in latent frames, rows, columns, then the canvas's size),
    each row's frequencies are the canvas's at the crop's place: f = freqs[start / p + i], per axis."""
    p_t, p_h, p_w = rope.patch_size
    dims = [rope.t_dim, rope.h_dim, rope.w_dim]
    cos_axes, sin_axes = rope.freqs_cos.split(dims, dim=1), rope.freqs_sin.split(dims, dim=1)
    counts = (shape[0] // p_t, shape[1] // p_h, shape[2] // p_w)
    starts = torch.zeros(n, 3, dtype=torch.long) if regions is None else _starts(regions, (p_t, p_h, p_w))
    # rows at the same place (CFG's pair, the samples of one window) share one set of frequencies
    places, row_of = torch.unique(starts, dim=0, return_inverse=True)
    cos_rows, sin_rows = [], []
    for row in places.tolist():
        parts_c, parts_s = [], []
        for a in range(3):
            idx = torch.arange(row[a], row[a] + counts[a], device=rope.freqs_cos.device)
            view = [1, 1, 1, -1]
            view[a] = counts[a]
            parts_c.append(cos_axes[a][idx].view(view).expand(*counts, -1))
            parts_s.append(sin_axes[a][idx].view(view).expand(*counts, -1))
        cos_rows.append(torch.cat(parts_c, -1).reshape(1, -1, 1, sum(dims)))
        sin_rows.append(torch.cat(parts_s, -1).reshape(1, -1, 1, sum(dims)))
    return torch.cat(cos_rows)[row_of], torch.cat(sin_rows)[row_of]


def _starts(regions: torch.Tensor, patch) -> torch.Tensor:
    """Each row's start in patches; a 2-D region (top, left, H, W) starts at frame 0."""
    r = regions.long()
    starts = r[:, :3] if r.shape[1] == 6 else torch.cat([torch.zeros_like(r[:, :1]), r[:, :2]], 1)
    if bool((starts % torch.tensor(patch)).any()):
        raise WindowguideError(f"a Wan crop must start on the patch grid {tuple(patch)} (frames, rows, columns)")
    return starts // torch.tensor(patch)


@contextmanager
def rope_at(tr, regions: torch.Tensor | None, n: int):
    """Within the block, the transformer's RoPE gives each of the call's n rows its crop's place."""
    rope = tr.rope
    if type(rope).__name__ != "WanRotaryPosEmbed":
        raise WindowguideError(f"Wan crops at their place need WanRotaryPosEmbed, this transformer has "
                               f"{type(rope).__name__}")
    original = rope.forward
    rope.forward = lambda hidden_states: wan_rope(rope, tuple(hidden_states.shape[2:]), regions,
                                                  hidden_states.shape[0])
    try:
        yield
    finally:
        rope.forward = original


def wan_model(tr, crop_positions: str = "slice") -> Callable:
    """Wan's transformer as model(x_t [B, C, T, H, W], t, {embeds}) -> velocity; with 'slice' and crops in
    progress (``windows.current_regions``) each row's RoPE is the whole video's at the crop's place."""
    def model(x, t, cond):
        regions = current_regions() if crop_positions == "slice" else None
        with rope_at(tr, regions, x.shape[0]):
            return tr(hidden_states=x.to(tr.dtype), timestep=t, encoder_hidden_states=cond["embeds"].to(tr.dtype),
                      return_dict=False, **current_static())[0].float()
    return model


def read_call(net, kwargs: dict) -> Call | None:
    """A Wan transformer call (the patch): its latents, timesteps and text embeddings."""
    x, t = kwargs["hidden_states"], kwargs["timestep"]
    if t.dim() == 2:                       # Wan 2.2 TI2V's per-token timesteps: not taken
        return None
    cond = dict(embeds=kwargs["encoder_hidden_states"])
    return Call("wan", x, rows_t(t, x.shape[0], x.device), cond, sample_of, same_dtype_write,
                joint(kwargs, "attention_kwargs"))


def scheduler_sigmas(scheduler, steps: int) -> torch.Tensor:
    """The scheduler's own flow times for ``steps`` (its shift applied) as VE sigmas, ending in 0."""
    from ..sampling import sigmas_from_flow_t
    scheduler.set_timesteps(steps)
    t = scheduler.sigmas.double().tolist()
    if t[-1] != 0:
        t = t + [0.0]
    return sigmas_from_flow_t(t[: steps + 1]).float()


def check_pipeline(pipe) -> None:
    """Refuse, by name, the Wan pipelines windowguide does not guide: Wan 2.2 with two experts (only one
    transformer would be guided, the low-noise half would run unguided), Wan 2.2 TI2V's per-token
    timesteps (``expand_timesteps``), and a pipeline without its transformer."""
    if getattr(pipe, "transformer", None) is None:
        raise WindowguideError("this Wan pipeline has no transformer (transformer=None); windowguide guides the "
                               "transformer's calls, so it needs one")
    if getattr(pipe, "transformer_2", None) is not None:
        raise WindowguideError("a Wan 2.2 pipeline with two experts (transformer_2, boundary_ratio) is not supported "
                               "yet: only one expert would be guided; a one-transformer WanPipeline is")
    if getattr(getattr(pipe, "config", None), "expand_timesteps", False):
        raise WindowguideError("a Wan 2.2 TI2V pipeline (expand_timesteps=True: a timestep per token) is not "
                               "supported yet; a WanPipeline with expand_timesteps=False is")


def build(pipe, crop_positions: str = "slice", guidance_embed=None) -> PipelineModel:
    """The ``PipelineModel`` of this family's pipeline (module docstring): denoiser, encode, schedule, decode."""
    check_pipeline(pipe)
    tr = pipe.transformer
    vae = pipe.vae
    model = wan_model(tr, crop_positions)
    p_t, p_h, p_w = tr.config.patch_size

    @torch.no_grad()
    def encode(prompt=None, negative_prompt="", class_labels=None, max_sequence_length: int = 512):
        needs_prompt("Wan", prompt, class_labels)
        needs_parts(pipe, "Wan", "text_encoder", "tokenizer")
        pos, neg = pipe.encode_prompt(prompt, negative_prompt or "", do_classifier_free_guidance=True,
                                      max_sequence_length=max_sequence_length, device=tr.device)
        return dict(embeds=pos), dict(embeds=neg)

    @torch.no_grad()
    def decode(latents):
        """Latents [B, C, T, H, W] -> uint8 video [B, F, H, W, 3] (the VAE's own normalisation undone)."""
        z = latents.to(vae.device, vae.dtype)
        mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1).to(z)
        inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1).to(z)
        x = vae.decode(z / inv_std + mean, return_dict=False)[0].float()
        return ((x / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 4, 1).cpu().numpy()

    vt = getattr(pipe, "vae_scale_factor_temporal", 4)
    vs = getattr(pipe, "vae_scale_factor_spatial", 8)
    # WanPipeline's defaults: 81 frames of 480 x 832, guidance_scale 5.0 (cfg:w=4)
    clip = Clip(frames=latent_frames(81, vt), vae_factor_temporal=vt, pixel_frames=81, patch=(p_t, p_h, p_w),
                guidance="cfg:w=4")
    m = PipelineModel("wan", FlowDenoiser(model, time_scale=T_MAX, multiple=p_h), tr.config.in_channels,
                      (480 // vs, 832 // vs), p_h, encode, decode, vae_factor=vs, clip=clip,
                      sigma_schedule=lambda steps, spacing=None, sampler=None, shape=None:
                      scheduler_sigmas(pipe.scheduler, steps))
    m.denoiser.canvas_positions = crop_positions == "slice"     # windows at their place in the video
    return m


def latent_frames(frames: int, temporal: int = 4) -> int:
    """Latent frames of a video of ``frames`` frames: (frames - 1) / temporal + 1 (frames = 4k + 1)."""
    if frames < 1 or (frames - 1) % temporal:
        raise WindowguideError(f"--frames {frames}: accepted: {temporal}k + 1 frames (e.g. 17, 33, 81), as Wan's "
                               f"VAE needs")
    return (frames - 1) // temporal + 1


FAMILY = Family(
    kind="wan", pipelines=("WanPipeline",), networks=("WanTransformer3DModel",), build=build,
    read_call=read_call, model=lambda net, crop_positions="slice", vae_factor=None: wan_model(net, crop_positions),
    multiple=lambda net: int(net.config.patch_size[1]), sigma=lambda t, schedule=None: flow_sigma(t, T_MAX),
    flow=True, patched={"WanPipeline": Patched(rows="separate", reads_cfg=True)}, check=check_pipeline)
