"""Tiny diffusers pipelines with random weights, built here from configs (nothing is downloaded), so the
diffusers examples (``wg.from_pipeline``, ``wg.patch``, the guiders) can be tried offline in seconds:

    from windowguide.tiny import tiny_sd
    pipe = tiny_sd()                                  # a StableDiffusionPipeline of 8 x 8 latents

Their images are noise-like (the weights are random): they show that the code runs and what it
returns, not what a trained model draws. ``windowguide tiny-pipeline DIR`` saves one as a folder that
every command takes as ``--model DIR``.
"""
from __future__ import annotations

import json
import os
import tempfile

import torch

WORDS = ("a", "red", "cat", "dog", "mountain", "at", "dusk", "blue")


def tiny_vae():
    """A two-level AutoencoderKL (8 channels, 4 latent channels)."""
    from diffusers import AutoencoderKL
    torch.manual_seed(1)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8),
                         layers_per_block=1, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4).eval()


def tiny_clip(folder):
    """A CLIP text encoder and a tokenizer whose vocabulary (``WORDS``) is written into ``folder``."""
    from pathlib import Path
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
    folder = Path(folder)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "!": 2}
    for w in WORDS:
        vocab[w + "</w>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token="!", model_max_length=8)
    torch.manual_seed(2)
    enc = CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                       num_attention_heads=2, max_position_embeddings=8, bos_token_id=0, eos_token_id=1,
                                       pad_token_id=2)).eval()
    return tok, enc


def tiny_sd(folder=None, prediction="epsilon", sd_schedule=True):
    """A tiny StableDiffusionPipeline (text encoder, tokenizer, UNet, VAE; DDIM on SD's schedule)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    tok, enc = tiny_clip(folder or tempfile.mkdtemp(prefix="wg-tiny-"))
    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16),
                                layers_per_block=1, cross_attention_dim=16, attention_head_dim=4, norm_num_groups=4,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")).eval()
    schedule = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, set_alpha_to_one=False,
                    steps_offset=1) if sd_schedule else {}
    scheduler = DDIMScheduler(num_train_timesteps=1000, clip_sample=False, prediction_type=prediction, **schedule)
    pipe = StableDiffusionPipeline(vae=tiny_vae(), text_encoder=enc, tokenizer=tok, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sdxl(folder=None):
    """A tiny StableDiffusionXLPipeline (two CLIP encoders, a text-time UNet)."""
    from diffusers import DDIMScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
    tok, _ = tiny_clip(folder or tempfile.mkdtemp(prefix="wg-tiny-"))
    cfg = dict(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
               max_position_embeddings=8, bos_token_id=0, eos_token_id=1, pad_token_id=2)
    torch.manual_seed(3)
    enc1 = CLIPTextModel(CLIPTextConfig(**cfg)).eval()
    enc2 = CLIPTextModelWithProjection(CLIPTextConfig(projection_dim=16, **cfg)).eval()
    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16),
                                layers_per_block=1, cross_attention_dim=32, attention_head_dim=4, norm_num_groups=4,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), addition_embed_type="text_time",
                                addition_time_embed_dim=4, projection_class_embeddings_input_dim=16 + 6 * 4).eval()
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                              beta_end=0.012, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionXLPipeline(vae=tiny_vae(), text_encoder=enc1, text_encoder_2=enc2, tokenizer=tok,
                                     tokenizer_2=tok, unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_modular_sdxl(guider=None):
    """The modular SDXL pipeline (diffusers' auto blocks) over ``tiny_sdxl``'s components, with ``guider``."""
    from diffusers.modular_pipelines import StableDiffusionXLAutoBlocks
    classic = tiny_sdxl()
    pipe = StableDiffusionXLAutoBlocks().init_pipeline()
    parts = {k: v for k, v in classic.components.items() if v is not None and k in pipe._component_specs}
    pipe.update_components(**parts, **({"guider": guider} if guider is not None else {}))
    return pipe


def save(kind: str, folder: str) -> str:
    """Save a tiny pipeline ('sd' or 'sdxl') as a pipeline folder; returns the folder."""
    build = {"sd": tiny_sd, "sdxl": tiny_sdxl}
    if kind not in build:
        from .errors import WindowguideError
        raise WindowguideError(f"--kind {kind!r}: accepted: {', '.join(build)}")
    os.makedirs(folder, exist_ok=True)
    build[kind]().save_pretrained(folder)
    return folder


__all__ = ["tiny_sd", "tiny_sdxl", "tiny_modular_sdxl", "tiny_vae", "tiny_clip", "save"]
