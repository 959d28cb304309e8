"""The papers' sampling settings by name (``windowguide sample --preset NAME``).

Every weight is in windowguide's convention, D = D_pos + w (D_pos - D_neg) (w = 0: off). Papers that
write a guidance *scale* s, D = D_neg + s (D_pos - D_neg) (CFG, autoguidance, the guidance interval),
are converted at this edge: w = s - 1. The M-SWG paper writes D_pos + w (D_pos - D_neg) (its optimal
weight w* = |D_pos - D*| / |D_pos - D_neg|), so its weights are ours as printed. ``{weak}`` in a SPEC is
the weak model the user passes (``--weak FILE``).
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import WindowguideError

MSWG_PAPER = "Guiding a diffusion model using sliding windows (arXiv 2411.10257)"
AG_PAPER = "Karras et al. 2024, Guiding a diffusion model with a bad version of itself (arXiv 2406.02507)"
INTERVAL_PAPER = "Kynkäänniemi et al. 2024, Applying guidance in a limited interval (arXiv 2404.07724)"
SGG_PAPER = "Improving Diffusion Generalization with Weak-to-Strong Segmented Guidance (SGG), SD3.5 recipe"
SD35 = "diffusers' StableDiffusion3Pipeline skip-layer guidance for SD3.5 Medium"
FRONTS = "windowguide bench fronts (benchmarks/fronts_cpu.txt: 3 seed sets x 100 samples, 10 Heun steps): {}"
CARD = "the model card's settings, as diffusers' {pipeline} documents them (its example and defaults)"
GVCF_PAPER = ("Guided and Variance-Corrected Fusion with One-shot Style Alignment for Large-Content Image "
              "Generation (arXiv 2412.12771), SD 2.0 panoramas")


@dataclass(frozen=True)
class Preset:
    guidance: str            # SPEC, with {weak} where the user's weak model goes
    model: str               # the checkpoint it is for
    source: str              # paper and table
    weights: str             # how the paper's numbers became ours
    steps: int = 32
    sampler: str = "heun"
    panorama: dict | None = None  # windowguide panorama settings (canvas in pixels, stride in latent pixels, mode, vcf)
    crop_positions: str | None = None   # a transformer crop's positions, where the source fixes them

    @property
    def needs_weak(self) -> bool:
        return "{weak}" in self.guidance


_MSWG = "window=40,n=2"      # 64 x 64 latents: k = 5/8 of the side, two windows per side (stride 24)

_OWN = {   # the papers' EDM2 settings and the bundled models' fronts; the families add theirs
    "edm2-s-mswg-fid": Preset(f"mswg:w=0.2,{_MSWG}", "EDM2-S (ImageNet-512)", f"{MSWG_PAPER}, EDM2-S best FID",
                              "w = 0.2 as printed (the paper's convention is ours)"),
    "edm2-s-mswg-fd-dinov2": Preset(f"mswg:w=1.1,{_MSWG}", "EDM2-S (ImageNet-512)",
                                    f"{MSWG_PAPER}, EDM2-S best FD-DINOv2", "w = 1.1 as printed"),
    "edm2-s-ag-mswg": Preset(f"ag:w=1.2,model={{weak}}+mswg:w=0.14,{_MSWG}",
                             "EDM2-S with EDM2-XS as the weak model (the M-SWG paper names no snapshots; EDM2's FID "
                             "pairing is edm2-img512-s-2147483-0.070 with edm2-img512-xs-0134217-0.125)",
                             f"{MSWG_PAPER}, table 1 'both' (FID 1.79, FD-DINOv2 40.9)",
                             "1.2 + 0.14 in the M-SWG paper's convention, which is ours (Karras's autoguidance "
                             "scale would read 2.2)"),
    "edm2-s-ag-fid": Preset("ag:w=1.1,model={weak}", "edm2-img512-s-2147483-0.070 guided by "
                            "edm2-img512-xs-0134217-0.125 (--weak)",
                            f"{AG_PAPER}, EDM2-S, FID 1.34 (EDM2's preset edm2-img512-s-autog-fid)",
                            "guidance scale 2.10 -> w = 1.10"),
    "edm2-s-ag-fd-dinov2": Preset("ag:w=1.45,model={weak}", "edm2-img512-s-2147483-0.120 guided by "
                                  "edm2-img512-xs-0134217-0.165 (--weak)",
                                  f"{AG_PAPER}, EDM2-S, FD-DINOv2 36.67 (EDM2's preset edm2-img512-s-autog-dino)",
                                  "guidance scale 2.45 -> w = 1.45"),
    "edm2-xxl-cfg-fid": Preset("cfg:w=0.2,model={weak}", "edm2-img512-xxl-0939524-0.015 with the unconditional "
                               "edm2-img512-xs-uncond-2147483-0.015 (--weak)",
                               "EDM2 (Karras et al. 2024), preset edm2-img512-xxl-guid-fid, FID 1.81",
                               "CFG scale 1.2 -> w = 0.2; the negative is EDM2's separately trained unconditional "
                               "XS network (EDM2 trains without label dropout)"),
    "edm2-xxl-cfg-interval": Preset("cfg:w=1.0,lo=0.28,hi=2.9,model={weak}",
                                    "edm2-img512-xxl-0939524-0.015 with the unconditional "
                                    "edm2-img512-xs-uncond-2147483-0.015 (--weak)",
                                    f"{INTERVAL_PAPER}, EDM2-XXL, FID 1.81 -> 1.40",
                                    "scale 2.0 on sigma in (0.28, 2.9] -> w = 1.0 with lo=0.28, hi=2.9; the negative "
                                    "is the unconditional XS network, as in EDM2's CFG"),
    "mirror-cfg": Preset("cfg:w=0.8", "mirror (bundled)", FRONTS.format(
        "the lowest FD on mirror's dominant front, FD 0.059 +- 0.044 (none 0.804 +- 0.342), side effect 0.012"),
        "the front's point; w 1.6 ties on FD (0.059 +- 0.039) at twice the weight", steps=10, sampler="heun"),
    "mirror-mswg-banded": Preset("mswg:w=0.8,window=16,first=0,last=5", "mirror (bundled)", FRONTS.format(
        "M-SWG's gain is in the high and middle thirds of the steps; on steps 0-5 of 10 it keeps 114 % of full M-SWG's "
        "FD gain (0.219 +- 0.035 vs 0.192) at 63 % of its extra network evaluations"),
        "w 0.8 = M-SWG's best constant weight on mirror (FD 0.612 +- 0.066)", steps=10, sampler="heun"),
    "digits-cfg": Preset("cfg:w=0.2", "digits (bundled)", FRONTS.format(
        "the lowest FD on digits' dominant front, FD 0.623 +- 0.216 (none 0.826 +- 0.408); SWG and M-SWG gain "
        "no more than the spread there (best 0.786 +- 0.317)"), "the front's point", steps=10, sampler="heun"),
}


def all_presets() -> dict[str, Preset]:
    """Every preset: the EDM2 and bundled ones here, then each model family's (``PRESETS`` of its module in
    ``windowguide.adapters``, found through the registry)."""
    from .adapters.registry import family_presets
    return {**_OWN, **family_presets()}


def __getattr__(name):                 # PRESETS is gathered when first asked for (the families load torch)
    if name == "PRESETS":
        return all_presets()
    raise AttributeError(name)


def expand(name: str, weak: str | None = None) -> Preset:
    """The preset with its weak model filled in (a clear error when it needs one and none is given)."""
    presets = all_presets()
    if name not in presets:
        raise WindowguideError(f"--preset {name!r}: accepted: {', '.join(sorted(presets))}")
    p = presets[name]
    if p.needs_weak and not weak:
        raise WindowguideError(f"--preset {name} is for {p.model}: pass that second network with --weak FILE "
                               f"(its .pkl converted by windowguide convert)")
    if weak and not p.needs_weak:
        raise WindowguideError(f"--preset {name} uses no weak model; drop --weak")
    return Preset(p.guidance.replace("{weak}", weak or ""), p.model, p.source, p.weights, p.steps, p.sampler, p.panorama,
                  p.crop_positions)


def describe() -> str:
    return "\n".join(f"{k}: {p.guidance}  [{p.model}; {p.source}; {p.weights}]" for k, p in all_presets().items())


__all__ = ["Preset", "PRESETS", "all_presets", "expand", "describe"]
