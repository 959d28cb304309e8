"""What the family modules share: the model a pipeline becomes, and the pieces most families use
(a VP denoiser from a diffusers scheduler, a VAE decoder, the flow schedules with a dynamic shift)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from ..denoiser import Denoiser, EpsDenoiser, VDenoiser, VPSchedule
from ..errors import WindowguideError


@dataclass(frozen=True)
class Clip:
    """What a video family's model was trained on: ``frames`` latent frames, ``vae_factor_temporal`` pixel
    frames per latent frame, ``pixel_frames`` the pipeline's default frames (4k + 1 for Wan), ``patch``
    the transformer's (t, h, w) patch."""
    frames: int
    vae_factor_temporal: int
    pixel_frames: int
    patch: tuple[int, ...] = ()
    guidance: str = "none"             # the SPEC a command uses when --guidance is not given


@dataclass
class PipelineModel:
    """What sampling needs from a pipeline: the EDM-form denoiser, its schedule, conditions, decoding.

    Typed facts a family states (its module builds the object once; nothing is assigned onto it later):
    ``vae_factor`` pixels per latent pixel (1: a pixel model); ``unconditional`` (no prompt or class);
    ``square_only`` (diffusers' DiT un-patchifies square latents only); ``cfg_renorm`` (Qwen-Image's
    CFG norm correction); ``guidance_convention(g, **options)`` (Z-Image's CFG normalisation and
    truncation); ``max_latent`` (a position table's extent); ``sigma_schedule(steps, spacing=,
    sampler=, shape=)`` (a family whose schedule is not the VP one); ``skip_negative(blocks)`` (the
    skip-layer hook); ``clip`` (a video family); ``learned_variance`` and ``variance_probe`` (DiT);
    ``shift`` (SD3's static shift); ``x0_clip`` and ``scheduler_note`` (from the pipeline's scheduler,
    set by ``registry.from_pipeline``)."""
    family: str
    denoiser: Denoiser
    channels: int
    size: tuple[int, int]              # the trained latent (or pixel) size
    multiple: int                      # a crop's side must be a multiple of this (in latent pixels)
    encode: Callable[..., tuple[Any, Any]]
    decode: Callable[[torch.Tensor], np.ndarray]
    num_classes: int = 0
    vae_factor: int = 8
    unconditional: bool = False
    square_only: bool = False
    cfg_renorm: Callable | None = None
    guidance_convention: Callable | None = None
    max_latent: tuple[int, int] | None = None
    sigma_schedule: Callable | None = None
    skip_negative: Callable | None = None
    clip: Clip | None = None
    learned_variance: bool = False
    variance_probe: dict | None = None
    shift: float | None = None
    x0_clip: dict | None = None
    scheduler_note: str | None = None

    @property
    def extras(self) -> dict:
        """The typed facts as a read-only dict (the name earlier versions used); read the fields instead."""
        names = ("vae_factor", "unconditional", "square_only", "cfg_renorm", "max_latent", "learned_variance",
                 "variance_probe", "shift", "x0_clip", "scheduler_note")
        out = {n: getattr(self, n) for n in names if getattr(self, n) not in (None, False)}
        if self.clip is not None:
            out.update(video=True, frames=self.clip.frames, vae_factor_temporal=self.clip.vae_factor_temporal)
        return out

    def skip_layers(self, blocks) -> Callable:
        """The skip-layer negative D with ``blocks`` skipped (the family's hook), or a refusal by name."""
        if self.skip_negative is None:
            raise WindowguideError(f"skip-layer guidance: windowguide cannot skip blocks of the {self.family} network")
        return self.skip_negative(blocks)

    def shape(self, height: int | None = None, width: int | None = None) -> tuple[int, int, int]:
        """(C, H, W) of a sample, the trained size by default (in latent pixels)."""
        h, w = height or self.size[0], width or self.size[1]
        if h % self.multiple or w % self.multiple:
            raise WindowguideError(f"{self.family}: a {h}x{w} latent is not a multiple of {self.multiple}")
        if self.square_only and (h != w or h > self.size[0]):
            raise WindowguideError(f"{self.family}: a {h}x{w} latent cannot run: diffusers' DiT un-patchifies square "
                                   f"latents only, up to its positional embedding's {self.size[0]}x{self.size[1]}")
        return (self.channels, h, w)

    @property
    def flow(self) -> bool:
        """Whether the network is a flow-matching one (its schedule is a flow schedule)."""
        from ..denoiser import FlowDenoiser
        return isinstance(self.denoiser, FlowDenoiser)

    def family_guidance(self, guidance, **options):
        """The guidance with the family's own CFG convention on its CFG terms (Qwen-Image's norm
        correction ``cfg_renorm``, Z-Image's ``guidance_convention`` with its options); the guidance as
        it is for the other families."""
        from dataclasses import replace
        from ..guidance import CFG, Guidance
        if self.guidance_convention is not None:
            return self.guidance_convention(guidance, **options)
        g = Guidance.of(guidance)
        if self.cfg_renorm is None:
            return g
        return Guidance(tuple(replace(t, renorm=self.cfg_renorm) if isinstance(t, CFG) else t for t in g))

    def sigmas(self, steps: int, spacing: str | None = None, sampler: str | None = None,
               shape: tuple | None = None) -> torch.Tensor:
        """The pipeline scheduler's own timesteps as a VE sigma schedule, ending in 0 or (diffusers'
        ``set_alpha_to_one=False``) in the sigma of t = 0; for ``sampler='ddim'`` with trailing or
        linspace spacing, ending where diffusers' last DDIM step goes (``VPSchedule.ddim_targets``).
        ``shape``: the sample's (C, H, W), for the families whose schedule depends on it (dynamic shift)."""
        if self.sigma_schedule is not None:
            return self.sigma_schedule(steps, spacing=spacing, sampler=sampler, shape=shape)
        sigmas = self.denoiser.schedule.step_sigmas(steps, spacing).float()
        targets = self.denoiser.schedule.ddim_targets(steps, spacing) if sampler == "ddim" else None
        if targets is not None:
            sigmas[-1] = float(targets[-1])
        return sigmas

    def sampler_options(self, sampler: str, steps: int, spacing: str | None = None) -> dict:
        """What ``wg.sample`` needs to take the steps of the pipeline's own scheduler: its x0 clipping
        or dynamic thresholding (``x0_clip``, DDIM and DDPM) and DDIM's step targets (``targets``)."""
        options = {}
        if sampler in ("ddim", "ddpm") and self.x0_clip is not None:
            options["x0_clip"] = self.x0_clip
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


