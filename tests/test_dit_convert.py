"""facebookresearch DiT weights -> diffusers' DiTTransformer2DModel: every tensor maps, and the
converted model computes the DiT of the paper (a forward pass written here on the original keys)."""
import math

import torch
import torch.nn.functional as F

from windowguide.cli import main
from windowguide.formats.dit_checkpoint import dit_config

D, HEADS, LAYERS, PATCH, C_IN, GRID, CLASSES = 32, 2, 2, 2, 4, 4, 10


def _original_state_dict(seed=0):
    """Random weights in the original DiT's names and shapes (learned sigma: 2 x C_IN outputs)."""
    from diffusers.models.embeddings import get_2d_sincos_pos_embed
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g) * 0.2
    sd = {"x_embedder.proj.weight": r(D, C_IN, PATCH, PATCH), "x_embedder.proj.bias": r(D),
          "pos_embed": torch.as_tensor(get_2d_sincos_pos_embed(D, GRID, base_size=GRID, output_type="np"))[None].float(),
          "t_embedder.mlp.0.weight": r(D, 256), "t_embedder.mlp.0.bias": r(D),
          "t_embedder.mlp.2.weight": r(D, D), "t_embedder.mlp.2.bias": r(D),
          "y_embedder.embedding_table.weight": r(CLASSES + 1, D),
          "final_layer.adaLN_modulation.1.weight": r(2 * D, D), "final_layer.adaLN_modulation.1.bias": r(2 * D),
          "final_layer.linear.weight": r(PATCH * PATCH * 2 * C_IN, D), "final_layer.linear.bias": r(PATCH * PATCH * 2 * C_IN)}
    for i in range(LAYERS):
        b = f"blocks.{i}."
        sd.update({b + "adaLN_modulation.1.weight": r(6 * D, D), b + "adaLN_modulation.1.bias": r(6 * D),
                   b + "attn.qkv.weight": r(3 * D, D), b + "attn.qkv.bias": r(3 * D),
                   b + "attn.proj.weight": r(D, D), b + "attn.proj.bias": r(D),
                   b + "mlp.fc1.weight": r(4 * D, D), b + "mlp.fc1.bias": r(4 * D),
                   b + "mlp.fc2.weight": r(D, 4 * D), b + "mlp.fc2.bias": r(D)})
    return sd


