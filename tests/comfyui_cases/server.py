"""End to end: ComfyUI's own server on 127.0.0.1, windowguide's node pack in its custom_nodes, runs the
example M-SWG workflow (API format, examples/comfyui/mswg_sdxl_api.json) with its checkpoint loader, text
encoders and VAE swapped for fixture nodes (a tiny model the test saved; ComfyUI's model detection knows
no model that small); the test waits on /history, reads the image that comes back, checks it against the
same workflow run in this process, and stops the server."""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import torch

from harness import COMFYUI, ROOT, ksample, torchvision_stand_in
from tiny_models import conditioning, latent_to_image, tiny_sd15

HERE = os.path.dirname(os.path.abspath(__file__))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


@pytest.fixture()
def server(tmp_path):
    base = tmp_path / "comfy"
    nodes = base / "custom_nodes"
    shutil.copytree(os.path.join(ROOT, "custom_nodes", "windowguide"), nodes / "windowguide")
    shutil.copytree(os.path.join(HERE, "fixture_nodes"), nodes / "wg_fixtures")
    shutil.copy(os.path.join(HERE, "tiny_models.py"), nodes / "wg_fixtures" / "tiny_models.py")
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([torchvision_stand_in(), os.environ.get("PYTHONPATH", "")])}
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen([sys.executable, os.path.join(COMFYUI, "main.py"), "--cpu", "--listen", "127.0.0.1",
                             "--port", str(port), "--base-directory", str(base), "--disable-auto-launch"],
                            cwd=COMFYUI, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            if proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited: {open(tmp_path / 'server.log').read()[-3000:]}")
            try:
                _get(url + "/object_info/WindowguideSlidingWindowGuidance")
                break
            except Exception:
                time.sleep(0.5)
        else:
            raise RuntimeError(f"ComfyUI did not start: {open(tmp_path / 'server.log').read()[-3000:]}")
        yield url, base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _workflow(weights: str) -> dict:
    with open(os.path.join(ROOT, "examples", "comfyui", "mswg_sdxl_api.json")) as f:
        wf = json.load(f)
    wf["1"] = {"class_type": "WGFixtureModel", "inputs": {"path": weights}}
    wf["2"] = {"class_type": "WGFixtureConditioning", "inputs": {"seed": 1}}
    wf["3"] = {"class_type": "WGFixtureConditioning", "inputs": {"seed": 2}}
    wf["4"]["inputs"].update(width=128, height=128)
    wf["6"]["inputs"].update(steps=3, cfg=3.0, seed=3)
    wf["7"] = {"class_type": "WGFixtureLatentToImage", "inputs": {"samples": ["6", 0]}}
    return wf


def test_the_example_workflow_runs_in_comfyuis_server(server, tmp_path):
    import safetensors.torch
    from windowguide.comfyui import nodes
    url, base = server
    info = _get(url + "/object_info/WindowguideSlidingWindowGuidance")["WindowguideSlidingWindowGuidance"]
    assert info["display_name"].startswith("Sliding-Window Guidance") and info["category"] == "sampling/windowguide"
    model = tiny_sd15(seed=4)
    weights = str(tmp_path / "tiny.safetensors")
    safetensors.torch.save_file({k: v.contiguous() for k, v in model.model.diffusion_model.state_dict().items()}, weights)
    body = json.dumps({"prompt": _workflow(weights), "client_id": "windowguide-test"}).encode()
    request = urllib.request.Request(url + "/prompt", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as r:
        prompt_id = json.loads(r.read())["prompt_id"]
    for _ in range(600):
        history = _get(url + f"/history/{prompt_id}")
        if prompt_id in history and history[prompt_id].get("outputs"):
            break
        status = history.get(prompt_id, {}).get("status", {})
        assert status.get("status_str") != "error", status
        time.sleep(0.5)
    image = history[prompt_id]["outputs"]["8"]["images"][0]
    from PIL import Image
    got = np.asarray(Image.open(base / "output" / image["subfolder"] / image["filename"]))
    # the same workflow in this process: the node, ComfyUI's KSampler, the latent-to-image stand-in
    (guided,) = nodes.SlidingWindowGuidance.execute(model, 0.5, True, 0.625, 2, 0.0, 1.0)
    latent = ksample(guided, conditioning(1), conditioning(2), 3.0, steps=3, shape=(1, 4, 16, 16), seed=3)
    want = np.clip(255.0 * latent_to_image(latent)[0].numpy(), 0, 255).astype(np.uint8)
    assert got.shape == (16, 16, 3) and np.abs(got.astype(int) - want.astype(int)).max() <= 1
