"""DiT (``DiTPipeline``; folders written by ``windowguide convert``): class labels, the null class
``num_embeds_ada_norm`` (1000 on ImageNet); eps and a learned variance on a VP schedule (the
variance channels are dropped, as the pipeline does with its schedulers, or used by
``sample_dit_learned_variance``). A crop goes through diffusers' ``PatchEmbed``: with 'slice' its part
of the whole canvas's sin-cos grid, its true location; with 'stretch' the grid of its own size
spread over the trained range (diffusers' own, like the M-SWG authors' bicubic resize of the trained
embedding); a crop must be a multiple of the patch size."""
from __future__ import annotations

import math
from typing import Any

import torch

from ..errors import WindowguideError
from ..windows import current_regions
from .base import PipelineModel, vae_decoder, vae_factor, vp_denoiser
from .registry import Family
from ..presets import Preset, MSWG_PAPER

ORIGINAL_TIMESTEPS_KEY = "windowguide_timesteps"     # config key of converted DiT folders


def build(pipe, crop_positions: str = "slice", guidance_embed=None) -> PipelineModel:
    """The ``PipelineModel`` of this family's pipeline (module docstring): denoiser, encode, schedule, decode."""
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
            with sliced_positions(dit.pos_embed, regions, x.shape[-2:]):
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
    denoiser = vp_denoiser(model, pipe.scheduler, dit.config.patch_size, torch.tensor(classes))
    denoiser.square_only = True          # diffusers' DiT un-patchifies with h = w = sqrt(tokens)
    return PipelineModel("dit", denoiser,
                         c, (size, size), dit.config.patch_size, encode, vae_decoder(pipe.vae), num_classes=classes,
                         variance_probe=probe, learned_variance=dit.config.out_channels == 2 * c, square_only=True,
                         vae_factor=vae_factor(pipe.vae))


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
    if not m.learned_variance:
        raise WindowguideError("this DiT predicts no variance (out_channels == in_channels): use sampler='ddpm'")
    probe, shape = m.variance_probe, m.shape()
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


class sliced_positions:
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



FAMILY = Family(kind="dit", pipelines=("DiTPipeline",), build=build, multiple=lambda net: int(net.config.patch_size))

# the model card's and the papers' settings for this family (``windowguide sample --preset NAME``)
PRESETS = {
    "dit-xl-2-mswg-fid": Preset("mswg:w=0.5,window=20,n=2", "DiT-XL/2 256 (pipeline folder)",
                                f"{MSWG_PAPER}, DiT-XL/2 best FID", "w = 0.5 as printed; window 20 of the 32 x 32 "
                                "latent; DiT's own sampler: 250 respaced DDPM steps with the learned variance; "
                                "crops get the stretched embedding, as the authors resize it",
                                steps=250, sampler="dit_ddpm", crop_positions="stretch"),
    "dit-xl-2-mswg-fd-dinov2": Preset("mswg:w=1.5,window=20,n=2", "DiT-XL/2 256 (pipeline folder)",
                                      f"{MSWG_PAPER}, DiT-XL/2 best FD-DINOv2", "w = 1.5 as printed; DDPM as above",
                                      steps=250, sampler="dit_ddpm", crop_positions="stretch"),
    "dit-xl-2-cfg-mswg": Preset("cfg:w=0.6+mswg:w=0.5,window=20,n=2", "DiT-XL/2 256 (pipeline folder)",
                                f"{MSWG_PAPER}, DiT-XL/2 CFG + M-SWG", "0.6 + 0.5 in the paper's convention (ours); "
                                "diffusers' guidance_scale would read 1.6", steps=250, sampler="dit_ddpm",
                                crop_positions="stretch"),
    "dit-xl-2-cfg-dit-paper": Preset("cfg:w=0.5,channels=3", "DiT-XL/2 256 (pipeline folder)",
                                     "Peebles & Xie 2023 (DiT), FID 2.27 at CFG scale 1.5",
                                     "scale 1.5 -> w 0.5 on the first 3 latent channels only, as the DiT code's "
                                     "forward_with_cfg guides them (diffusers and the M-SWG authors guide all 4); "
                                     "250 respaced DDPM steps with the learned variance", steps=250,
                                     sampler="dit_ddpm"),
}
