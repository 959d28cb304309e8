"""The two input protocols of the Inception and DINOv2 (pytorch-fid's, EDM2's), each checked against an
independent form, and references that say which protocol made them."""
import importlib.util
import json
import math
import os
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from windowguide.cli import main
from windowguide.metrics.inception import FIDInceptionV3, tf1_bilinear


def _tf1_loop(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """TensorFlow 1.x resize_bilinear (align_corners=False, no half-pixel centres), pixel by pixel:
    in = out * (in_size / out_size), top/bottom rows floor and min(floor + 1, in - 1)."""
    h, w = img.shape
    out = np.zeros((out_h, out_w))
    for i in range(out_h):
        y = i * (h / out_h)
        y0 = int(math.floor(y))
        y1, dy = min(y0 + 1, h - 1), y - y0
        for j in range(out_w):
            x = j * (w / out_w)
            x0 = int(math.floor(x))
            x1, dx = min(x0 + 1, w - 1), x - x0
            top = img[y0, x0] + (img[y0, x1] - img[y0, x0]) * dx
            bottom = img[y1, x0] + (img[y1, x1] - img[y1, x0]) * dx
            out[i, j] = top + (bottom - top) * dy
    return out


def test_tf1_bilinear_equals_tensorflows_formula_and_differs_from_pytorchs():
    img = torch.randint(0, 256, (1, 1, 24, 24), generator=torch.Generator().manual_seed(0)).float()
    ours = tf1_bilinear(img, (299, 299))[0, 0].double().numpy()
    assert np.abs(ours - _tf1_loop(img[0, 0].double().numpy(), 299, 299)).max() < 1e-3
    torch_style = F.interpolate(img, size=(299, 299), mode="bilinear", align_corners=False)[0, 0].numpy()
    assert np.abs(ours - torch_style).max() > 10                 # the 0.73 (in [-1, 1]) of the issue, x 127.5


def _torch_fidelity_resize():
    """torch-fidelity's own implementation, from its wheel (downloaded by pip into the cache, never
    installed: the package needs torchvision and torchmetrics would import it), that one file loaded."""
    import glob
    import subprocess
    import zipfile
    cache = os.path.join(os.environ.get("WINDOWGUIDE_CACHE", os.path.expanduser("~/.cache/windowguide")), "peers")
    path = os.path.join(cache, "torch_fidelity", "interpolate_compat_tensorflow.py")
    if not os.path.isfile(path):
        os.makedirs(cache, exist_ok=True)
        try:
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "torch-fidelity==0.4.0",
                            "-d", cache], check=True, timeout=120, capture_output=True)
            wheel = glob.glob(os.path.join(cache, "torch_fidelity-0.4.0-*.whl"))[0]
            with zipfile.ZipFile(wheel) as z:
                z.extract("torch_fidelity/interpolate_compat_tensorflow.py", cache)
        except (subprocess.SubprocessError, OSError, IndexError, KeyError):
            return None
    spec = importlib.util.spec_from_file_location("tf_interp", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.interpolate_bilinear_2d_like_tensorflow1x


def test_tf1_bilinear_equals_torch_fidelitys():
    resize = _torch_fidelity_resize()
    if resize is None:
        pytest.skip("torch-fidelity's wheel could not be downloaded (no package registry)")
    for size in ((24, 24), (17, 40), (512, 300)):
        img = torch.randint(0, 256, (2, 3, *size), generator=torch.Generator().manual_seed(1)).float()
        theirs = resize(img, size=(299, 299), align_corners=False)
        assert (tf1_bilinear(img, (299, 299)) - theirs).abs().max() <= 1e-3


def test_the_edm2_inception_input_is_tf_resized_and_centred_at_128():
    img = torch.randint(0, 256, (1, 3, 24, 24), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    edm2, fid = FIDInceptionV3("edm2").preprocess(img), FIDInceptionV3().preprocess(img)
    assert torch.allclose(edm2, (tf1_bilinear(img.float(), (299, 299)) - 128) / 128)
    assert (edm2 - fid).abs().max() > 0.3


def test_dinov2_positions_interpolate_as_torch_hub():
    """torch.hub's DINOv2 (``interpolate_pos_encoding``, interpolate_offset 0.1): bicubic by the scale
    factor (w0 + 0.1) / M; transformers resizes to the size (h0, w0). Written out here from the hub's
    formula, on a tiny random Dinov2Model whose 518-px grid is 37 x 37 as ViT-L/14's."""
    from transformers import Dinov2Config, Dinov2Model
    from windowguide.metrics.dinov2 import DINOv2Features
    torch.manual_seed(0)
    model = Dinov2Model(Dinov2Config(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
                                     patch_size=14, image_size=518)).eval()
    pos = model.embeddings.position_embeddings.detach().clone()
    grid = pos[:, 1:].reshape(1, 37, 37, 8).permute(0, 3, 1, 2)
    hub = F.interpolate(grid, scale_factor=(16.1 / 37, 16.1 / 37), mode="bicubic", antialias=False)
    hub = torch.cat([pos[:, :1], hub.permute(0, 2, 3, 1).reshape(1, 256, 8)], 1)
    x = torch.zeros(1, 257, 8)
    default = model.embeddings.interpolate_pos_encoding(x, 224, 224).detach()
    DINOv2Features(model, protocol="edm2")
    with torch.no_grad():
        edm2 = model.embeddings.interpolate_pos_encoding(x, 224, 224)
    assert torch.allclose(edm2, hub, atol=1e-6) and (default - hub).abs().max() > 1e-4


@pytest.fixture(scope="module")
def inception(tmp_path_factory):
    from windowguide.metrics.inception import FIDInceptionV3 as Net
    d = tmp_path_factory.mktemp("inc")
    torch.manual_seed(0)
    torch.save(Net().state_dict(), d / "inc.pth")
    rng = np.random.default_rng(0)
    np.savez(d / "imgs.npz", images=rng.integers(0, 256, (12, 24, 24, 3), dtype=np.uint8))
    return d


def test_references_record_their_protocol_and_a_mix_is_refused(inception, capsys):
    import warnings
    d = inception
    common = ["--inception", str(d / "inc.pth"), "--metrics", "fid"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["metrics", str(d / "imgs.npz"), "--make-ref", "--out", str(d / "edm2.npz"), "--protocol", "edm2",
                     *common]) == 0
        assert main(["metrics", str(d / "imgs.npz"), "--make-ref", "--out", str(d / "fid.npz"), *common]) == 0
        assert str(np.load(d / "edm2.npz")["protocol"]) == "edm2" and str(np.load(d / "fid.npz")["protocol"]) == "pytorch-fid"
        capsys.readouterr()
        assert main(["metrics", str(d / "imgs.npz"), "--ref", str(d / "edm2.npz"), "--json", str(d / "r.json"), *common]) == 0
        got = json.loads((d / "r.json").read_text())
        assert got["protocol"] == "edm2" and abs(got["fid"]) < 1e-6          # the reference's own protocol
        assert main(["metrics", str(d / "imgs.npz"), "--ref", str(d / "edm2.npz"), "--protocol", "pytorch-fid",
                     *common]) == 2
        assert "made under the edm2 protocol" in capsys.readouterr().err
        assert main(["metrics", str(d / "imgs.npz"), "--ref", str(d / "fid.npz"), "--json", str(d / "r2.json"),
                     "--protocol", "edm2", *common]) == 2
    import pickle
    stats = np.load(d / "fid.npz")
    (d / "img512.pkl").write_bytes(pickle.dumps({"fid": {"mu": stats["inception.mu"], "sigma": stats["inception.sigma"]}}))
    from windowguide.metrics.reference import reference_protocol
    assert reference_protocol(str(d / "img512.pkl")) == "edm2"
