"""``windowguide bench speed``'s ComfyUI row: the M-SWG node's cost per step over ComfyUI's plain
KSampler (CFG, euler), against the FLOP floor, and against evaluating the same crops one call at a time
(the node's ``max_batch=1``). Runs ComfyUI (``$COMFYUI_PATH``) in a subprocess of its own:
``python -m windowguide.bench.comfyui`` prints the row as JSON."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile


def comfyui_path() -> str | None:
    """The ComfyUI checkout to measure in: ``$COMFYUI_PATH``, else the pinned one beside the project, else None."""
    here = os.path.dirname(os.path.abspath(__file__))
    for path in (os.environ.get("COMFYUI_PATH"), os.path.join(here, "..", "..", "..", "..", "shared", "comfyui")):
        if path and os.path.isdir(os.path.join(path, "comfy")):
            return os.path.abspath(path)
    return None


def measure_comfyui(steps: int = 4, repeats: int = 3) -> dict | None:
    """The row, or None where there is no ComfyUI (set COMFYUI_PATH)."""
    path = comfyui_path()
    if path is None:
        return None
    stub = os.path.join(tempfile.gettempdir(), "windowguide-comfy-stub", "torchvision")
    os.makedirs(stub, exist_ok=True)
    for name in ("__init__.py", "transforms.py"):        # ComfyUI imports torchvision in families unused here
        open(os.path.join(stub, name), "a").close()
    env = {**os.environ, "COMFYUI_PATH": path}
    run = subprocess.run([sys.executable, "-m", "windowguide.bench.comfyui", str(steps), str(repeats)],
                         capture_output=True, text=True, env=env, timeout=1800)
    if run.returncode != 0:
        raise RuntimeError(f"the ComfyUI row failed: {run.stderr[-2000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def _inside(steps: int, repeats: int) -> dict:
    import torch
    sys.argv = [sys.argv[0], "--cpu"]
    sys.path[:0] = [os.environ["COMFYUI_PATH"], os.path.join(tempfile.gettempdir(), "windowguide-comfy-stub")]
    import comfy.options
    comfy.options.enable_args_parsing()
    import comfy.model_patcher
    import comfy.sample
    import comfy.supported_models as supported
    from ..comfyui import nodes
    from .timing import time_interleaved
    config = {'use_checkpoint': False, 'image_size': 32, 'out_channels': 4, 'use_spatial_transformer': True,
              'legacy': False, 'dtype': torch.float32, 'in_channels': 4, 'model_channels': 64, 'num_res_blocks': [1, 1],
              'transformer_depth': [1, 1, 0, 0], 'channel_mult': [1, 2], 'transformer_depth_middle': 1,
              'transformer_depth_output': [1, 1, 0, 0], 'use_temporal_attention': False, 'use_temporal_resblock': False,
              'adm_in_channels': None, 'use_linear_in_transformer': False, 'context_dim': 64, 'num_heads': 4}
    torch.manual_seed(0)
    model = supported.SD15(config).get_model({}, "")
    cpu = torch.device("cpu")
    plain = comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)
    (batched,) = nodes.SlidingWindowGuidance.execute(plain, 0.5, True, 0.625, 2, 0.0, 1.0)
    (one_by_one,) = nodes.SlidingWindowGuidance.execute(plain, 0.5, True, 0.625, 2, 0.0, 1.0, max_batch=1)
    g = torch.Generator().manual_seed(1)
    pos, neg = [[torch.randn(1, 8, 64, generator=g), {}]], [[torch.randn(1, 8, 64, generator=g), {}]]
    side, window, shape = 32, 20, (1, 4, 32, 32)
    noise = torch.randn(*shape, generator=g)

    def run(m):
        return lambda: comfy.sample.sample(m, noise, steps, 3.0, "euler", "normal", pos, neg, torch.zeros(shape),
                                           seed=0, disable_pbar=True)
    t = time_interleaved(dict(plain=run(plain), mswg=run(batched), mswg_per_crop=run(one_by_one)), repeats, cpu)
    floor = (2 + 4 * (window / side) ** 2) / 2       # per step: cond + uncond, then 4 crops of (20/32)^2 each
    return {"model": f"ComfyUI SD1.5-style UNet (64/128 channels) {side}x{side} latent, {steps} euler steps",
            "seconds": t, "mswg_cost_ratio": t["mswg"] / t["plain"], "flop_floor": floor,
            "cost_vs_floor": t["mswg"] / t["plain"] / floor, "batched_speedup": t["mswg_per_crop"] / t["mswg"]}


if __name__ == "__main__":
    print(json.dumps(_inside(int(sys.argv[1]), int(sys.argv[2]))))
