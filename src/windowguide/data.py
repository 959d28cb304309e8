"""Image datasets for training and benchmarking, as float tensors in [-1, 1], NCHW.

- ``digits``: scikit-learn's 1797 handwritten digits (8x8, 17 grey levels), bilinearly upsampled to a
  working size; 10 classes. A fixed split holds out 297 images (``split="test"``).
- ``mirror``: procedural, exactly mirror-symmetric colour images: objects of one kind (class 0 disc,
  1 square, 2 diamond) on the left half and their reflection on the right. Objects near the edges have
  partners ``size`` pixels away, out of reach of any smaller window: a long-range dependency whose
  violation ``metrics.pixels.asymmetry`` measures exactly (0 on every real image).
- ``load_images``: a user's folder of images (sub-folders = classes) or an ``.npz`` array.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F
from .errors import WindowguideError
from .models.unet import MAX_CLASSES


@dataclass
class Dataset:
    """images [N, C, H, W] float32 in [-1, 1]; labels [N] int64 or None; class names."""
    name: str
    images: torch.Tensor
    labels: torch.Tensor | None
    class_names: tuple[str, ...] = ()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    def __len__(self) -> int:
        return self.images.shape[0]


DIGITS_TEST = 297   # held out from the 1797 for the classifier's accuracy


def digits(size: int = 24, split: str = "train") -> Dataset:
    """sklearn digits in [-1, 1] at ``size`` x ``size`` (bilinear from 8x8): x = 2 v / 16 - 1.
    split: 'train' (1500), 'test' (297, a fixed random subset) or 'all'."""
    from sklearn.datasets import load_digits
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16 * 2 - 1
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(-1, 1)
    y = torch.tensor(d.target, dtype=torch.int64)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    idx = _split(order, DIGITS_TEST, split)
    return Dataset("digits", x[idx], y[idx], tuple(str(i) for i in range(10)))


def _split(order: torch.Tensor, n_test: int, split: str) -> torch.Tensor:
    if split in ("test", "features"):     # digits has no more images: the feature net learns the test split
        return order[:n_test]
    if split == "train":
        return order[n_test:]
    if split == "all":
        return order
    raise WindowguideError(f"unknown split {split!r}; accepted: 'train', 'test', 'all'")


MIRROR_CLASSES = ("disc", "square", "diamond")


def mirror(n: int = 6000, size: int = 24, seed: int = 0, objects: int = 2) -> Dataset:
    """``n`` mirror-symmetric images: x[..., j] == x[..., size-1-j] exactly.

    Dark random background; ``objects`` shapes of the image's class, each of radius 2.5-4.5 px and a
    bright random colour, centred in the left half, drawn with a 1-px soft edge; the left half is then
    reflected onto the right half."""
    if size % 2:
        raise WindowguideError(f"mirror images need an even size, got {size}")
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(MIRROR_CLASSES), n)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    images = np.empty((n, 3, size, size), np.float32)
    for i in range(n):
        img = np.broadcast_to(rng.uniform(-1, -0.4, (3, 1, 1)), (3, size, size)).copy()
        for _ in range(objects):
            cy, cx = rng.uniform(3, size - 3), rng.uniform(2, size / 2)
            r = rng.uniform(2.5, 4.5)
            dy, dx = np.abs(yy - cy), np.abs(xx - cx)
            dist = [np.hypot(dy, dx), np.maximum(dy, dx), (dy + dx) / np.sqrt(2)][labels[i]]
            alpha = np.clip(r - dist + 0.5, 0, 1)        # soft edge, one pixel wide
            colour = rng.uniform(-0.2, 1, (3, 1, 1))
            colour[rng.integers(0, 3)] = 1.0              # saturated
            img = img * (1 - alpha) + colour * alpha
        half = size // 2
        img[:, :, half:] = img[:, :, :half][:, :, ::-1]
        images[i] = img
    return Dataset("mirror", torch.from_numpy(images), torch.from_numpy(labels), MIRROR_CLASSES)


SCENE_CLASSES = ("day", "dusk", "night")
_PALETTES = {   # (sky top, sky at the horizon, ground) in [0, 1] RGB
    "day": ((0.20, 0.45, 0.90), (0.70, 0.85, 1.00), (0.25, 0.55, 0.20)),
    "dusk": ((0.35, 0.20, 0.50), (0.95, 0.55, 0.30), (0.40, 0.28, 0.15)),
    "night": ((0.02, 0.03, 0.12), (0.10, 0.15, 0.35), (0.05, 0.15, 0.08)),
}


def scenes(n: int = 500, height: int = 24, width: int = 96, seed: int = 0) -> Dataset:
    """``n`` wide landscapes, statistically stationary along the width (every crop position has the same
    distribution): a sky gradient, a horizon of hills h(x) = sum_k a_k sin(2 pi x / T_k + phi_k) with
    uniform phases, a ground with i.i.d. texture (std 0.06) that gives the images their high
    frequencies. Class = palette (day, dusk, night), one per scene, with a jitter of +-0.05."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(SCENE_CLASSES), n)
    rows = np.arange(height, dtype=np.float32)[:, None] + 0.5
    cols = np.arange(width, dtype=np.float32)[None, :]
    images = np.empty((n, 3, height, width), np.float32)
    for i in range(n):
        top, horizon, ground = (np.array(c)[:, None, None] + rng.uniform(-0.05, 0.05, (3, 1, 1))
                                for c in _PALETTES[SCENE_CLASSES[labels[i]]])
        hills = 0.55 * height + sum(rng.uniform(0.5, 2.5) * np.sin(2 * np.pi * cols / rng.uniform(15, 60)
                                                                   + rng.uniform(0, 2 * np.pi)) for _ in range(3))
        t = np.clip(rows / (0.6 * height), 0, 1)[None]
        sky = top * (1 - t) + horizon * t
        alpha = np.clip(rows - hills + 0.5, 0, 1)[None]          # 1-px soft horizon
        land = ground + 0.06 * rng.standard_normal((3, height, width))
        images[i] = np.clip(sky * (1 - alpha) + land * alpha, 0, 1) * 2 - 1
    return Dataset("scenes", torch.from_numpy(images), torch.from_numpy(labels), SCENE_CLASSES)


