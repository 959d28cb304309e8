"""Weak-to-strong guidance at training time: targets, stop-gradient, resume, the toy, the command line."""
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from helpers import interrupt_at_call
from windowguide.cli import main
from windowguide.models.checkpoint import read_info
from windowguide.models.unet import SmallUNet
from windowguide.train import w2s
from windowguide.train.edm import TrainConfig, train


@pytest.fixture
def tiny_npz(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "tiny.npz"
    np.savez(path, images=rng.integers(0, 256, (16, 8, 8), dtype=np.uint8), labels=np.arange(16) % 2)
    return str(path)


def tiny_net(branch=False):
    torch.manual_seed(0)
    net = SmallUNet(1, 8, (1, 2), num_classes=2, branch=branch)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))       # conv_out starts at zero: make D depend on the label
    return net


def batch():
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(6, 1, 8, 8, generator=g)
    sigma = torch.tensor([0.3, 0.7, 1.5, 3.0, 0.5, 5.0])
    noisy = x0 + sigma.view(-1, 1, 1, 1) * torch.randn(x0.shape, generator=g)
    labels = torch.tensor([0, 1, 2, 0, 1, 1])                   # sample 2 has the null label
    lam = ((sigma ** 2 + 0.25) / (sigma * 0.5) ** 2).view(-1, 1, 1, 1)
    return x0, noisy, sigma, labels, lam


@pytest.mark.parametrize("kind", ["mg", "branch", "ag", "sgg"])
def test_target_is_the_hand_computed_guided_prediction(kind):
    w = 1.5
    c = w / (1 + w)                                            # the training coefficient of weight w
    net = tiny_net(branch=kind in ("branch", "sgg"))
    torch.manual_seed(9)
    weak = SmallUNet(1, 8, (1, 2), num_classes=2)
    with torch.no_grad():
        for p in weak.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x0, noisy, sigma, labels, lam = batch()
    recipe = w2s.W2S(kind, w, split=1.0, low="branch")
    got = w2s.loss(recipe, net, x0, noisy, sigma, labels, lam, weak=weak)
    with torch.no_grad():                                      # by hand, one sample at a time
        targets, extra = [], 0.0
        for i in range(6):
            xi, si, yi = noisy[i:i + 1], sigma[i:i + 1], labels[i:i + 1]
            d = net(xi, si, yi)
            cfg_neg = net(xi, si, torch.tensor([2]))
            branch = net(xi, si, yi, with_branch=True)[1] if net.branch_out is not None else None
            neg = {"mg": cfg_neg, "ag": weak(xi, si, yi), "branch": branch,
                   "sgg": cfg_neg if si.item() > 1.0 else branch}[kind]
            on = labels[i].item() != 2
            targets.append(x0[i:i + 1] + (c * (d - neg) if on else 0))
            if branch is not None:
                extra += (lam[i] * (branch - x0[i:i + 1]) ** 2).mean().item() / 6
        d_all = net(noisy, sigma, labels)
        want = (lam * (d_all - torch.cat(targets)) ** 2).mean().item() + extra
    assert got.item() == pytest.approx(want, rel=1e-5)


def test_no_gradient_reaches_the_guidance_difference():
    net = tiny_net(branch=True)
    x0, noisy, sigma, labels, lam = batch()
    recipe = w2s.W2S("sgg", 1.0)
    w2s.loss(recipe, net, x0, noisy, sigma, labels, lam).backward()
    got = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    with torch.no_grad():                                       # the target as a constant
        d, b = net(noisy, sigma, labels, with_branch=True)
        g = torch.where((sigma > 1).view(-1, 1, 1, 1), d - net(noisy, sigma, torch.full_like(labels, 2)), d - b)
        target = x0 + 0.5 * g * (labels != 2).view(-1, 1, 1, 1)
    d, b = net(noisy, sigma, labels, with_branch=True)
    ((lam * (d - target) ** 2).mean() + (lam * (b - x0) ** 2).mean()).backward()
    for a, e in zip(got, (p.grad for p in net.parameters())):
        torch.testing.assert_close(a, e, atol=1e-6, rtol=1e-5)


def test_flow_form_is_the_same_target():
    g = torch.Generator().manual_seed(0)
    x0, n = torch.randn(4, 2, 4, 4, generator=g), torch.randn(4, 2, 4, 4, generator=g)
    t = torch.tensor([0.2, 0.5, 0.7, 0.9]).view(-1, 1, 1, 1)
    x_t = (1 - t) * x0 + t * n
    d_pos, d_neg = torch.randn(4, 2, 4, 4, generator=g), torch.randn(4, 2, 4, 4, generator=g)
    u = lambda d: (x_t - d) / t                                  # velocity of a D prediction
    u_target = w2s.flow_guided_target(n, x0, u(d_pos), u(d_neg), 0.6)
    d_target = w2s.guided_target(x0, d_pos - d_neg, 0.6)
    torch.testing.assert_close(x_t - t * u_target, d_target, atol=1e-5, rtol=0)


