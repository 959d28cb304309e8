"""Regional prompts on a large canvas (MultiDiffusion's region-based generation): each region is a
condition with a mask over the canvas; every window takes the conditions whose masks cover it, and the
canvas is the fusion of all (region, window) states weighted by the window's weights and the region's
mask at each pixel:

    x' = sum_{r,k} m_k M_r(k) ⊙ x'_{r,k} / sum_{r,k} m_k M_r(k),   x'_{r,k} = step(crop_k x, D(., cond_r))

(pairs whose mask is zero over the window are not evaluated). A condition is whatever the denoiser takes:
prompt embeddings, or class labels on class models. One region whose mask covers the canvas is
the single-prompt panorama. Deterministic samplers (euler, heun, ddim with eta 0, flow_euler) for now.
Networks that take positions (FLUX's ids, RoPE) see each pair's window at its place on the canvas.

The CLI's syntax (``windowguide panorama --regions FILE`` / ``--region 'PROMPT@top,left,bottom,right'``),
in image pixels; ``--prompt`` / ``--class`` is a background region over the whole canvas, beneath them:

    {"regions": [{"prompt": "a snowy peak", "box": [0, 0, 512, 1024]},
                 {"prompt": "a lake", "mask": "lake.png", "weight": 2.0},
                 {"class": 2, "box": [0, 48, 24, 96]}]}      # class models

A box is widened to whole latent pixels; a mask PNG (the canvas's size, grey level / 255) is averaged
over each latent pixel's block.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from .conds import Cond, cond_batch_size, cond_cat, cond_select
from .errors import WindowguideError
from .windows import Layout


@dataclass
class Region:
    """A condition (for all samples, or one per sample) and its mask over the canvas, [H, W] in latent
    pixels (weights >= 0; a box is ``Region.box``)."""
    cond: Cond
    mask: torch.Tensor

    @staticmethod
    def box(cond: Cond, canvas: tuple[int, int], top: int, left: int, bottom: int, right: int) -> "Region":
        """A region of weight 1 on rows top..bottom-1 and columns left..right-1 of an H x W canvas."""
        h, w = canvas
        if not (0 <= top < bottom <= h and 0 <= left < right <= w):
            raise WindowguideError(f"box ({top}, {left}, {bottom}, {right}) is not inside the {h}x{w} canvas; "
                                   f"accepted: 0 <= top < bottom <= {h}, 0 <= left < right <= {w}")
        mask = torch.zeros(h, w)
        mask[top:bottom, left:right] = 1
        return Region(cond, mask)


# ------------------------------------------------------------------- the JSON / CLI syntax of regions

REGION_KEYS = ("prompt", "class", "box", "mask", "weight")


def parse_region(text: str) -> dict:
    """``--region 'PROMPT@top,left,bottom,right'`` (image pixels; a class model: ``'CLASS@...'``) as a
    region entry {"prompt", "box"}; the text after the last '@' is the box."""
    what, at, box = text.rpartition("@")
    try:
        numbers = [int(v) for v in box.split(",")]
    except ValueError:
        numbers = []
    if not at or not what or len(numbers) != 4:
        raise WindowguideError(f"--region {text!r}: accepted: 'PROMPT@top,left,bottom,right' (image pixels, "
                               f"e.g. 'a red barn@0,0,512,768'; a class model: 'CLASS@0,0,24,48')")
    return {"prompt": what, "box": numbers}


def read_regions(path: str) -> list[dict]:
    """The region entries of a JSON file: {"regions": [{"prompt": ... | "class": ..., "box": [top, left,
    bottom, right] | "mask": "PNG (white = 1, the canvas's size)", "weight": 1.0}, ...]}; a mask's path is
    relative to the file."""
    import json
    import os
    from .files import regular_file
    regular_file(path, "--regions")
    try:
        with open(path) as f:
            data = json.load(f, object_pairs_hook=_no_duplicate_keys)
    except (OSError, ValueError, RecursionError) as e:
        raise WindowguideError(f"--regions {path}: not a readable JSON file ({type(e).__name__}: "
                               f"{str(e)[:200]})") from None
    entries = data.get("regions") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise WindowguideError(f"--regions {path}: accepted: {{\"regions\": [{{\"prompt\": ..., \"box\": [top, left, "
                               f"bottom, right]}}, ...]}}")
    out = []
    for i, e in enumerate(entries):
        if not isinstance(e, dict):
            raise WindowguideError(f"--regions {path}: region {i} is not an object")
        e = dict(e)
        if isinstance(e.get("mask"), str) and not os.path.isabs(e["mask"]):
            e["mask"] = os.path.join(os.path.dirname(os.path.abspath(path)), e["mask"])
        out.append(e)
    return out


MAX_REGION_WEIGHT = 1e4     # states (|x| <= sigma_max 80..) x weights x hundreds of pairs stay far inside float32


def _check_what(entry: dict, index: int) -> None:
    """A region's prompt is text, its class an integer (or 'none'); a JSON true / 1.7 is not one."""
    if "prompt" in entry and not isinstance(entry["prompt"], str):
        raise WindowguideError(f"region {index}: prompt {str(entry['prompt'])[:40]}: accepted: text")
    k = entry.get("class", 0)
    if "class" in entry and (isinstance(k, bool) or not (isinstance(k, int) or k == "none" or
                                                          (isinstance(k, str) and k.isascii() and k.isdigit()))):
        raise WindowguideError(f"region {index}: class {str(k)[:40]}: accepted: a class index (an integer) or 'none'")