def random_crops(d: Dataset, size: int, per_image: int, seed: int = 0) -> Dataset:
    """``per_image`` random size x size crops of every image (labels kept)."""
    g = torch.Generator().manual_seed(seed)
    _, _, h, w = d.images.shape
    crops, labels = [], []
    for i in range(len(d)):
        for _ in range(per_image):
            t = int(torch.randint(0, h - size + 1, (1,), generator=g))
            l = int(torch.randint(0, w - size + 1, (1,), generator=g))
            crops.append(d.images[i, :, t:t + size, l:l + size])
            labels.append(d.labels[i])
    return Dataset(f"{d.name}-crops", torch.stack(crops), torch.stack(labels), d.class_names)


BUILTIN = {"digits": digits, "mirror": mirror, "scenes": scenes}


SPLITS = ("train", "test", "features", "all")
_SEEDS = {"train": 0, "all": 0, "test": 1, "features": 2}


def builtin(name: str, split: str = "train", size: int = 24) -> Dataset:
    """A built-in dataset by name. Splits: 'train' (the diffusion models' data and the FD reference),
    'test' (held out), 'features' (what the benchmark's feature network learns, never the reference).
    ``mirror`` and ``scenes`` draw them from disjoint seeds (0, 1, 2); ``digits`` has 1797 images
    only, so its 'features' split is its 'test' split."""
    if split not in SPLITS:
        raise WindowguideError(f"unknown split {split!r}; accepted: {', '.join(SPLITS)}")
    if name == "digits":
        return digits(size, split)
    if name == "mirror":
        return mirror(6000 if split in ("train", "all") else 2000, size, seed=_SEEDS[split])
    if name == "scenes":   # the models see 24 x 24 crops of 24 x 96 scenes
        big = split in ("train", "all")
        return random_crops(scenes(1500 if big else 500, size, 4 * size, seed=_SEEDS[split]), size, 4,
                            seed=_SEEDS[split])
    raise WindowguideError(f"unknown dataset {name!r}; accepted: {sorted(BUILTIN)} or a folder / .npz path")


# ---------------------------------------------------------------- user data

