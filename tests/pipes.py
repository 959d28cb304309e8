"""Tiny randomly initialised diffusers pipelines built from configs (no download), for the tests."""
import torch

from windowguide.tiny import tiny_clip, tiny_sd, tiny_sdxl, tiny_vae  # noqa: F401


def tiny_t5(n_words=8):
    """A T5 encoder and a word-level fast tokenizer built here (no sentencepiece file, no download)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import T5Config, T5EncoderModel, T5TokenizerFast
    words = ["<pad>", "</s>", "<unk>", "a", "red", "cat", "blue", "dog", "at", "dusk"][:n_words + 3]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = T5TokenizerFast(tokenizer_object=core, eos_token="</s>", pad_token="<pad>", unk_token="<unk>", extra_ids=0)
    torch.manual_seed(5)
    enc = T5EncoderModel(T5Config(vocab_size=len(words), d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2)).eval()
    return tok, enc


def tiny_pixart():
    """A tiny PixArt-alpha (T5 built here, learned variance) from configs."""
    from diffusers import DDIMScheduler, PixArtAlphaPipeline, PixArtTransformer2DModel
    tok, enc = tiny_t5()
    torch.manual_seed(0)
    tr = PixArtTransformer2DModel(sample_size=8, num_layers=2, attention_head_dim=8, num_attention_heads=2,
                                  in_channels=4, out_channels=8, cross_attention_dim=16, caption_channels=16,
                                  patch_size=2, norm_type="ada_norm_single").eval()
    with torch.no_grad():
        for name, p in tr.named_parameters():
            if "scale_shift_table" in name or name.startswith("proj_out") or "adaln" in name:
                p.normal_(0, 0.05)
    pipe = PixArtAlphaPipeline(tokenizer=tok, text_encoder=enc, vae=tiny_vae(), transformer=tr,
                               scheduler=DDIMScheduler(num_train_timesteps=1000, clip_sample=False))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sd3(folder):
    """A tiny SD3 with two CLIP encoders (no T5: the pipeline pads with zeros) and a tiny VAE."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection
    tok, _ = tiny_clip(folder)
    encoders = []
    for seed in (3, 4):
        torch.manual_seed(seed)
        encoders.append(CLIPTextModelWithProjection(CLIPTextConfig(
            vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
            max_position_embeddings=8, projection_dim=16, bos_token_id=0, eos_token_id=1, pad_token_id=2)).eval())
    torch.manual_seed(0)
    tr = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=3,
                               attention_head_dim=8, num_attention_heads=2, joint_attention_dim=32,
                               caption_projection_dim=16, pooled_projection_dim=32, pos_embed_max_size=16).eval()
    with torch.no_grad():                    # adaLN-Zero and the output layer start at zero
        for name, p in tr.named_parameters():
            if "norm" in name and "linear" in name or name.startswith("proj_out"):
                p.normal_(0, 0.05)
    pipe = StableDiffusion3Pipeline(transformer=tr, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=tiny_vae(),
                                    text_encoder=encoders[0], tokenizer=tok, text_encoder_2=encoders[1],
                                    tokenizer_2=tok, text_encoder_3=None, tokenizer_3=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_flux(folder):
    """A tiny FLUX.1-dev-like pipeline (guidance embedding, CLIP + T5 built here) from configs."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel
    clip_tok, _ = tiny_clip(folder)
    t5_tok, t5 = tiny_t5()
    torch.manual_seed(3)
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=len(clip_tok), hidden_size=16, intermediate_size=32,
                                        num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=8,
                                        bos_token_id=0, eos_token_id=1, pad_token_id=2)).eval()
    torch.manual_seed(0)
    tr = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=8,
                                num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=16,
                                guidance_embeds=True, axes_dims_rope=(2, 2, 4)).eval()
    with torch.no_grad():
        for name, p in tr.named_parameters():
            if "norm" in name and "linear" in name or name.startswith("proj_out"):
                p.normal_(0, 0.05)
    torch.manual_seed(1)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8), layers_per_block=1,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=4, shift_factor=0.1, scaling_factor=0.5).eval()
    pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True), vae=vae,
                        text_encoder=clip, tokenizer=clip_tok, text_encoder_2=t5, tokenizer_2=t5_tok, transformer=tr)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def modular(classic, guider):
    """The modular pipeline (SDXL or SD3 auto blocks) with the classic pipeline's components and ``guider``."""
    from diffusers.modular_pipelines import StableDiffusion3AutoBlocks, StableDiffusionXLAutoBlocks
    blocks = StableDiffusionXLAutoBlocks if type(classic).__name__ == "StableDiffusionXLPipeline" else StableDiffusion3AutoBlocks
    pipe = blocks().init_pipeline()
    if classic.vae.config.get("shift_factor") is None:      # SD3's modular decoder adds it unconditionally
        classic.vae.register_to_config(shift_factor=0.0)
    parts = {k: v for k, v in classic.components.items() if v is not None and k in pipe._component_specs}
    pipe.update_components(**parts, guider=guider)
    return pipe


def _lift_zero_init(tr, also=()):
    """adaLN-Zero and output layers start at zero: give them small weights so outputs depend on inputs."""
    with torch.no_grad():
        for name, p in tr.named_parameters():
            if "norm" in name and "linear" in name or name.startswith("proj_out") or any(a in name for a in also):
                p.normal_(0, 0.05)


def tiny_chroma():
    """A tiny Chroma (T5 built here, FLUX-style packing, attention mask) from configs."""
    from diffusers import AutoencoderKL, ChromaPipeline, ChromaTransformer2DModel, FlowMatchEulerDiscreteScheduler
    tok, t5 = tiny_t5()
    torch.manual_seed(0)
    tr = ChromaTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=8,
                                  num_attention_heads=2, joint_attention_dim=16, axes_dims_rope=(2, 2, 4),
                                  approximator_num_channels=8, approximator_hidden_dim=16, approximator_layers=1).eval()
    _lift_zero_init(tr)
    torch.manual_seed(1)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8), layers_per_block=1,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=4, shift_factor=0.1, scaling_factor=0.5).eval()
    pipe = ChromaPipeline(scheduler=FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True), vae=vae, text_encoder=t5,
                          tokenizer=tok, transformer=tr)
    pipe.set_progress_bar_config(disable=True)
    return pipe


CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }} {% if m['content'] is string %}{{ m['content'] }}{% else %}"
                 "{% for c in m['content'] %}{{ c['text'] }}{% endfor %}{% endif %} {% endfor %}"
                 "{% if add_generation_prompt %}assistant {% endif %}")


def tiny_chat_tokenizer(words=("a", "red", "cat", "blue", "dog", "at", "dusk", "user", "system", "assistant")):
    """A word-level fast tokenizer with a chat template (the LLM text encoders' pipelines apply one)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "<eos>", *words])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>")
    tok.chat_template = CHAT_TEMPLATE
    return tok


def tiny_qwen3(layers=28, hidden=16, vocab=16, seed=6):
    """A tiny Qwen3 causal LM (FLUX.2 [klein]'s and Z-Image's text encoder) from a config."""
    from transformers import Qwen3Config, Qwen3ForCausalLM
    torch.manual_seed(seed)
    return Qwen3ForCausalLM(Qwen3Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=32,
                                        num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=1,
                                        head_dim=8, max_position_embeddings=512)).eval()


def tiny_flux2_vae():
    from diffusers import AutoencoderKLFlux2
    torch.manual_seed(1)
    vae = AutoencoderKLFlux2(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8),
                             layers_per_block=1, down_block_types=("DownEncoderBlock2D",) * 2,
                             up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4).eval()
    with torch.no_grad():                     # batch-norm statistics that are not the identity
        vae.bn.running_mean.normal_(0, 0.2)
        vae.bn.running_var.uniform_(0.5, 2.0)
    return vae


def tiny_flux2(klein=True):
    """A tiny FLUX.2 [klein] (Qwen3 encoder, real CFG) or [dev] (guidance embedding; a Qwen3 stands in for
    Mistral-3 small: the pipeline only reads hidden states) from configs."""
    from diffusers import FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline, Flux2Pipeline, Flux2Transformer2DModel
    torch.manual_seed(0)
    tr = Flux2Transformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=8,
                                 num_attention_heads=2, joint_attention_dim=48, timestep_guidance_channels=16,
                                 axes_dims_rope=(2, 2, 2, 2), guidance_embeds=not klein).eval()
    _lift_zero_init(tr)
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, shift=3.0)
    if klein:
        pipe = Flux2KleinPipeline(scheduler=scheduler, vae=tiny_flux2_vae(), text_encoder=tiny_qwen3(),
                                  tokenizer=tiny_chat_tokenizer(), transformer=tr)
    else:
        pipe = Flux2Pipeline(scheduler=scheduler, vae=tiny_flux2_vae(), text_encoder=tiny_qwen3(31),
                             tokenizer=tiny_chat_tokenizer(), transformer=tr)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_qwen25vl(hidden=16, seed=6):
    """A tiny Qwen2.5-VL (Qwen-Image's text encoder; the pipeline reads its last hidden states) from a config."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    torch.manual_seed(seed)
    cfg = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=64, hidden_size=hidden, bos_token_id=2, eos_token_id=2, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                         rope_parameters=dict(rope_type="default", rope_theta=10000.0, mrope_section=[1, 1, 2])),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=hidden,
                           fullatt_block_indexes=[0]),
        image_token_id=60, video_token_id=61, vision_start_token_id=62, vision_end_token_id=63)
    return Qwen2_5_VLForConditionalGeneration(cfg).eval()


QWEN_WORDS = ("a", "red", "cat", "blue", "dog", "at", "dusk", "user", "system", "assistant", "<|", "|>", "im_start",
              "im_end", "Describe", "the", "image")


