"""windowguide's ComfyUI nodes: sliding-window guidance (M-SWG / SWG), segmented guidance (SGG),
two-model autoguidance, a CFG guidance interval and any windowguide recipe, each MODEL -> MODEL like
ComfyUI's own PAG node and chainable with them and with ComfyUI's CFG.

Install: ``pip install windowguide`` into ComfyUI's Python, then put the package's ComfyUI entry in
``custom_nodes`` (the project's ``custom_nodes/windowguide`` folder, or the ComfyUI manager/registry,
whose metadata is ``[tool.comfy]`` in ``pyproject.toml``). Every formula is windowguide's
(``windowguide.integrations.comfyui``); a bad setting raises the same one-line message as the CLI.
"""
from __future__ import annotations

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
