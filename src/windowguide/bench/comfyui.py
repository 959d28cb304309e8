"""ComfyUI rows of the benchmarks, each measured inside ComfyUI (``$COMFYUI_PATH``) in a subprocess of its
own (``python -m windowguide.bench.comfyui speed|upscale ...`` prints the row as JSON):

- ``windowguide bench speed``: the M-SWG node's cost per step over ComfyUI's plain KSampler (CFG, euler),
  against the FLOP floor, and against evaluating the same crops one call at a time (``max_batch=1``);
- ``windowguide bench upscale``: tiled img2img upscaling in ComfyUI with the bundled ``scenes`` model
  (wrapped as a ComfyUI model): the fusion sampler (all windows stepped together, fused every step)
  against the tiles one after another as Ultimate SD Upscale runs them (each tile img2img'd by ComfyUI's
  KSampler from the current image, pasted back under a feathered mask), same model, tiles, steps and
  sigmas; seconds of each, side by side, and the images for the seam score."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile


def comfyui_path() -> str | None:
    """The ComfyUI checkout to measure in: ``$COMFYUI_PATH``, else the pinned one beside the project, else None."""
    here = os.path.dirname(os.path.abspath(__file__))
    for path in (os.environ.get("COMFYUI_PATH"), os.path.join(here, "..", "..", "..", "..", "shared", "comfyui")):
        if path and os.path.isdir(os.path.join(path, "comfy")):
            return os.path.abspath(path)
    return None


def measure_comfyui(steps: int = 4, repeats: int = 3) -> dict | None:
    """The speed row, or None where there is no ComfyUI (set COMFYUI_PATH)."""
    return _in_comfyui("speed", steps, repeats)


def _in_comfyui(what: str, *args) -> dict | None:
    """``python -m windowguide.bench.comfyui WHAT ARGS`` in ComfyUI's environment: its JSON line."""
    path = comfyui_path()
    if path is None:
        return None
    stub = os.path.join(tempfile.gettempdir(), "windowguide-comfy-stub", "torchvision")
    os.makedirs(stub, exist_ok=True)
    for name in ("__init__.py", "transforms.py"):        # ComfyUI imports torchvision in families unused here
        open(os.path.join(stub, name), "a").close()
    env = {**os.environ, "COMFYUI_PATH": path}
    run = subprocess.run([sys.executable, "-m", "windowguide.bench.comfyui", what, *map(str, args)],
                         capture_output=True, text=True, env=env, timeout=3600)
    if run.returncode != 0:
        raise RuntimeError(f"the ComfyUI {what} row failed: {run.stderr[-2000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def _import_comfyui():
    sys.argv = [sys.argv[0], "--cpu"]
    sys.path[:0] = [os.environ["COMFYUI_PATH"], os.path.join(tempfile.gettempdir(), "windowguide-comfy-stub")]
    import comfy.options
    comfy.options.enable_args_parsing()


def _tiny_sd15() -> dict:
    """An SD 1.5-style UNet configuration of 64 / 128 channels (ComfyUI's ``SD15``), random weights."""
    import torch
    return {'use_checkpoint': False, 'image_size': 32, 'out_channels': 4, 'use_spatial_transformer': True,
            'legacy': False, 'dtype': torch.float32, 'in_channels': 4, 'model_channels': 64, 'num_res_blocks': [1, 1],
            'transformer_depth': [1, 1, 0, 0], 'channel_mult': [1, 2], 'transformer_depth_middle': 1,
            'transformer_depth_output': [1, 1, 0, 0], 'use_temporal_attention': False, 'use_temporal_resblock': False,
            'adm_in_channels': None, 'use_linear_in_transformer': False, 'context_dim': 64, 'num_heads': 4}


def _inside(steps: int, repeats: int) -> dict:
    import torch
    _import_comfyui()
    import comfy.model_patcher
    import comfy.sample
    import comfy.supported_models as supported
    from ..comfyui import nodes
    from .timing import time_interleaved
    torch.manual_seed(0)
    model = supported.SD15(_tiny_sd15()).get_model({}, "")
    cpu = torch.device("cpu")
    plain = comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)
    (batched,) = nodes.SlidingWindowGuidance.execute(plain, 0.5, True, 0.625, 2, 0.0, 1.0)
    (one_by_one,) = nodes.SlidingWindowGuidance.execute(plain, 0.5, True, 0.625, 2, 0.0, 1.0, max_batch=1)
    g = torch.Generator().manual_seed(1)
    pos, neg = [[torch.randn(1, 8, 64, generator=g), {}]], [[torch.randn(1, 8, 64, generator=g), {}]]
    side, window, shape = 32, 20, (1, 4, 32, 32)
    noise = torch.randn(*shape, generator=g)

    def run(m):
        return lambda: comfy.sample.sample(m, noise, steps, 3.0, "euler", "normal", pos, neg, torch.zeros(shape),
                                           seed=0, disable_pbar=True)
    t = time_interleaved(dict(plain=run(plain), mswg=run(batched), mswg_per_crop=run(one_by_one)), repeats, cpu)
    floor = (2 + 4 * (window / side) ** 2) / 2       # per step: cond + uncond, then 4 crops of (20/32)^2 each
    return {"model": f"ComfyUI SD1.5-style UNet (64/128 channels) {side}x{side} latent, {steps} euler steps",
            "seconds": t, "mswg_cost_ratio": t["mswg"] / t["plain"], "flop_floor": floor,
            "cost_vs_floor": t["mswg"] / t["plain"] / floor, "batched_speedup": t["mswg_per_crop"] / t["mswg"]}


