"""windowguide's nodes on full-size SD 1.5-architecture files (random weights, ``fullsize``) loaded by
ComfyUI's own loaders, in this process and through ComfyUI's server with the repository itself as the node
pack (its root ``__init__.py``), running the example upscale workflows as a user would (small images and
one step, for CI's time)."""
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import torch

from harness import COMFYUI, ROOT, free_port as _free_port, get_json as _get, ksample, torchvision_stand_in
import comfy.sample
import comfy.samplers
import comfy.sd
import nodes as comfy_nodes
import fullsize
from windowguide.comfyui import nodes
from windowguide.errors import WindowguideError
from windowguide.integrations import comfyui as host
from tiny_models import conditioning, latent_to_image, tiny_sd15

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def sd15():
    """(MODEL, CLIP, VAE) of the random full-size checkpoint, through ComfyUI's checkpoint loader."""
    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(fullsize.checkpoint(), output_vae=True,
                                                                output_clip=True)   # CheckpointLoaderSimple's call
    return model, clip, vae


def encode(clip, text):
    return comfy_nodes.CLIPTextEncode().encode(clip, text)[0]


def test_exact_tiled_vae_against_comfyuis_one_piece_and_tiled(sd15):
    """The SD 1.5 VAE (random weights): our tiled decode / encode equal ComfyUI's one-piece ones at three
    tile sizes; ComfyUI's VAE Decode (Tiled) beside them (its tiles normalised one by one)."""
    _, _, vae = sd15
    g = torch.Generator().manual_seed(0)
    latent = {"samples": torch.randn(1, 4, 8, 12, generator=g)}
    with torch.no_grad():
        whole = comfy_nodes.VAEDecode().decode(vae, latent)[0]
        for tile in (16, 32, 64):
            ours = nodes.VAEDecodeTiled.execute(vae, latent, tile)[0]
            err = float((ours - whole).abs().max())
            said = f"decode tile {tile}: windowguide max |diff| {err:.2e}"
            if tile >= 64:                                  # ComfyUI's smallest tile is 64 pixels
                theirs = comfy_nodes.VAEDecodeTiled().decode(vae, latent, tile_size=tile, overlap=16)[0]
                said += f", ComfyUI VAEDecodeTiled (overlap 16) {float((theirs - whole).abs().max()):.2e}"
            print(said + " (pixels in [0, 1])")
            assert ours.shape == whole.shape and err <= 1e-4
        pixels = torch.rand(1, 64, 96, 3, generator=g)
        one = comfy_nodes.VAEEncode().encode(vae, pixels)[0]["samples"]
    for tile in (16, 32, 64):
        ours = nodes.VAEEncodeTiled.execute(vae, pixels, tile)[0]["samples"]
        err = float((ours - one).abs().max())
        print(f"encode tile {tile}: windowguide max |diff| {err:.2e} (latents up to {float(one.abs().max()):.2f})")
        assert ours.shape == one.shape and err <= 1e-4 * max(1.0, float(one.abs().max()))


@pytest.fixture(scope="module")
def inpainting():
    """The random inpainting UNet through UNETLoader's call."""
    return comfy.sd.load_diffusion_model(fullsize.inpainting_unet())


def test_an_inpainting_unet_under_the_fusion_sampler(sd15, inpainting):
    """A 9-channel inpainting UNet from UNETLoader's loader with InpaintModelConditioning, under the fusion
    sampler on two windows: it runs (no size mismatch), and the image outside the mask is kept."""
    _, clip, vae = sd15
    inpaint = inpainting
    g = torch.Generator().manual_seed(1)
    pixels = torch.rand(1, 128, 192, 3, generator=g)
    mask = torch.zeros(1, 128, 192)
    mask[:, 32:96, 48:160] = 1.0
    positive, negative, latent = comfy_nodes.InpaintModelConditioning().encode(
        encode(clip, "a red door"), encode(clip, ""), pixels, vae, mask, True)
    sampler = host.fusion_sampler(window=16, stride=8)
    sigmas = comfy.samplers.KSampler(inpaint, steps=1, device="cpu", sampler="euler", scheduler="normal",
                                     denoise=0.6).sigmas
    noise = comfy.sample.prepare_noise(latent["samples"], 0)
    out = comfy.sample.sample_custom(inpaint, noise, 3.0, sampler, sigmas, positive, negative, latent["samples"],
                                     noise_mask=latent["noise_mask"], disable_pbar=True, seed=0)
    assert out.shape == (1, 4, 16, 24) and torch.isfinite(out).all()
    keep = torch.nn.functional.interpolate(latent["noise_mask"].reshape(1, 1, 128, 192), size=(16, 24)) == 0
    assert torch.allclose(out[keep.expand_as(out)], latent["samples"][keep.expand_as(out)], atol=1e-4)