def to_unit_range(a: np.ndarray, what: str) -> np.ndarray:
    """Integers by their bit depth: uint8 -> a / 127.5 - 1, uint16 -> a / 32767.5 - 1; floats in
    [0, 1] -> 2a - 1; floats with negatives are taken as [-1, 1]."""
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 127.5 - 1
    if a.dtype == np.uint16:
        return (a.astype(np.float64) / 32767.5 - 1).astype(np.float32)
    if not np.issubdtype(a.dtype, np.floating):
        raise WindowguideError(f"{what}: images must be uint8, uint16 or float, got dtype {a.dtype}")
    a = a.astype(np.float32)
    if not np.isfinite(a).all():
        raise WindowguideError(f"{what}: images contain NaN or inf")
    lo, hi = float(a.min()), float(a.max())
    if lo >= 0 and hi <= 1:
        return a * 2 - 1
    if lo >= -1 and hi <= 1:
        return a
    raise WindowguideError(f"{what}: float images must lie in [0, 1] or [-1, 1], found [{lo:.3g}, {hi:.3g}]")


def to_nchw(a: np.ndarray, what: str) -> np.ndarray:
    """N x H x W, N x C x H x W or N x H x W x C (C in 1, 3, 4) -> N x C x H x W."""
    if a.ndim in (3, 4) and (a.shape[0] == 0 or min(a.shape) == 0):
        raise WindowguideError(f"{what}: no images (array of shape {a.shape})")
    if a.ndim == 3:
        return a[:, None]
    if a.ndim == 4 and a.shape[1] in (1, 3, 4):
        return a
    if a.ndim == 4 and a.shape[-1] in (1, 3, 4):
        return a.transpose(0, 3, 1, 2)
    raise WindowguideError(f"{what}: expected N x H x W, N x C x H x W or N x H x W x C with C in (1, 3, 4), "
                     f"got shape {a.shape}")


def load_images(path: str, labels: str | None = None) -> Dataset:
    """A user's images: an ``.npz`` (array 'images', or its only array; labels from 'labels' or the
    file ``labels`` names) or a folder of images (PNG/JPEG/...; sub-folders are classes). All images
    must share one size."""
    if os.path.isdir(path):
        return _load_folder(path)
    if not os.path.exists(path):
        raise WindowguideError(f"no dataset at {path!r}; accepted: 'digits', 'mirror', a folder or an .npz file")
    if not path.endswith(".npz"):
        raise WindowguideError(f"{path!r}: accepted files are .npz arrays (or give a folder of images)")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.keys()}
    except Exception as e:
        raise WindowguideError(f"{path}: not a readable .npz file ({type(e).__name__})") from None
    images = [k for k in arrays if k != "labels"]
    if "images" in arrays:
        a = arrays["images"]
    elif len(images) == 1:
        a = arrays[images[0]]
    else:
        raise WindowguideError(f"{path}: no array named 'images' (found {sorted(arrays) or 'none'}); name the "
                               f"image array 'images'")
    y = arrays.get("labels")
    if labels is not None:
        y = np.load(labels, allow_pickle=False)
    x = torch.from_numpy(np.ascontiguousarray(to_unit_range(to_nchw(a, path), path)))
    return _with_labels(os.path.basename(path), x, y, path)


def _with_labels(name: str, x: torch.Tensor, y, what: str, names: tuple[str, ...] = ()) -> Dataset:
    """Labels as int64 0..K-1. Non-integers are refused; labels that are not 0..K-1 (e.g. 3, 7, 1000000)
    are remapped in sorted order, with a warning; K is at most ``MAX_CLASSES``."""
    if y is None:
        return Dataset(name, x, None, ())
    y = np.asarray(y).reshape(-1)
    if y.dtype == bool or not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
        raise WindowguideError(f"{what}: labels must be integers, got dtype {y.dtype}")
    if np.issubdtype(y.dtype, np.floating) and not (np.isfinite(y).all() and (y == np.round(y)).all()):
        bad = y[~(np.isfinite(y) & (y == np.round(y)))][:3].tolist()
        raise WindowguideError(f"{what}: labels must be integers, found {bad}")
    if y.shape[0] != x.shape[0]:
        raise WindowguideError(f"{what}: {y.shape[0]} labels for {x.shape[0]} images")
    y = y.astype(np.int64)
    if y.min() < 0:
        raise WindowguideError(f"{what}: labels must be >= 0, got {int(y.min())}")
    values = np.unique(y)
    if len(values) > MAX_CLASSES:
        raise WindowguideError(f"{what}: {len(values)} distinct labels; at most {MAX_CLASSES} classes are accepted")
    if not names and (values[-1] != len(values) - 1):
        warnings.warn(f"{what}: labels {values[:8].tolist()}{'...' if len(values) > 8 else ''} are not 0..K-1; "
                      f"remapped in sorted order to 0..{len(values) - 1} (class names keep the original values)",
                      stacklevel=3)
        names = tuple(str(v) for v in values)
        y = np.searchsorted(values, y)
    names = names or tuple(str(i) for i in range(int(y.max()) + 1))
    return Dataset(name, x, torch.from_numpy(y), names)


