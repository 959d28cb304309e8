"""``windowguide convert``: other projects' checkpoints to windowguide's safetensors, read without
executing anything in them.

- EDM2 network pickles (NVlabs ``edm2-img512-s-....pkl``): the EMA network's weights and constructor
  arguments, and the latent encoder's scale and bias, via ``formats.edm2_pickle``; the result loads
  into ``models.edm2.EDM2Precond`` and samples with ``windowguide sample --model OUT``.
- DiT state dicts (facebookresearch ``DiT-XL-2-256x256.pt``, read with ``weights_only=True``): a diffusers
  ``DiTTransformer2DModel`` folder, via ``formats.dit_checkpoint``.
"""
from __future__ import annotations

import json
import os

import torch

from ..errors import WindowguideError
from ..files import check_out_dir
from ..formats.edm2_pickle import read_edm2
from ..models.checkpoint import MAX_CHANNELS, MAX_SIDE, atomic_save, load_model
from ..models.edm2 import EDM2Precond


def convert_edm2(src: str, out: str, key: str = "ema") -> dict:
    """EDM2 .pkl -> .safetensors with record {kind: edm2, config, shape, encoder, source}."""
    ck = read_edm2(src, key)
    config = ck.init_kwargs
    res, ch = config.get("img_resolution"), config.get("img_channels")
    if not (isinstance(res, int) and 1 <= res <= MAX_SIDE and isinstance(ch, int) and 1 <= ch <= MAX_CHANNELS):
        raise WindowguideError(f"{src}: EDM2 img_resolution {res!r} and img_channels {ch!r}; accepted: 1..{MAX_SIDE} "
                               f"and 1..{MAX_CHANNELS}")
    try:
        with torch.device("meta"):
            net = EDM2Precond(**config)
    except TypeError as e:
        raise WindowguideError(f"{src}: EDM2 arguments {sorted(config)} do not fit windowguide's EDM2 net ({e})") from None
    expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in ck.state_dict.items()}
    if expected != got:
        missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
        wrong = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
        raise WindowguideError(f"{src}: the weights do not fit EDM2 with {config} (missing {missing[:3]}, "
                               f"unexpected {extra[:3]}, shape {wrong[:3]})")
    record = dict(kind="edm2", config=net.config, shape=[config["img_channels"], config["img_resolution"],
                                                          config["img_resolution"]],
                  encoder=ck.encoder, source=os.path.basename(src), network=key)
    # the new file must read back into the architecture before it replaces anything at ``out``
    atomic_save(ck.state_dict, out, {"windowguide": json.dumps(record)}, check=lambda tmp: load_model(tmp, "edm2"))
    return record


def run(src: str, out: str, key: str = "ema", heads: int | None = None) -> dict:
    if not os.path.isfile(src):
        raise WindowguideError(f"{src!r}: no such file")
    if src.endswith(".pkl"):
        check_out_dir(os.path.dirname(os.path.abspath(out)))
        if not out.endswith(".safetensors"):
            raise WindowguideError(f"--out {out!r}: an EDM2 network becomes a file ending in .safetensors")
        return convert_edm2(src, out, key)
    if src.endswith((".pt", ".pth")):
        from ..formats.dit_checkpoint import convert_dit
        check_out_dir(out)
        model = convert_dit(src, out, heads)
        return dict(kind="dit", config=dict(model.config), shape=[model.config.in_channels, model.config.sample_size,
                                                                  model.config.sample_size], encoder=dict(kind="diffusers folder"))
    raise WindowguideError(f"{src!r}: accepted: an EDM2 network pickle (.pkl) or a DiT state dict (.pt, .pth)")


__all__ = ["run", "convert_edm2"]
