"""What the page draws over and under its images: the M-SWG crops' outlines and mask, the panorama's
window grid, the bench's figures for a column, and the sweep's plot of a figure against w."""
from __future__ import annotations

import numpy as np
import torch



def crops_of_spec(guidance: str, height: int, width: int):
    """The layout of the first SWG / M-SWG term's crops (inside SGG too) on an image of this size, or None."""
    from ..guidance import SWG
    from ..spec import Context, build
    terms = build(guidance or "none", Context(net=None, load=lambda name: (lambda x, s, c: x), model_name="model",
                                                 load_unconditional=lambda p: None))
    for t in terms:                                   # SGG is already flat: its terms carry their ranges
        if isinstance(t, SWG):
            return t.layouts((height, width))[0]
    return None


def outline(image: np.ndarray, boxes, scale: int = 8, colour=(255, 40, 40), shade=None) -> np.ndarray:
    """The image enlarged ``scale`` times with each (top, left, h, w) box outlined; ``shade`` ([H, W] in
    [0, 1], e.g. the M-SWG mask's count) tints the image where it is high."""
    from PIL import Image, ImageDraw
    big = np.asarray(Image.fromarray(image).resize((image.shape[1] * scale, image.shape[0] * scale),
                                                   Image.Resampling.NEAREST)).astype(np.float32)
    if shade is not None:
        s = np.kron(np.asarray(shade, np.float32), np.ones((scale, scale), np.float32))[..., None]
        big = big * (1 - 0.35 * s) + np.array(colour, np.float32) * 0.35 * s
    im = Image.fromarray(big.round().clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    for t, l, h, w in boxes:
        draw.rectangle([l * scale, t * scale, (l + w) * scale - 1, (t + h) * scale - 1], outline=colour)
    return np.asarray(im)


def mask_overlay(image: np.ndarray, guidance: str, latent: tuple[int, int] | None = None) -> np.ndarray:
    """The first image with the M-SWG crops outlined and the pixels more than one crop covers (M-SWG's
    mask, count > 1) tinted; the crops are laid out on the ``latent`` (h, w) the model ran on (a pipeline's
    latents; default the image itself) and drawn at the image's scale. The image enlarged when the recipe
    has no crops."""
    lh, lw = latent or image.shape[:2]
    lay = crops_of_spec(guidance, lh, lw)
    if lay is None:
        return outline(image, [])
    f = max(1, image.shape[0] // lh)
    h, w = lay.window
    count = lay.total_weight(torch.ones(h, w), "cpu", torch.float32).numpy()
    shade = np.kron((count > 1).astype(np.float32), np.ones((f, f), np.float32))
    return outline(image, [(t * f, l * f, h * f, w * f) for t, l in lay.positions], shade=shade)


def window_grid(image: np.ndarray, window: int, stride: int, scale: int = 3) -> np.ndarray:
    """The panorama with its fusion windows outlined (pixel models: windows of the model's size)."""
    from ..windows import layout
    lay = layout(image.shape[0], image.shape[1], min(window, image.shape[0]), stride=stride)
    h, w = lay.window
    return outline(image, [(t, l, h, w) for t, l in lay.positions], scale=scale, colour=(40, 200, 255))


def column_figures(images: list[np.ndarray], model: str, window: int | None = None,
                   stride: int | None = None) -> dict:
    """The bench's figures for one column: asymmetry on ``mirror`` (the exact mirror error, 0 = symmetric),
    the seam score on panoramas, and saturation / contrast everywhere (means over the seeds)."""
    from ..metrics.pixels import asymmetry, contrast, saturation
    x = torch.tensor(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
    out = dict(saturation=saturation(x).mean().item(), contrast=contrast(x).mean().item())
    if model.startswith("mirror"):
        out["asymmetry"] = asymmetry(x).mean().item()
    if window and stride and x.shape[-1] > window:
        from ..bench.panorama import border_columns, seam_score
        out["seam"] = seam_score(x, border_columns(x.shape[-1], window, stride))
    return out


def format_figures(figures: dict) -> str:
    """'name value  name value ...' with four decimals, the line under a column."""
    return "  ".join(f"{k} {v:.4f}" for k, v in figures.items())


def sweep_plot(weights: list[float], rows: list[dict], path: str, method: str) -> str:
    """One line per figure against the weight w (the quality benchmark's plot), saved as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    keys = [k for k in rows[0] if k != "seam"] if rows else []
    fig, axes = plt.subplots(1, max(1, len(keys)), figsize=(3.2 * max(1, len(keys)), 2.6))
    axes = np.atleast_1d(axes)
    for ax, k in zip(axes, keys):
        ax.plot(weights, [r[k] for r in rows], "o-")
        ax.set_xlabel(f"{method} weight w")
        ax.set_title(k)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


__all__ = ["crops_of_spec", "outline", "mask_overlay", "window_grid", "column_figures", "format_figures",
           "sweep_plot"]
