"""The evaluation machinery: statistics, peers' formulas, reference formats, the feature networks
(on randomly initialised weights saved here) and the ``metrics`` command."""
import json
import os
import pickle
import sys
import types
import warnings

import numpy as np
import pytest
import torch

from windowguide.cli import main
from windowguide.errors import WindowguideError
from windowguide.metrics import distribution as D
from windowguide.metrics.evaluate import compute
from windowguide.metrics.reference import load_reference, save_reference
from windowguide.metrics.stats import FeatureStats


def _spd(d, gen):
    a = torch.randn(d, d, generator=gen, dtype=torch.float64)
    return (a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)).numpy()


def test_frechet_distance_equals_torchmetrics_formula():
    from torchmetrics.image.fid import _compute_fid
    g = torch.Generator().manual_seed(0)
    for d in (3, 16, 64):
        m1, m2 = torch.randn(d, generator=g, dtype=torch.float64).numpy(), torch.randn(d, generator=g, dtype=torch.float64).numpy()
        s1, s2 = _spd(d, g), _spd(d, g)
        peer = _compute_fid(*(torch.from_numpy(v) for v in (m1, s1, m2, s2))).item()
        assert D.frechet_distance((m1, s1), (m2, s2)) == pytest.approx(peer, rel=1e-6)


def test_kid_equals_torchmetrics_poly_mmd_and_subsets_average_it():
    from torchmetrics.image.kid import poly_mmd
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(40, 8, generator=g), torch.randn(30, 8, generator=g) + 0.3
    # torchmetrics' estimator assumes equal set sizes
    assert D.kernel_inception_distance(a[:30], b) == pytest.approx(poly_mmd(a[:30].double(), b.double()).item(), rel=1e-9)
    # subsets as large as the smaller set, drawn by the seeded generator: each is one full estimate
    gen = torch.Generator().manual_seed(0)
    direct = [D.kernel_inception_distance(a[torch.randperm(40, generator=gen)[:30]], b[torch.randperm(30, generator=gen)[:30]])
              for _ in range(5)]
    mean, std = D.kid_subsets(a, b, subsets=5, size=1000, seed=0)
    assert mean == pytest.approx(np.mean(direct), rel=1e-12) and std == pytest.approx(np.std(direct), rel=1e-9)


def test_inception_score_splits_of_a_known_distribution():
    # split 1: one-hot over 4 classes (IS 4); split 2: uniform (IS 1)
    probs = torch.cat([torch.eye(4).repeat(2, 1), torch.full((8, 4), 0.25)])
    mean, std = D.inception_score_splits(probs, splits=2, shuffle=False)
    assert mean == pytest.approx(2.5) and std == pytest.approx(1.5)
    with pytest.raises(WindowguideError, match="splits"):
        D.inception_score_splits(probs[:3], splits=10)


