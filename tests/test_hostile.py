"""Hostile and careless files: each case is crafted here, replayed first, and must end in the project's
own one-line refusal (exit 2), with bounded memory and time, and no file changed or left behind."""
import json
import os
import pickle
import resource
import subprocess
import sys

import numpy as np
import pytest
import torch

from helpers import edm2_pickle
from windowguide.errors import WindowguideError
from windowguide.formats.safe_pickle import safe_load

MEMORY = 6 << 30          # address space for a hostile case's whole process (torch itself needs ~2-3 GB)


def _limited(*args, timeout=180, cwd=None):
    """``python -m windowguide ARGS`` under RLIMIT_AS and a time limit."""
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY, MEMORY))
    return subprocess.run([sys.executable, "-m", "windowguide", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, preexec_fn=limit, cwd=cwd)


class _Reduce:
    """An object that pickles as an arbitrary (callable, args, state)."""

    def __init__(self, fn, args, state=None):
        self.fn, self.args, self.state = fn, args, state

    def __reduce__(self):
        return (self.fn, self.args) if self.state is None else (self.fn, self.args, self.state)


def _array_with_dtype_state(state, data=b"\0" * 8, shape=(1,)):
    reconstruct = (getattr(np, "_core", None) or np.core).multiarray._reconstruct
    dtype = _Reduce(np.dtype, ("f8", False, True), state)
    return _Reduce(reconstruct, (np.ndarray, (0,), b"b"), (1, shape, dtype, False, data))


def _dag(depth=60):
    node = []
    for _ in range(depth):
        node = [node, node]
    return node


def _reconstruct_persistent_obj(meta):          # only its name goes into the files
    raise AssertionError("ran")


_reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
_reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"


def _persistent(class_name, state):
    import types
    sys.modules.setdefault("torch_utils", types.ModuleType("torch_utils"))
    mod = sys.modules.setdefault("torch_utils.persistence", types.ModuleType("torch_utils.persistence"))
    mod._reconstruct_persistent_obj = _reconstruct_persistent_obj
    meta = dict(type="class", version=6, module_src="raise SystemExit", class_name=class_name, state=state)
    return _Reduce(_reconstruct_persistent_obj, (meta,))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("imgs")
    from PIL import Image
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return d


# ---- 1-2: dtypes with fields and offsets ---------------------------------------------------------

@pytest.mark.parametrize("offset", [10 ** 9, 4])
def test_a_dtype_with_a_field_offset_is_refused_before_numpy_builds_it(tmp_path, images, offset):
    fields = {"a": (np.dtype("f8"), offset)}
    evil = _array_with_dtype_state((3, "<", None, ("a",), fields, 8, 1, 16))
    ref = tmp_path / "ref.pkl"
    ref.write_bytes(pickle.dumps({"fid": {"mu": evil, "sigma": np.eye(1)}}))
    p = _limited("metrics", images, "--ref", ref)
    assert p.returncode == 2, p.stderr                    # not 139 (segfault), not 0 with foreign bytes
    assert "refusing a dtype state" in p.stderr
    # the same dtype inside an EDM2 encoder's scale, through convert
    net = _persistent("Precond", {"_init_args": (), "_init_kwargs": {}, "_modules": {}})
    enc = _persistent("StabilityVAEEncoder", {"scale": evil, "bias": np.zeros(4, np.float32), "vae_name": "x"})
    pkl = tmp_path / "e.pkl"
    pkl.write_bytes(pickle.dumps({"ema": net, "encoder": enc}))
    p = _limited("convert", pkl, "--out", tmp_path / "out.safetensors")
    assert p.returncode == 2 and "refusing a dtype state" in p.stderr and not (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize("bad", [
    lambda: _array_with_dtype_state((3, "<", None, None, None, -1, -1, 0), data=b"\0" * 4),   # data too short
    lambda: _array_with_dtype_state((3, "<", None, None, None, -1, -1, 0), shape=(10 ** 12,)),
    lambda: _Reduce(np.dtype, ("O", False, True)),
    lambda: _Reduce(np.ndarray, ((10 ** 10,),)),                                           # an allocation
    lambda: _Reduce(np.dtype, ("f8", False, True), (3, "<", (np.dtype("f4"), (4,)), None, None, -1, -1, 0)),
])
def test_arrays_dtypes_and_direct_calls_are_checked(bad):
    with pytest.raises(WindowguideError, match="refus"):
        safe_load(pickle.dumps(bad()))


def test_plain_arrays_and_scalars_still_load():
    d = {"a": np.arange(5.0), "b": np.ones((2, 3), np.uint8), "c": np.float32(2.5), "e": np.arange(3, dtype=">f4")}
    got = safe_load(pickle.dumps(d))
    for k, v in d.items():
        assert np.array_equal(np.asarray(got[k]), v) and np.asarray(got[k]).dtype == pickle.loads(pickle.dumps(v)).dtype


# ---- 3: self-referencing DAGs ----------------------------------------------------------------------

def test_a_shared_list_dag_is_refused_fast_in_edm2_kwargs_and_references(tmp_path, images):
    blob = pickle.dumps(_dag())
    assert len(blob) < 1000                              # a few hundred bytes
    net = _persistent("Precond", {"_init_args": (), "_init_kwargs": {"img_resolution": 8, "x": _dag()}, "_modules": {}})
    pkl = tmp_path / "dag.pkl"
    pkl.write_bytes(pickle.dumps({"ema": net}))
    p = _limited("convert", pkl, "--out", tmp_path / "o.safetensors", timeout=60)
    assert p.returncode == 2 and ("more than" in p.stderr or "deeper" in p.stderr), p.stderr
    ref = tmp_path / "dagref.pkl"
    ref.write_bytes(pickle.dumps({"fid": {"mu": _dag(), "sigma": _dag()}}))
    p = _limited("metrics", images, "--ref", ref, timeout=60)
    assert p.returncode == 2 and "must be arrays" in p.stderr, p.stderr


# ---- 4: stride-0 storages ---------------------------------------------------------------------------

def test_stride_zero_weights_are_refused_before_materialising(tmp_path):
    huge = torch.zeros(1).expand(30000, 30000)            # 3.6 GB if materialised, 4 bytes stored
    net = _persistent("Precond", {"_init_args": (), "_init_kwargs": {}, "_modules": {},
                                  "_parameters": {"w": huge}})
    pkl = tmp_path / "s0.pkl"
    pkl.write_bytes(pickle.dumps({"ema": net}))
    assert pkl.stat().st_size < 10_000
    p = _limited("convert", pkl, "--out", tmp_path / "o.safetensors", timeout=90)
    assert p.returncode == 2 and "strides" in p.stderr and not (tmp_path / "o.safetensors").exists(), p.stderr


def test_a_tensor_larger_than_its_storage_is_refused():
    from windowguide.formats.edm2_pickle import _rebuild_tensor
    storage = torch.zeros(4).untyped_storage()
    with pytest.raises(WindowguideError, match="storage holds 16"):
        _rebuild_tensor(storage, 0, (100,), (1,))
    t = _rebuild_tensor(torch.arange(6.0).storage(), 0, (2, 3), (3, 1))
    assert torch.equal(t, torch.arange(6.0).view(2, 3))


# ---- 5: DiT files that declare huge models ------------------------------------------------------------

def _dit_state(layers=1, hidden=32, classes=11, tokens=16):
    sd = {"x_embedder.proj.weight": torch.zeros(hidden, 4, 2, 2), "x_embedder.proj.bias": torch.zeros(hidden),
          "pos_embed": torch.zeros(1, tokens, hidden), "y_embedder.embedding_table.weight": torch.zeros(classes, hidden),
          "final_layer.linear.weight": torch.zeros(32, hidden)}
    for i in range(layers):
        sd[f"blocks.{i}.attn.qkv.weight"] = torch.zeros(3 * hidden, hidden)
    return sd


@pytest.mark.parametrize("change, message", [
    (lambda sd: sd.update({"blocks.20000.attn.qkv.weight": torch.zeros(1)}), "missing"),
    (lambda sd: sd.update({"y_embedder.embedding_table.weight": torch.zeros(1, 32).expand(10 ** 8, 32)}),
     "not a plain contiguous tensor"),
    (lambda sd: sd.update({"pos_embed": torch.zeros(1, 1, 32).expand(1, 10 ** 8, 32)}), "not a plain contiguous"),
    (lambda sd: sd.update({"y_embedder.embedding_table.weight": torch.zeros(0, 32)}), "class table"),
    (lambda sd: sd.pop("final_layer.linear.weight"), "final_layer.linear.weight"),
    (lambda sd: sd.update({"x_embedder.proj.weight": torch.zeros(32)}), "x_embedder.proj.weight"),
])
def test_crafted_dit_files_are_refused_before_building(tmp_path, change, message):
    sd = _dit_state()
    change(sd)
    torch.save(sd, tmp_path / "dit.pt")
    p = _limited("convert", tmp_path / "dit.pt", "--out", tmp_path / "out", "--heads", 2, timeout=90)
    assert p.returncode == 2 and message in p.stderr, p.stderr
    assert not (tmp_path / "out").exists()


def test_weights_only_refusal_names_the_global_and_never_advises_turning_it_off(tmp_path):
    torch.save({"x_embedder.proj.weight": torch.zeros(1), "evil": _Reduce(os.getcwd, ())}, tmp_path / "g.pt")
    p = _limited("convert", tmp_path / "g.pt", "--out", tmp_path / "o")
    assert p.returncode == 2 and "getcwd" in p.stderr, p.stderr
    reason = p.stderr.split("torch file:")[-1]
    assert "False" not in reason and "likely succeed" not in reason and "weights_only" not in reason


# ---- 6: a failed convert keeps the old output ----------------------------------------------------------

def test_a_failed_convert_leaves_the_existing_output_as_it_was(tmp_path):
    from helpers import StabilityVAEEncoder  # noqa: F401
    import windowguide.models.edm2 as E
    torch.manual_seed(0)
    net = E.EDM2Precond(img_resolution=8, img_channels=3, label_dim=0, model_channels=16, channel_mult=(1,),
                        num_blocks=1, attn_resolutions=()).eval()
    good = tmp_path / "good.pkl"
    good.write_bytes(edm2_pickle({"ema": net}))
    out = tmp_path / "good.safetensors"
    assert _limited("convert", good, "--out", out).returncode == 0
    before = out.read_bytes()
    (tmp_path / "bad.pkl").write_bytes(pickle.dumps({"ema": _persistent("Precond", {"_init_args": (),
                                       "_init_kwargs": {"img_resolution": 8, "img_channels": 3}, "_modules": {}})}))
    p = _limited("convert", tmp_path / "bad.pkl", "--out", out)
    assert p.returncode == 2 and out.read_bytes() == before
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


# ---- 7: 16-bit and other PIL modes in metrics ---------------------------------------------------------

def test_sixteen_bit_and_other_modes_measure_like_their_8_bit_images(tmp_path):
    from PIL import Image
    from windowguide.imageio import read_uint8
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 256, (24, 24), dtype=np.uint8)
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "g16.png")
    Image.fromarray(grey).save(tmp_path / "g8.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    assert np.array_equal(read_uint8(str(tmp_path / "g16.png"))[..., 0], grey)
    rgb = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
    Image.fromarray(rgb).convert("RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(rgb).convert("P").save(tmp_path / "p.png")
    assert np.array_equal(read_uint8(str(tmp_path / "rgba.png")), rgb)
    assert read_uint8(str(tmp_path / "p.png")).shape == (24, 24, 3)
    Image.fromarray(grey).convert("LA").save(tmp_path / "la.png")
    assert np.array_equal(read_uint8(str(tmp_path / "la.png"))[..., 0], grey)
    Image.fromarray(grey.astype(np.float32) / 255).save(tmp_path / "f.tiff")
    assert np.array_equal(read_uint8(str(tmp_path / "f.tiff"))[..., 0], grey)
    Image.fromarray((grey.astype(np.float32) * 4)).save(tmp_path / "f4.tiff")
    with pytest.raises(WindowguideError, match="outside"):
        read_uint8(str(tmp_path / "f4.tiff"))


def test_metrics_of_16_bit_digits_equal_the_8_bit_ones(tmp_path):
    from PIL import Image
    from windowguide.commands import metrics
    from windowguide.data import load
    x = ((load("digits", "test").images[:40, 0] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    for d, conv in (("a8", lambda a: a), ("a16", lambda a: a.astype(np.uint16) * 257)):
        (tmp_path / d).mkdir()
        for i, a in enumerate(x):
            Image.fromarray(conv(a)).save(tmp_path / d / f"{i:03d}.png")
    r8 = metrics.run(str(tmp_path / "a8"), "digits", "fid", progress=False)
    r16 = metrics.run(str(tmp_path / "a16"), "digits", "fid", progress=False)
    assert r16["fid"] == pytest.approx(r8["fid"], rel=1e-9)


def test_a_png_declaring_a_huge_size_is_refused_from_its_header(tmp_path, images):
    import struct
    import zlib
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 12000, 12000, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b""))
    d = tmp_path / "big"
    d.mkdir()
    (d / "a.png").write_bytes(png)
    (d / "b.png").write_bytes(png)
    p = _limited("metrics", d, "--ref", "mirror", timeout=60)
    assert p.returncode == 2 and "12000 x 12000" in p.stderr, p.stderr


# ---- 8: a resume whose network changed ---------------------------------------------------------------

def test_resume_with_changed_weights_is_refused_naming_the_file(tmp_path):
    import shutil
    from windowguide.cli import main
    from windowguide.models.checkpoint import resolve
    model = tmp_path / "m.safetensors"
    shutil.copy(resolve("mirror-weak"), model)
    out = tmp_path / "s"
    assert main(["sample", "--model", str(model), "--seeds", "0-1", "--steps", "2", "--out", str(out)]) == 0
    shutil.copy(resolve("mirror-wd"), model)             # another network, same path
    p = _limited("sample", "--model", model, "--seeds", "0-3", "--steps", "2", "--out", out)
    assert p.returncode == 2 and "another network" in p.stderr and "m.safetensors" in p.stderr
    assert sorted(f for f in os.listdir(out) if f.endswith(".png") and f != "grid.png") == ["000000.png", "000001.png"]


def test_stale_temporaries_are_removed_when_a_folder_is_claimed(tmp_path):
    from windowguide.cli import main
    out = tmp_path / "s"
    out.mkdir()
    stale, live = out / ".samples.npz.abcd1234.tmp", out / ".000001.png.efgh5678.tmp"
    stale.write_bytes(b"x" * 100)
    live.write_bytes(b"y")
    os.utime(stale, (1, 1))
    assert main(["sample", "--model", "mirror-weak", "--seeds", "0", "--steps", "2", "--out", str(out)]) == 0
    assert not stale.exists() and live.exists()


# ---- medium: metrics checks before the pass, bounded records ----------------------------------------

def _reference(tmp_path, mu, sigma):
    path = tmp_path / "r.npz"
    np.savez(path, mu=mu, sigma=sigma)
    return path


@pytest.mark.parametrize("mu, sigma, message", [
    (np.zeros(6000), np.eye(6000)[:2], "shapes"),
    (np.zeros(3), -np.eye(3), "negative eigenvalue"),
    (np.zeros(3), np.array([[1, 2, 0], [0, 1, 0], [0, 0, 1.0]]), "not symmetric"),
    (np.full(3, np.nan), np.eye(3), "NaN"),
    (np.zeros(3), np.eye(3), "dimension 3"),
])
def test_bad_references_are_refused_before_any_feature(tmp_path, images, mu, sigma, message, capsys):
    from windowguide.cli import main
    ref = _reference(tmp_path, mu, sigma)
    assert main(["metrics", str(images), "--ref", str(ref), "--metrics", "fid", "--features", "mirror-classifier"]) == 2
    err = capsys.readouterr().err
    assert message in err and "features: 100%" not in err


def test_metrics_refuses_images_the_classifier_cannot_measure_and_mixed_sizes(tmp_path, images, capsys):
    from PIL import Image
    from windowguide.cli import main
    big = tmp_path / "big"
    big.mkdir()
    for i in range(3):
        Image.fromarray(np.zeros((48, 48, 3), np.uint8)).save(big / f"{i}.png")
    assert main(["metrics", str(big), "--ref", "mirror"]) == 2
    assert "measures 24 x 24 images; these are 48 x 48" in capsys.readouterr().err
    Image.fromarray(np.zeros((24, 24, 3), np.uint8)).save(big / "3.png")
    assert main(["metrics", str(big), "--ref", "mirror", "--batch-size", "1"]) == 2
    assert "different sizes" in capsys.readouterr().err


def test_metrics_checks_its_outputs_first(tmp_path, images, capsys):
    from windowguide.cli import main
    (tmp_path / "file").write_text("x")
    for argv in (["--make-ref", "--out", str(tmp_path)], ["--make-ref", "--out", str(tmp_path / "file" / "r.npz")],
                 ["--ref", "mirror", "--json", str(tmp_path / "file" / "m.json")]):
        assert main(["metrics", str(images), "--features", "mirror-classifier", *argv]) == 2
        err = capsys.readouterr().err
        assert "--out" in err or "--json" in err
        assert "features: 100%" not in err


def test_manifest_and_npz_problems_name_the_file(tmp_path, capsys):
    from windowguide.cli import main
    d = tmp_path / "m"
    d.mkdir()
    (d / "manifest.json").write_text(json.dumps({"seeds": []}))
    assert main(["metrics", str(d), "--ref", "mirror"]) == 2
    assert "manifest.json" in capsys.readouterr().err
    np.savez(tmp_path / "nchw.npz", images=np.zeros((4, 3, 24, 24), np.uint8))
    assert main(["metrics", str(tmp_path / "nchw.npz"), "--ref", "mirror"]) == 2
    assert "NCHW" in capsys.readouterr().err
    np.savez(tmp_path / "obj.npz", images=np.array([None, 1], dtype=object))
    assert main(["metrics", str(tmp_path / "obj.npz"), "--ref", "mirror"]) == 2
    err = capsys.readouterr().err
    assert "obj.npz" in err and "allow_pickle" not in err


def test_model_records_and_steps_are_bounded(tmp_path, capsys):
    from safetensors.torch import save_file
    from windowguide.cli import main
    from windowguide.models.checkpoint import resolve
    from safetensors import safe_open
    with safe_open(resolve("mirror-weak"), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    record = json.loads(meta["windowguide"])
    record["shape"] = [1, 65536, 65536]
    save_file(tensors, tmp_path / "big.safetensors", {"windowguide": json.dumps(record)})
    assert main(["sample", "--model", str(tmp_path / "big.safetensors"), "--seeds", "0", "--out", str(tmp_path / "o")]) == 2
    assert "65536" in capsys.readouterr().err and not (tmp_path / "o").exists()
    assert main(["sample", "--model", "mirror-weak", "--steps", "1000000000", "--out", str(tmp_path / "o")]) == 2
    assert "1..10000" in capsys.readouterr().err


# ---- property tests: random pickles and safetensors headers -------------------------------------------

from hypothesis import given, settings, strategies as st  # noqa: E402

_OPS = [pickle.MARK, pickle.EMPTY_LIST, pickle.EMPTY_DICT, pickle.EMPTY_TUPLE, pickle.APPEND, pickle.APPENDS,
        pickle.SETITEM, pickle.SETITEMS, pickle.BUILD, pickle.REDUCE, pickle.TUPLE, pickle.TUPLE1, pickle.TUPLE2,
        pickle.NONE, pickle.NEWTRUE, pickle.NEWFALSE, pickle.POP, pickle.DUP, pickle.MEMOIZE, pickle.BINGET + b"\0",
        pickle.BININT1 + b"\x03", pickle.BININT1 + b"\xff", pickle.SHORT_BINBYTES + b"\x08" + b"\0" * 8,
        pickle.SHORT_BINUNICODE + b"\x02f8", pickle.SHORT_BINUNICODE + b"\x01<", pickle.BININT + b"\xff\xff\xff\x7f",
        b"cnumpy\ndtype\n", b"cnumpy\nndarray\n", b"cnumpy.core.multiarray\n_reconstruct\n",
        b"cnumpy.core.multiarray\nscalar\n", b"ccollections\nOrderedDict\n", b"cdnnlib.util\nEasyDict\n"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_OPS), max_size=40))
def test_random_pickle_streams_load_or_raise_our_error(ops):
    blob = pickle.PROTO + b"\x04" + b"".join(ops) + pickle.STOP
    try:
        safe_load(blob)
    except WindowguideError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 2 ** 64 - 1))
