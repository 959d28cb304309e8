"""One entry point from a loaded diffusers pipeline to what windowguide's samplers need.

    import windowguide as wg
    m = wg.from_pipeline(pipe)                      # DiTPipeline, StableDiffusionPipeline, DDPMPipeline, ...
    cond, null = m.encode(class_labels=[207, 360])  # or m.encode(prompt="...", negative_prompt="")
    x = wg.sample(m.denoiser, m.shape(), seeds=[0, 1], sampler="ddim", steps=50, sigmas=m.sigmas(50),
                  guidance=wg.CFG(3.0, null=null), cond=cond)
    images = m.decode(m.pipeline_latents(x, m.sigmas(50)))   # uint8 [N, H, W, 3]

Families of this version: ``StableDiffusionPipeline`` / ``StableDiffusionPanoramaPipeline`` (eps or v
prediction, prompt embeddings), ``DiTPipeline`` (class labels, null class 1000; the learned-variance
channels are dropped, as the pipeline does with its schedulers), ``DDPMPipeline`` / ``DDIMPipeline``
(``UNet2DModel``, unconditional, pixel space), ``StableDiffusion3Pipeline`` (flow matching with the
scheduler's shift; the condition is {embeds, pooled}; ``skip_layers(...)`` gives the negative of
skip-layer guidance), ``StableDiffusionXLPipeline`` ({embeds, pooled}; the time ids describe each
crop: the canvas as the original size, the crop's offset and size), ``PixArtAlphaPipeline`` /
``PixArtSigmaPipeline`` ({embeds, mask} of T5; learned variance dropped), ``FluxPipeline`` (latents
unpacked for windowguide, packed per call with the crop's image ids; dynamic shift; true CFG with a
negative prompt, the guidance embedding of FLUX.1-dev as an input). Others are refused by name.

Weight convention: diffusers' ``guidance_scale`` s is our w = s - 1. Crops (SWG, fusion windows) on
DiT go through diffusers' ``PatchEmbed``, which gives a crop the sin-cos grid of its own size
stretched over the trained range (``interpolation`` of positions, comparable to the M-SWG authors'
bicubic resize of the trained embedding); a crop must be a multiple of the patch size.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from ..denoiser import Denoiser, EpsDenoiser, VDenoiser
from ..errors import WindowguideError
from ..windows import current_regions
from .diffusers import schedule_of

ORIGINAL_TIMESTEPS_KEY = "windowguide_timesteps"     # config key of converted DiT folders
FAMILIES = ("StableDiffusionPipeline", "StableDiffusionPanoramaPipeline", "StableDiffusionXLPipeline",
            "StableDiffusion3Pipeline", "FluxPipeline", "PixArtAlphaPipeline", "PixArtSigmaPipeline", "DiTPipeline", "DDPMPipeline",
            "DDIMPipeline")


@dataclass
class PipelineModel:
    """What sampling needs from a pipeline: the EDM-form denoiser, its schedule, conditions, decoding."""
    family: str
    denoiser: Denoiser
    channels: int
    size: tuple[int, int]              # the trained latent (or pixel) size
    multiple: int                      # a crop's side must be a multiple of this (in latent pixels)
    encode: Callable[..., tuple[Any, Any]]
    decode: Callable[[torch.Tensor], np.ndarray]
    num_classes: int = 0
    extras: dict = field(default_factory=dict)

    def shape(self, height: int | None = None, width: int | None = None) -> tuple[int, int, int]:
        """(C, H, W) of a sample, the trained size by default (in latent pixels)."""
        h, w = height or self.size[0], width or self.size[1]
        if h % self.multiple or w % self.multiple:
            raise WindowguideError(f"{self.family}: a {h}x{w} latent is not a multiple of {self.multiple}")
        if self.extras.get("square_only") and (h != w or h > self.size[0]):
            raise WindowguideError(f"{self.family}: a {h}x{w} latent cannot run: diffusers' DiT un-patchifies square "
                                   f"latents only, up to its positional embedding's {self.size[0]}x{self.size[1]}")
        return (self.channels, h, w)

    def sigmas(self, steps: int, spacing: str | None = None, sampler: str | None = None) -> torch.Tensor:
        """The pipeline scheduler's own timesteps as a VE sigma schedule, ending in 0 or (diffusers'
        ``set_alpha_to_one=False``) in the sigma of t = 0; for ``sampler='ddim'`` with trailing or
        linspace spacing, ending where diffusers' last DDIM step goes (``VPSchedule.ddim_targets``)."""
        sigmas = self.denoiser.schedule.step_sigmas(steps, spacing).float()
        targets = self.denoiser.schedule.ddim_targets(steps, spacing) if sampler == "ddim" else None
        if targets is not None:
            sigmas[-1] = float(targets[-1])
        return sigmas

    def sampler_options(self, sampler: str, steps: int, spacing: str | None = None) -> dict:
        """What ``wg.sample`` needs to take the steps of the pipeline's own scheduler: its x0 clipping
        or dynamic thresholding (``x0_clip``, DDIM and DDPM) and DDIM's step targets (``targets``)."""
        options = {}
        if sampler in ("ddim", "ddpm") and self.extras.get("x0_clip") is not None:
            options["x0_clip"] = self.extras["x0_clip"]
        if sampler == "ddim" and getattr(self.denoiser, "schedule", None) is not None:
            targets = self.denoiser.schedule.ddim_targets(steps, spacing)
            if targets is not None:
                options["targets"] = targets.float()
        return options

    @staticmethod
    def pipeline_latents(x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
        """Our VE state at the last sigma as the pipeline's latents: x_vp = x / sqrt(1 + sigma_last^2)
        (the same when the schedule ends in 0; SD's DDIM ends at t = 0, a 4e-4 relative scale)."""
        return x / (1 + float(sigmas[-1]) ** 2) ** 0.5


def scheduler_x0_clip(scheduler: Any) -> dict | None:
    """The x0 treatment a diffusers scheduler's config asks for: dynamic thresholding (which takes
    precedence, as in its ``step``), clipping to ``clip_sample_range``, or None."""
    c = getattr(scheduler, "config", None)
    if c is None:
        return None
    if getattr(c, "thresholding", False):
        return dict(kind="threshold", ratio=float(c.dynamic_thresholding_ratio), max=float(c.sample_max_value))
    if getattr(c, "clip_sample", False):
        return dict(kind="clip", range=float(getattr(c, "clip_sample_range", 1.0)))
    return None


def from_pipeline(pipe: Any, crop_positions: str = "slice", guidance_embed: float | None = 3.5) -> PipelineModel:
    """The ``PipelineModel`` of a loaded diffusers pipeline (see the module docstring for the families).

    ``crop_positions`` (DiT, FLUX): a crop's positional input. 'slice' (default): the crop's part of
    the whole canvas's grid, its true location; 'stretch': DiT: the sin-cos grid of the crop's size
    spread over the trained range (diffusers' own, like the M-SWG authors' resize of the trained
    embedding), FLUX: the ids of the crop's own grid. Default 'slice' because, measured on a small DiT
    trained on mirror (``windowguide bench positions``), a crop's prediction is then 2.5 to 3.5 times
    closer to the whole image's prediction of that region at t <= 300: the crop loses long-range
    context, not also its position (SWG's weak model should err like the model, only more).
    FLUX with 'slice' makes one call per window position, 'stretch' one call for all crops. ``guidance_embed``: FLUX.1-dev's distilled guidance
    input (the pipeline's ``guidance_scale``; not a CFG, no extra evaluation)."""
    name = type(pipe).__name__
    if crop_positions not in ("stretch", "slice"):
        raise WindowguideError(f"crop_positions {crop_positions!r}: accepted: 'stretch', 'slice'")
    builders = {"StableDiffusionPipeline": lambda: _stable_diffusion(pipe),
                "StableDiffusionPanoramaPipeline": lambda: _stable_diffusion(pipe),
                "DiTPipeline": lambda: _dit(pipe, crop_positions), "StableDiffusion3Pipeline": lambda: _sd3(pipe),
                "StableDiffusionXLPipeline": lambda: _sdxl(pipe), "PixArtAlphaPipeline": lambda: _pixart(pipe),
                "PixArtSigmaPipeline": lambda: _pixart(pipe), "FluxPipeline": lambda: _flux(pipe, crop_positions, guidance_embed),
                "DDPMPipeline": lambda: _unet2d(pipe), "DDIMPipeline": lambda: _unet2d(pipe)}
    if name in builders:
        m = builders[name]()
        m.extras["x0_clip"] = scheduler_x0_clip(getattr(pipe, "scheduler", None))   # clip_sample / thresholding
        return m
    raise WindowguideError(f"{name} is not supported (yet); supported pipelines: {', '.join(FAMILIES)}")


def _vp_denoiser(model: Callable, scheduler, multiple: int, null=None):
    schedule = schedule_of(scheduler)
    kind = getattr(scheduler.config, "prediction_type", "epsilon")
    cls = {"epsilon": EpsDenoiser, "v_prediction": VDenoiser}.get(kind)
    if cls is None:
        raise WindowguideError(f"prediction_type {kind!r} is not supported; accepted: 'epsilon', 'v_prediction'")
    return cls(model, schedule, multiple=multiple, null_cond=null, quantize=True)


def _vae_decoder(vae, tile_above: int = 96) -> Callable[[torch.Tensor], np.ndarray]:
    """Latents -> uint8 images; above ``tile_above`` latent pixels a side, the exact tiled decode."""
    from .vae_tiling import decode_tiled

    @torch.no_grad()
    def decode(latents: torch.Tensor) -> np.ndarray:
        z = latents.to(vae.device, vae.dtype) / vae.config.scaling_factor
        x = decode_tiled(vae, z) if max(z.shape[-2:]) > tile_above else vae.decode(z).sample
        return _to_uint8((x.float() / 2 + 0.5).clamp(0, 1))
    return decode


def _to_uint8(x01: torch.Tensor) -> np.ndarray:
    """[0, 1] images -> uint8 NHWC as diffusers' numpy_to_pil does: round(255 x)."""
    return (x01 * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def sd_unet_model(unet) -> Callable:
    """Stable Diffusion's UNet as model(x_vp, t, embeds) -> its prediction (eps or v); ``cond`` may be a
    dict {embeds, timestep_cond, image_embeds.i} when the pipeline's call carried those (the patch)."""
    from ..integrations.calls import unet_extras

    def model(x, t, cond):
        if isinstance(cond, dict):
            return unet(x.to(unet.dtype), t, encoder_hidden_states=cond["embeds"],
                        **unet_extras(cond, x.shape[-2:])).sample.float()
        return unet(x.to(unet.dtype), t, encoder_hidden_states=cond, **unet_extras({})).sample.float()
    return model


def _stable_diffusion(pipe) -> PipelineModel:
    unet = pipe.unet
    factor = 2 ** (len(unet.config.block_out_channels) - 1)
    model = sd_unet_model(unet)

    @torch.no_grad()
    def encode(prompt=None, negative_prompt="", class_labels=None):
        if class_labels is not None:
            raise WindowguideError("Stable Diffusion takes a prompt, not class labels")
        if prompt is None:
            raise WindowguideError("Stable Diffusion needs a prompt (--prompt)")
        if getattr(pipe, "text_encoder", None) is None or getattr(pipe, "tokenizer", None) is None:
            raise WindowguideError("this pipeline has no text encoder or tokenizer, so a prompt cannot be encoded")
        pos, neg = pipe.encode_prompt(prompt, unet.device, 1, True, negative_prompt)
        return pos, neg

    vae_factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1) if getattr(pipe, "vae", None) else 8
    size = unet.config.sample_size
    return PipelineModel("stable-diffusion", _vp_denoiser(model, pipe.scheduler, factor), unet.config.in_channels,
                         (size, size), factor, encode, _vae_decoder(pipe.vae) if getattr(pipe, "vae", None) else None,
                         extras=dict(vae_factor=vae_factor))


def _dit(pipe, crop_positions: str = "slice") -> PipelineModel:
    dit = pipe.transformer
    if dit.config.get(ORIGINAL_TIMESTEPS_KEY) == "original":      # a folder written by windowguide convert
        from ..formats.dit_checkpoint import match_original_timesteps
        match_original_timesteps(dit)
    c = dit.config.in_channels
    classes = dit.config.num_embeds_ada_norm

    probe = dict(shape=None, values=None)        # the learned-variance channels of a step's first full call

    def model(x, t, labels):
        regions = current_regions()
        if crop_positions == "slice" and regions is not None:
            with _sliced_positions(dit.pos_embed, regions, x.shape[-2:]):
                out = dit(x.to(dit.dtype), timestep=t, class_labels=labels).sample.float()
        else:
            out = dit(x.to(dit.dtype), timestep=t, class_labels=labels).sample.float()
        if out.shape[1] == 2 * c and probe["values"] is None and tuple(x.shape[-2:]) == probe["shape"]:
            probe["values"] = out[:, c:]             # the positive prediction's rows come first
        return out[:, :c]

    def encode(prompt=None, negative_prompt=None, class_labels=None):
        if prompt is not None:
            raise WindowguideError("DiT takes class labels, not a prompt")
        labels = torch.as_tensor(class_labels).long().reshape(-1)
        if labels.numel() == 0 or labels.min() < 0 or labels.max() >= classes:
            raise WindowguideError(f"DiT class labels must be in [0, {classes}), got {labels.tolist()}")
        return labels, torch.full_like(labels, classes)   # diffusers' DiT: the null class is the last row

    size = dit.config.sample_size
    denoiser = _vp_denoiser(model, pipe.scheduler, dit.config.patch_size, torch.tensor(classes))
    denoiser.square_only = True          # diffusers' DiT un-patchifies with h = w = sqrt(tokens)
    return PipelineModel("dit", denoiser,
                         c, (size, size), dit.config.patch_size, encode, _vae_decoder(pipe.vae), num_classes=classes,
                         extras=dict(variance_probe=probe, learned_variance=dit.config.out_channels == 2 * c,
                                     square_only=True,
                                     vae_factor=2 ** (len(pipe.vae.config.block_out_channels) - 1)))


def ddpm_learned_step(x, denoised, frac, sigma, sigma_next, z):
    """One DDPM step with DiT's learned variance (Nichol & Dhariwal's interpolation), in VE form.

    With abar = 1 / (1 + sigma^2) at both ends, alpha = abar_t / abar_s, beta = 1 - alpha:
        x_vp = sqrt(abar_t) x,
        mu = sqrt(abar_s) beta / (1 - abar_t) D + sqrt(alpha) (1 - abar_s) / (1 - abar_t) x_vp,
        log var = frac log beta + (1 - frac) log beta~,   beta~ = beta (1 - abar_s) / (1 - abar_t),
        x_vp' = mu + exp(log var / 2) z  (no noise into sigma = 0),   x' = x_vp' / sqrt(abar_s)."""
    ab_t, ab_s = 1 / (1 + sigma ** 2), 1 / (1 + sigma_next ** 2)
    alpha = ab_t / ab_s
    beta = 1 - alpha
    x_vp = x * ab_t ** 0.5
    mu = (ab_s ** 0.5 * beta / (1 - ab_t)) * denoised + (alpha ** 0.5 * (1 - ab_s) / (1 - ab_t)) * x_vp
    if sigma_next > 0:
        beta_tilde = max(beta * (1 - ab_s) / (1 - ab_t), 1e-20)
        log_var = frac * math.log(beta) + (1 - frac) * math.log(beta_tilde)
        mu = mu + (0.5 * log_var).exp() * z
    return mu / ab_s ** 0.5


@torch.no_grad()
def sample_dit_learned_variance(m: PipelineModel, seeds, steps: int = 250, guidance=None, cond=None,
                                device: Any = "cpu") -> torch.Tensor:
    """DiT's own sampler: DDPM on the respaced schedule (timesteps round(linspace(0, 999, steps)), as
    DiT's ``space_timesteps``) with the learned variance of the positive prediction, under any
    windowguide guidance. One generator per seed draws the initial noise, then each step's noise."""
    from ..guidance import guided
    from ..sampling import PerSampleNoise
    if not m.extras.get("learned_variance"):
        raise WindowguideError("this DiT predicts no variance (out_channels == in_channels): use sampler='ddpm'")
    probe, shape = m.extras["variance_probe"], m.shape()
    sigmas = m.denoiser.schedule.step_sigmas(steps, "linspace", 0, True).tolist()
    noise = PerSampleNoise.from_seeds(list(seeds))
    x = noise(torch.empty(len(seeds), *shape, device=device)) * (1 + sigmas[0] ** 2) ** 0.5
    den = guided(m.denoiser, guidance)
    probe["shape"] = tuple(shape[-2:])
    try:
        for sigma, nxt in zip(sigmas[:-1], sigmas[1:]):
            probe["values"] = None
            d = den(x, torch.full((len(seeds),), sigma, device=device), cond)
            frac = (probe["values"][:len(seeds)] + 1) / 2
            z = noise(x) if nxt > 0 else None
            x = ddpm_learned_step(x, d, frac, sigma, nxt, z)
    finally:
        probe["shape"] = probe["values"] = None
    return x


def sdxl_time_ids(regions: torch.Tensor | None, size, factor: int) -> torch.Tensor:
    """SDXL's micro-conditioning per sample, in image pixels: (original h, original w, crop top, crop
    left, target h, target w). The whole image: (H, W, 0, 0, H, W), the pipeline's default; a crop of a
    canvas: the canvas as the original, the crop's offset, the crop's size as the target (what SDXL's
    training crops meant)."""
    h, w = size
    if regions is None:
        return torch.tensor([[h * factor, w * factor, 0, 0, h * factor, w * factor]], dtype=torch.float32)
    r = regions.float()
    return torch.stack([r[:, 2], r[:, 3], r[:, 0], r[:, 1], torch.full_like(r[:, 0], h), torch.full_like(r[:, 0], w)],
                       dim=1) * factor


def sdxl_crop_time_ids(ids: torch.Tensor, regions: torch.Tensor | None, size) -> torch.Tensor:
    """A crop's micro-conditions from the pipeline call's own (original h, w, crop top, left, target h,
    w), per row: the original and its crop origin are the user's; the canvas of H x W latent pixels
    spans the user's target, so a crop at (top, left) of h x w latent pixels gets crop origin
    (top0 + top th / H, left0 + left tw / W) and target (h th / H, w tw / W). With SDXL's defaults
    (original = target = the image) this is ``sdxl_time_ids``: the canvas as the original, the crop's
    offset and size."""
    if regions is None:
        return ids
    r, ids = regions.to(ids.device, torch.float64), ids.double()
    sy, sx = ids[:, 4] / r[:, 2], ids[:, 5] / r[:, 3]
    h, w = size
    return torch.stack([ids[:, 0], ids[:, 1], ids[:, 2] + r[:, 0] * sy, ids[:, 3] + r[:, 1] * sx, h * sy, w * sx],
                       1).float()


def sdxl_unet_model(unet, vae_factor: int | None) -> Callable:
    """SDXL's UNet as model(x_vp, t, {embeds, pooled}) -> eps; the time ids describe the call's crops
    (``windows.current_regions()``): from the call's own ids when the condition carries them
    (``sdxl_crop_time_ids``, the patch and the guiders), else from the canvas (``sdxl_time_ids``)."""
    from ..integrations.calls import unet_extras

    def model(x, t, cond):
        if "time_ids" in cond:
            ids = sdxl_crop_time_ids(cond["time_ids"], current_regions(), x.shape[-2:]).to(x.device, x.dtype)
        else:
            ids = sdxl_time_ids(current_regions(), x.shape[-2:], vae_factor).to(x.device, x.dtype)
        ids = ids.expand(x.shape[0], -1) if ids.shape[0] == 1 else ids
        added = dict(text_embeds=cond["pooled"].to(unet.dtype), time_ids=ids.to(unet.dtype))
        extra = unet_extras(cond, x.shape[-2:])
        added.update(extra.pop("added_cond_kwargs", {}))
        return unet(x.to(unet.dtype), t, encoder_hidden_states=cond["embeds"].to(unet.dtype),
                    added_cond_kwargs=added, **extra).sample.float()
    return model


def _sdxl(pipe) -> PipelineModel:
    unet = pipe.unet
    factor = 2 ** (len(unet.config.block_out_channels) - 1)
    vae_factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    model = sdxl_unet_model(unet, vae_factor)

    @torch.no_grad()
    def encode(prompt=None, negative_prompt="", class_labels=None):
        if class_labels is not None or prompt is None:
            raise WindowguideError("SDXL needs a prompt (--prompt), not class labels")
        if getattr(pipe, "text_encoder_2", None) is None:
            raise WindowguideError("this SDXL pipeline has no text_encoder_2, so a prompt cannot be encoded")
        pos, neg, pooled, neg_pooled = pipe.encode_prompt(prompt, None, unet.device, 1, True, negative_prompt)
        return dict(embeds=pos, pooled=pooled), dict(embeds=neg, pooled=neg_pooled)

    size = unet.config.sample_size
    return PipelineModel("sdxl", _vp_denoiser(model, pipe.scheduler, factor), unet.config.in_channels, (size, size),
                         factor, encode, _vae_decoder(pipe.vae), extras=dict(vae_factor=vae_factor))


def pixart_model(tr, vae_factor: int) -> Callable:
    """PixArt's transformer as model(x_vp, t, {embeds, mask}) -> eps (learned variance dropped)."""
    c = tr.config.in_channels

    def model(x, t, cond):
        added = {"resolution": None, "aspect_ratio": None}
        if tr.config.sample_size == 128:        # PixArt-alpha 1024: resolution and aspect micro-conditions
            h, w = x.shape[-2] * vae_factor, x.shape[-1] * vae_factor
            added = {"resolution": torch.tensor([[h, w]], dtype=x.dtype, device=x.device).expand(x.shape[0], -1),
                     "aspect_ratio": torch.tensor([[h / w]], dtype=x.dtype, device=x.device).expand(x.shape[0], -1)}
        out = tr(x.to(tr.dtype), encoder_hidden_states=cond["embeds"].to(tr.dtype), encoder_attention_mask=cond["mask"],
                 timestep=t, added_cond_kwargs=added).sample.float()
        return out[:, :c]                       # learned variance channels dropped, as the pipeline does
    return model


def _pixart(pipe) -> PipelineModel:
    tr = pipe.transformer
    c, patch = tr.config.in_channels, tr.config.patch_size
    vae_factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    model = pixart_model(tr, vae_factor)

    @torch.no_grad()
    def encode(prompt=None, negative_prompt="", class_labels=None, max_sequence_length: int = 120):
        if class_labels is not None or prompt is None:
            raise WindowguideError("PixArt needs a prompt (--prompt), not class labels")
        if getattr(pipe, "text_encoder", None) is None:
            raise WindowguideError("this PixArt pipeline has no text encoder, so a prompt cannot be encoded")
        pos, pos_mask, neg, neg_mask = pipe.encode_prompt(prompt, True, negative_prompt, device=tr.device,
                                                          clean_caption=False, max_sequence_length=max_sequence_length)
        return dict(embeds=pos, mask=pos_mask), dict(embeds=neg, mask=neg_mask)

    size = tr.config.sample_size
    return PipelineModel("pixart", _vp_denoiser(model, pipe.scheduler, patch), c, (size, size), patch, encode,
                         _vae_decoder(pipe.vae), extras=dict(vae_factor=vae_factor))


def pack(z: torch.Tensor) -> torch.Tensor:
    """FLUX's packing: [B, C, h, w] -> [B, (h/2)(w/2), 4C], each 2 x 2 patch one token."""
    b, c, h, w = z.shape
    return z.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    b, _, d = tokens.shape
    return tokens.view(b, h // 2, w // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, d // 4, h, w)


def flux_image_ids(h: int, w: int, top: int = 0, left: int = 0) -> torch.Tensor:
    """[(h/2)(w/2), 3] ids (0, row, col) of a latent of h x w whose top-left sits at (top, left)."""
    rows = torch.arange(h // 2) + top // 2
    cols = torch.arange(w // 2) + left // 2
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1], ids[..., 2] = rows[:, None], cols[None, :]
    return ids.reshape(-1, 3)


def flux_model(tr, crop_positions: str = "slice", guidance_embed: float | None = 3.5) -> Callable:
    """FLUX's transformer as model(x, t, {embeds, pooled[, guidance]}) -> velocity, on unpacked latents
    (packed per call with the image ids of each crop: its place on the canvas with 'slice', one call
    per window position; its own grid with 'stretch'). ``guidance``, when in the condition, is the
    per-sample guidance embedding input of FLUX.1-dev (else ``guidance_embed``)."""
    def call(x, t, cond, ids):
        g = None
        if tr.config.guidance_embeds:
            g = cond["guidance"] if "guidance" in cond else torch.full((x.shape[0],), guidance_embed, device=x.device)
        from ..integrations.calls import current_static     # the pipeline call's joint_attention_kwargs (LoRA)
        out = tr(hidden_states=pack(x).to(tr.dtype), timestep=t.to(tr.dtype), guidance=g,
                 pooled_projections=cond["pooled"].to(tr.dtype), encoder_hidden_states=cond["embeds"].to(tr.dtype),
                 txt_ids=torch.zeros(cond["embeds"].shape[1], 3, device=x.device), img_ids=ids.to(x.device),
                 **current_static()).sample
        return unpack(out.float(), *x.shape[-2:])

    def model(x, t, cond):
        h, w = x.shape[-2:]
        regions = current_regions()
        if crop_positions != "slice" or regions is None:
            return call(x, t, cond, flux_image_ids(h, w))
        out = torch.empty_like(x)
        for top, left in {(int(r[0]), int(r[1])) for r in regions}:     # one call per window position
            idx = ((regions[:, 0] == top) & (regions[:, 1] == left)).nonzero().flatten().to(x.device)
            out[idx] = call(x[idx], t[idx], {k: v[idx] for k, v in cond.items()}, flux_image_ids(h, w, top, left))
        return out
    return model


def _flux(pipe, crop_positions: str, guidance_embed: float | None) -> PipelineModel:
    from ..denoiser import FlowDenoiser
    from ..sampling import sigmas_from_flow_t
    tr = pipe.transformer
    c = tr.config.in_channels // 4
    vae = pipe.vae
    vae_factor = 2 ** (len(vae.config.block_out_channels) - 1)
    model = flux_model(tr, crop_positions, guidance_embed)

    @torch.no_grad()
    def encode(prompt=None, negative_prompt="", class_labels=None, max_sequence_length: int = 512):
        if class_labels is not None or prompt is None:
            raise WindowguideError("FLUX needs a prompt (--prompt), not class labels")
        if getattr(pipe, "text_encoder", None) is None or getattr(pipe, "text_encoder_2", None) is None:
            raise WindowguideError("this FLUX pipeline lacks a text encoder, so a prompt cannot be encoded")
        pos, pooled, _ = pipe.encode_prompt(prompt, None, device=tr.device, max_sequence_length=max_sequence_length)
        neg, neg_pooled, _ = pipe.encode_prompt(negative_prompt or "", None, device=tr.device,
                                                max_sequence_length=max_sequence_length)
        return dict(embeds=pos, pooled=pooled), dict(embeds=neg, pooled=neg_pooled)

    @torch.no_grad()
    def decode(latents):
        z = latents.to(vae.device, vae.dtype) / vae.config.scaling_factor + (vae.config.shift_factor or 0.0)
        return _to_uint8((vae.decode(z).sample.float() / 2 + 0.5).clamp(0, 1))

    def sigmas(steps, spacing=None, shape=None, sampler=None):
        """The pipeline's schedule: t = linspace(1, 1/N, N), exponentially shifted by mu(image tokens), then 0."""
        import numpy as np
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift
        h, w = (shape or m.shape())[-2:]
        cfg = pipe.scheduler.config
        mu = calculate_shift((h // 2) * (w // 2), cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096),
                             cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15))
        pipe.scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
        return sigmas_from_flow_t(pipe.scheduler.sigmas.double().tolist()).float()

    size = getattr(pipe, "default_sample_size", 128)          # unpacked latent side (1024 px with an 8x VAE)
    m = PipelineModel("flux", FlowDenoiser(model, time_scale=1.0, multiple=2), c, (size, size), 2, encode, decode,
                      extras=dict(vae_factor=vae_factor))
    m.sigmas = sigmas
    return m


def sd3_model(tr) -> Callable:
    """SD3's transformer as model(x_t, t, {embeds, pooled}, skip_layers=None) -> velocity."""
    def model(x, t, cond, skip_layers=None):
        from ..integrations.calls import current_static     # the pipeline call's joint_attention_kwargs (LoRA)
        return tr(hidden_states=x.to(tr.dtype), timestep=t, encoder_hidden_states=cond["embeds"],
                  pooled_projections=cond["pooled"], skip_layers=skip_layers, **current_static()).sample.float()
    return model


def _sd3(pipe) -> PipelineModel:
    from ..denoiser import FlowDenoiser
    tr = pipe.transformer
    patch = tr.config.patch_size
    train_steps = pipe.scheduler.config.num_train_timesteps
    model = sd3_model(tr)

    @torch.no_grad()
    def encode(prompt=None, negative_prompt="", class_labels=None, max_sequence_length: int = 256):
        if class_labels is not None:
            raise WindowguideError("SD3 takes a prompt, not class labels")
        if prompt is None:
            raise WindowguideError("SD3 needs a prompt (--prompt)")
        if getattr(pipe, "text_encoder", None) is None or getattr(pipe, "text_encoder_2", None) is None:
            raise WindowguideError("this SD3 pipeline has no CLIP text encoders, so a prompt cannot be encoded")
        pos, neg, pooled, neg_pooled = pipe.encode_prompt(prompt, None, None, device=tr.device, negative_prompt=negative_prompt,
                                                          max_sequence_length=max_sequence_length)
        return dict(embeds=pos, pooled=pooled), dict(embeds=neg, pooled=neg_pooled)

    def skip_layers(layers):
        """D of the same transformer with the given blocks skipped (SD3.5's skip-layer guidance negative)."""
        skipped = FlowDenoiser(lambda x, t, c: model(x, t, c, skip_layers=list(layers)), time_scale=train_steps,
                               multiple=patch)
        return lambda x, sigma, cond: skipped(x, sigma, cond)

    size = tr.config.sample_size
    vae = pipe.vae
    shift, scale = vae.config.get("shift_factor") or 0.0, vae.config.scaling_factor

    @torch.no_grad()
    def decode(latents):
        x = vae.decode((latents.to(vae.device, vae.dtype) / scale) + shift).sample
        return _to_uint8((x.float() / 2 + 0.5).clamp(0, 1))

    m = PipelineModel("sd3", FlowDenoiser(model, time_scale=train_steps, multiple=patch), tr.config.in_channels,
                      (size, size), patch, encode, decode, extras=dict(shift=pipe.scheduler.config.shift))
    m.skip_layers = skip_layers
    m.sigmas = lambda steps, spacing=None, sampler=None: _flow_sigmas(steps, m.extras["shift"], train_steps)
    return m


def _flow_sigmas(steps, shift, train_steps):
    from ..sampling import flow_sigmas
    return flow_sigmas(steps, shift, train_steps).float()


def sliced_position_embedding(patch_embed, region, size) -> torch.Tensor:
    """[T, D]: the rows of the whole canvas's sin-cos embedding (as diffusers builds it for the canvas)
    that a crop of ``size`` at (top, left) covers; ``region`` = (top, left, canvas h, canvas w) in latent pixels."""
    from diffusers.models.embeddings import get_2d_sincos_pos_embed
    p = patch_embed.patch_size
    top, left, ch, cw = (int(v) // p for v in region)
    h, w = size[0] // p, size[1] // p
    grid = get_2d_sincos_pos_embed(patch_embed.pos_embed.shape[-1] if patch_embed.pos_embed is not None else
                                   patch_embed._wg_dim, (ch, cw), base_size=patch_embed.base_size,
                                   interpolation_scale=patch_embed.interpolation_scale, output_type="pt")
    return grid.float().reshape(ch, cw, -1)[top:top + h, left:left + w].reshape(h * w, -1)


class _sliced_positions:
    """Within the block, ``patch_embed`` adds each sample's slice of its canvas's embedding instead of
    the crop-sized grid (its buffer is set aside and a forward hook adds the slices)."""

    def __init__(self, patch_embed, regions, size):
        self.pe, self.regions, self.size = patch_embed, regions, tuple(size)

    def __enter__(self):
        pe = self.pe
        pe._wg_dim = pe.pos_embed.shape[-1]
        table = torch.stack([sliced_position_embedding(pe, r.tolist(), self.size) for r in self.regions])
        self.saved, pe.pos_embed = pe.pos_embed, None
        self.hook = pe.register_forward_hook(lambda m, args, out: out + table.to(out.device, out.dtype))

    def __exit__(self, *exc):
        self.hook.remove()
        self.pe.pos_embed = self.saved


def _unet2d(pipe) -> PipelineModel:
    unet = pipe.unet
    factor = 2 ** (len(unet.config.block_out_channels) - 1)

    def model(x, t, cond):
        return unet(x.to(unet.dtype), t).sample.float()

    def encode(prompt=None, negative_prompt=None, class_labels=None):
        raise WindowguideError(f"{type(pipe).__name__} is unconditional: it takes no prompt or class")

    @torch.no_grad()
    def decode(x: torch.Tensor) -> np.ndarray:
        return _to_uint8((x.float() / 2 + 0.5).clamp(0, 1))

    size = unet.config.sample_size
    size = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
    return PipelineModel("unet2d", _vp_denoiser(model, pipe.scheduler, factor), unet.config.in_channels, size, factor,
                         encode, decode)


__all__ = ["from_pipeline", "PipelineModel", "FAMILIES", "sample_dit_learned_variance", "ddpm_learned_step"]
