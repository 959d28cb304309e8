"""ComfyUI's conditioning at a window's place on the canvas.

ComfyUI's conditioning can depend on where a latent pixel is: an area (``ConditioningSetArea``), a mask
(``ConditioningSetMask``, windowguide's regions), a ControlNet's hint image, an image-conditioned model's
concatenated latent (an inpainting UNet's ``c_concat``), the inpainting noise mask. A window (of the
fusion sampler) or a crop (of M-SWG / SWG) is a part of the canvas, so each of its rows gets the part of
each that lies under it, as if ComfyUI had been given the window as the image:

- area (h, w, top, left) -> its intersection with the window, in the window's pixels; a condition whose
  area misses the window is not evaluated on it (ComfyUI's feathering then applies at the area's edges
  inside the window, with its fuzz min(8, side / 4) of the intersection);
- mask -> its crop; a condition whose mask is zero on the whole window is not evaluated on it;
- ControlNet / T2I-Adapter hint -> the hint scaled to the canvas as ComfyUI scales it for the canvas
  (``common_upscale`` to canvas x compression, centre crop), then cut at the window (x compression): the
  same pixels the canvas's call would see under that window; one hint per row, so all windows still go
  in one batched call;
- a model condition the shape of the latent (``c_concat``) -> its crop.

Rows are described by ``windows.current_regions`` (top, left, canvas H, W) and ``current_samples`` (the
canvas sample of each row): windows, crops of windows and crops of the canvas are all placed on it.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch

from ..errors import WindowguideError

CANVAS = "windowguide_canvas"       # in a placed condition: the canvas's condition it was cut from


def canvas_cond(cond: dict) -> dict:
    """The canvas's condition a (possibly placed) condition came from."""
    return cond.get(CANVAS, cond)


@dataclass(frozen=True)
class Rows:
    """Where each row of a call lies: starts [N, D] on a canvas of D sizes, the call's own D sizes, and
    each row's canvas sample [N]."""
    starts: torch.Tensor
    canvas: tuple
    size: tuple
    samples: torch.Tensor

    @classmethod
    def of(cls, regions: torch.Tensor, samples: torch.Tensor | None, size) -> "Rows":
        d = len(size)
        if regions.shape[1] != 2 * d:
            raise WindowguideError(f"a call of {d}-D latents placed by {regions.shape[1] // 2}-D regions")
        rows = regions.shape[0]
        return cls(regions[:, :d].long().cpu(), tuple(int(v) for v in regions[0, d:].tolist()),
                   tuple(int(v) for v in size),
                   torch.zeros(rows, dtype=torch.long) if samples is None else samples.long().cpu())

    def __len__(self):
        return self.starts.shape[0]

    def whole(self) -> bool:
        return self.size == self.canvas and not bool(self.starts.any())

    def wraps(self) -> bool:
        return any(bool((self.starts[:, a] + self.size[a] > self.canvas[a]).any()) for a in range(len(self.size)))

    def select(self, idx: torch.Tensor) -> "Rows":
        idx = idx.cpu()
        return Rows(self.starts[idx], self.canvas, self.size, self.samples[idx])

    def key(self) -> tuple:
        return (self.canvas, self.size, tuple(self.starts.flatten().tolist()), tuple(self.samples.tolist()))


def crop(t: torch.Tensor, rows: Rows, scale: int = 1) -> torch.Tensor:
    """Each row's cut of a canvas tensor ``t`` [B, ..., *canvas x scale] -> [N, ..., *size x scale]: the
    row's sample (modulo B, ComfyUI's broadcast of a smaller batch) at its place, wrapping around the
    canvas (a circular window)."""
    d = len(rows.size)
    want = tuple(c * scale for c in rows.canvas)
    if tuple(t.shape[-d:]) != want:
        raise WindowguideError(f"a conditioning tensor of spatial shape {tuple(t.shape[-d:])} with windows on a "
                               f"canvas of {want}: accepted: masks, hints and image latents of the canvas's size "
                               f"(ComfyUI resizes them to it before sampling)")
    out = t[(rows.samples % t.shape[0]).to(t.device)]
    for a in range(d):
        idx = (rows.starts[:, a:a + 1] * scale + torch.arange(rows.size[a] * scale)) % want[a]
        dim = out.ndim - d + a
        shape = [len(rows)] + [1] * (out.ndim - 1)
        shape[dim] = idx.shape[1]
        out = torch.take_along_dim(out, idx.view(shape).to(out.device), dim)
    return out


