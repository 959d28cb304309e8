"""ComfyUI's entry to windowguide's nodes: put this folder in ComfyUI's ``custom_nodes`` (copy or link
it) with windowguide installed in ComfyUI's Python (``pip install windowguide``). The nodes are in
``windowguide.comfyui``; every formula is windowguide's own."""
from windowguide.comfyui import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
