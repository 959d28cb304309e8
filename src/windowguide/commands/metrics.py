"""``windowguide metrics``: FID, FD-DINOv2, KID, IS and precision/recall of a folder of images or an
.npz, against reference statistics; ``--make-ref`` writes such statistics. Under ``torchrun`` each
rank reads every K-th image and the feature statistics are summed over ranks (float64).

Images: every .png/.jpg/.jpeg/.webp under a folder (recursively, sorted by path), or the ``images``
array of an .npz (NHWC uint8, e.g. a ``samples.npz`` of ``windowguide sample``). They are read at
their own resolution; each feature network resizes them itself (see ``metrics.inception`` and
``metrics.dinov2`` for the protocols).
"""
from __future__ import annotations

import os
from typing import Iterator

import numpy as np
import torch
from tqdm import tqdm

from .. import distributed
from ..errors import WindowguideError
from ..files import write_json
from ..imageio import MAX_PIXELS
from ..metrics.evaluate import as_reference, compute, measure
from ..metrics.networks import load_networks, parse_metrics
from ..metrics.reference import load_reference, save_reference
from .common import check_count, check_device

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


class ImageSet:
    """A folder of image files or an .npz ``images`` array, read by index as NCHW uint8."""

    def __init__(self, path: str):
        self.path = path
        self.note = None
        if os.path.isdir(path):
            found = sorted(os.path.join(d, f) for d, _, names in os.walk(path) for f in names
                           if f.lower().endswith(IMAGE_SUFFIXES))
            listed = _listed(path)
            self.files = listed if listed is not None else found
            if listed is not None:
                unlisted = len(set(found) - set(listed) - {os.path.join(path, "grid.png")})
                if unlisted:
                    self.note = (f"{path}/manifest.json lists {len(listed)} images; {unlisted} other image file(s) in "
                                 f"the folder are not measured")
            self.array = None
        elif os.path.isfile(path) and path.endswith(".npz"):
            self.array = _npz_images(path)
            self.files = None
        else:
            raise WindowguideError(f"{path!r}: accepted: a folder of images or an .npz with an 'images' array")
        if len(self) < 2:
            raise WindowguideError(f"{path}: found {len(self)} images; statistics need at least 2")
        self.size = self._check_sizes()

    def _check_sizes(self) -> tuple[int, int, int]:
        """(H, W, C) shared by every image, from the headers, before anything is decoded."""
        if self.array is not None:
            return tuple(self.array.shape[1:])
        from ..imageio import header
        first = header(self.files[0])
        for f in self.files[1:]:
            h = header(f)
            if h[:2] != first[:2]:
                raise WindowguideError(f"images of different sizes: {self.files[0]} is {first[1]} x {first[0]}, {f} is "
                                       f"{h[1]} x {h[0]}; metrics need one size")
        return first

    def __len__(self) -> int:
        return len(self.files) if self.files is not None else len(self.array)

    def read(self, indices) -> torch.Tensor:
        if self.array is not None:
            a = self.array[indices]
        else:
            decoded = [self._decode(self.files[i]) for i in indices]
            first = decoded[0].shape
            for i, a in zip(indices, decoded):
                if a.shape != first:
                    raise WindowguideError(f"images of different sizes: {self.files[indices[0]]} is {first}, "
                                           f"{self.files[i]} is {a.shape}; metrics need one size")
            a = np.stack(decoded)
        return torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2)

    @staticmethod
    def _decode(path: str) -> np.ndarray:
        from ..imageio import read_uint8
        return read_uint8(path)

    def batches(self, r: distributed.Ranks, batch: int, progress: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's (index, images) batches: images r, r + K, ..."""
        mine = list(range(r.rank, len(self), r.world))
        bar = tqdm(total=len(self), desc="features", unit="img", disable=not (progress and r.main))
        for i in range(0, len(mine), batch):
            idx = mine[i:i + batch]
            yield torch.tensor(idx), self.read(idx)
            bar.update(len(idx) * r.world)
        bar.close()


def _listed(folder: str) -> list[str] | None:
    """The per-seed files of a ``windowguide sample`` folder (its manifest), so grid.png is not an image."""
    path = os.path.join(folder, "manifest.json")
    if not os.path.isfile(path):
        return None
    import json
    try:
        with open(path) as f:
            files = json.load(f)["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise WindowguideError(f"{path}: not a windowguide manifest with a 'files' list ({type(e).__name__}: {e}); "
                               f"fix or remove it") from None
    if not isinstance(files, list) or not all(isinstance(n, str) and n and not os.path.isabs(n) and ".." not in n
                                               for n in files):
        raise WindowguideError(f"{path}: 'files' must be a list of file names inside the folder")
    missing = [n for n in files if not os.path.isfile(os.path.join(folder, n))]
    if missing:
        raise WindowguideError(f"{path} lists {len(missing)} file(s) that are not there, e.g. {missing[0]}")
    return [os.path.join(folder, name) for name in files]


def _npz_images(path: str) -> np.ndarray:
    """The 'images' array of an .npz, NHWC uint8 (NCHW is named as such), never unpickled."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if "images" not in z.files:
                raise WindowguideError(f"{path} has no 'images' array (it holds {z.files})")
            a = z["images"]
    except WindowguideError:
        raise
    except (ValueError, OSError, EOFError) as e:
        msg = "holds object arrays, which are never unpickled" if "allow_pickle" in str(e) else f"{type(e).__name__}: {e}"
        raise WindowguideError(f"{path}: not a readable .npz ({msg})") from None
    if a.ndim == 4 and a.shape[1] in (1, 3) and a.shape[-1] not in (1, 3):
        raise WindowguideError(f"{path}: 'images' of shape {a.shape} looks like NCHW; accepted: NHWC uint8 "
                               f"(transpose it with a.transpose(0, 2, 3, 1))")
    if a.dtype != np.uint8 or a.ndim != 4 or a.shape[-1] not in (1, 3):
        raise WindowguideError(f"{path}: 'images' must be NHWC uint8 with 1 or 3 channels, got {a.dtype} {a.shape}")
    if a.shape[1] * a.shape[2] > MAX_PIXELS:
        raise WindowguideError(f"{path}: images of {a.shape[2]} x {a.shape[1]}; accepted: at most {MAX_PIXELS} pixels")
    return a


DEFAULT_METRICS = "fid,kid,is,pr"
IS_SPLITS = 10
PR_K = 3


def supported(names: list[str], count: int) -> tuple[list[str], dict[str, str]]:
    """The default metrics that ``count`` images can support, and each one left out with the reason."""
    need = {"is": (IS_SPLITS, f"the Inception Score's {IS_SPLITS} splits need at least {IS_SPLITS} images"),
            "pr": (PR_K + 1, f"precision/recall's k = {PR_K} neighbours need at least {PR_K + 1} images")}
    left = {m: f"{why}, got {count}" for m, (n, why) in need.items() if m in names and count < n}
    return [m for m in names if m not in left], left


def run(images: str, ref: str | None = None, metrics: str | None = None, out: str | None = None,
        make_ref: bool = False, features: str = "inception", inception: str | None = None, dinov2: str | None = None,
        batch_size: int = 64, device="cpu", json_path: str | None = None, progress: bool = True,
        protocol: str | None = None) -> dict:
    """Metrics of ``images`` against ``ref`` (or, with ``make_ref``, reference statistics written to ``out``).
    metrics None: fid, kid, is, pr less those the image count cannot support (``supported``: named in
    the result's ``left_out``). On a bundled classifier, 'fid' is an FD on that classifier's features:
    the result's ``labels`` say so. ``protocol`` ('pytorch-fid' or 'edm2', ``metrics.inception``): by
    default the reference's own (EDM2 .pkl: edm2, pytorch-fid .npz: pytorch-fid, windowguide's: as
    recorded; --make-ref: pytorch-fid); another one than the reference's is refused."""
    names = parse_metrics(metrics or DEFAULT_METRICS)
    from ..metrics.inception import PROTOCOLS
    if protocol is not None and protocol not in PROTOCOLS:
        raise WindowguideError(f"--protocol {protocol!r}: accepted: {', '.join(PROTOCOLS)}")
    check_count(batch_size, "--batch-size")
    if make_ref:
        if not out:
            raise WindowguideError("--make-ref needs --out REF.npz")
        names = [m for m in names if m != "is"] or ["fid"]       # IS needs no reference
    elif not ref:
        raise WindowguideError("metrics needs --ref REF (a reference .npz/.pkl or a bundled dataset name), "
                               "or --make-ref to write one")
    _check_outputs(out if make_ref else None, json_path)
    r = distributed.init(device)
    device = distributed.local_device(check_device(device), r)
    bundled = ref is not None and _bundled_dataset(ref)
    if bundled:
        if "fd_dinov2" in names:
            raise WindowguideError(f"--ref {ref}: a bundled dataset is measured on its classifier's features "
                                   f"(fid, kid, is, pr); for fd_dinov2 make a reference with --make-ref")
        features = features if features != "inception" else f"{ref}-classifier"
    reference = None if make_ref or bundled else load_reference(ref)    # fail on a bad --ref before any work
    if reference is not None:
        from ..metrics.reference import reference_protocol
        made = reference_protocol(ref)
        if protocol is not None and protocol != made:
            raise WindowguideError(f"--protocol {protocol}: the reference {ref} was made under the {made} protocol; "
                                   f"features under another one do not compare (drop --protocol to use {made})")
        protocol = made
    protocol = protocol or "pytorch-fid"
    data = ImageSet(images)
    left_out = {}
    if metrics is None:
        names, left_out = supported(names, len(data))
    nets = load_networks(names, features, inception, dinov2, device, protocol)
    net_names = {role: net.name for role, net in nets.items()}
    _check_fit(data, nets, reference)
    if make_ref and os.path.exists(out) and progress and r.main:
        print(f"note: {out} exists and will be replaced by this reference")
    stats = measure(data.batches(r, batch_size, progress), nets, names)
    if make_ref:
        if r.main:
            save_reference(out, stats, net_names, protocol)
        distributed.close()
        return dict(reference=out, images=stats[next(iter(stats))].count, networks=net_names)
    if bundled:
        reference = as_reference(_bundled_reference(ref, nets, names), net_names)
    result = dict(images=data.path, count=stats[next(iter(stats))].count, reference=ref, networks=net_names,
                  protocol=protocol if not bundled else "bundled classifier",
                  **compute(names, stats, reference, net_names, is_splits=IS_SPLITS, pr_k=PR_K))
    result["labels"] = labels(result, net_names)
    if data.note:
        result["note"] = data.note
    if left_out:
        result["left_out"] = left_out
    if json_path and r.main:
        write_json(json_path, result)
    distributed.close()
    return result


def _check_outputs(out: str | None, json_path: str | None) -> None:
    """--out (a reference file) and --json must be writable files, checked before any feature."""
    for flag, path in (("--out", out), ("--json", json_path)):
        if not path:
            continue
        if os.path.isdir(path):
            raise WindowguideError(f"{flag} {path}: is a folder; give a file name")
        parent = os.path.dirname(os.path.abspath(path))
        probe = parent
        while not os.path.exists(probe):
            probe = os.path.dirname(probe)
        if not os.path.isdir(probe):
            raise WindowguideError(f"{flag} {path}: {probe} is a file, not a folder")
        if not os.access(probe, os.W_OK | os.X_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
            raise WindowguideError(f"{flag} {path}: not writable")


def _check_fit(data: "ImageSet", nets: dict, reference: dict | None) -> None:
    """Before the feature pass: a bundled classifier sees images of its own size, and the reference's
    statistics have the dimension of the network that will measure the images."""
    for role, net in nets.items():
        shape = (getattr(net, "info", None) or {}).get("shape")
        if shape and tuple(data.size[:2]) != tuple(shape[1:]):
            raise WindowguideError(f"{net.name} measures {shape[2]} x {shape[1]} images; these are {data.size[1]} x "
                                   f"{data.size[0]} (resize them, or use --features inception)")
        if reference and role in reference and len(reference[role]["mu"]) != net.feature_dim:
            raise WindowguideError(f"the reference's {role} statistics have dimension {len(reference[role]['mu'])}, "
                                   f"the {net.name} network's features {net.feature_dim}: they do not compare")


def _bundled_dataset(name: str) -> bool:
    from ..data import BUILTIN
    return name in BUILTIN and not os.path.exists(name)


def _bundled_reference(dataset: str, nets: dict, names: list[str]):
    """The bundled benchmark's reference: the dataset's 'train' images (its classifier never saw them)."""
    from ..data import load
    x = load(dataset, "train").images
    batches = ((torch.arange(i, min(i + 500, len(x))), x[i:i + 500]) for i in range(0, len(x), 500))
    # as the benchmarks' Evaluator reads them (float, not rounded to 8 bits); every rank computes the
    # whole reference: no sharding, no reduction
    return measure(batches, nets, names, float_images=True, reduce=False)


def labels(result: dict, networks: dict) -> dict:
    """What each number is, by its network: 'fid' is FID only on the FID Inception; on a bundled
    classifier it is an FD on that classifier's features (and KID, IS, P/R are on them too)."""
    inc = networks.get("inception", "inception")
    names = {"fid": "FID" if inc == "inception" else f"FD on {inc}", "fd_dinov2": "FD-DINOv2", "kid": "KID",
             "is": "IS", "precision": "precision", "recall": "recall"}
    return {k: v for k, v in names.items() if k in result}


def format_result(result: dict) -> str:
    keys = [k for k in ("fid", "fd_dinov2", "kid", "is", "precision", "recall") if k in result]
    label = result.get("labels") or {}
    parts = []
    for k in keys:
        std = result.get(f"{k}_std")
        parts.append(f"{label.get(k, k)} {result[k]:.4g}" + (f" ± {std:.2g}" if std is not None else ""))
    nets = ", ".join(f"{role}: {name}" for role, name in result["networks"].items())
    left = "".join(f"\nleft out {m}: {why}" for m, why in (result.get("left_out") or {}).items())
    left += f"\nnote: {result['note']}" if result.get("note") else ""
    if result.get("kid", 0) < 0:
        left += ("\nnote: KID is an unbiased estimate, so on few images of a close distribution it can fall below 0; "
                 "read it as 0 within its spread")
    return f"{result['count']} images vs {result['reference']} ({nets})\n" + "  ".join(parts) + left


__all__ = ["run", "ImageSet", "format_result"]