IMAGE_EXT = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def _read_image(file: str) -> np.ndarray:
    """One image file as uint8 or uint16 (16-bit greyscale keeps its depth), or an error naming it."""
    from PIL import Image
    try:
        with Image.open(file) as im:
            if im.mode in ("I;16", "I;16B", "I;16L"):
                return np.asarray(im).astype(np.uint16)
            return np.asarray(im.convert("L" if im.mode in ("L", "1", "LA") else "RGB"))
    except (OSError, SyntaxError, ValueError) as e:
        raise WindowguideError(f"{file}: not a readable image ({type(e).__name__}: {e})") from None


def _inside(root: str, file: str) -> bool:
    root = os.path.realpath(root)
    return os.path.realpath(file).startswith(root + os.sep)


def _load_folder(path: str) -> Dataset:
    entries = sorted(os.listdir(path))
    subdirs = [d for d in entries if os.path.isdir(os.path.join(path, d)) and _inside(path, os.path.join(path, d))]
    loose = [f for f in entries if f.lower().endswith(IMAGE_EXT) and os.path.isfile(os.path.join(path, f))]
    if subdirs and loose:
        raise WindowguideError(f"{path}: images {loose[:3]}{'...' if len(loose) > 3 else ''} lie beside the class "
                               f"folders {subdirs[:3]}; move them into a class folder (or remove the folders)")
    groups = [(i, os.path.join(path, d)) for i, d in enumerate(subdirs)] or [(None, path)]
    arrays, ys, outside = [], [], []
    for label, folder in groups:
        for f in sorted(os.listdir(folder)):
            file = os.path.join(folder, f)
            if not f.lower().endswith(IMAGE_EXT) or not os.path.isfile(file):
                continue
            if not _inside(path, file):      # a link out of the dataset is not part of it
                outside.append(file)
                continue
            arrays.append(_read_image(file))
            ys.append(label)
    if outside:
        warnings.warn(f"{path}: {len(outside)} symbolic link(s) leading out of the folder were not followed, "
                      f"e.g. {outside[0]}", stacklevel=3)
    if not arrays:
        raise WindowguideError(f"no images ({', '.join(IMAGE_EXT)}) in {path!r}")
    sizes = {a.shape for a in arrays}
    if len(sizes) > 1:
        raise WindowguideError(f"images in {path!r} have different shapes {sorted(sizes)}; resize them to one size")
    if len({a.dtype for a in arrays}) > 1:
        raise WindowguideError(f"{path}: 8-bit and 16-bit images are mixed; use one bit depth")
    x = torch.from_numpy(to_unit_range(to_nchw(np.stack(arrays), path), path).copy())
    y = None if ys[0] is None else np.array(ys)
    return _with_labels(os.path.basename(os.path.normpath(path)), x, y, path, tuple(subdirs))


def load(name_or_path: str, split: str = "train") -> Dataset:
    """A built-in dataset by name or a user's folder / .npz. User data has no split of its own: 'train'
    and 'all' give every image, 'test' a fixed random seventh of them (``held_out``)."""
    if name_or_path in BUILTIN:
        return builtin(name_or_path, split)
    d = load_images(name_or_path)
    if split == "test":
        return held_out(d)[1]
    if split not in ("train", "all"):
        raise WindowguideError(f"unknown split {split!r} for a user's data; accepted: 'train', 'test', 'all'")
    return d


def held_out(d: Dataset, fraction: float = 1 / 7, seed: int = 0) -> tuple[Dataset, Dataset]:
    """(the rest, a fixed random ``fraction``) of a dataset, e.g. to measure a classifier on unseen images."""
    order = torch.randperm(len(d), generator=torch.Generator().manual_seed(seed))
    n_test = max(1, int(len(d) * fraction))
    pick = lambda idx: Dataset(d.name, d.images[idx], None if d.labels is None else d.labels[idx], d.class_names)
    return pick(order[n_test:]), pick(order[:n_test])


__all__ = ["Dataset", "digits", "mirror", "builtin", "load_images", "load", "to_unit_range", "to_nchw"]