def test_a_weak_model_of_another_architecture_is_named(sd15, inpainting):
    model, clip, _ = sd15
    weak = inpainting
    guided = nodes.TwoModelAutoguidance.execute(model, weak, 1.0, 0.0, 1.0)[0]
    noise = torch.randn(1, 4, 8, 8)
    with pytest.raises(WindowguideError, match="input channels: 4 vs 9"):
        comfy.sample.sample(guided, noise, 1, 3.0, "euler", "normal", encode(clip, "a cat"), encode(clip, ""),
                            torch.zeros(1, 4, 8, 8), seed=0, disable_pbar=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """ComfyUI's server with the random files in its model folders and this repository as a node pack."""
    base = tmp_path_factory.mktemp("comfy")
    for sub, made in (("checkpoints", fullsize.checkpoint()), ("controlnet", fullsize.controlnet())):
        os.makedirs(base / "models" / sub, exist_ok=True)
        os.symlink(made, base / "models" / sub / os.path.basename(made))
    os.makedirs(base / "custom_nodes")
    os.symlink(ROOT, base / "custom_nodes" / "windowguide")           # the repository as the node pack
    shutil.copytree(os.path.join(HERE, "fixture_nodes"), base / "custom_nodes" / "wg_fixtures")
    shutil.copy(os.path.join(HERE, "tiny_models.py"), base / "custom_nodes" / "wg_fixtures" / "tiny_models.py")
    os.makedirs(base / "input")
    from PIL import Image
    rng = np.random.default_rng(0)
    for name, (h, w) in (("example_2x.png", (64, 96)), ("example_4x.png", (32, 32))):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(base / "input" / name)
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([torchvision_stand_in(), os.environ.get("PYTHONPATH", "")])}
    log = open(base / "server.log", "w")
    proc = subprocess.Popen([sys.executable, os.path.join(COMFYUI, "main.py"), "--cpu", "--listen", "127.0.0.1",
                             "--port", str(port), "--base-directory", str(base), "--disable-auto-launch", "--force-fp32"],
                            cwd=COMFYUI, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            if proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited: {open(base / 'server.log').read()[-3000:]}")
            try:
                _get(url + "/object_info/WindowguideFusionSampler")
                break
            except Exception:
                time.sleep(0.5)
        else:
            raise RuntimeError(f"ComfyUI did not start: {open(base / 'server.log').read()[-3000:]}")
        yield url, base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _run(url, workflow: dict) -> dict:
    body = json.dumps({"prompt": workflow, "client_id": "windowguide-test"}).encode()
    request = urllib.request.Request(url + "/prompt", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            prompt_id = json.loads(r.read())["prompt_id"]
    except urllib.error.HTTPError as e:
        raise AssertionError(e.read().decode()[:3000]) from None
    for _ in range(1200):
        history = _get(url + f"/history/{prompt_id}")
        entry = history.get(prompt_id, {})
        if entry.get("status", {}).get("status_str") == "error":
            said = [m[1].get("exception_message") for m in entry["status"]["messages"] if m[0] == "execution_error"]
            raise AssertionError(f"the workflow failed: {said}")
        if entry.get("outputs"):
            return entry["outputs"]
        time.sleep(0.25)
    raise AssertionError("the workflow did not finish")


def _small(factor: int, image: str, size: tuple) -> dict:
    """The example workflow as written, with this test's files and a small image, one step: 16 x 16
    latent windows at stride 8 (2 on the 2x canvas of 16 x 24, 1 on the 4x one of 16 x 16). M-SWG's crops
    (8 x 8 inside each window, 3 per side) run in the 4x one; in the 2x one its interval starts after the
    step (the crops of windows are checked on tiny models: placed.py)."""
    with open(os.path.join(ROOT, "examples", "comfyui", f"upscale_{factor}x_api.json")) as f:
        wf = json.load(f)
    out = size[1] * factor
    wf["1"]["inputs"]["ckpt_name"] = os.path.basename(fullsize.checkpoint())
    wf["10"]["inputs"]["control_net_name"] = os.path.basename(fullsize.controlnet())
    wf["4"]["inputs"]["image"] = image
    wf["6"]["inputs"]["tile_size"] = wf["16"]["inputs"]["tile_size"] = 64
    # the region: the top 8 latent rows on the 2x canvas (the top half of each window); on the 4x one all of
    # it, so that M-SWG's crops share one call (areas cutting crops apart are checked on tiny models)
    wf["8"]["inputs"].update(width=out, height=64 if factor == 2 else size[0] * factor)
    wf["12"]["inputs"].update(window=0.5, windows_per_side=3)   # 8-pixel crops inside 16-pixel windows
    if factor == 2:       # CI's time: M-SWG's crops on the full-size UNet run in the 4x workflow only
        wf["12"]["inputs"].update(start_percent=0.999)
    wf["13"]["inputs"].update(window=16, stride=8)
    wf["14"]["inputs"].update(steps=1, denoise=0.5)
    wf["15"]["inputs"]["cfg"] = 1.0                          # no unconditional batch: CI's time
    return wf


def test_the_upscale_workflows_run_in_comfyuis_server(server):
    url, base = server
    info = _get(url + "/object_info/WindowguideFusionSampler")["WindowguideFusionSampler"]
    assert info["description"] and info["python_module"].startswith("custom_nodes.windowguide")
    tips = info["input"]["required"]
    assert all(spec[1].get("tooltip") for spec in tips.values()), "every input has a tooltip"
    templates = _get(url + "/workflow_templates")
    assert {"windowguide_upscale_2x", "windowguide_upscale_4x"} <= set(templates["windowguide"])
    with urllib.request.urlopen(url + "/extensions/windowguide/docs/WindowguideFusionSampler.md", timeout=10) as r:
        assert b"# Large-Canvas Fusion Sampler" in r.read()
    for factor, image, (h, w) in ((2, "example_2x.png", (64, 96)), (4, "example_4x.png", (32, 32))):
        outputs = _run(url, _small(factor, image, (h, w)))
        saved = outputs["17"]["images"][0]
        from PIL import Image
        got = np.asarray(Image.open(base / "output" / saved["subfolder"] / saved["filename"]))
        print(f"upscale {factor}x: {w} x {h} px -> {got.shape[1]} x {got.shape[0]} px")
        assert got.shape == (h * factor, w * factor, 3)
        assert got.std() > 0



def _fixture_workflow(weights: str) -> dict:
    """The M-SWG example (API format) with its loader, text encoders and VAE swapped for fixture nodes (a
    tiny model the test saved; ComfyUI's model detection knows no model that small)."""
    with open(os.path.join(ROOT, "examples", "comfyui", "mswg_sdxl_api.json")) as f:
        wf = json.load(f)
    wf["1"] = {"class_type": "WGFixtureModel", "inputs": {"path": weights}}
    wf["2"] = {"class_type": "WGFixtureConditioning", "inputs": {"seed": 1}}
    wf["3"] = {"class_type": "WGFixtureConditioning", "inputs": {"seed": 2}}
    wf["4"]["inputs"].update(width=128, height=128)
    wf["6"]["inputs"].update(steps=3, cfg=3.0, seed=3)
    wf["7"] = {"class_type": "WGFixtureLatentToImage", "inputs": {"samples": ["6", 0]}}
    return wf


def test_the_server_runs_a_node_as_this_process_does(server, tmp_path):
    """The M-SWG example through the server equals the same workflow in this process (within one level)."""
    import safetensors.torch
    url, base = server
    info = _get(url + "/object_info/WindowguideSlidingWindowGuidance")["WindowguideSlidingWindowGuidance"]
    assert info["display_name"].startswith("Sliding-Window Guidance") and info["category"] == "sampling/windowguide"
    model = tiny_sd15(seed=4)
    weights = str(tmp_path / "tiny.safetensors")
    safetensors.torch.save_file({k: v.contiguous() for k, v in model.model.diffusion_model.state_dict().items()}, weights)
    outputs = _run(url, _fixture_workflow(weights))
    image = outputs["8"]["images"][0]
    from PIL import Image
    got = np.asarray(Image.open(base / "output" / image["subfolder"] / image["filename"]))
    (guided,) = nodes.SlidingWindowGuidance.execute(model, 0.5, True, 0.625, 2, 0.0, 1.0)
    latent = ksample(guided, conditioning(1), conditioning(2), 3.0, steps=3, shape=(1, 4, 16, 16), seed=3)
    want = np.clip(255.0 * latent_to_image(latent)[0].numpy(), 0, 255).astype(np.uint8)
    assert got.shape == (16, 16, 3) and np.abs(got.astype(int) - want.astype(int)).max() <= 1

