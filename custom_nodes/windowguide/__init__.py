"""ComfyUI's entry to windowguide's nodes, for a ComfyUI where windowguide is pip-installed: copy or link
this folder into ComfyUI's ``custom_nodes``. (A clone of the whole repository in ``custom_nodes`` loads
through the repository's root ``__init__.py`` instead.) The nodes are in ``windowguide.comfyui``."""
from windowguide.comfyui import WEB_DIRECTORY, comfy_entrypoint

__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