def test_inception_score_shuffles_and_splits_as_torch_fidelity():
    """torch-fidelity's isc_features_to_metric, written out as a loop on logits: RandomState(2020)
    permutation, chunks [i N // s, (i + 1) N // s), log-softmax; on a class-sorted set (where an
    unshuffled split sees few classes) and with N not a multiple of the splits."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(103, 12, generator=gen, dtype=torch.float64) * 3
    logits = logits[logits.argmax(1).argsort()]                  # ordered by class
    perm = np.random.RandomState(2020).permutation(103)
    f = logits[perm]
    p, log_p = f.softmax(1), f.log_softmax(1)
    scores = []
    for i in range(10):
        pc, lc = p[i * 103 // 10:(i + 1) * 103 // 10], log_p[i * 103 // 10:(i + 1) * 103 // 10]
        scores.append(float((pc * (lc - pc.mean(0, keepdim=True).log())).sum(1).mean().exp()))
    mean, std = D.inception_score_splits(logits.softmax(1), splits=10)
    assert mean == pytest.approx(np.mean(scores), rel=1e-9) and std == pytest.approx(np.std(scores), rel=1e-7)
    assert D.inception_score_splits(logits.softmax(1), splits=10, shuffle=False)[0] < 0.8 * mean


def test_precision_recall_on_hand_made_points():
    real = torch.tensor([[0.0, 0], [1, 0], [0, 1], [1, 1]])          # k=1 radius of each: 1
    fake = torch.tensor([[0.5, 0.5], [0.0, 0.9], [5.0, 5.0], [6.0, 5.0]])  # radii: 0.64, 0.64, 1, 1
    # precision: (0.5,0.5) and (0,0.9) lie within 1 of a real point, the two far ones do not -> 1/2
    # recall: only (0,1) is within 0.64 of (0,0.9) -> 1/4
    assert D.precision_recall(real, fake, k=1) == (0.5, 0.25)
    assert D.precision_recall(real, fake, k=1, chunk=1) == (0.5, 0.25)   # chunking changes nothing


def test_feature_stats_equal_numpy_and_keep_rows_in_image_order():
    g = torch.Generator().manual_seed(3)
    f = torch.randn(50, 5, generator=g) * 3 + 7
    s = FeatureStats(5, keep_features=True, classes=2)
    order = torch.randperm(50, generator=g)
    for chunk in order.split(13):                  # batches out of order, as ranks would read them
        s.add(f[chunk], chunk, torch.softmax(f[chunk, :2], 1))
    s.reduce()
    assert np.allclose(s.mu, f.double().mean(0).numpy(), rtol=1e-12)
    assert np.allclose(s.sigma, np.cov(f.double().numpy(), rowvar=False), rtol=1e-10)
    assert torch.equal(s.features, f) and torch.allclose(s.probs, torch.softmax(f[:, :2].double(), 1))
    with pytest.raises(WindowguideError, match="non-finite"):
        FeatureStats(5).add(torch.full((2, 5), float("nan")))


def _stats(features):
    return FeatureStats(features.shape[1], keep_features=True).add(features).reduce()


def test_reference_formats_read_alike(tmp_path):
    g = torch.Generator().manual_seed(4)
    f = torch.randn(30, 6, generator=g)
    ours = str(tmp_path / "ref.npz")
    save_reference(ours, {"inception": _stats(f)}, {"inception": "inception"})
    r = load_reference(ours)["inception"]
    assert r["count"] == 30 and torch.equal(r["features"], f)
    np.savez(tmp_path / "pytorch_fid.npz", mu=r["mu"], sigma=r["sigma"])
    p = load_reference(str(tmp_path / "pytorch_fid.npz"))["inception"]
    assert np.array_equal(p["mu"], r["mu"]) and p["features"] is None
    # EDM2's reference pickle: a dict of dicts of numpy arrays (dnnlib's EasyDict read as a dict)
    dnnlib = types.ModuleType("dnnlib")
    dnnlib.util = types.ModuleType("dnnlib.util")
    EasyDict = type("EasyDict", (dict,), {"__module__": "dnnlib.util"})
    dnnlib.util.EasyDict = EasyDict
    sys.modules.update({"dnnlib": dnnlib, "dnnlib.util": dnnlib.util})
    try:
        blob = pickle.dumps(EasyDict(num_images=30, fid=EasyDict(mu=r["mu"], sigma=r["sigma"]),
                                     fd_dinov2=dict(mu=r["mu"][:3], sigma=r["sigma"][:3, :3])))
    finally:
        del sys.modules["dnnlib"], sys.modules["dnnlib.util"]
    (tmp_path / "img512.pkl").write_bytes(blob)
    e = load_reference(str(tmp_path / "img512.pkl"))
    assert np.array_equal(e["inception"]["sigma"], r["sigma"]) and e["dinov2"]["mu"].shape == (3,)
    assert e["inception"]["count"] == 30


def test_a_malicious_reference_pickle_is_refused_unrun(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"fid": Evil()}))
    with pytest.raises(WindowguideError, match="system.*allow-list"):
        load_reference(str(tmp_path / "evil.pkl"))
    assert not marker.exists()
    (tmp_path / "other.pkl").write_bytes(pickle.dumps({"fid": {"mu": types.SimpleNamespace()}}))
    with pytest.raises(WindowguideError, match="types.SimpleNamespace"):
        load_reference(str(tmp_path / "other.pkl"))


def test_compute_refuses_features_of_another_network_and_missing_features():
    f = torch.randn(20, 4)
    ref = {"inception": dict(network="digits-classifier", count=20, mu=np.zeros(4), sigma=np.eye(4), features=None)}
    with pytest.raises(WindowguideError, match="do not compare"):
        compute(["fid"], {"inception": _stats(f)}, ref, {"inception": "inception"})
    ref["inception"]["network"] = "inception"
    with pytest.raises(WindowguideError, match="make-ref"):
        compute(["kid"], {"inception": _stats(f)}, ref, {"inception": "inception"})


# ---- the feature networks, on random weights saved here ------------------------------------------

def test_inception_has_the_fid_network_shapes_and_loads_a_saved_state_dict(tmp_path):
    from windowguide.metrics.inception import FIDInceptionV3, load_inception
    torch.manual_seed(0)
    net = FIDInceptionV3()
    # torchvision's Inception-v3 has 27,161,264 parameters with its auxiliary head (3,326,696) and 1000
    # classes; the FID network drops the head and has 1008 classes: 27,161,264 - 3,326,696 + 8 * 2049
    assert sum(p.numel() for p in net.parameters()) == 23_850_960
    assert net.state_dict()["fc.weight"].shape == (1008, 2048)
    assert "Mixed_7c.branch3x3dbl_3b.bn.running_var" in net.state_dict()
    for m in net.modules():                       # non-trivial batch-norm statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 2)
    path = tmp_path / "fid_inception.pth"
    # pytorch-fid's file predates BatchNorm's num_batches_tracked: leave those out, as it does
    torch.save({k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}, path)
    with pytest.warns(UserWarning, match="not comparable"):
        loaded = load_inception(str(path))
    images = torch.randint(0, 256, (2, 3, 40, 56), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        f = loaded.features(images)
        assert f.shape == (2, 2048) and torch.isfinite(f).all()
        assert torch.equal(f, net.features(images))
        p = loaded.probs(images, f)
        assert torch.allclose(p.sum(1), torch.ones(2, dtype=p.dtype)) and p.shape == (2, 1008)
    bad = net.state_dict()
    del bad["fc.bias"]
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(WindowguideError, match="bad.pth.*fc.bias"):
        load_inception(str(tmp_path / "bad.pth"))


def test_inception_preprocessing_is_pytorch_fids():
    from windowguide.metrics.inception import FIDInceptionV3
    u8 = torch.randint(0, 256, (1, 3, 20, 30), dtype=torch.uint8)
    x = FIDInceptionV3().preprocess(u8)
    # bilinear, align_corners=False, on [0, 1] values, then 2x - 1
    ref = 2 * torch.nn.functional.interpolate(u8.float() / 255, size=(299, 299), mode="bilinear",
                                              align_corners=False) - 1
    assert x.shape == (1, 3, 299, 299) and torch.equal(x, ref)
    assert x.min() >= -1 and x.max() <= 1


def test_missing_weights_are_a_clear_error(monkeypatch):
    from windowguide.metrics.dinov2 import load_dinov2
    from windowguide.metrics.inception import load_inception
    monkeypatch.delenv("WINDOWGUIDE_INCEPTION", raising=False)
    monkeypatch.delenv("WINDOWGUIDE_DINOV2", raising=False)
    with pytest.raises(WindowguideError, match="pt_inception-2015-12-05-6726825d.pth.*6726825d.*WINDOWGUIDE_INCEPTION"):
        load_inception(None)
    with pytest.raises(WindowguideError, match="'/nowhere' holds no config.json.*WINDOWGUIDE_DINOV2"):
        load_dinov2("/nowhere")


def test_dinov2_features_are_the_normalised_class_token_of_a_local_model(tmp_path):
    from transformers import Dinov2Config, Dinov2Model
    from windowguide.metrics.dinov2 import load_dinov2
    torch.manual_seed(0)
    cfg = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       patch_size=14, image_size=28)
    Dinov2Model(cfg).save_pretrained(tmp_path / "dino")
    net = load_dinov2(str(tmp_path / "dino"))
    images = torch.randint(0, 256, (3, 3, 40, 50), dtype=torch.uint8)
    with torch.no_grad():
        f = net.features(images)
        # by hand: EDM2's resize and normalisation, then the class token after the last layer norm
        x = torch.nn.functional.interpolate(images.float(), size=(224, 224), mode="bicubic", antialias=True) / 255
        x = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        hidden = net.model(pixel_values=x).last_hidden_state
    assert f.shape == (3, 32) and torch.allclose(f, hidden[:, 0], atol=1e-6)


# ---- the command ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    out = tmp_path_factory.mktemp("samples") / "digits"
    assert main(["sample", "--model", "digits", "--seeds", "0-29", "--steps", "3", "--out", str(out)]) == 0
    return out


def test_metrics_command_on_a_bundled_dataset_equals_a_direct_computation(samples, tmp_path):
    from windowguide.data import load
    from windowguide.metrics.networks import ClassifierFeatures
    assert main(["metrics", str(samples), "--ref", "digits", "--metrics", "fid,kid,pr", "--json",
                 str(tmp_path / "m.json")]) == 0
    got = json.loads((tmp_path / "m.json").read_text())
    assert got["count"] == 30 and got["networks"] == {"inception": "digits-classifier"}
    # directly: the classifier's features of the PNGs and of the 'train' images, two-pass covariances
    x = torch.from_numpy(np.load(samples / "samples.npz")["images"]).permute(0, 3, 1, 2).float() / 127.5 - 1
    net = ClassifierFeatures("digits-classifier")
    with torch.no_grad():
        real, fake = net.features_of(load("digits", "train").images), net.features_of(x)
    assert got["fid"] == pytest.approx(D.frechet_distance(real, fake), rel=1e-6)
    assert (got["precision"], got["recall"]) == D.precision_recall(real, fake)


def test_make_ref_then_metrics_with_an_inception_file(samples, tmp_path):
    from windowguide.metrics.inception import FIDInceptionV3
    torch.manual_seed(0)
    torch.save(FIDInceptionV3().state_dict(), tmp_path / "inc.pth")
    ref = tmp_path / "ref.npz"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["metrics", str(samples / "samples.npz"), "--make-ref", "--out", str(ref), "--metrics", "fid,kid",
                     "--inception", str(tmp_path / "inc.pth")]) == 0
        assert main(["metrics", str(samples), "--ref", str(ref), "--metrics", "fid,kid,is",
                     "--inception", str(tmp_path / "inc.pth"), "--json", str(tmp_path / "m.json")]) == 0
    got = json.loads((tmp_path / "m.json").read_text())
    assert abs(got["fid"]) < 1e-6                      # the same 30 images as the reference
    assert got["count"] == 30 and got["networks"] == {"inception": "inception"} and got["is"] >= 1


@pytest.mark.parametrize("argv, message", [
    (["--ref", "digits", "--metrics", "fid,lpips"], "accepted: a comma-separated list"),
    (["--make-ref"], "--make-ref needs --out"),
    ([], "needs --ref"),
    (["--ref", "nothing.npz"], "no such file"),
    (["--ref", "digits", "--metrics", "fd_dinov2"], "make a reference with --make-ref"),
])
def test_metrics_command_refuses_bad_input(samples, capsys, argv, message):
    assert main(["metrics", str(samples)] + argv) == 2
    assert message in capsys.readouterr().err
