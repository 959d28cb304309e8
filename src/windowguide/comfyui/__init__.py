"""windowguide's ComfyUI nodes on ComfyUI's node API: sliding-window guidance (M-SWG / SWG), segmented
guidance (SGG), two-model autoguidance, a CFG guidance interval and any windowguide recipe (each MODEL ->
MODEL like ComfyUI's own PAG node, chainable with them and with ComfyUI's CFG), a fusion sampler for
canvases larger than the model (panoramas, tiled img2img upscaling with ControlNet and regions per
window, long videos), and exact tiled VAE encode / decode.

Install (README, "ComfyUI"): clone the repository into ComfyUI's ``custom_nodes`` and
``pip install -r requirements.txt``, or through the ComfyUI registry / Manager; the repository's root
``__init__.py`` is the pack's entry. Every formula is windowguide's (``windowguide.integrations.comfyui``);
a bad setting raises the same one-line message as the CLI. Help pages: ``web/docs/<node id>.md``.
"""
from __future__ import annotations

import os

from comfy_api.latest import ComfyExtension, io

from .nodes import NODES

WEB_DIRECTORY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "web")


class WindowguideExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> WindowguideExtension:
    """ComfyUI's entry to the node pack (its V3 loader awaits it)."""
    return WindowguideExtension()


__all__ = ["NODES", "WEB_DIRECTORY", "WindowguideExtension", "comfy_entrypoint"]
