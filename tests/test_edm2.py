"""EDM2: the network written here (checked against the paper's closed forms and parameter counts), the
safe reader of the authors' pickles, and ``windowguide convert``."""
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import StabilityVAEEncoder, edm2_pickle
from windowguide.cli import main
from windowguide.errors import WindowguideError
from windowguide.formats.edm2_pickle import read_edm2
from windowguide.models import edm2 as E
from windowguide.models.checkpoint import load_denoiser, load_model


def test_parameter_counts_are_the_papers():
    # EDM2 paper, table 2 (ImageNet-512): XS 125M, S 280M, M 498M, L 777M, XL 1119M, XXL 1523M
    paper = {"xs": 125, "s": 280, "m": 498, "l": 777, "xl": 1119, "xxl": 1523}
    for size, millions in paper.items():
        with torch.device("meta"):
            net = E.EDM2Precond(**E.edm2_config(size))
        assert round(sum(p.numel() for p in net.parameters()) / 1e6) == millions, size


def test_magnitude_preserving_operations_in_closed_form():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 6, 20000, generator=g), torch.randn(4, 10, 20000, generator=g)
    assert E.mp_sum(a, b[:, :6], 0.3).square().mean().item() == pytest.approx(1, abs=0.01)
    cat = E.mp_cat(a, b, dim=1, t=0.3)
    assert cat.square().mean().item() == pytest.approx(1, abs=0.01)
    # the branches' shares of the energy are (1 - t)^2 : t^2
    ratio = cat[:, :6].square().sum() / cat[:, 6:].square().sum()
    assert ratio.item() == pytest.approx(0.7 ** 2 / 0.3 ** 2, rel=0.02)
    x = torch.randn(3, 5, 7, generator=g)
    n = E.normalize(x)
    per = x.flatten(1).norm(dim=1) / math.sqrt(35)
    assert torch.allclose(n, x / (1e-4 + per).view(3, 1, 1))
    z = torch.randn(400000, generator=g)
    assert E.mp_silu(z).square().mean().item() == pytest.approx(1, abs=0.01)


def test_mpconv_is_a_conv_with_unit_norm_filters_over_sqrt_fan_in():
    torch.manual_seed(0)
    conv = E.MPConv(3, 4, [3, 3]).eval()
    x = torch.randn(2, 3, 8, 8)
    w = conv.weight / (1e-4 + conv.weight.flatten(1).norm(dim=1) / math.sqrt(27)).view(4, 1, 1, 1)
    assert torch.allclose(conv(x, gain=2.0), F.conv2d(x, 2.0 * w / math.sqrt(27), padding=1), atol=1e-6)
    conv.train()
    r = conv.weight.detach().flatten(1).norm(dim=1) / math.sqrt(27)
    conv(x)                                             # forced weight normalisation of the stored weights
    expect = math.sqrt(27) * r / (1e-4 + r)             # |w / (eps + |w| / sqrt(n))|
    assert torch.allclose(conv.weight.flatten(1).norm(dim=1), expect, rtol=1e-6)


def test_resampling_with_the_default_filter_is_box_down_and_nearest_up():
    x = torch.randn(2, 3, 8, 8)
    assert torch.allclose(E.resample(x, (1, 1), "down"), F.avg_pool2d(x, 2), atol=1e-6)
    assert torch.allclose(E.resample(x, (1, 1), "up"), F.interpolate(x, scale_factor=2, mode="nearest"), atol=1e-6)


def test_attention_equals_scaled_dot_product_attention_on_normalised_heads():
    torch.manual_seed(0)
    block = E.Block(64, 64, 16, "dec", attention=True, channels_per_head=16).eval()
    x = torch.randn(2, 64, 4, 4)
    qkv = block.attn_qkv(x).reshape(2, 4, 16, 3, 16)
    q, k, v = E.normalize(qkv, dim=2).unbind(3)
    ref = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
    ref = block.attn_proj(ref.transpose(-1, -2).reshape(2, 64, 4, 4))
    assert torch.allclose(block._attention(x), ref, atol=1e-5)