def dit_forward(sd, x, t, y, freq_divisor):
    """DiT (Peebles & Xie 2023) on the original keys: patchify + sin-cos positions, t and y embeddings
    summed into c, adaLN-Zero blocks (shift, scale, gate for attention and MLP), adaLN final layer."""
    n = x.shape[0]
    h = F.conv2d(x, sd["x_embedder.proj.weight"], sd["x_embedder.proj.bias"], stride=PATCH)
    gh, gw = h.shape[2:]
    h = h.flatten(2).transpose(1, 2) + sd["pos_embed"]
    freqs = torch.exp(-math.log(10000) * torch.arange(128) / freq_divisor)
    args = t.float()[:, None] * freqs[None]
    temb = torch.cat([args.cos(), args.sin()], dim=1)
    temb = F.linear(F.silu(F.linear(temb, sd["t_embedder.mlp.0.weight"], sd["t_embedder.mlp.0.bias"])),
                    sd["t_embedder.mlp.2.weight"], sd["t_embedder.mlp.2.bias"])
    c = F.silu(temb + sd["y_embedder.embedding_table.weight"][y])
    norm = lambda v, shift, scale: F.layer_norm(v, (D,), eps=1e-6) * (1 + scale[:, None]) + shift[:, None]
    for i in range(LAYERS):
        b = f"blocks.{i}."
        s_a, sc_a, g_a, s_m, sc_m, g_m = F.linear(c, sd[b + "adaLN_modulation.1.weight"],
                                                  sd[b + "adaLN_modulation.1.bias"]).chunk(6, dim=1)
        qkv = F.linear(norm(h, s_a, sc_a), sd[b + "attn.qkv.weight"], sd[b + "attn.qkv.bias"])
        q, k, v = qkv.reshape(n, -1, 3, HEADS, D // HEADS).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, -1, D)
        h = h + g_a[:, None] * F.linear(a, sd[b + "attn.proj.weight"], sd[b + "attn.proj.bias"])
        m = F.gelu(F.linear(norm(h, s_m, sc_m), sd[b + "mlp.fc1.weight"], sd[b + "mlp.fc1.bias"]), approximate="tanh")
        h = h + g_m[:, None] * F.linear(m, sd[b + "mlp.fc2.weight"], sd[b + "mlp.fc2.bias"])
    shift, scale = F.linear(c, sd["final_layer.adaLN_modulation.1.weight"],
                            sd["final_layer.adaLN_modulation.1.bias"]).chunk(2, dim=1)
    h = F.linear(norm(h, shift, scale), sd["final_layer.linear.weight"], sd["final_layer.linear.bias"])
    c_out = h.shape[-1] // PATCH ** 2
    return h.reshape(n, gh, gw, PATCH, PATCH, c_out).permute(0, 5, 1, 3, 2, 4).reshape(n, c_out, gh * PATCH, gw * PATCH)


def test_dit_weights_convert_to_diffusers_and_compute_the_papers_dit(tmp_path):
    from diffusers import DiTTransformer2DModel
    import argparse
    sd = _original_state_dict()
    # a train.py checkpoint: {model, ema, opt, args} with args an argparse.Namespace (read as an inert record)
    torch.save({"model": sd, "ema": sd, "opt": {}, "args": argparse.Namespace(model="DiT-tiny", image_size=8)},
               tmp_path / "DiT-tiny.pt")
    assert main(["convert", str(tmp_path / "DiT-tiny.pt"), "--out", str(tmp_path / "dit"), "--heads", str(HEADS)]) == 0
    model = DiTTransformer2DModel.from_pretrained(tmp_path / "dit").eval()
    for block in model.transformer_blocks:        # plain diffusers: its own frequencies (the key is ignored)
        block.norm1.emb.time_proj.downscale_freq_shift = 1
    assert model.config.sample_size == GRID * PATCH and model.config.num_embeds_ada_norm == CLASSES
    x = torch.randn(3, C_IN, GRID * PATCH, GRID * PATCH, generator=torch.Generator().manual_seed(1))
    t, y = torch.tensor([1, 500, 999]), torch.tensor([0, 3, CLASSES])     # CLASSES = the null class
    with torch.no_grad():
        got = model(x, timestep=t, class_labels=y).sample
        ours = dit_forward(sd, x, t, y, freq_divisor=127)     # diffusers' sinusoid: 10000^(-i / (half - 1))
        original = dit_forward(sd, x, t, y, freq_divisor=128)  # the original DiT's: 10000^(-i / half)
    assert torch.allclose(got, ours, atol=1e-5), (got - ours).abs().max()
    # the port's one difference from the original network (documented in formats.dit_checkpoint): if
    # diffusers ever matches the original sinusoid, this fails and the documentation must change
    assert not torch.allclose(got, original, atol=1e-3)
    from windowguide.formats.dit_checkpoint import match_original_timesteps
    with torch.no_grad():
        fixed = match_original_timesteps(model)(x, timestep=t, class_labels=y).sample
    assert torch.allclose(fixed, original, atol=1e-5), (fixed - original).abs().max()


def test_a_converted_folder_loads_as_the_original_network_through_windowguide(tmp_path):
    """Replayed: the converted folder, loaded again, used diffusers' frequencies (2-3 % off). The folder
    now says it is the original network, and windowguide's loader restores the original sinusoid."""
    import json
    import warnings
    import windowguide as wg
    from diffusers import DDIMScheduler, DiTPipeline, DiTTransformer2DModel
    from pipes import tiny_vae
    sd = _original_state_dict()
    torch.save(sd, tmp_path / "DiT-tiny.pt")
    assert main(["convert", str(tmp_path / "DiT-tiny.pt"), "--out", str(tmp_path / "dit"), "--heads", str(HEADS)]) == 0
    assert json.loads((tmp_path / "dit" / "config.json").read_text())["windowguide_timesteps"] == "original"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = DiTTransformer2DModel.from_pretrained(tmp_path / "dit").eval()
    pipe = DiTPipeline(transformer=model, vae=tiny_vae(), scheduler=DDIMScheduler())
    pipe.save_pretrained(tmp_path / "pipe")                  # and once more through a pipeline folder
    from windowguide.commands.sample_pipeline import load_pipeline
    x = torch.randn(3, C_IN, GRID * PATCH, GRID * PATCH, generator=torch.Generator().manual_seed(1))
    t, y = torch.tensor([1, 500, 999]), torch.tensor([0, 3, CLASSES])
    loaded = load_pipeline(str(tmp_path / "pipe"), "cpu")
    wg.from_pipeline(loaded)                                 # what sample --model and from_pipeline do
    with torch.no_grad():
        got = loaded.transformer(x, timestep=t, class_labels=y).sample
    original = dit_forward(sd, x, t, y, freq_divisor=128)
    assert torch.allclose(got, original, atol=1e-5), (got - original).abs().max()


def test_dit_config_and_refusals(tmp_path, capsys):
    sd = _original_state_dict()
    cfg = dit_config(sd, heads=HEADS)
    assert cfg["num_layers"] == LAYERS and cfg["out_channels"] == 2 * C_IN and cfg["attention_head_dim"] == D // HEADS
    assert main(["convert", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "d")]) == 2
    torch.save(sd, tmp_path / "noheads.pt")
    assert main(["convert", str(tmp_path / "noheads.pt"), "--out", str(tmp_path / "d")]) == 2
    assert "head count is not in the weights" in capsys.readouterr().err
    torch.save({"w": torch.zeros(2)}, tmp_path / "other.pt")
    assert main(["convert", str(tmp_path / "other.pt"), "--out", str(tmp_path / "d")]) == 2
    assert "not a DiT state dict" in capsys.readouterr().err
