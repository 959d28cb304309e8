"""Qwen-Image (``QwenImagePipeline``): an MMDiT predicting the flow velocity on FLUX's 2 x 2-packed
latents, a dynamic shift by image tokens, a Qwen2.5-VL text encoder, and a 3-D RoPE whose image
positions are centred on the canvas (rows -(h - h//2) .. h//2 - 1, the same for columns; text
positions start after max(h//2, w//2)). The condition is {embeds[, mask][, guidance]}.

Its CFG is "true CFG" with a norm correction, per packed token (2 x 2 latent pixels, all channels):

    P = P_u + s (P_c - P_u),    P <- P |P_c| / |P|           (``true_cfg_scale`` s; our w = s - 1)

and windowguide's other terms shift the conditional prediction before it (the patch adds Delta / s to
P_c, the pipeline then combines and renormalises to |P_c + Delta / s|); ``renorm_cfg`` is that
rescaling in D-space, which ``PipelineModel.family_guidance`` puts on the CFG term of a recipe so that
our sampler, the patch and the guiders agree. With crop_positions='slice' a crop's call gets the
canvas's RoPE at its place (the centred grid of the whole canvas, sliced), one call per window place.
Its VAE is 3-D (one frame here): decoded in one piece, without the exact tiled decode of the 2-D VAEs.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import torch

from ..denoiser import FlowDenoiser
from ..errors import WindowguideError
from .base import PipelineModel, token_shifted_sigmas, flow_sigma, needs_parts, needs_prompt, to_uint8
from .flux import pack, packed_model, unpack
from .netcall import Call, current_static, joint, rows_t, sample_of, with_sample
from .registry import Family, Patched
from ..presets import Preset, CARD


def token_norm(v: torch.Tensor) -> torch.Tensor:
    """|v| per packed token (each 2 x 2 patch over all channels), broadcast back to [B, 1, H, W]."""
    b, c, h, w = v.shape
    n = v.view(b, c, h // 2, 2, w // 2, 2).pow(2).sum(dim=(1, 3, 5), keepdim=True).sqrt()
    return n.expand(b, 1, h // 2, 2, w // 2, 2).reshape(b, 1, h, w)


def renorm_cfg(x: torch.Tensor, sigma: torch.Tensor, out: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Qwen-Image's norm correction in D-space: with t = sigma / (1 + sigma), x_t = x / (1 + sigma) and
    the velocities v = (x_t - D) / t of the guided ``out`` and the reference ``ref``,
        D' = x_t - t v_out |v_ref| / |v_out|     (norms per packed token)."""
    s = sigma.view(-1, 1, 1, 1).to(out.dtype)
    t, x_t = s / (1 + s), x / (1 + s)
    v_out, v_ref = (x_t - out) / t, (x_t - ref) / t
    return x_t - t * v_out * (token_norm(v_ref) / token_norm(v_out))