def test_preconditioning_at_initialisation_is_c_skip_x():
    # out_gain starts at 0, so F = 0 and D(x; sigma) = sd^2 / (sigma^2 + sd^2) x exactly
    torch.manual_seed(0)
    net = E.EDM2Precond(16, 3, 5, model_channels=16, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(8,),
                        channels_per_head=16).eval()
    x, sigma = torch.randn(2, 3, 16, 16), torch.tensor([0.3, 7.0])
    c_skip = (0.25 / (sigma ** 2 + 0.25)).view(2, 1, 1, 1)
    assert torch.allclose(net(x, sigma, F.one_hot(torch.tensor([1, 4]), 5)), c_skip * x, atol=1e-6)
    d, logvar = net(x, sigma, None, return_logvar=True)
    assert logvar.shape == (2, 1, 1, 1)


def _small(size: str, pixel: bool, seed: int = 0) -> E.EDM2Precond:
    """A small EDM2 of a size family: 1/16 of its width, 16 x 16 inputs, every other setting the paper's."""
    torch.manual_seed(seed)
    net = E.EDM2Precond(img_resolution=16, img_channels=3 if pixel else 4, label_dim=10,
                        model_channels=E.SIZES[size] // 16, attn_resolutions=(4, 2), channels_per_head=4,
                        dropout=0.1 if size in ("m", "l") else 0.0)
    with torch.no_grad():                          # trained-looking gains, so every branch contributes
        for name, p in net.named_parameters():
            if name.endswith("gain"):
                p.fill_(0.7)
    return net.eval()


@pytest.mark.parametrize("size", list(E.SIZES))
def test_pickle_to_safetensors_round_trip_for_every_size(tmp_path, size):
    pixel = size in ("l", "xl")                     # both the latent (img512) and the pixel (img64) form
    net = _small(size, pixel)
    encoder = None if pixel else StabilityVAEEncoder()
    pkl = tmp_path / f"edm2-{size}.pkl"
    pkl.write_bytes(edm2_pickle({"ema": net, **({"encoder": encoder} if encoder else {})}))
    out = tmp_path / f"edm2-{size}.safetensors"
    assert main(["convert", str(pkl), "--out", str(out)]) == 0
    loaded, info = load_model(str(out), "edm2")
    assert info["encoder"]["kind"] == ("StandardRGBEncoder" if pixel else "StabilityVAEEncoder")
    if not pixel:
        assert np.allclose(info["encoder"]["scale"], 0.5 / np.array([4.17, 4.62, 3.71, 3.28]), rtol=1e-6)
    x, sigma = torch.randn(3, net.img_channels, 16, 16), torch.tensor([0.05, 1.0, 40.0])
    labels = F.one_hot(torch.tensor([0, 3, 9]), 10).float()
    with torch.no_grad():
        assert torch.equal(loaded(x, sigma, labels), net(x, sigma, labels))        # float32: bit for bit
        ref = net(x, sigma, labels)
        bf = loaded(x, sigma, labels, dtype=torch.bfloat16)      # main path in bfloat16, as fp16 runs on a GPU
    # bfloat16 keeps 8 mantissa bits: D agrees to 1 % of its RMS (measured here: see the note)
    err = ((bf - ref).norm() / ref.norm()).item()
    assert err < 0.01, err
    assert torch.isfinite(ref).all()


def test_the_denoiser_maps_integer_labels_to_one_hot_and_the_null_label_to_zeros(tmp_path):
    net = _small("xs", pixel=True)
    pkl = tmp_path / "n.pkl"
    pkl.write_bytes(edm2_pickle({"ema": net}))
    out = tmp_path / "n.safetensors"
    assert main(["convert", str(pkl), "--out", str(out)]) == 0
    d, info, loaded = load_denoiser(str(out))
    x, sigma = torch.randn(2, 3, 16, 16), torch.tensor([1.0, 1.0])
    with torch.no_grad():
        assert torch.equal(d(x, sigma, torch.tensor([2, 10])),
                           net(x, sigma, torch.stack([F.one_hot(torch.tensor(2), 10).float(), torch.zeros(10)])))
    assert d.multiple == 8 and int(d.null_cond) == 10 and info["shape"] == [3, 16, 16]