def _no_duplicate_keys(pairs: list) -> dict:
    """A JSON object whose keys are all different (json keeps the last of two silently)."""
    keys = [k for k, _ in pairs]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise ValueError(f"the key {twice[0]!r} appears twice in one object")
    return dict(pairs)


def region_mask(entry: dict, canvas_px: tuple[int, int], factor: int = 1, index: int = 0) -> torch.Tensor:
    """The entry's mask over the canvas in latent pixels [H / factor, W / factor]: a box (image pixels,
    widened to whole latent pixels) or a mask PNG of the canvas's image size (its grey level / 255,
    averaged over each factor x factor block), times ``weight``."""
    h, w = canvas_px
    unknown = sorted(set(entry) - set(REGION_KEYS))
    if unknown or ("box" in entry) == ("mask" in entry) or ("prompt" in entry) == ("class" in entry):
        raise WindowguideError(f"region {index} {entry}: accepted keys {', '.join(REGION_KEYS)}: one of prompt / "
                               f"class and one of box / mask")
    weight = entry.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 < weight <= MAX_REGION_WEIGHT:
        raise WindowguideError(f"region {index}: weight {str(weight)[:40]}: accepted: a number in (0, "
                               f"{MAX_REGION_WEIGHT:g}] (larger weights overflow the fused sums in float32)")
    _check_what(entry, index)
    if "box" in entry:
        box = entry["box"]
        if not (isinstance(box, (list, tuple)) and len(box) == 4
                and all(isinstance(v, int) and not isinstance(v, bool) for v in box)):
            raise WindowguideError(f"region {index}: box {box!r}: accepted: [top, left, bottom, right] in pixels")
        top, left, bottom, right = box
        if not (0 <= top < bottom <= h and 0 <= left < right <= w):
            raise WindowguideError(f"region {index}: box {box} is not inside the {h}x{w} canvas (pixels); accepted: "
                                   f"0 <= top < bottom <= {h}, 0 <= left < right <= {w}")
        mask = torch.zeros(h // factor, w // factor)
        mask[top // factor:-(-bottom // factor), left // factor:-(-right // factor)] = 1
        return mask * weight
    from .imageio import read_uint8
    if not isinstance(entry["mask"], str):
        raise WindowguideError(f"region {index}: mask {str(entry['mask'])[:40]}: accepted: the path of a PNG")
    grey = read_uint8(entry["mask"])
    if grey.shape[:2] != (h, w):
        raise WindowguideError(f"region {index}: mask {entry['mask']} is {grey.shape[1]}x{grey.shape[0]}, the canvas "
                               f"{w}x{h}; accepted: a mask of the canvas's size")
    m = torch.tensor(grey.astype(np.float32).mean(-1) / 255)
    return torch.nn.functional.avg_pool2d(m[None, None], factor)[0, 0] * weight


def regions_from_entries(entries: list[dict], canvas_px: tuple[int, int], factor: int, cond_of) -> list[Region]:
    """Regions of parsed entries; ``cond_of(entry)`` gives the condition of its prompt or class."""
    return [Region(cond_of(e), region_mask(e, canvas_px, factor, i)) for i, e in enumerate(entries)]


def check_regions(regions: Sequence[Region], canvas: tuple[int, int]) -> torch.Tensor:
    """The masks [R, H, W]; every pixel must be covered by some region (else it would never be denoised)."""
    if not regions:
        raise WindowguideError("regional generation needs at least one region")
    masks = []
    for i, r in enumerate(regions):
        m = torch.as_tensor(r.mask, dtype=torch.float32)
        if tuple(m.shape) != tuple(canvas) or not bool(torch.isfinite(m).all()) or bool((m < 0).any()):
            raise WindowguideError(f"region {i}: its mask must be finite, >= 0 and of the canvas's size {canvas}, "
                                   f"got {tuple(m.shape)}")
        masks.append(m)
    masks = torch.stack(masks)
    bare = masks.sum(0) <= 0
    if bool(bare.any()):
        rows, cols = bare.nonzero(as_tuple=True)
        raise WindowguideError(f"{int(bare.sum())} of the {canvas[0]}x{canvas[1]} canvas pixels are in no region (e.g. "
                               f"row {int(rows[0])}, column {int(cols[0])}); cover the canvas, or give a background "
                               f"(--prompt / --class) that covers it all")
    return masks


def pairs(lay: Layout, masks: torch.Tensor) -> list[tuple[int, int]]:
    """(region, window) pairs whose mask is not zero over the window, region-major."""
    out = []
    for r in range(masks.shape[0]):
        crops = lay.crop(masks[r][None, None])
        out += [(r, k) for k in range(lay.n) if bool(crops[k].any())]
    return out


def fuse(lay: Layout, states: torch.Tensor, chosen: list[tuple[int, int]], masks: torch.Tensor, n: int,
         weighting: Any = "uniform") -> torch.Tensor:
    """sum_{r,k} m_k M_r(k) ⊙ x_{r,k} / sum_{r,k} m_k M_r(k); ``states`` [n * P, C, h, w] sample-major
    (sample i's pair j at row i P + j), as the panorama's windows are."""
    return PairLayout(lay, tuple(chosen), masks.to(states)).fold(states, weighting)


@dataclass(frozen=True, eq=False)
class PairLayout:
    """The (region, window) pairs of a regional canvas as the fused loop's layout, pair j = (r, k) standing
    for window k under region r's condition and weighted by m_k M_r(k) (``fuse``). It speaks the layout's
    protocol (``crop_windows`` / ``accumulator`` / ``accumulate`` / ``finish``, ``window_conds``), so the
    fused loop streams its pairs in view batches as it streams windows. The condition it is given is
    already one row per sample and pair."""
    base: Layout
    chosen: tuple[tuple[int, int], ...]
    masks: torch.Tensor
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def n(self) -> int:
        return len(self.chosen)

    @property
    def window(self) -> tuple[int, int]:
        return self.base.window

    def _windows(self, ks=None) -> list[int]:
        return [self.chosen[j][1] for j in (range(self.n) if ks is None else ks)]

    def crop(self, x: torch.Tensor) -> torch.Tensor:
        return self.crop_windows(x, range(self.n))

    def crop_windows(self, x: torch.Tensor, ks) -> torch.Tensor:
        """The window crops of pairs ``ks``: [N, C, H, W] -> [N*len(ks), C, h, w], sample-major."""
        return self.base.crop_windows(x, self._windows(ks))

    def accumulator(self, like: torch.Tensor) -> torch.Tensor:
        return self.base.accumulator(like)

    def _pair_weights(self, weighting: Any, like: torch.Tensor) -> torch.Tensor:
        """m_k M_r(k) of every pair j = (r, k), [P, h, w]: every region's mask cropped once (one stacked
        crop), kept for the run's dtype and device."""
        key = (weighting if isinstance(weighting, str) else id(weighting), like.device, like.dtype)
        if key not in self._cache:
            crops = self.base.crop(self.masks[:, None].to(like))                  # [R*K, 1, h, w]
            m = self.base.weights(weighting, like.device, like.dtype)
            self._cache[key] = torch.stack([m * crops[r * self.base.n + k, 0] for r, k in self.chosen])
        return self._cache[key]

    def accumulate(self, out: torch.Tensor, states: torch.Tensor, ks, weighting: Any = "uniform") -> None:
        """out += m_k M_r(k) x_{r,k} at window k's place, for the pairs ``ks``."""
        y, w = states.reshape(-1, len(ks), *states.shape[1:]), self._pair_weights(weighting, states)
        pos = self.base.positions
        for j, p in enumerate(ks):
            out[self.base.window_slices(pos[self.chosen[p][1]])] += y[:, j] * w[p]

    def finish(self, out: torch.Tensor, weighting: Any = "uniform") -> torch.Tensor:
        """unwrap(out) / sum_{r,k} m_k M_r(k)."""
        den, w = out.new_zeros(self.base.extended_shape()), self._pair_weights(weighting, out)
        pos = self.base.positions
        for j, (_, k) in enumerate(self.chosen):
            den[self.base.window_slices(pos[k])] += w[j]
        return self.base.unwrap(out) / self.base.unwrap(den[None, None])[0, 0]

    def fold(self, states: torch.Tensor, weighting: Any = "uniform") -> torch.Tensor:
        out = self.accumulator(states[: states.shape[0] // self.n])
        self.accumulate(out, states, range(self.n), weighting)
        return self.finish(out, weighting)

    def regions(self, n: int) -> torch.Tensor:
        return self.base.regions(1)[torch.tensor(self._windows())].repeat(n, 1)

    def window_conds(self, cond: Cond, ks=None) -> Cond:
        """The pairs' own conditions (rows i P + j); of the pairs ``ks`` only when given."""
        if ks is None or cond is None:
            return cond
        n = cond_batch_size(cond) // self.n
        return cond_select(cond, torch.tensor([i * self.n + j for i in range(n) for j in ks]))


def regional_panorama(denoiser: Any, canvas: Sequence[int], seeds: Any, regions: Sequence[Region], window: Any,
                      stride: Any = 8, mode: str = "multidiffusion", sampler: str = "ddim", steps: int = 50,
                      sigmas: Any = None, guidance: Any = None, circular: bool = False, device: Any = None,
                      progress: bool = False, max_batch: int | None = None, view_batch: int | None = None,
                      **sampler_options) -> torch.Tensor:
    """Sample a (C, H, W) canvas whose regions follow their own conditions (module docstring), through the
    one fused loop (``fusion.run_fused``) with the (region, window) pairs as its windows; ``max_batch``
    caps the window-sized inputs of one network call, ``view_batch`` the pairs stepped and folded at a time."""
    from .denoiser import as_denoiser
    from .fusion import canvas_layout, check_fusion, per_window_nulls, run_fused
    from .generate import parse_seeds, schedule_sigmas
    from .guidance import guided
    from .sampling import PerSampleNoise, check_sigmas, init_noise_scale
    fuse_kind, weighting, options = check_fusion(mode, None, None, sampler, False, dict(sampler_options))
    if fuse_kind != "state" or sampler == "ddpm" or options.get("eta", 0) or options.get("churn", 0):
        raise WindowguideError("regional prompts fuse window states under a deterministic sampler for now "
                               "(euler, heun, ddim with eta 0, flow_euler; mode multidiffusion or gf)")
    c, height, width = (int(v) for v in canvas)
    seeds = parse_seeds(seeds)
    n = len(seeds)
    lay = canvas_layout(n, c, (height, width), window, stride, circular, device, "the regional panorama")
    masks = check_regions(regions, (height, width))
    chosen = pairs(lay, masks)
    base = as_denoiser(denoiser)
    inner = guided(base, per_window_nulls(guidance, n, len(chosen)), max_batch)
    sigmas = check_sigmas(sigmas) if sigmas is not None else schedule_sigmas(sampler, base, steps)
    device = torch.device(device) if device is not None else torch.device("cpu")
    noise = PerSampleNoise.from_seeds(seeds)
    x = noise(torch.empty(n, c, height, width, device=device)) * init_noise_scale(base, sigmas[0].item())
    conds = [_per_sample(r.cond, n) for r in regions]
    rows = [cond_select(conds[r], torch.tensor([i])) for i in range(n) for r, _ in chosen]
    cond = None if rows[0] is None else cond_cat(rows)
    return run_fused(inner, x, sigmas, cond, PairLayout(lay, tuple(chosen), masks), "state", weighting, sampler,
                     noise, False, seeds, progress, options, view_batch)


def _per_sample(cond: Cond, n: int) -> Cond:
    """The condition repeated to n rows when it is one for all samples."""
    if cond is None:
        return None
    if isinstance(cond, dict):
        return {k: _per_sample(v, n) for k, v in cond.items()}
    return cond.expand(n, *cond.shape[1:]).clone() if cond.shape[0] == 1 and n > 1 else cond


__all__ = ["Region", "PairLayout", "regional_panorama", "check_regions", "pairs", "fuse", "parse_region", "read_regions",
           "region_mask", "regions_from_entries"]
