"""Tiny models with ComfyUI's own classes, shared by the in-process tests and the fixture nodes that the
end-to-end test puts in a ComfyUI server's custom_nodes (ComfyUI must be imported before these run)."""
import torch

UNET = {'use_checkpoint': False, 'image_size': 32, 'out_channels': 4, 'use_spatial_transformer': True, 'legacy': False,
        'dtype': torch.float32, 'in_channels': 4, 'model_channels': 32, 'num_res_blocks': [1, 1],
        'transformer_depth': [1, 1, 0, 0], 'channel_mult': [1, 2], 'transformer_depth_middle': 1,
        'transformer_depth_output': [1, 1, 0, 0], 'use_temporal_attention': False, 'use_temporal_resblock': False}
SD15 = {**UNET, 'adm_in_channels': None, 'use_linear_in_transformer': False, 'context_dim': 16, 'num_heads': 2}


def patcher(model_config, seed=0, state=None):
    """A ModelPatcher of the config's model: random weights N(0, 0.05) from ``seed``, or ``state``."""
    import comfy.model_patcher
    torch.manual_seed(seed)
    model = model_config.get_model({}, "")
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    if state is not None:
        model.diffusion_model.load_state_dict(state)
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


def tiny_sd15(seed=0, state=None):
    """An SD1.5-style UNet (ComfyUI's ``SD15`` config, 2 levels, cross-attention on a 16-d context)."""
    import comfy.supported_models as supported
    return patcher(supported.SD15(dict(SD15)), seed, state)


def conditioning(seed, pooled=False, **extra):
    """ComfyUI CONDITIONING: [[context [1, 6, 16], options]] drawn from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    info = dict(extra)
    if pooled:
        info["pooled_output"] = torch.randn(1, 16, generator=g)
    return [[torch.randn(1, 6, 16, generator=g), info]]


def latent_to_image(samples: torch.Tensor) -> torch.Tensor:
    """A stand-in for a VAE: the first three latent channels as an IMAGE [B, H, W, 3] in [0, 1]."""
    return (samples[:, :3] / 60 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).contiguous()