def test_malicious_pickles_are_refused_without_running_anything(tmp_path):
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    import pickle
    for name, blob in (("system.pkl", pickle.dumps({"ema": Evil()})),
                       ("unknown.pkl", pickle.dumps({"ema": torch.nn.Linear(2, 2)}))):
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(WindowguideError, match="refusing to load: the pickle names the global"):
            read_edm2(str(tmp_path / name))
    assert not marker.exists()
    # the embedded module source of a genuine-looking file is kept as text and never run
    net = _small("xs", pixel=True)
    blob = edm2_pickle({"ema": net}, module_src=f"import os; os.system('touch {marker}')")
    assert read_edm2(blob).state_dict.keys() == net.state_dict().keys()
    assert not marker.exists()


def test_convert_refuses_bad_input(tmp_path, capsys):
    (tmp_path / "x.pkl").write_bytes(b"not a pickle")
    assert main(["convert", str(tmp_path / "x.pkl"), "--out", str(tmp_path / "y.safetensors")]) == 2
    assert "not a readable pickle" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "none.pkl"), "--out", str(tmp_path / "y.safetensors")]) == 2
    assert main(["convert", str(tmp_path / "x.pkl"), "--out", str(tmp_path / "y.bin")]) == 2


@pytest.fixture(scope="module")
def latent_model(tmp_path_factory):
    """A small latent EDM2 converted from its pickle, and a tiny random VAE saved as a diffusers folder."""
    from diffusers import AutoencoderKL
    d = tmp_path_factory.mktemp("edm2")
    net = _small("xs", pixel=False)
    (d / "m.pkl").write_bytes(edm2_pickle({"ema": net, "encoder": StabilityVAEEncoder()}))
    assert main(["convert", str(d / "m.pkl"), "--out", str(d / "m.safetensors")]) == 0
    torch.manual_seed(0)
    AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8), layers_per_block=1,
                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                  norm_num_groups=4).save_pretrained(d / "vae")
    return d


def test_sampling_a_latent_edm2_decodes_with_edm2s_whitening(latent_model, tmp_path):
    from diffusers import AutoencoderKL
    from windowguide.commands.common import labels_for
    from windowguide.files import read_png
    from windowguide.generate import sample
    from windowguide.guidance import MSWG
    model = str(latent_model / "m.safetensors")
    out = tmp_path / "s"
    assert main(["sample", "--model", model, "--vae", str(latent_model / "vae"), "--seeds", "0-2", "--steps", "3",
                 "--guidance", "mswg:w=0.5,window=8,n=3", "--out", str(out)]) == 0
    d, info, _ = load_denoiser(model)
    with torch.no_grad():
        z = sample(d, (4, 16, 16), [0, 1, 2], steps=3, guidance=MSWG(0.5, window=8, windows_per_side=3),
                   cond=labels_for([0, 1, 2], 10, "all"))
        vae = AutoencoderKL.from_pretrained(latent_model / "vae")
        scale = torch.tensor(0.5 / np.array([4.17, 4.62, 3.71, 3.28], np.float32)).view(1, 4, 1, 1)
        bias = -torch.tensor([5.81, 3.25, 0.12, -2.15]).view(1, 4, 1, 1) * scale
        images = vae.decode((z - bias) / scale).sample.clamp(0, 1).mul(255).to(torch.uint8).permute(0, 2, 3, 1)
    for s in range(3):
        assert np.array_equal(read_png(str(out / f"{s:06d}.png")), images[s].numpy())
    assert read_png(str(out / "000000.png")).shape == (32, 32, 3)