def tiny_qwen_image(guidance_embeds=False):
    """A tiny Qwen-Image (Qwen2.5-VL encoder, 3-D VAE with latent statistics, centred RoPE) from configs."""
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImagePipeline, QwenImageTransformer2DModel
    torch.manual_seed(0)
    tr = QwenImageTransformer2DModel(patch_size=2, in_channels=16, out_channels=4, num_layers=1, attention_head_dim=8,
                                     num_attention_heads=2, joint_attention_dim=16, axes_dims_rope=(2, 2, 4),
                                     guidance_embeds=guidance_embeds).eval()
    _lift_zero_init(tr)
    torch.manual_seed(1)
    vae = AutoencoderKLQwenImage(base_dim=8, z_dim=4, dim_mult=[1, 2], num_res_blocks=1, temperal_downsample=[False],
                                 latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[1.5, 0.8, 1.2, 2.0]).eval()
    pipe = QwenImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, shift=3.0), vae=vae,
                             text_encoder=tiny_qwen25vl(), tokenizer=tiny_chat_tokenizer(QWEN_WORDS), transformer=tr)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_zimage():
    """A tiny Z-Image (Qwen3 encoder, single-stream DiT on 2 x 2 patches, list inputs) from configs."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
    torch.manual_seed(0)
    tr = ZImageTransformer2DModel(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=4, dim=32, n_layers=1,
                                  n_refiner_layers=1, n_heads=2, n_kv_heads=2, cap_feat_dim=16, axes_dims=[4, 6, 6],
                                  axes_lens=[256, 64, 64]).eval()
    _lift_zero_init(tr, also=("adaLN", "final_layer"))
    torch.manual_seed(1)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8), layers_per_block=1,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=4, shift_factor=0.1, scaling_factor=0.5).eval()
    pipe = ZImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, shift=3.0), vae=vae,
                          text_encoder=tiny_qwen3(4).model, tokenizer=tiny_chat_tokenizer(), transformer=tr)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sana(scheduler="euler"):
    """A tiny SANA (Gemma-2 encoder, DC-AE, linear-attention DiT) on a flow scheduler, from configs."""
    from diffusers import (AutoencoderDC, DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler, SanaPipeline,
                           SanaTransformer2DModel)
    from transformers import Gemma2Config, Gemma2Model
    torch.manual_seed(0)
    tr = SanaTransformer2DModel(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=1,
                                num_cross_attention_heads=2, cross_attention_head_dim=8, cross_attention_dim=16,
                                caption_channels=16, sample_size=16, patch_size=1).eval()
    _lift_zero_init(tr, also=("scale_shift_table", "adaln"))
    torch.manual_seed(1)
    vae = AutoencoderDC(in_channels=3, latent_channels=4, attention_head_dim=4, encoder_block_types=("ResBlock",) * 2,
                        decoder_block_types=("ResBlock",) * 2, encoder_block_out_channels=(8, 8),
                        decoder_block_out_channels=(8, 8), encoder_layers_per_block=(1, 1), decoder_layers_per_block=(1, 1),
                        encoder_qkv_multiscales=((), ()), decoder_qkv_multiscales=((), ()), scaling_factor=0.4).eval()
    torch.manual_seed(5)
    enc = Gemma2Model(Gemma2Config(vocab_size=16, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                                   max_position_embeddings=512)).eval()
    sched = (FlowMatchEulerDiscreteScheduler(shift=3.0) if scheduler == "euler" else
             DPMSolverMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0))
    pipe = SanaPipeline(tokenizer=tiny_chat_tokenizer(), text_encoder=enc, vae=vae, transformer=tr, scheduler=sched)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_wan(scheduler="euler"):
    """A tiny Wan 2.1 text-to-video pipeline (3-D DiT, Wan VAE, a T5 encoder built here) from configs; its
    scheduler FlowMatchEuler with Wan's shift (or 'unipc', Wan's own default)."""
    from diffusers import (AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler, WanPipeline,
                           WanTransformer3DModel)
    from transformers import PreTrainedTokenizerFast
    t5_tok, enc = tiny_t5()
    # a plain fast tokenizer of the same vocabulary: it saves and loads back (a word-level T5TokenizerFast does not)
    tok = PreTrainedTokenizerFast(tokenizer_object=t5_tok.backend_tokenizer, eos_token="</s>", pad_token="<pad>",
                                  unk_token="<unk>")
    torch.manual_seed(0)
    tr = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4,
                               out_channels=4, text_dim=16, freq_dim=16, ffn_dim=32, num_layers=2, cross_attn_norm=True,
                               qk_norm="rms_norm_across_heads", rope_max_seq_len=32).eval()
    _lift_zero_init(tr, also=("scale_shift_table",))
    torch.manual_seed(1)
    vae = AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 1], num_res_blocks=1, temperal_downsample=[False],
                           scale_factor_temporal=1, scale_factor_spatial=2,
                           latents_mean=[0.1, -0.2, 0.0, 0.3], latents_std=[1.5, 0.8, 1.0, 2.0]).eval()
    sched = (FlowMatchEulerDiscreteScheduler(shift=3.0) if scheduler == "euler" else
             UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0))
    pipe = WanPipeline(tokenizer=tok, text_encoder=enc, transformer=tr, vae=vae, scheduler=sched)
    pipe.set_progress_bar_config(disable=True)
    return pipe