def test_random_safetensors_headers_load_or_raise_our_error(tmp_path_factory, body, length):
    from windowguide.models.checkpoint import load_model
    path = tmp_path_factory.mktemp("st") / "x.safetensors"
    path.write_bytes(length.to_bytes(8, "little") + body)
    with pytest.raises(WindowguideError):
        load_model(str(path))


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.sampled_from(["dtype", "shape", "data_offsets"]),
                       st.one_of(st.text(max_size=5), st.lists(st.integers(-5, 2 ** 40), max_size=4))),
       st.sampled_from(["F32", "F16", "I64", "U8"]))
def test_random_safetensors_tensor_entries_load_or_raise_our_error(tmp_path_factory, entry, dtype):
    from windowguide.models.checkpoint import load_model
    header = json.dumps({"w": entry, "__metadata__": {"windowguide": json.dumps(
        {"kind": "classifier", "config": {"channels": 1, "num_classes": 2, "width": 4}})}}).encode()
    path = tmp_path_factory.mktemp("st") / "x.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 16)
    with pytest.raises(WindowguideError):
        load_model(str(path))


# ---- medium: pipeline folders ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A tiny SD folder, an unconditional DDPM folder and a DiT folder with a 2x VAE, saved here."""
    from diffusers import DDIMScheduler, DDPMPipeline, DDPMScheduler, DiTPipeline, DiTTransformer2DModel, UNet2DModel
    from pipes import tiny_sd, tiny_vae
    root = tmp_path_factory.mktemp("folders")
    tiny_sd(root).save_pretrained(root / "sd")
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=16, in_channels=3, out_channels=3, block_out_channels=(8, 16),
                       down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2, layers_per_block=1,
                       norm_num_groups=4)
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(root / "ddpm")
    dit = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                num_layers=1, sample_size=8, patch_size=2, num_embeds_ada_norm=10)
    DiTPipeline(transformer=dit, vae=tiny_vae(), scheduler=DDIMScheduler()).save_pretrained(root / "dit")
    return root


