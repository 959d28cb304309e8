"""``torchrun --nproc_per_node=2`` (gloo, CPU): the same PNGs as one process, nothing lost or
duplicated by a kill, and the same feature statistics as one process."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest



# the same threads per process on both sides: CPU kernels pick their blocking by thread count, which can
# move the last bit of a float (torchrun sets 1 thread per process unless told)
ENV = dict(os.environ, OMP_NUM_THREADS="1")
COMMON = ["sample", "--model", "digits", "--steps", "4", "--batch-size", "5", "--seeds", "0-29"]


def _torchrun(*args, **kw):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "windowguide", *args]
    return subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, **kw)


def _one(*args):
    return subprocess.run([sys.executable, "-m", "windowguide", *args], env=ENV, capture_output=True, text=True)


def _pngs(out):
    return sorted(f for f in os.listdir(out) if f.endswith(".png") and f[0].isdigit())


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "s"
    r = _one(*COMMON, "--out", str(out))
    assert r.returncode == 0, r.stderr
    return out


def test_two_ranks_write_the_one_process_pngs_byte_for_byte(tmp_path, one_process):
    out = tmp_path / "two"
    p = _torchrun(*COMMON, "--out", str(out))
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert _pngs(out) == _pngs(one_process) and len(_pngs(out)) == 30
    for name in _pngs(out) + ["manifest.json", "samples.npz"]:
        assert (out / name).read_bytes() == (one_process / name).read_bytes(), name
    assert err.count("samples:") == 0          # the summary line is printed once, on stdout of rank 0


def test_a_killed_run_resumes_with_every_seed_once(tmp_path, one_process):
    out = tmp_path / "killed"
    p = _torchrun(*COMMON, "--out", str(out))
    deadline = time.time() + 120
    while time.time() < deadline and (not out.exists() or len(_pngs(out)) < 10):
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGKILL)           # torchrun and both ranks, mid-run
    p.wait()
    partial = len(_pngs(out))
    assert 10 <= partial < 30, partial
    p = _torchrun(*COMMON, "--out", str(out))
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seeds"] == list(range(30)) and manifest["count"] == 30
    assert _pngs(out) == _pngs(one_process)
    assert all((out / n).read_bytes() == (one_process / n).read_bytes() for n in _pngs(out))
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]


def test_distributed_feature_statistics_equal_one_process(tmp_path, one_process):
    one, two = tmp_path / "one.npz", tmp_path / "two.npz"
    args = ["metrics", str(one_process), "--make-ref", "--metrics", "fid,kid", "--features", "digits-classifier"]
    r = _one(*args, "--out", str(one))
    assert r.returncode == 0, r.stderr
    p = _torchrun(*args, "--out", str(two))
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    a, b = np.load(one), np.load(two)
    assert int(a["inception.count"]) == int(b["inception.count"]) == 30
    assert np.array_equal(a["inception.features"], b["inception.features"])      # gathered in image order
    assert np.allclose(a["inception.mu"], b["inception.mu"], rtol=1e-12, atol=0)
    assert np.allclose(a["inception.sigma"], b["inception.sigma"], rtol=1e-10, atol=1e-14)
    # and the metrics command itself under torchrun: rank 0 writes the result
    p = _torchrun("metrics", str(one_process), "--ref", str(one), "--metrics", "fid,kid,pr", "--features",
                  "digits-classifier", "--json", str(tmp_path / "m.json"))
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    m = json.loads((tmp_path / "m.json").read_text())
    assert abs(m["fid"]) < 1e-4 and m["precision"] == 1.0   # FD of a set with itself: round-off only
    assert m["precision"] == 1.0 and out.count("30 images vs") == 1