def positional(conds) -> bool:
    """Whether any of these ComfyUI conditions depends on the place of a latent pixel."""
    return any(_positional(c) for c in conds or [])


def _positional(c: dict) -> bool:
    c = canvas_cond(c)
    if any(c.get(k) is not None for k in ("area", "mask", "control", "gligen")):
        return True
    return any(_latent_shaped(v) for v in c.get("model_conds", {}).values())


def _latent_shaped(v) -> bool:
    import comfy.conds
    return isinstance(v, comfy.conds.CONDNoiseShape) and isinstance(getattr(v, "cond", None), torch.Tensor)


def check_placeable(conds) -> None:
    """Say what cannot be cut at a window: GLIGEN's boxes (they would need moving into each window)."""
    for c in conds or []:
        if canvas_cond(c).get("gligen") is not None:
            raise WindowguideError("GLIGEN boxes with windowguide's windows or crops: not supported (the boxes "
                                   "would need moving into each window); remove the GLIGEN conditioning")


def check_patches(model_options: dict) -> None:
    """Refuse model patches that scale one whole image to every call (the model-patch ControlNets of
    ComfyUI's newer families: Qwen-Image's DiffSynth, Z-Image's control patch): every window and crop would
    get the whole image at its own size, a silent wrong result."""
    patches = (model_options or {}).get("transformer_options", {}).get("patches", {})
    for kind, found in patches.items():
        for patch in found if isinstance(found, (list, tuple)) else [found]:
            if hasattr(patch, "encoded_image_size"):
                raise WindowguideError(f"a model-patch ControlNet ({type(patch).__name__}, {kind} patch) with "
                                       f"windowguide's windows or crops: it scales the whole control image to each "
                                       f"call, so every window would get the whole image; not supported: apply it "
                                       f"without windows, or use a ControlNet through Apply ControlNet")


def _area_at(area, rows: Rows):
    """Each row's part of a canvas area (sizes then offsets, ComfyUI's order): the intersection in the
    row's pixels, or None where the area misses the row."""
    import comfy.samplers
    d = len(rows.size)
    area = comfy.samplers.add_area_dims(list(area), d)
    size, off = area[:d], area[d:2 * d]
    size = [min(rows.canvas[a] - off[a], size[a]) for a in range(d)]      # ComfyUI clips an area to the canvas
    out = []
    for starts in rows.starts.tolist():
        lo = [max(off[a], starts[a]) for a in range(d)]
        hi = [min(off[a] + size[a], starts[a] + rows.size[a]) for a in range(d)]
        inside = all(h > l for l, h in zip(lo, hi))
        out.append(tuple(h - l for l, h in zip(lo, hi)) + tuple(l - s for l, s in zip(lo, starts)) if inside else None)
    return out


def _row_signatures(conds_lists, rows: Rows, by_place: bool) -> list[tuple]:
    """Per row: for every condition of every list, its area there (None: not evaluated there), so that
    rows with equal signatures can share one call."""
    columns = [[tuple(s) for s in rows.starts.tolist()]] if by_place else []
    for conds in conds_lists:
        for c in conds or []:
            c = canvas_cond(c)
            check_placeable([c])
            area = c.get("area")
            if area is not None and rows.wraps():
                raise WindowguideError("area conditioning with circular windows that wrap around the canvas: an area "
                                       "would fall in two pieces; use a mask (ConditioningSetMask) or circular off")
            at = _area_at(area, rows) if area is not None else [()] * len(rows)
            mask = c.get("mask")
            if mask is not None:
                empty = crop(mask.unsqueeze(1), rows).flatten(1).abs().amax(1) == 0
                at = [None if e else a for a, e in zip(at, empty.tolist())]
            columns.append(at)
    return list(zip(*columns)) if columns else [()] * len(rows)


