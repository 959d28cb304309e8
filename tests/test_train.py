import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from helpers import interrupt_at_call
from windowguide.models.checkpoint import load_denoiser, load_model, read_info, resolve
from windowguide.train.classifier import ClassifierConfig, augment
from windowguide.train.edm import TrainConfig, config_from, edm_loss, train


@pytest.fixture
def tiny_npz(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "tiny.npz"
    np.savez(path, images=rng.integers(0, 256, (16, 8, 8, 3), dtype=np.uint8), labels=np.arange(16) % 2)
    return str(path)


def tiny(dataset, **kw):
    return TrainConfig(dataset=dataset, base=8, mults=(1, 2), batch=4, steps=6, checkpoint_every=3, **kw)


def test_same_seed_same_weights_and_foreign_state_refused(tmp_path, tiny_npz):
    a = load_file(train(tiny(tiny_npz), str(tmp_path / "a"), progress=False))
    b = load_file(train(tiny(tiny_npz), str(tmp_path / "b"), progress=False))
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = load_file(train(tiny(tiny_npz, seed=1), str(tmp_path / "c"), progress=False))
    assert not all(torch.equal(a[k], c[k]) for k in a)
    with pytest.raises(ValueError, match="other settings"):      # resuming folder a with another recipe
        train(tiny(tiny_npz, lr=0.5), str(tmp_path / "a"), progress=False)


def test_interrupted_run_resumes_from_its_checkpoint(tmp_path, tiny_npz, monkeypatch):
    ref = load_file(train(tiny(tiny_npz), str(tmp_path / "ref"), progress=False))
    import windowguide.train.edm as edm
    real_loss = edm.edm_loss
    monkeypatch.setattr(edm, "edm_loss", interrupt_at_call(real_loss, 5))
    with pytest.raises(KeyboardInterrupt):
        train(tiny(tiny_npz), str(tmp_path / "run"), progress=False)
    monkeypatch.setattr(edm, "edm_loss", real_loss)
    info = read_info(str(tmp_path / "run" / "model.safetensors"))
    assert info["steps_done"] == 3                               # the checkpoint before the crash
    out = load_file(train(tiny(tiny_npz), str(tmp_path / "run"), progress=False))
    assert all(torch.equal(ref[k], out[k]) for k in ref)


def test_model_record_and_loading(tmp_path, tiny_npz):
    path = train(tiny(tiny_npz, label_dropout=0.5), str(tmp_path / "m"), progress=False)
    info = read_info(path)
    assert info["kind"] == "unet" and info["shape"] == [3, 8, 8] and info["class_names"] == ["0", "1"]
    assert info["train"]["label_dropout"] == 0.5 and info["steps_done"] == 6
    denoiser, _, net = load_denoiser(path)
    assert net.num_classes == 2 and int(denoiser.null_cond) == 2 and not net.training
    x = torch.randn(2, 3, 8, 8)
    assert denoiser(x, torch.ones(2), torch.tensor([0, 1])).shape == x.shape
    with pytest.raises(ValueError, match="is a unet, expected a classifier"):
        load_model(path, "classifier")
    with pytest.raises(ValueError, match="not a bundled model"):
        resolve("no-such-model")


def test_edm_loss_is_the_weighted_denoising_error():
    cfg = TrainConfig()
    x0 = torch.randn(5, 1, 4, 4)
    ident = lambda x, s, y: x          # D(x) = x: error sigma * e, weighted by (s^2 + sd^2) / (s sd)^2
    gen = torch.Generator().manual_seed(0)
    loss = edm_loss(ident, x0, None, gen, cfg)
    gen = torch.Generator().manual_seed(0)
    sigma = (torch.randn(5, generator=gen) * cfg.p_std + cfg.p_mean).exp()
    e = torch.randn(x0.shape, generator=gen)
    w = (sigma ** 2 + 0.25) / (sigma * 0.5) ** 2
    assert torch.allclose(loss, (w.view(-1, 1, 1, 1) * (sigma.view(-1, 1, 1, 1) * e) ** 2).mean())


def test_config_errors_name_the_value():
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        config_from("nope")
    with pytest.raises(ValueError, match="label_dropout must be in"):
        TrainConfig(label_dropout=1.0)
    with pytest.raises(ValueError, match="unknown training settings"):
        config_from(None, colour="red")


def test_unlabelled_data_trains_an_unconditional_model_and_says_so(tmp_path, capsys):
    np.savez(tmp_path / "u.npz", np.zeros((4, 8, 8), np.uint8))
    path = train(tiny(str(tmp_path / "u.npz")), str(tmp_path / "x"), progress=False)
    assert "has no labels: training an unconditional model" in capsys.readouterr().out
    net, info = load_model(path)
    assert net.num_classes == 0 and info["train"]["conditional"] is False
    path = train(tiny(str(tmp_path / "u.npz"), conditional=False), str(tmp_path / "y"), progress=False)
    assert load_model(path)[0].num_classes == 0


def test_augment_shifts_within_bounds():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).view(2, 1, 6, 6)
    y = augment(x, torch.Generator().manual_seed(0), shift=0, noise=0.0)
    assert torch.equal(x, y)
    z = augment(x, torch.Generator().manual_seed(0), shift=2, noise=0.0)
    assert z.shape == x.shape
    assert ClassifierConfig().dataset == "digits"


def test_train_command_line(tmp_path, tiny_npz, capsys):
    from windowguide.cli import main
    out = str(tmp_path / "cli")
    assert main(["train", "--dataset", tiny_npz, "--out", out, "--steps", "2", "--base", "8", "--mults", "1,2",
                 "--batch", "4", "--label-dropout", "0.3"]) == 0
    info = read_info(out + "/model.safetensors")
    assert info["train"]["mults"] == [1, 2] and info["train"]["label_dropout"] == 0.3 and info["steps_done"] == 2
    assert main(["train", "--preset", "nope", "--out", out]) == 2
    assert "unknown preset 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--dataset", tiny_npz, "--out", out, "--mults", "one"])


def test_classifier_on_user_data_is_measured_on_held_out_images(tmp_path, tiny_npz):
    from windowguide.data import held_out, load
    from windowguide.train.classifier import train_classifier
    rest, test = held_out(load(tiny_npz, "all"))
    assert len(rest) + len(test) == 16 and len(test) == 2
    assert not (set(map(tuple, rest.images.flatten(1)[:, :4].tolist())) & set(map(tuple, test.images.flatten(1)[:, :4].tolist())))
    acc = train_classifier(ClassifierConfig(dataset=tiny_npz, width=8, steps=3, batch=4), str(tmp_path / "c.safetensors"),
                           progress=False)
    assert acc in (0.0, 0.5, 1.0)            # measured on the 2 held-out images
    assert read_info(str(tmp_path / "c.safetensors"))["test_accuracy"] == acc