def schedule_of(scheduler: Any) -> VPSchedule:
    """The VP schedule of a diffusers scheduler (its ``alphas_cumprod``)."""
    if not hasattr(scheduler, "alphas_cumprod"):
        raise WindowguideError(f"{type(scheduler).__name__} has no alphas_cumprod; a discrete VP scheduler "
                         f"(DDIM, DDPM, Euler, ...) is needed")
    c = scheduler.config
    return VPSchedule(scheduler.alphas_cumprod, getattr(c, "timestep_spacing", "leading"),
                      getattr(c, "steps_offset", 0), getattr(c, "set_alpha_to_one", True))


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


def vp_denoiser(model: Callable, scheduler, multiple: int, null=None):
    """The EDM-form denoiser of an eps- or v-predicting network on a diffusers scheduler's betas."""
    schedule = schedule_of(scheduler)
    kind = getattr(scheduler.config, "prediction_type", "epsilon")
    cls = {"epsilon": EpsDenoiser, "v_prediction": VDenoiser}.get(kind)
    if cls is None:
        raise WindowguideError(f"prediction_type {kind!r} is not supported; accepted: 'epsilon', 'v_prediction'")
    return cls(model, schedule, multiple=multiple, null_cond=null, quantize=True)


def downsampling(module) -> int:
    """2^(levels - 1) of a diffusers VAE or UNet (its ``block_out_channels``): how much it shrinks a side."""
    return 2 ** (len(module.config.block_out_channels) - 1)


def vae_factor(vae, default: int = 8) -> int:
    """Image pixels per latent pixel of a diffusers ``AutoencoderKL``: 2^(levels - 1)."""
    return downsampling(vae) if vae is not None else default


