"""Full-size SD 1.5-architecture files with random weights, in the formats ComfyUI's own loaders read: a
checkpoint (UNet + CLIP-L + VAE, the original single-file layout) for CheckpointLoaderSimple, a ControlNet
(``control_model.*``) for ControlNetLoader, and an inpainting UNet (9 input channels) for UNETLoader.
ComfyUI detects a model's family from its keys and shapes, so only full-size files load through its
loaders; random weights keep them downloadable-free. Built once per machine (a temp cache keyed by this
file's version), built with ComfyUI's own classes (ComfyUI must be imported first: harness)."""
import math
import os
import tempfile

import torch

VERSION = 1
SD15_UNET = {'use_checkpoint': False, 'image_size': 32, 'out_channels': 4, 'use_spatial_transformer': True,
             'legacy': False, 'adm_in_channels': None, 'dtype': torch.float16, 'in_channels': 4, 'model_channels': 320,
             'num_res_blocks': [2, 2, 2, 2], 'transformer_depth': [1, 1, 1, 1, 1, 1, 0, 0],
             'channel_mult': [1, 2, 4, 4], 'transformer_depth_middle': 1, 'use_linear_in_transformer': False,
             'context_dim': 768, 'num_heads': 8, 'transformer_depth_output': [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
             'use_temporal_attention': False, 'use_temporal_resblock': False}
SD_VAE = {'double_z': True, 'z_channels': 4, 'resolution': 256, 'in_channels': 3, 'out_ch': 3, 'ch': 128,
          'ch_mult': [1, 2, 4, 4], 'num_res_blocks': 2, 'attn_resolutions': [], 'dropout': 0.0}


def folder() -> str:
    path = os.path.join(tempfile.gettempdir(), f"windowguide-fullsize-v{VERSION}")
    os.makedirs(path, exist_ok=True)
    return path


def _random(state: dict, seed: int) -> dict:
    """Weights N(0, 1 / fan_in) (activations keep their scale through the random layers), embeddings
    N(0, 0.02^2), biases 0, norms' scales 1, in float16. The normal draws are cut from one pool of 2^26
    values at a different place for every tensor: a full-size model is a billion weights, and drawing
    each would take longer than the tests that use them."""
    g = torch.Generator().manual_seed(seed)
    pool = torch.randn(1 << 26, generator=g)
    out = {}
    for i, (k, v) in enumerate(state.items()):
        n = math.prod(v.shape)
        if v.ndim >= 2:
            start = int(torch.randint(0, pool.numel() - n + 1, (1,), generator=g))
            scale = 0.02 if "embedding" in k else 1 / math.sqrt(math.prod(v.shape[1:]))
            w = (pool[start:start + n] * scale).view(v.shape)
        elif k.endswith("weight") and ("norm" in k or "ln_" in k or "layer_norm" in k):
            w = torch.ones(v.shape)
        else:
            w = torch.zeros(v.shape)
        out[k] = w.to(torch.float16).contiguous()
    return out


def _unet_state(in_channels: int) -> dict:
    """The UNet's keys and shapes (on the meta device: nothing allocated)."""
    import comfy.supported_models as supported
    with torch.device("meta"):
        model = supported.SD15({**SD15_UNET, "in_channels": in_channels}).get_model({}, device="meta")
    return model.diffusion_model.state_dict()


def _save(path: str, state: dict) -> str:
    import safetensors.torch
    tmp = path + ".part"
    safetensors.torch.save_file(state, tmp)
    os.replace(tmp, path)                  # whole or absent: a killed build leaves no half file
    return path


def checkpoint() -> str:
    """``sd15_random.safetensors``: model.diffusion_model.*, cond_stage_model.transformer.*, first_stage_model.*"""
    path = os.path.join(folder(), "sd15_random.safetensors")
    if os.path.exists(path):
        return path
    import comfy.ldm.models.autoencoder as ae
    import comfy.sd1_clip
    state = {f"model.diffusion_model.{k}": v for k, v in _random(_unet_state(4), 1).items()}
    with torch.device("meta"):
        clip = comfy.sd1_clip.SDClipModel(device="meta", dtype=torch.float16)
    state.update({f"cond_stage_model.{k}": v for k, v in _random(clip.state_dict(), 2).items()
                  if not k.endswith("logit_scale")})
    with torch.device("meta"):
        vae = ae.AutoencoderKL(ddconfig=SD_VAE, embed_dim=4)
    state.update({f"first_stage_model.{k}": v for k, v in _random(vae.state_dict(), 3).items()})
    return _save(path, state)


def controlnet() -> str:
    """``control_sd15_random.safetensors``: an SD 1.5 ControlNet in the original ``control_model.*`` layout."""
    path = os.path.join(folder(), "control_sd15_random.safetensors")
    if os.path.exists(path):
        return path
    import comfy.cldm.cldm
    import comfy.ops
    cfg = {k: v for k, v in SD15_UNET.items() if k not in ("adm_in_channels", "use_temporal_attention",
                                                             "use_temporal_resblock", "transformer_depth_output")}
    with torch.device("meta"):
        net = comfy.cldm.cldm.ControlNet(hint_channels=3, operations=comfy.ops.disable_weight_init, device="meta", **cfg)
    return _save(path, {f"control_model.{k}": v for k, v in _random(net.state_dict(), 4).items()})


def inpainting_unet() -> str:
    """``sd15_inpainting_random.safetensors``: an SD 1.5 inpainting UNet (9 input channels), UNet keys only."""
    path = os.path.join(folder(), "sd15_inpainting_random.safetensors")
    if os.path.exists(path):
        return path
    import safetensors.torch
    prefix = "model.diffusion_model."
    with safetensors.torch.safe_open(checkpoint(), "pt") as f:      # the checkpoint's UNet, 9 input channels
        state = {k[len(prefix):]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}
    first = "input_blocks.0.0.weight"
    state[first] = torch.cat([state[first], _random({first: torch.empty(320, 5, 3, 3)}, 5)[first]], dim=1)
    return _save(path, state)