def test_a_latent_model_without_a_vae_is_a_clear_error(latent_model, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("WINDOWGUIDE_VAE", raising=False)
    assert main(["sample", "--model", str(latent_model / "m.safetensors"), "--seeds", "0", "--out",
                 str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "sd-vae-ft-mse" in err and "--vae DIR" in err and "WINDOWGUIDE_VAE" in err
    assert not (tmp_path / "s").exists()


def test_cfg_on_an_edm2_network_needs_its_unconditional_network():
    """EDM2 trains without label dropout: CFG with its zero label is refused, CFG by the unconditional
    network is D_cond + w (D_cond - D_uncond(x)), the condition never reaching the unconditional net."""
    from windowguide import spec
    from windowguide.generate import sample
    torch.manual_seed(0)
    net = E.EDM2Precond(16, 3, 10, model_channels=8, channels_per_head=8, channel_mult=(1,), num_blocks=1,
                        attn_resolutions=()).eval()
    uncond = E.EDM2Precond(16, 3, 0, model_channels=8, channels_per_head=8, channel_mult=(1,), num_blocks=1,
                           attn_resolutions=()).eval()
    with pytest.raises(WindowguideError, match="unconditional network"):
        spec.build("cfg:w=1", spec.Context(net=net, load=None))
    g = spec.build("cfg:w=0.5,model=u", spec.Context(net=net, load=None, load_unconditional=lambda _: uncond.denoiser()))
    x, s, c = torch.randn(2, 3, 16, 16), torch.tensor([1.0, 2.0]), torch.tensor([3, 7])
    from windowguide.guidance import GuidedDenoiser
    with torch.no_grad():
        got = GuidedDenoiser(net.denoiser(), g)(x, s, c)
        pos, neg = net.denoiser()(x, s, c), uncond.denoiser()(x, s, None)
    assert torch.allclose(got, pos + 0.5 * (pos - neg), atol=1e-6)


def test_presets_expand_with_their_sources_and_converted_weights(capsys):
    from windowguide.presets import PRESETS, expand
    from windowguide import spec
    assert expand("edm2-s-mswg-fid").guidance == "mswg:w=0.2,window=40,n=2"
    assert expand("edm2-s-ag-fid", weak="xs.safetensors").guidance == "ag:w=1.1,model=xs.safetensors"
    assert expand("edm2-xxl-cfg-interval", weak="u.safetensors").guidance == "cfg:w=1.0,lo=0.28,hi=2.9,model=u.safetensors"
    with pytest.raises(WindowguideError, match="--weak FILE"):
        expand("edm2-xxl-cfg-interval")
    assert "edm2-img512-xs-0134217-0.125" in PRESETS["edm2-s-ag-fid"].model
    assert "edm2-img512-xs-0134217-0.165" in PRESETS["edm2-s-ag-fd-dinov2"].model
    for name, p in PRESETS.items():
        assert p.source and p.weights and spec.parse(expand(name, "w.safetensors" if p.needs_weak else None).guidance)
    with pytest.raises(WindowguideError, match="--weak FILE"):
        expand("edm2-s-ag-mswg")
    assert main(["sample", "--model", "digits", "--preset", "edm2-s-mswg-fid", "--guidance", "cfg:w=1"]) == 2
    assert "not both" in capsys.readouterr().err


def test_pixel_edm2_models_decode_as_the_authors_do():
    """NVlabs' StandardRGBEncoder.decode: uint8(clip(x * 127.5 + 128, 0, 255)), a truncation; half-way
    values land one level above windowguide's own rounding of (x + 1) * 127.5."""
    from windowguide.models.latents import edm2_rgb_decode, pixel_decoder
    from windowguide.images import to_uint8
    levels = torch.tensor([2.5, 100.5, 101.5, 0.2, 254.9, -3.0, 300.0])
    x = ((levels - 127.5) / 127.5).double().float().view(1, 1, 1, -1)
    decode, _ = pixel_decoder({"encoder": {"kind": "StandardRGBEncoder"}, "shape": [1, 1, 7]})
    assert decode is edm2_rgb_decode
    assert edm2_rgb_decode(x)[0, 0, :, 0].tolist() == [3, 101, 102, 0, 255, 0, 255]
    assert to_uint8(x)[0, 0, :, 0].tolist() == [2, 100, 102, 0, 255, 0, 255]      # round half to even
    assert pixel_decoder({"shape": [1, 1, 7]})[0] is to_uint8                    # windowguide's own models