def unet_multiple(unet) -> int:
    """A crop's side must be a multiple of the UNet's downsampling, 2^(levels - 1)."""
    return downsampling(unet)


def vae_decoder(vae, tile_above: int = 96, shift: float = 0.0) -> Callable[[torch.Tensor], np.ndarray]:
    """Latents -> uint8 images: z = latents / scaling_factor + shift; above ``tile_above`` latent pixels
    a side, the exact tiled decode (``vae_tiling``)."""
    from .vae_tiling import decode_tiled

    @torch.no_grad()
    def decode(latents: torch.Tensor) -> np.ndarray:
        z = latents.to(vae.device, vae.dtype) / vae.config.scaling_factor
        if shift:
            z = z + shift
        x = decode_tiled(vae, z) if max(z.shape[-2:]) > tile_above else vae.decode(z).sample
        return to_uint8((x.float() / 2 + 0.5).clamp(0, 1))
    return decode


def to_uint8(x01: torch.Tensor) -> np.ndarray:
    """[0, 1] images -> uint8 NHWC as diffusers' numpy_to_pil does: round(255 x)."""
    return (x01 * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def flow_sigmas(steps, shift, train_steps):
    """SD3's static-shift flow schedule as VE sigmas (``sampling.flow_sigmas``)."""
    from ..sampling import flow_sigmas as flow
    return flow(steps, shift, train_steps).float()


def dynamic_shift_sigmas(scheduler, steps: int, tokens: int, mu: float | None = None,
                         t: np.ndarray | None = None) -> torch.Tensor:
    """A FLUX-style pipeline's schedule as VE sigmas: t = linspace(1, 1/N, N) (or ``t``), shifted by the
    scheduler with mu = calculate_shift(image tokens) (or ``mu``), then 0; sigma = t / (1 - t)."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift
    from ..sampling import sigmas_from_flow_t
    cfg = scheduler.config
    if mu is None:
        mu = calculate_shift(tokens, cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096),
                             cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15))
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps) if t is None else t, mu=mu)
    return sigmas_from_flow_t(scheduler.sigmas.double().tolist()).float()


def token_shifted_sigmas(scheduler, size: tuple[int, int], patch: int = 2) -> Callable:
    """``PipelineModel.sigmas`` of a FLUX-style pipeline: its shifted schedule for a sample's image
    tokens, (H / patch) (W / patch) (the trained ``size`` when no shape is given)."""
    def sigmas(steps, spacing=None, shape=None, sampler=None):
        """The pipeline's schedule: t = linspace(1, 1/N, N), shifted by mu(image tokens), then 0."""
        h, w = (shape or size)[-2:]
        return dynamic_shift_sigmas(scheduler, steps, (h // patch) * (w // patch))
    return sigmas


def flow_sigma(t: torch.Tensor, t_max: float) -> torch.Tensor:
    """The VE sigma of a flow network's timestep: s = t / t_max, sigma = s / (1 - s)."""
    s = (t.double() / t_max).clamp(max=1 - 1e-9)
    return s / (1 - s)


def negative_list(negative_prompt, n: int) -> list[str]:
    """One negative prompt per prompt: a string (or None) repeated n times, a list of n taken as it is;
    a list of another length is refused by name."""
    if negative_prompt is None or isinstance(negative_prompt, str):
        return [negative_prompt or ""] * n
    negatives = list(negative_prompt)
    if len(negatives) != n or not all(isinstance(v, str) for v in negatives):
        raise WindowguideError(f"negative_prompt: {len(negatives)} entries for {n} prompts; accepted: one string, or "
                               f"a list of {n} strings")
    return negatives


def needs_prompt(family: str, prompt, class_labels) -> None:
    """Refuse class labels or a missing prompt for a text-conditioned family, by name."""
    if class_labels is not None or prompt is None:
        raise WindowguideError(f"{family} needs a prompt (--prompt), not class labels")


def needs_parts(pipe, family: str, *names: str) -> None:
    """Refuse a pipeline that lacks the parts (text encoder, tokenizer) a prompt needs, naming them."""
    missing = [n for n in names if getattr(pipe, n, None) is None]
    if missing:
        raise WindowguideError(f"this {family} pipeline has no {', '.join(missing)}, so a prompt cannot be encoded")