@pytest.mark.parametrize("command, argv, message", [
    ("sample", ["sd", "--prompt", "a cat", "--height", "-16"], "positive multiples of 4"),
    ("sample", ["sd", "--prompt", "a cat", "--height", "18"], "positive multiples of 4"),
    ("sample", ["sd", "--prompt", "a cat", "--sampler", "bogus"], "--sampler 'bogus'"),
    ("sample", ["sd", "--prompt", "a cat", "--class", "1"], "takes a prompt"),
    ("sample", ["dit", "--prompt", "a cat"], "takes class labels"),
    ("sample", ["ddpm", "--guidance", "cfg:w=1"], "unconditional"),
    ("sample", ["dit", "--height", "102"], "positive multiples of 4"),
    ("sample", ["dit", "--height", "100", "--width", "100"], "up to its positional embedding's 8x8"),
    ("panorama", ["sd", "--prompt", "a cat", "--stride", "100"], "stride 100"),
])
def test_a_refused_pipeline_run_leaves_no_settings(folders, tmp_path, capsys, command, argv, message):
    from windowguide.cli import main
    out = tmp_path / "o"
    assert main([command, "--model", str(folders / argv[0]), *argv[1:], "--steps", "2", "--seeds", "0",
                 "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_dit_images_follow_the_vae_factor_and_none_is_none_for_panoramas(folders, tmp_path, capsys):
    from windowguide.cli import main
    from windowguide.files import read_png
    assert main(["sample", "--model", str(folders / "dit"), "--height", "16", "--width", "16", "--steps", "2",
                 "--seeds", "0", "--out", str(tmp_path / "d")]) == 0
    assert read_png(str(tmp_path / "d" / "000000.png")).shape[:2] == (16, 16)      # 2x VAE: 8 x 8 latents
    assert main(["sample", "--model", str(folders / "dit"), "--height", "16", "--width", "12", "--steps", "2",
                 "--seeds", "0", "--out", str(tmp_path / "d2")]) == 2
    assert "square latents only" in capsys.readouterr().err
    assert main(["panorama", "--model", str(folders / "ddpm"), "--guidance", "none", "--width", "48", "--steps", "2",
                 "--seeds", "0", "--out", str(tmp_path / "p")]) == 0
    assert json.loads((tmp_path / "p" / "settings.json").read_text())["guidance"] == "none"


def test_a_folder_whose_weights_do_not_match_its_config_is_refused(folders, tmp_path, capsys):
    import glob
    import shutil
    from safetensors.torch import load_file, save_file
    from windowguide.cli import main
    bad = tmp_path / "bad"
    shutil.copytree(folders / "sd", bad)
    path = glob.glob(str(bad / "unet" / "*.safetensors"))[0]
    weights = load_file(path)
    weights.pop("conv_out.weight")
    save_file(weights, path)
    assert main(["sample", "--model", str(bad), "--prompt", "a cat", "--steps", "2", "--seeds", "0",
                 "--out", str(tmp_path / "o")]) == 2
    assert "missing ['conv_out.weight']" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_guider_and_term_constructors_refuse_bad_numbers():
    import warnings
    from windowguide.guidance import CFG, MSWG, SWG, GuidedDenoiser
    warnings.simplefilter("ignore")
    import windowguide.guiders as g
    bad = [lambda: g.SlidingWindowGuidance(guidance_rescale=float("nan")), lambda: g.SlidingWindowGuidance(guidance_rescale=float("inf")),
           lambda: g.SlidingWindowGuidance(guidance_rescale=-1), lambda: g.SlidingWindowGuidance(window=0),
           lambda: g.SlidingWindowGuidance(window=-8), lambda: g.SlidingWindowGuidance(windows_per_side=0),
           lambda: g.SlidingWindowGuidance(max_batch=0), lambda: g.SlidingWindowGuidance(swg_scale=float("nan")),
           lambda: g.SlidingWindowGuidance(guidance_scale=-2), lambda: g.ModelAutoGuidance(autoguidance_scale=-1),
           lambda: g.SegmentedGuidance(low_scale=float("inf")), lambda: g.SegmentedGuidance(window=0),
           lambda: CFG(1e308), lambda: CFG(float("nan")), lambda: CFG(-1), lambda: MSWG(1, window=0),
           lambda: SWG(1, window=(8, -8)), lambda: SWG(1, windows_per_side=0), lambda: SWG(1, stride=0),
           lambda: GuidedDenoiser(lambda x, s, c: x, None, max_batch=0)]
    for make in bad:
        with pytest.raises(WindowguideError):
            make()
    assert CFG(1000).weight == 1000 and MSWG(0.5).window == "auto"