def measure_comfyui_upscale(low, scale: int, steps: int, strength: float, window: int, stride: int,
                            images_path: str) -> dict | None:
    """The upscale rows: ``low`` (uint8 [N, h, w, 3]) upscaled by ``scale`` both ways inside ComfyUI; the
    upscaled images are written to ``images_path`` (npz: fused, tiles), the seconds returned. None where
    there is no ComfyUI."""
    import numpy as np
    np.save(images_path + ".low.npy", low)
    try:
        return _in_comfyui("upscale", images_path, scale, steps, strength, window, stride)
    finally:
        os.remove(images_path + ".low.npy")


def _comfy_scenes_model(window: int):
    """The bundled ``scenes`` denoiser as a ComfyUI MODEL: an SD-style (EPS, discrete schedule) BaseModel
    whose network is D in pixel space, eps = (x - D(x, sigma)) / sigma with sigma = the schedule's sigma of
    ComfyUI's timestep and x = x_in sqrt(sigma^2 + 1); latents are the pixels in [-1, 1] (scale 1)."""
    import torch
    import comfy.latent_formats
    import comfy.model_patcher
    import comfy.supported_models as supported
    from ..models.checkpoint import load_denoiser
    denoiser, info, net = load_denoiser("scenes")
    null = torch.tensor([net.num_classes])

    class Pixels(comfy.latent_formats.LatentFormat):
        scale_factor, latent_channels = 1.0, 3

    config = supported.SD15(_tiny_sd15())          # its network is replaced: only the model's frame is used
    config.latent_format = Pixels
    model = config.get_model({}, "")
    sampling = model.model_sampling

    class Net(torch.nn.Module):
        dtype = torch.float32

        def forward(self, x_in, timesteps, context=None, **kw):
            sigma = sampling.sigma(timesteps).view(-1, 1, 1, 1)
            x = x_in * (sigma ** 2 + 1).sqrt()
            return (x - denoiser(x, sigma.flatten(), null.repeat(x.shape[0]))) / sigma
    model.diffusion_model = Net()
    model.latent_format = Pixels()
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


def _upscale_inside(images_path: str, scale: int, steps: int, strength: float, window: int, stride: int) -> dict:
    """Both ways of tiled upscaling in ComfyUI on the same windows, sigmas and noise seeds; seconds of each
    (interleaved image by image, so both see the same machine), the images written to ``images_path``."""
    import time

    import numpy as np
    import torch
    _import_comfyui()
    import comfy.sample
    import comfy.samplers
    from ..integrations.comfyui import fusion_sampler
    from ..upscaling import resize
    from ..windows import layout, window_weights
    low = np.load(images_path + ".low.npy")
    model = _comfy_scenes_model(window)
    sigmas = comfy.samplers.KSampler(model, steps=steps, device="cpu", sampler="euler", scheduler="karras",
                                     denoise=strength).sigmas
    cond = [[torch.zeros(1, 1, 8), {}]]
    fused_sampler = fusion_sampler(mode="gf", sampler="euler", window=window, stride=stride)
    out = {"fused": [], "tiles": []}
    seconds = {"fused": 0.0, "tiles": 0.0}
    for i, image in enumerate(low):
        start = torch.tensor(resize(image, scale, "lanczos")).permute(2, 0, 1)[None].float() / 127.5 - 1
        lay = layout(start.shape[2], start.shape[3], window, stride=stride)
        with torch.no_grad():
            t0 = time.perf_counter()
            noise = comfy.sample.prepare_noise(start, i)
            x = comfy.sample.sample_custom(model, noise, 1.0, fused_sampler, sigmas, cond, cond, start,
                                           disable_pbar=True, seed=i)
            seconds["fused"] += time.perf_counter() - t0
            out["fused"].append(x)
            t0 = time.perf_counter()
            out["tiles"].append(_tiles_one_after_another(model, start, lay, sigmas, cond, seed=i,
                                                         feather=window_weights("cone", window, window)))
            seconds["tiles"] += time.perf_counter() - t0
    np.savez(images_path, **{k: torch.cat(v).clamp(-1, 1).numpy() for k, v in out.items()})
    return {"model": f"bundled scenes model as a ComfyUI MODEL, {window} x {window} windows at stride {stride}",
            "windows": lay.n, "steps": len(sigmas) - 1, "images": len(low), "seconds": seconds,
            "speedup": seconds["tiles"] / seconds["fused"]}


def _tiles_one_after_another(model, image, lay, sigmas, cond, seed: int, feather):
    """Ultimate SD Upscale's way: every tile in turn img2img'd (ComfyUI's sampler, the tile's own noise) from
    the image as the tiles before it left it, and pasted back under a feathered mask (the tile's weight
    map normalised to 1 at its centre, so overlaps blend)."""
    import comfy.sample
    canvas = image.clone()
    mask = (feather / feather.max()).to(image.dtype)
    for k, (top, left) in enumerate(lay.positions):
        h, w = lay.window[-2:]
        tile = canvas[:, :, top:top + h, left:left + w]
        noise = comfy.sample.prepare_noise(tile, seed * 1000 + k)
        done = comfy.sample.sample_custom(model, noise, 1.0, comfy.samplers.sampler_object("euler"), sigmas, cond,
                                          cond, tile, disable_pbar=True, seed=seed * 1000 + k)
        canvas[:, :, top:top + h, left:left + w] = tile * (1 - mask) + done * mask
    return canvas


if __name__ == "__main__":
    what, args = sys.argv[1], sys.argv[2:]
    if what == "speed":
        print(json.dumps(_inside(int(args[0]), int(args[1]))))
    else:
        print(json.dumps(_upscale_inside(args[0], int(args[1]), int(args[2]), float(args[3]), int(args[4]),
                                         int(args[5]))))
