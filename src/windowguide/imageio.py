"""Reading image files for measurement: every mode Pillow can give, to 8 bits, with a bound on size.

Pillow's ``convert("L")`` clips 16-bit greyscale (``I;16``) to 255, which turns most of a 16-bit image
white; here each mode is mapped to [0, 255] by its own range:

| mode | to uint8 |
|---|---|
| 1, L, LA | grey (LA: the alpha is dropped) |
| P, RGB, RGBA, CMYK, YCbCr, LAB, HSV | RGB (RGBA: the alpha is dropped; CMYK by Pillow's conversion) |
| I;16, I;16L, I;16B, I;16N | round(v / 257): 65535 -> 255 |
| I (32-bit integers) | values in [0, 65535] as 16-bit; others refused |
| F (32-bit float) | values in [0, 1] as round(255 v); others refused |
"""
from __future__ import annotations

import numpy as np

from .errors import WindowguideError

MAX_PIXELS = 8192 * 8192       # per image: 12000 x 12000 (a 140 KB PNG can declare it) would need 36.9 GB
GREY = ("1", "L", "LA")
COLOUR = ("P", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "RGBX", "RGBa", "PA", "La")
SIXTEEN = ("I;16", "I;16L", "I;16B", "I;16N")


def header(path: str) -> tuple[int, int, int]:
    """(height, width, channels of the decoded image) from the file's header, nothing decoded;
    refuses sizes past ``MAX_PIXELS`` and modes it cannot map."""
    from PIL import Image
    from .files import regular_file
    regular_file(path, "image")
    try:
        with Image.open(path) as im:
            w, h, mode = im.size[0], im.size[1], im.mode
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise WindowguideError(f"{path} does not open as an image ({type(e).__name__}: {e})") from None
    if w * h > MAX_PIXELS:
        raise WindowguideError(f"{path} declares {w} x {h} pixels; accepted: at most {MAX_PIXELS} pixels per image")
    return h, w, _channels(mode, path)


def _channels(mode: str, path: str) -> int:
    if mode in GREY or mode in SIXTEEN or mode in ("I", "F"):
        return 1
    if mode in COLOUR:
        return 3
    raise WindowguideError(f"{path}: image mode {mode!r} is not read; accepted: {', '.join(GREY + COLOUR + SIXTEEN)}, I, F")


def read_uint8(path: str) -> np.ndarray:
    """[H, W, C] uint8 (C = 1 grey or 3 RGB) of an image file, each mode mapped by its range (module
    docstring); a clear error naming the file for anything else."""
    from PIL import Image
    header(path)
    try:
        with Image.open(path) as im:
            return _mapped(im, path)
    except WindowguideError:
        raise
    except (OSError, SyntaxError, ValueError) as e:
        raise WindowguideError(f"{path} does not decode as an image ({type(e).__name__}: {e})") from None


def _mapped(im, path: str) -> np.ndarray:
    """An open Pillow image as [H, W, C] uint8, each mode mapped by its range."""
    mode = im.mode
    if mode in SIXTEEN:
        a = _from_16(np.asarray(im).astype(np.float64))
    elif mode == "I":
        a = np.asarray(im).astype(np.float64)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise WindowguideError(f"{path}: 32-bit integer pixels in [{a.min():.0f}, {a.max():.0f}]; accepted: "
                                   f"[0, 65535] (16-bit)")
        a = _from_16(a)
    elif mode == "F":
        a = np.asarray(im).astype(np.float64)
        if a.size and not (np.isfinite(a).all() and a.min() >= 0 and a.max() <= 1):
            raise WindowguideError(f"{path}: float pixels outside [0, 1]; accepted: floats in [0, 1]")
        a = np.round(a * 255).astype(np.uint8)
    elif mode in GREY:
        a = np.asarray(im.convert("L"))
    else:
        a = np.asarray(im.convert("RGB"))
    return a[..., None] if a.ndim == 2 else a


def _from_16(a: np.ndarray) -> np.ndarray:
    """16-bit values to 8 bits: round(v / 257), so 65535 -> 255 and v * 257 -> v exactly."""
    return np.round(a / 257.0).astype(np.uint8)


def read_picture(path: str, background: int = 255) -> tuple[np.ndarray, dict]:
    """(RGB uint8 [H, W, 3], what was done to it) of a photo to work on: its EXIF orientation applied
    (Pillow's ``exif_transpose``, so a phone photo is upright), grey and 16-bit modes mapped as
    ``read_uint8`` does and repeated to RGB, an alpha channel composited over ``background`` (white), and
    an animation (GIF, APNG, WebP) refused rather than silently cut to its first frame."""
    from PIL import Image, ImageOps
    header(path)                                  # refuses a FIFO / folder, a size past MAX_PIXELS
    notes: dict = {}
    try:
        with Image.open(path) as im:
            if getattr(im, "n_frames", 1) > 1:
                raise WindowguideError(f"image {path}: an animation of {im.n_frames} frames; accepted: a still image "
                                       f"(save the frame you want as PNG)")
            orientation = im.getexif().get(0x0112, 1)
            upright = ImageOps.exif_transpose(im)
            if orientation not in (None, 1):
                notes["exif_orientation"] = int(orientation)
            alpha = upright.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in upright.info
            if alpha:
                rgba = np.asarray(upright.convert("RGBA")).astype(np.float64)
                a = rgba[..., 3:] / 255
                rgb = np.round(rgba[..., :3] * a + background * (1 - a)).astype(np.uint8)
                notes["alpha"] = f"composited over {background}"
                return rgb, notes
            a = _mapped(upright, path)
    except WindowguideError:
        raise
    except (OSError, SyntaxError, ValueError) as e:
        raise WindowguideError(f"{path} does not decode as an image ({type(e).__name__}: {e})") from None
    if a.shape[-1] == 1:
        notes["grey"] = "repeated to RGB"
        a = np.repeat(a, 3, axis=-1)
    return a, notes


__all__ = ["read_uint8", "read_picture", "header", "MAX_PIXELS"]
