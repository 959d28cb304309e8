"""windowguide's ComfyUI nodes, tested inside the pinned ComfyUI (``$COMFYUI_PATH``, default
../shared/comfyui). ComfyUI is imported in a subprocess (``tests/comfyui_cases``) so that its
import-time settings never reach the other tests; skipped with the reason where there is no ComfyUI."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMFYUI = os.environ.get("COMFYUI_PATH") or os.path.join(ROOT, "..", "shared", "comfyui")


@pytest.mark.skipif(not os.path.isdir(os.path.join(COMFYUI, "comfy")), reason=f"no ComfyUI at {COMFYUI}")
def test_nodes_inside_comfyui():
    """cases.py: the nodes against windowguide's own samplers (tiny models); placed.py: conditioning at each
    window's place; video.py: video latents (crops in frames, fusion along time); realckpt.py: full-size random SD 1.5 files through ComfyUI's loaders and server. One
    process: ComfyUI is imported once."""
    folder = os.path.join(ROOT, "tests", "comfyui_cases")
    files = [os.path.join(folder, name) for name in ("cases.py", "placed.py", "video.py", "realckpt.py")]
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--durations=5",
                          "--rootdir", folder, *files], cwd=ROOT, capture_output=True, text=True, timeout=1200,
                         env={**os.environ, "COMFYUI_PATH": COMFYUI})
    print(run.stdout[-4000:], run.stderr[-2000:])
    assert run.returncode == 0, run.stdout[-4000:]