def placed_groups(conds_lists: list, rows: Rows, by_place: bool = False) -> list[tuple[torch.Tensor, list]]:
    """The rows in groups that share one call, each with the conditions placed at its rows:
    [(row indices, [placed conds of each list])]. ``by_place``: rows at different places never share a
    call (a network that takes its place through its options, one call per place)."""
    signatures = _row_signatures(conds_lists, rows, by_place)
    groups: dict[tuple, list[int]] = {}
    for i, s in enumerate(signatures):
        groups.setdefault(s, []).append(i)
    out = []
    for members in groups.values():
        idx = torch.tensor(members, dtype=torch.long)
        part, k = rows.select(idx), int(by_place)
        placed = []
        for conds in conds_lists:
            if conds is None:
                placed.append(None)
                continue
            here = []
            for c in conds:
                at = signatures[members[0]][k]
                k += 1
                if at is not None:
                    here.append(place_cond(canvas_cond(c), part, at))
            placed.append(here)
        out.append((idx, placed))
    return out


def place_cond(c: dict, rows: Rows, area) -> dict:
    """One canvas condition at the rows' places (their common area there: ``area``, () for none)."""
    out = {**c, CANVAS: c}
    if c.get("area") is not None:
        out["area"] = area
    if c.get("mask") is not None:
        out["mask"] = crop(c["mask"].unsqueeze(1), rows).squeeze(1)
    if c.get("control") is not None:
        out["control"] = placed_control(c["control"], rows)
    model_conds = c.get("model_conds", {})
    if any(_latent_shaped(v) for v in model_conds.values()):
        out["model_conds"] = {k: v._copy_with(crop(v.cond, rows)) if _latent_shaped(v) else v
                              for k, v in model_conds.items()}
    return out


_HINTS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()     # control -> {rows key: its placed copy}
# what ComfyUI sets on a control when a run starts (``pre_run``): a control LoRA builds its network there
_RUN_STATE = ("timestep_range", "model_sampling_current", "control_model", "control_model_wrapped")


def placed_control(control, rows: Rows):
    """A copy of a ControlNet chain whose hint (and extra concat images) are the rows' cuts of the hint
    as ComfyUI scales it for the canvas; kept for the rows (the same windows come back every step)."""
    cache = _HINTS.setdefault(control, {})
    key = rows.key()
    copy = cache.get(key)
    if copy is None:
        if len(cache) > 64:
            cache.clear()
        copy = control.copy()
        ratio = _hint_ratio(control)
        copy.cond_hint_original = crop(_canvas_hint(control, control.cond_hint_original, rows, ratio), rows, ratio)
        copy.extra_concat_orig = [crop(_canvas_hint(control, e, rows, ratio), rows, ratio) if e.ndim == 4 else e
                                  for e in getattr(control, "extra_concat_orig", [])]
        copy.cond_hint = None
        if control.previous_controlnet is not None:
            copy.set_previous_controlnet(placed_control(control.previous_controlnet, rows))
        cache[key] = copy
    for name in _RUN_STATE:
        if hasattr(control, name):
            setattr(copy, name, getattr(control, name))
    return copy


def _hint_ratio(control) -> int:
    ratio = int(control.compression_ratio)
    vae = getattr(control, "vae", None)
    return ratio * int(vae.spacial_compression_encode()) if vae is not None else ratio


def _canvas_hint(control, hint: torch.Tensor, rows: Rows, ratio: int) -> torch.Tensor:
    """The hint as ComfyUI's ControlNet scales it for a call on the whole canvas."""
    import comfy.utils
    if hint.ndim != 4 or len(rows.size) != 2:
        raise WindowguideError(f"a ControlNet hint of shape {tuple(hint.shape)} with windows of {len(rows.size)}-D "
                               f"latents: windowguide cuts image hints [B, C, H, W] for image latents")
    h, w = rows.canvas
    return comfy.utils.common_upscale(hint, w * ratio, h * ratio, control.upscale_algorithm, "center")


def placed_tensor(t: torch.Tensor | None, rows: Rows) -> torch.Tensor | None:
    """A canvas-shaped tensor (the inpainting noise mask, the start latent, its noise) cut at the rows."""
    return None if t is None else crop(t, rows)


__all__ = ["Rows", "crop", "check_placeable", "check_patches", "positional", "placed_groups", "place_cond", "placed_control", "placed_tensor",
           "canvas_cond", "CANVAS"]
