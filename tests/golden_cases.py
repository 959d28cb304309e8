"""Golden outputs: a fixed set of runs through every public surface, reduced to a hash of their arrays.

Recorded once before a restructuring (``python tests/golden_cases.py --record``) into
``tests/golden.json``; ``tests/test_golden.py`` recomputes every case and asserts the hash is identical,
so a refactoring that moves code must leave every result the same bit for bit. Each case runs on one
CPU thread (the float results of a network can depend on the thread count in the last bits).
"""
from __future__ import annotations

import hashlib
import json
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.path.join(HERE, "golden.json")
sys.path.insert(0, HERE)


def digest(value) -> str:
    """sha256 of an array's dtype, shape and bytes (a tensor is taken as its CPU numpy array)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().contiguous().numpy()
    value = np.ascontiguousarray(value)
    h = hashlib.sha256(f"{value.dtype}{value.shape}".encode())
    h.update(value.tobytes())
    return h.hexdigest()[:24]


def _bundled(name):
    from windowguide.models.checkpoint import load_denoiser
    return load_denoiser(name)


def _sample(spec: str, model: str = "mirror", sampler: str = "heun", steps: int = 4, seeds=(0, 1, 2)):
    import windowguide as wg
    from windowguide.commands.common import prepare
    denoiser, net, info, g = prepare(model, spec)
    return wg.sample(denoiser, info["shape"], list(seeds), steps=steps, sampler=sampler, guidance=g,
                     cond=torch.tensor([s % 3 for s in seeds]))


def _panorama(**kw):
    from windowguide.fusion import panorama
    scenes, info, net = _bundled("scenes")
    opts = dict(canvas=(3, 24, 64), seeds=[0, 1], window=24, stride=8, steps=4, cond=torch.tensor([0, 2]))
    opts.update(kw)
    return panorama(scenes, **opts)


def _regional():
    from windowguide.regional import Region, regional_panorama
    scenes, info, net = _bundled("scenes")
    back = Region(torch.tensor([0]), torch.ones(24, 64))
    right = Region.box(torch.tensor([2]), (24, 64), 0, 32, 24, 64)
    return regional_panorama(scenes, (3, 24, 64), [0, 1], [back, right], window=24, stride=8, mode="gf",
                             sampler="ddim", steps=4)


def _video(**kw):
    from windowguide.video import long_video
    bounce, info, net = _bundled("bounce")
    opts = dict(canvas=(1, 20, 12, 12), seeds=[3], window=(12, 12, 12), stride=(4, 12, 12), steps=4)
    opts.update(kw)
    return long_video(bounce, **opts)


def _upscale_pixels():
    from windowguide.upscaling import upscale_pixels
    scenes, info, net = _bundled("scenes")
    image = (torch.rand(16, 24, 3, generator=torch.Generator().manual_seed(4)) * 255).to(torch.uint8).numpy()
    return upscale_pixels(scenes, image, scale=2, strength=0.5, seeds=[0, 1], steps=8, window=24, stride=8,
                          cond=torch.tensor([3, 3]))


_PIPES: dict = {}


def _tiny(kind):
    import tempfile
    import pipes
    if kind not in _PIPES:
        import pathlib
        folder = pathlib.Path(tempfile.mkdtemp(prefix="golden-"))
        _PIPES[kind] = getattr(pipes, f"tiny_{kind}")(folder)
    return _PIPES[kind]


def _upscale_sd():
    from windowguide.upscaling import upscale
    image = (torch.rand(8, 16, 3, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8).numpy()
    import windowguide as wg
    return upscale(_tiny("sd"), image, scale=2, strength=0.5, seeds=[0], steps=6, stride=4, prompt="a red cat",
                   negative_prompt="blue dog", guidance=wg.CFG(2.0) + wg.MSWG(0.5, window=6), output_type="latent")


def _patch_sd():
    import windowguide as wg
    pipe = _tiny("sd")
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(7))
    with torch.no_grad(), wg.patch(pipe, "cfg:w=2.5+mswg:w=0.5,window=10"):
        return pipe("a red cat", negative_prompt="blue dog", height=32, width=32, num_inference_steps=4,
                    latents=latents, output_type="latent", guidance_scale=None).images


def _from_pipeline_sd():
    import windowguide as wg
    m = wg.from_pipeline(_tiny("sd"))
    pos, neg = m.encode(prompt=["a red cat", "a blue dog"], negative_prompt=["blue dog", "red cat"])
    with torch.no_grad():
        return wg.sample(m.denoiser, m.shape(), [0, 1], steps=4, sampler="ddim", sigmas=m.sigmas(4),
                         guidance=wg.CFG(2.0, null=neg) + wg.SWG(0.5, window=6), cond=pos,
                         **m.sampler_options("ddim", 4))


def _guider_sdxl():
    from diffusers.guiders import ClassifierFreeGuidance
    from pipes import modular
    from windowguide.integrations import guiders
    classic = _tiny("sdxl")
    pipe = modular(classic, ClassifierFreeGuidance(guidance_scale=3.0))
    pipe.update_components(guider=guiders.SlidingWindowGuidance(guidance_scale=3.0, swg_scale=0.5, window=10))
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        return pipe(prompt="a red cat", negative_prompt="blue dog", height=32, width=32, num_inference_steps=3,
                    latents=latents, output="latents")


CASES = {
    "demo_cfg_mswg": lambda: _sample("cfg:w=1+mswg:w=1,window=16", steps=12, seeds=range(6)),
    "sample_none": lambda: _sample("none"),
    "sample_cfg": lambda: _sample("cfg:w=1"),
    "sample_swg": lambda: _sample("swg:w=0.5,window=16"),
    "sample_mswg": lambda: _sample("mswg:w=1,window=16"),
    "sample_ag": lambda: _sample("ag:w=1"),
    "sample_wd": lambda: _sample("wd:w=1"),
    "sample_sgg": lambda: _sample("sgg:split=1,cfg=1,mswg=1,window=16"),
    "sample_interval": lambda: _sample("cfg:w=1,lo=0.3,hi=5+mswg:w=0.5,window=16"),
    "sample_ddpm_digits": lambda: _sample("cfg:w=0.5+swg:w=0.3,window=16", model="digits", sampler="ddpm"),
    "panorama_multidiffusion": lambda: _panorama(mode="multidiffusion"),
    "panorama_gf": lambda: _panorama(mode="gf"),
    "panorama_gaussian": lambda: _panorama(mode="gaussian", sampler="euler"),
    "panorama_gf_ddpm_vcf": lambda: _panorama(mode="gf", sampler="ddpm", vcf=True),
    "panorama_md_ddim_eta_vcf_sa": lambda: _panorama(mode="multidiffusion", sampler="ddim", eta=1.0, vcf=True,
                                                     style_alpha=0.3),
    "panorama_gf_ddpm_novcf": lambda: _panorama(mode="gf", sampler="ddpm"),
    "panorama_circular": lambda: _panorama(mode="multidiffusion", circular=True),
    "panorama_heun_churn": lambda: _panorama(mode="gf", sampler="heun", churn=2.0),
    "panorama_gf_mswg": lambda: _panorama(mode="gf", guidance=__import__("windowguide").MSWG(0.3, window=16)),
    "panorama_gaussian_cfg_batch": lambda: _panorama(mode="gaussian", guidance=__import__("windowguide").CFG(1.0),
                                                     max_batch=3),
    "regional_gf": _regional,
    "video_gf": lambda: _video(),
    "video_md_ddpm_vcf_sa": lambda: _video(mode="multidiffusion", sampler="ddpm", vcf=True, style_alpha=0.2),
    "video_mswg_circular": lambda: _video(circular=True,
                                          guidance=__import__("windowguide").MSWG(0.5, window=(8, 8, 8))),
    "upscale_pixels": _upscale_pixels,
    "upscale_sd": _upscale_sd,
    "patch_sd": _patch_sd,
    "from_pipeline_sd": _from_pipeline_sd,
    "guider_sdxl": _guider_sdxl,
}


def compute(name: str) -> str:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            return digest(CASES[name]())
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    if "--record" in sys.argv:
        record = {name: compute(name) for name in CASES}
        with open(GOLDEN, "w") as f:
            json.dump(record, f, indent=1, sort_keys=True)
        print(json.dumps(record, indent=1))
