"""ComfyUI imported in this process (run by tests/test_comfyui.py in a subprocess, so that ComfyUI's
import-time settings never reach the other tests), and tiny models built with ComfyUI's own classes."""
import os
import sys
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COMFYUI = os.environ.get("COMFYUI_PATH") or os.path.join(ROOT, "..", "shared", "comfyui")
if not os.path.isdir(os.path.join(COMFYUI, "comfy")):
    pytest.skip(f"no ComfyUI at {COMFYUI} (set COMFYUI_PATH)", allow_module_level=True)


def torchvision_stand_in() -> str:
    """A folder with an empty ``torchvision`` (ComfyUI imports it at module level in model families these
    tests do not use; there is no CPU torchvision). For ComfyUI's process only."""
    folder = os.path.join(tempfile.gettempdir(), "windowguide-comfy-stub")
    os.makedirs(os.path.join(folder, "torchvision"), exist_ok=True)
    for name in ("__init__.py", "transforms.py"):
        open(os.path.join(folder, "torchvision", name), "a").close()
    return folder


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url):
    import json
    import urllib.request
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


sys.argv = [sys.argv[0], "--cpu"]
sys.path[:0] = [COMFYUI, torchvision_stand_in()]
import comfy.options  # noqa: E402
comfy.options.enable_args_parsing()
import torch  # noqa: E402
import comfy.model_patcher  # noqa: E402
import comfy.sample  # noqa: E402
import comfy.samplers  # noqa: E402
import comfy.supported_models as supported  # noqa: E402

CPU = torch.device("cpu")


from tiny_models import UNET, conditioning, patcher as _patcher, tiny_sd15  # noqa: E402,F401  (re-exported)


def tiny_sdxl(seed=0):
    """An SDXL-style UNet (ComfyUI's ``SDXL`` config: text-time ADM of pooled 16-d + 6 size embeddings)."""
    config = supported.SDXL({**UNET, 'adm_in_channels': 16 + 6 * 256, 'num_classes': 'sequential',
                             'use_linear_in_transformer': True, 'context_dim': 16})
    config.unet_config["num_head_channels"] = 8          # its default (64) is wider than this tiny UNet
    return _patcher(config, seed)


def tiny_flux(seed=0):
    """A FLUX-style transformer (ComfyUI's ``Flux`` config: 2 x 2 patches, RoPE ids, guidance embedding)."""
    cfg = dict(image_model="flux", in_channels=4, patch_size=2, out_channels=4, vec_in_dim=16, context_in_dim=16,
               hidden_size=32, mlp_ratio=2.0, num_heads=2, depth=1, depth_single_blocks=1, axes_dim=[4, 6, 6],
               theta=10000, qkv_bias=True, guidance_embed=False, txt_ids_dims=[])
    return _patcher(supported.Flux(cfg), seed)


def ksample(model, positive, negative, cfg, steps=4, sampler="euler", scheduler="normal", shape=(1, 4, 16, 16), seed=3):
    noise = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    return comfy.sample.sample(model, noise, steps, cfg, sampler, scheduler, positive, negative,
                               torch.zeros(shape), seed=seed, disable_pbar=True)


def captured(model, positive, negative, cfg, steps=4, **kw):
    """The internal cond lists and model options ComfyUI's sampler hands its CFG (recorded at the first step)."""
    seen = {}
    m = model.clone()

    def record(args):
        seen.setdefault("cond", args["cond"])
        seen.setdefault("uncond", args["uncond"])
        seen.setdefault("options", args["model_options"])
        return args["denoised"]
    m.set_model_sampler_post_cfg_function(record, disable_cfg1_optimization=True)
    ksample(m, positive, negative, cfg, steps, **kw)
    return seen


def ours(model, positive, negative, cfg, guidance=None, steps=4, shape=(1, 4, 16, 16), seed=3, cfg_above=None,
         weak_conds=False):
    """windowguide's own Euler on the same network, sigmas, noise and conditioning (``cfg_above``: CFG
    only where sigma > it; ``weak_conds``: the step's conditioning for a weak network's term)."""
    import windowguide as wg
    from windowguide.integrations.comfyui import ComfyDenoiser
    from windowguide.sampling import sample_euler
    seen = captured(model, positive, negative, cfg, steps, shape=shape, seed=seed)
    sampling = model.get_model_object("model_sampling")
    sigmas = comfy.samplers.calculate_sigmas(sampling, "normal", steps)
    noise = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    import math
    top = float(sampling.sigma_max)      # ComfyUI scales noise by sqrt(1 + sigma^2) from the model's top sigma
    max_denoise = math.isclose(top, float(sigmas[0]), rel_tol=1e-5) or float(sigmas[0]) > top
    x = sampling.noise_scaling(sigmas[0], noise, model.model.process_latent_in(torch.zeros(shape)), max_denoise)
    den = ComfyDenoiser(model.model, [seen["cond"], seen["uncond"]], {"transformer_options": {}})
    g = wg.Guidance()
    if cfg != 1:
        g = wg.CFG(cfg - 1, null={"which": torch.ones(1, dtype=torch.long)},
                   sigma_lo=0.0 if cfg_above is None else float(cfg_above))
    if guidance is not None:
        g = g + guidance
    which = {"which": torch.zeros(shape[0], dtype=torch.long)}
    from windowguide.integrations import comfyui as host
    model.pre_run()                   # what ComfyUI's sampler does before its first model call
    tokens = host._STEP_CONDS.set(seen["cond"]), host._STEP_OPTIONS.set(seen["options"]), host._STEP_MODEL.set(model.model)
    try:
        with torch.no_grad():
            x = sample_euler(wg.guidance.guided(den, g), x, sigmas.double(), which)
    finally:
        model.cleanup()
        for var, token in zip((host._STEP_CONDS, host._STEP_OPTIONS, host._STEP_MODEL), tokens):
            var.reset(token)
    return model.model.process_latent_out(sampling.inverse_noise_scaling(sigmas[-1], x))


def counted(model):
    """A clone whose network calls are recorded: the input shape of each ``apply_model``."""
    calls = []
    m = model.clone()

    def wrapper(apply, args):
        calls.append(tuple(args["input"].shape))
        return apply(args["input"], args["timestep"], **args["c"])
    m.set_model_unet_function_wrapper(wrapper)
    return m, calls


def close(model, a, b, tol=1e-4) -> bool:
    """max |a - b| <= tol max(1, max |b|) in the model's own latent space (ComfyUI returns latents divided
    by its scale factor; these tiny random nets make latents of magnitude ~30, float32 round-off grows
    with it)."""
    pa, pb = model.model.process_latent_in(a), model.model.process_latent_in(b)
    err, size = float((pa - pb).abs().max()), float(pb.abs().max())
    print(f"max |ComfyUI - windowguide| = {err:.2e} (latents up to {size:.1f})")
    return err <= tol * max(1.0, size)
