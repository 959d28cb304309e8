"""``windowguide train``: a diffusion model (EDM loss) or the benchmark's classifier."""
from __future__ import annotations

import os
from dataclasses import asdict, replace

from ..data import BUILTIN, load
from ..errors import WindowguideError
from ..files import check_out_dir
from ..train.classifier import ClassifierConfig, train_classifier
from ..train.edm import build_net, config_from, train
from .runfolder import claim


def run(dataset: str | None, out: str, preset: str | None = None, classifier: bool = False,
        progress: bool = True, **settings) -> str:
    """Train into ``out``; returns the path of the model file. The folder is checked first."""
    check_out_dir(out)
    if classifier:
        cfg = ClassifierConfig(dataset=dataset or "digits",
                               **{k: v for k, v in settings.items() if v is not None and k in
                                  ClassifierConfig.__dataclass_fields__})
        if cfg.dataset not in BUILTIN:
            load(cfg.dataset, "all")                       # a user's unreadable data is said first
        claim(out, "train", dict(classifier=asdict(cfg)), _data_file(cfg.dataset))   # another command's folder or
        # recipe, or other data, refused by name
        path = os.path.join(out, "model.safetensors")
        acc = train_classifier(cfg, path, progress)
        print(f"test accuracy {acc:.4f}")
        return path
    if settings.get("w2s") is None and settings.get("w2s_weight") is not None:
        raise WindowguideError("--w2s-weight needs --w2s mg|ag|branch|sgg")
    if settings.get("w2s") is not None and settings.get("w2s_weight") is None:
        raise WindowguideError(f"--w2s {settings['w2s']} needs --w2s-weight W")
    cfg = config_from(preset, dataset=dataset, **settings)
    # an unreadable dataset, or a net that cannot be built for it, is said before the folder is claimed
    data = load(cfg.dataset, "train")
    build_net(cfg if data.labels is not None else replace(cfg, conditional=False), data)
    claim(out, "train", dict(model_config=cfg.record(), preset=preset), _data_file(cfg.dataset))   # before any step
    return train(cfg, out, progress, name=preset, data=data)


def _data_file(dataset: str | None) -> dict:
    """The user's data file as an input of the run folder (fingerprinted by content); none for bundled data."""
    return {"dataset": dataset} if dataset and os.path.isfile(dataset) else {}
