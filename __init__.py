"""ComfyUI's entry when this repository is a node pack in ``custom_nodes`` (cloned by hand, by
ComfyUI-Manager or from the ComfyUI registry): the package in ``src/`` is put first on the path, so the
nodes run the windowguide of this very checkout, and ``requirements.txt`` holds its dependencies.
Not part of the Python package (pip installs ``src/windowguide``); outside ComfyUI (a test runner that
imports the repository's root as a package) it does nothing."""
import importlib.util
import os
import sys

if importlib.util.find_spec("comfy_api") is not None:
    _SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "src")
    if os.path.isdir(os.path.join(_SRC, "windowguide")) and _SRC not in sys.path:
        sys.path.insert(0, _SRC)
    from windowguide.comfyui import WEB_DIRECTORY, comfy_entrypoint  # noqa: E402,F401
    __all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