def test_w2s_training_resumes_bit_exactly_and_records_its_recipe(tmp_path, tiny_npz, monkeypatch):
    cfg = TrainConfig(dataset=tiny_npz, base=8, mults=(1, 2), batch=4, steps=6, checkpoint_every=3, w2s="sgg",
                      w2s_weight=1.0)
    ref = load_file(train(cfg, str(tmp_path / "ref"), progress=False))
    import windowguide.train.edm as edm
    real = edm.edm_loss
    monkeypatch.setattr(edm, "edm_loss", interrupt_at_call(real, 5))
    with pytest.raises(KeyboardInterrupt):
        train(cfg, str(tmp_path / "run"), progress=False)
    monkeypatch.setattr(edm, "edm_loss", real)
    out = load_file(train(cfg, str(tmp_path / "run"), progress=False))
    assert all(torch.equal(ref[k], out[k]) for k in ref)
    info = read_info(str(tmp_path / "run" / "model.safetensors"))
    assert info["w2s"] == dict(kind="sgg", weight=1.0, split=1.0, low="branch", source="online")
    assert info["config"]["branch"] is True


def test_model_guidance_training_samples_like_cfg_at_half_the_evaluations():
    """2-D toy with exact data: a model trained with the mg target at weight w, sampled unguided (1
    evaluation per step), against the same architecture trained plainly and sampled with CFG at w (2
    evaluations). Energy distances on the same seeds: the residual must be a small fraction (< 25 %) of
    what guidance itself changes (plain vs CFG)."""
    from windowguide.generate import sample
    from windowguide.guidance import CFG, GuidedDenoiser
    from windowguide.toy.mixture import interleaved_trees
    from windowguide.toy.mlp import TrainConfig as ToyConfig, trained

    def energy(a, b):
        return (2 * torch.cdist(a, b).mean() - torch.cdist(a, a).mean() - torch.cdist(b, b).mean()).item()
    gmm = interleaved_trees(depth=4)
    base = trained(gmm, ToyConfig(hidden=64, layers=3, steps=1500))
    mg = trained(gmm, ToyConfig(hidden=64, layers=3, steps=1500, w2s="mg", w2s_weight=1.0))
    n = 1500
    cls = torch.arange(n) % 2
    calls = {"n": 0}

    def counted(net):
        d = net.denoiser()
        inner = d.net
        d.net = lambda x, s, c: calls.__setitem__("n", calls["n"] + 1) or inner(x, s, c)
        return d
    guided = GuidedDenoiser(counted(base), CFG(1.0))
    cfg_x = sample(guided, (2, 1, 1), range(n), steps=16, cond=cls).flatten(1)
    cfg_calls, calls["n"] = calls["n"], 0
    mg_x = sample(counted(mg), (2, 1, 1), range(n), steps=16, cond=cls).flatten(1)
    plain_x = sample(base.denoiser(), (2, 1, 1), range(n), steps=16, cond=cls).flatten(1)
    assert calls["n"] == 31 and cfg_calls == 31     # Heun: 31 calls each, but CFG's hold 2 samples per seed
    assert guided.evaluations[id(guided.denoiser)] == 2 * 31 * n
    assert energy(mg_x, cfg_x) < 0.25 * energy(plain_x, cfg_x), (energy(mg_x, cfg_x), energy(plain_x, cfg_x))


def test_command_line_trains_and_sampling_says_one_evaluation(tmp_path, tiny_npz, capsys):
    out = str(tmp_path / "m")
    assert main(["train", "--dataset", tiny_npz, "--base", "8", "--mults", "1,2", "--batch", "4", "--steps", "2",
                 "--w2s", "mg", "--w2s-weight", "1", "--out", out]) == 0
    capsys.readouterr()
    assert main(["sample", "--model", f"{out}/model.safetensors", "--seeds", "0", "--steps", "2",
                 "--out", str(tmp_path / "s")]) == 0
    assert "1 network evaluation per step" in capsys.readouterr().out
    assert main(["train", "--dataset", tiny_npz, "--w2s", "mg", "--out", str(tmp_path / "x")]) == 2
    assert "needs --w2s-weight" in capsys.readouterr().err
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "u.npz", images=rng.integers(0, 256, (8, 8, 8), dtype=np.uint8))
    assert main(["train", "--dataset", str(tmp_path / "u.npz"), "--w2s", "mg", "--w2s-weight", "1", "--steps", "1",
                 "--base", "8", "--mults", "1,2", "--out", str(tmp_path / "y")]) == 2
    assert "needs labelled data" in capsys.readouterr().err


def test_bench_rows_compare_every_target_at_one_budget(tmp_path):
    from windowguide.bench import w2s as bench
    s = bench.W2SSettings(datasets=("mirror",), train_steps=2, samples=12, steps=2, cost_repeats=1)
    r = bench.run(str(tmp_path / "w.json"), out_dir=str(tmp_path), settings=s, progress=False)
    rows = r["datasets"]["mirror"]
    assert [x["evaluations_per_step"] for x in rows] == [1, 2, 1, 1, 1, 1, 0]
    assert rows[0]["train_cost"] == 1.0 and all(x["train_cost"] > 0 for x in rows[:-1])
    assert all("asymmetry" in x for x in rows)
    assert "trained with sgg w=1" in bench.format_report(r)
