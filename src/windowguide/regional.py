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

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from .conds import Cond, cond_cat, cond_select
from .errors import WindowguideError
from .windows import Layout, layout, window_weights


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
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise WindowguideError(f"--regions {path}: not a readable JSON file ({e})") from None
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
    if not isinstance(weight, (int, float)) or not weight > 0 or weight == float("inf"):
        raise WindowguideError(f"region {index}: weight {weight!r}: accepted: a positive number")
    if "box" in entry:
        box = entry["box"]
        if not (isinstance(box, (list, tuple)) and len(box) == 4 and all(isinstance(v, int) for v in box)):
            raise WindowguideError(f"region {index}: box {box!r}: accepted: [top, left, bottom, right] in pixels")
        top, left, bottom, right = box
        if not (0 <= top < bottom <= h and 0 <= left < right <= w):
            raise WindowguideError(f"region {index}: box {box} is not inside the {h}x{w} canvas (pixels); accepted: "
                                   f"0 <= top < bottom <= {h}, 0 <= left < right <= {w}")
        mask = torch.zeros(h // factor, w // factor)
        mask[top // factor:-(-bottom // factor), left // factor:-(-right // factor)] = 1
        return mask * weight
    from .imageio import read_uint8
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
    h, w = lay.window
    m = window_weights(weighting, h, w, states.device, states.dtype)
    ext = lay.width + (w - 1 if lay.circular else 0)
    y = states.reshape(n, len(chosen), *states.shape[1:])
    num = states.new_zeros(n, states.shape[1], lay.height, ext)
    den = states.new_zeros(lay.height, ext)
    crops = lay.crop(masks[:, None].to(states))                       # [R*K, 1, h, w]: region r's window k
    for j, (r, k) in enumerate(chosen):
        t, l = lay.positions[k]
        weight = m * crops[r * lay.n + k, 0]
        num[:, :, t:t + h, l:l + w] += y[:, j] * weight
        den[t:t + h, l:l + w] += weight
    return lay._unwrap(num) / lay._unwrap(den[None, None])[0, 0]


def regional_panorama(denoiser: Any, canvas: Sequence[int], seeds: Any, regions: Sequence[Region], window: Any,
                      stride: Any = 8, mode: str = "multidiffusion", sampler: str = "ddim", steps: int = 50,
                      sigmas: Any = None, guidance: Any = None, circular: bool = False, device: Any = None,
                      progress: bool = False, **sampler_options) -> torch.Tensor:
    """Sample a (C, H, W) canvas whose regions follow their own conditions (module docstring)."""
    from .denoiser import as_denoiser
    from .fusion import check_fusion
    from .generate import parse_seeds, schedule_sigmas
    from .guidance import guided
    from .sampling import SAMPLERS, PerSampleNoise, check_sigmas, init_noise_scale
    fuse_kind, weighting, options = check_fusion(mode, None, None, sampler, False, dict(sampler_options))
    if fuse_kind != "state" or sampler == "ddpm" or options.get("eta", 0) or options.get("churn", 0):
        raise WindowguideError("regional prompts fuse window states under a deterministic sampler for now "
                               "(euler, heun, ddim with eta 0, flow_euler; mode multidiffusion or gf)")
    c, height, width = (int(v) for v in canvas)
    seeds = parse_seeds(seeds)
    n = len(seeds)
    lay = layout(height, width, window, stride=stride, circular=circular)
    masks = check_regions(regions, (height, width))
    chosen = pairs(lay, masks)
    base = as_denoiser(denoiser)
    from .fusion import _per_window_nulls
    inner = guided(base, _per_window_nulls(guidance, n, len(chosen)))
    sigmas = check_sigmas(sigmas) if sigmas is not None else schedule_sigmas(sampler, base, steps)
    device = torch.device(device) if device is not None else torch.device("cpu")
    noise = PerSampleNoise.from_seeds(seeds)
    x = noise(torch.empty(n, c, height, width, device=device)) * init_noise_scale(base, sigmas[0].item())
    conds = [_per_sample(r.cond, n) for r in regions]
    rows = [cond_select(conds[r], torch.tensor([i])) for i in range(n) for r, _ in chosen]
    cond = None if rows[0] is None else cond_cat(rows)
    windows = torch.tensor([k for _, k in chosen])
    from .windows import regions_of_call
    at = lay.regions(1)[windows].repeat(n, 1) if getattr(base, "canvas_positions", False) else None
    step = SAMPLERS[sampler]
    s = sigmas.tolist()
    from tqdm.auto import trange
    for i in trange(len(s) - 1, disable=not progress, desc=f"{sampler} (regions)", leave=False):
        crops = lay.crop(x).reshape(n, lay.n, c, *lay.window)
        batch = crops[:, windows].reshape(n * len(chosen), c, *lay.window)
        if hasattr(inner, "begin_step"):
            inner.begin_step(i, s)
        with regions_of_call(at):                 # each pair's window at its place (networks that take positions)
            states = step(lambda xw, sg, cd: inner(xw, sg, cd), batch, [s[i], s[i + 1]], cond, **options)
        x = fuse(lay, states, chosen, masks.to(x), n, weighting)
    return x


def _per_sample(cond: Cond, n: int) -> Cond:
    """The condition repeated to n rows when it is one for all samples."""
    if cond is None:
        return None
    if isinstance(cond, dict):
        return {k: _per_sample(v, n) for k, v in cond.items()}
    return cond.expand(n, *cond.shape[1:]).clone() if cond.shape[0] == 1 and n > 1 else cond


__all__ = ["Region", "regional_panorama", "check_regions", "pairs", "fuse", "parse_region", "read_regions",
           "region_mask", "regions_from_entries"]