@contextmanager
def rope_at(pos_embed, canvas: tuple[int, int], top: int, left: int):
    """Within the block, ``pos_embed`` gives a crop of the token grid at (top, left) of a canvas of
    ``canvas`` tokens the canvas's own frequencies there (and the canvas's text offset)."""
    if type(pos_embed).__name__ != "QwenEmbedRope" or not pos_embed.scale_rope:
        raise WindowguideError(f"Qwen-Image crops at their place need the centred QwenEmbedRope; this transformer "
                               f"has {type(pos_embed).__name__} (use crop_positions='stretch')")
    ch, cw = canvas

    def forward(video_fhw, device=None, max_txt_seq_len=None):
        fhw = video_fhw[0] if isinstance(video_fhw, list) else video_fhw
        f, h, w = fhw[0] if isinstance(fhw, list) else fhw
        full = pos_embed._compute_video_freqs(f, ch, cw, 0, device).reshape(f, ch, cw, -1)
        rows = torch.arange(top, top + h, device=full.device) % ch      # a circular canvas's last window wraps
        cols = torch.arange(left, left + w, device=full.device) % cw
        vid = full[:, rows][:, :, cols].reshape(f * h * w, -1)
        start = max(ch // 2, cw // 2)
        return vid, pos_embed._get_device_freqs(device)[0][start:start + int(max_txt_seq_len)]
    pos_embed.forward = forward
    try:
        yield
    finally:
        del pos_embed.forward


def qwen_model(tr, crop_positions: str = "slice", guidance_embed: float | None = None) -> Callable:
    """Qwen-Image's transformer as model(x, t, {embeds[, mask][, guidance]}) -> velocity, unpacked."""
    def call(x, t, cond, top, left, canvas):
        h, w = x.shape[-2:]
        g = None
        if tr.config.guidance_embeds:
            g = cond["guidance"] if "guidance" in cond else torch.full((x.shape[0],), guidance_embed, device=x.device)
        kwargs = dict(hidden_states=pack(x).to(tr.dtype), timestep=t.to(tr.dtype), guidance=g,
                      encoder_hidden_states=cond["embeds"].to(tr.dtype), encoder_hidden_states_mask=cond.get("mask"),
                      img_shapes=[[(1, h // 2, w // 2)]] * x.shape[0], **current_static())
        if canvas is None:
            out = tr(**kwargs).sample
        else:
            with rope_at(tr.pos_embed, (canvas[0] // 2, canvas[1] // 2), top // 2, left // 2):
                out = tr(**kwargs).sample
        return unpack(out.float(), h, w)
    return packed_model(call, crop_positions)


def read_call(net, kwargs: dict) -> Call | None:
    """One of the pipeline's network calls as a ``Call`` (module docstring); None for a call left alone."""
    if kwargs.get("controlnet_block_samples") is not None:
        return None
    shapes = kwargs.get("img_shapes")
    if not shapes or len(shapes[0]) != 1 or kwargs.get("additional_t_cond") is not None:
        raise WindowguideError("Qwen-Image with reference images (editing, layers): a crop cannot take them; "
                               "windowguide guides text-to-image calls only")
    _, th, tw = shapes[0][0]
    h, w = 2 * th, 2 * tw
    x = unpack(kwargs["hidden_states"], h, w)
    cond = dict(embeds=kwargs["encoder_hidden_states"])
    if kwargs.get("encoder_hidden_states_mask") is not None:
        cond["mask"] = kwargs["encoder_hidden_states_mask"]
    if kwargs.get("guidance") is not None:
        cond["guidance"] = rows_t(kwargs["guidance"], x.shape[0], x.device)
    return Call("qwenimage", x, rows_t(kwargs["timestep"], x.shape[0], x.device), cond,
                lambda out: unpack(sample_of(out), h, w),
                lambda out, p: with_sample(out, p, lambda q: pack(q).to(sample_of(out).dtype)),
                joint(kwargs, "attention_kwargs"))


def build(pipe, crop_positions: str = "slice", guidance_embed: float | None = None) -> PipelineModel:
    """The ``PipelineModel`` of this family's pipeline (module docstring): denoiser, encode, schedule, decode."""
    tr = pipe.transformer
    vae = pipe.vae
    model = qwen_model(tr, crop_positions, 1.0 if guidance_embed is None else guidance_embed)

    @torch.no_grad()
    def encode(prompt=None, negative_prompt="", class_labels=None, max_sequence_length: int = 512):
        needs_prompt("Qwen-Image", prompt, class_labels)
        needs_parts(pipe, "Qwen-Image", "text_encoder", "tokenizer")
        pos, pos_mask = pipe.encode_prompt(prompt, device=tr.device, max_sequence_length=max_sequence_length)
        neg, neg_mask = pipe.encode_prompt(negative_prompt or "", device=tr.device, max_sequence_length=max_sequence_length)
        pad = max(pos.shape[1], neg.shape[1])          # one length for both: CFG stacks them in one batch here
        return _padded(pos, pos_mask, pad), _padded(neg, neg_mask, pad)


    @torch.no_grad()
    def decode(latents):
        z = latents.to(vae.device, vae.dtype)[:, :, None]
        mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1).to(z.device, z.dtype)
        inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1).to(z.device, z.dtype)
        x = vae.decode(z / inv_std + mean).sample[:, :, 0]
        return to_uint8((x.float() / 2 + 0.5).clamp(0, 1))

    size = getattr(pipe, "default_sample_size", 128)
    m = PipelineModel("qwenimage", FlowDenoiser(model, time_scale=1.0, multiple=2), tr.config.in_channels // 4,
                      (size, size), 2, encode, decode,
                      vae_factor=getattr(pipe, "vae_scale_factor", 8), cfg_renorm=renorm_cfg,
                      sigma_schedule=token_shifted_sigmas(pipe.scheduler, (size, size)))
    m.denoiser.canvas_positions = crop_positions == "slice"     # panorama windows at their place
    return m


def _padded(embeds, mask, length):
    """Embeddings and their mask padded with zeros (masked out) to ``length`` tokens."""
    if mask is None:
        mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
    extra = length - embeds.shape[1]
    if extra:
        embeds = torch.cat([embeds, embeds.new_zeros(embeds.shape[0], extra, embeds.shape[2])], 1)
        mask = torch.cat([mask, mask.new_zeros(mask.shape[0], extra)], 1)
    return dict(embeds=embeds, mask=mask)


FAMILY = Family(
    kind="qwenimage", pipelines=("QwenImagePipeline",), networks=("QwenImageTransformer2DModel",), build=build,
    read_call=read_call, model=lambda net, crop_positions="slice", vae_factor=None: qwen_model(net, crop_positions),
    multiple=lambda net: 2, sigma=lambda t, schedule=None: flow_sigma(t, 1.0), network_t=lambda ts: ts / 1000,
    flow=True, patched={"QwenImagePipeline": Patched(scale="true_cfg_scale", rows="separate", negative=True)})

# the model card's and the papers' settings for this family (``windowguide sample --preset NAME``)
PRESETS = {
    "qwen-image": Preset("cfg:w=3", "Qwen-Image (pipeline folder)", CARD.format(pipeline="QwenImagePipeline"),
                         "true_cfg_scale 4.0 -> w 3, with Qwen-Image's norm correction per token; 50 steps",
                         steps=50, sampler="flow_euler"),
}
