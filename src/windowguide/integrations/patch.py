"""windowguide's guidance inside a classic diffusers pipeline's own loop.

    with windowguide.patch(pipe, guidance="mswg:w=0.5,window=48"):
        image = pipe(prompt, guidance_scale=7.5).images[0]

The pipeline keeps its own CFG (``guidance_scale``); the patch adds windowguide's other terms (M-SWG,
SWG, skip-layer, ...) to it. While the block runs, the UNet's ``forward`` is wrapped: after the
pipeline's own call (uncond and cond rows, as the pipeline batches them), the conditional rows'
prediction becomes D_pos, windowguide evaluates only the terms' negatives (crops in one batched call;
the positive is not evaluated again), and the change

    Delta_D = sum_i w_i(sigma) M_i (D_pos - D_neg,i)

is added to the conditional rows in the pipeline's prediction space, divided by the guidance scale
s so that the pipeline's own  uncond + s (cond - uncond)  comes out as CFG + Delta. With every
weight 0 the outputs are the pipeline's, bit for bit; leaving the block restores the UNet exactly.

Supported: UNet pipelines of ``from_pipeline`` (StableDiffusion, SDXL; eps and v prediction).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import torch

from .. import spec
from ..denoiser import Denoiser, VDenoiser
from ..errors import WindowguideError
from ..guidance import CFG, Guidance, GuidedDenoiser


class _KnownPositive(Denoiser):
    """The model, except that the positive prediction the pipeline already made is returned as is
    when the guided denoiser asks for it (same tensor), so it is never evaluated twice."""

    def __init__(self, inner: Denoiser, x: torch.Tensor, d_pos: torch.Tensor):
        self.inner, self.x, self.d_pos = inner, x, d_pos
        self.multiple, self.null_cond = inner.multiple, inner.null_cond

    def __call__(self, x, sigma, cond=None):
        return self.d_pos if x is self.x else self.inner(x, sigma, cond)


@contextmanager
def patch(pipe: Any, guidance: str | Guidance, max_batch: int | None = None):
    """Run ``pipe``'s own loop with windowguide's guidance terms added to its CFG (module docstring)."""
    from ..adapters.pipelines import from_pipeline
    m = from_pipeline(pipe)
    if m.family not in ("stable-diffusion", "sdxl"):
        raise WindowguideError(f"windowguide.patch supports UNet pipelines (StableDiffusion, SDXL), not {m.family}")
    g = spec.build(guidance, spec.Context(net=None, load=_no_weak)) if isinstance(guidance, str) else Guidance.of(guidance)
    if any(isinstance(t, CFG) for t in g):
        raise WindowguideError("inside a pipeline its guidance_scale is the CFG; give windowguide's other terms "
                               "(e.g. 'mswg:w=0.5,window=48'), and set guidance_scale on the pipeline call")
    unet = pipe.unet
    original = unet.forward
    state = dict(inside=False)

    def forward(sample, timestep, encoder_hidden_states=None, *args, **kwargs):
        out = original(sample, timestep, encoder_hidden_states, *args, **kwargs)
        if state["inside"] or not len(g):
            return out
        pred = out[0] if isinstance(out, tuple) else out.sample
        cfg = bool(getattr(pipe, "do_classifier_free_guidance", False))
        rows = slice(sample.shape[0] // 2, None) if cfg else slice(None)
        scale = float(pipe.guidance_scale) if cfg else 1.0
        state["inside"] = True
        try:
            delta = _delta(m, g, sample[rows], timestep, pred[rows], _cond_rows(m, encoder_hidden_states, kwargs, rows),
                           max_batch)
        finally:
            state["inside"] = False
        pred = pred.clone()
        pred[rows] += (delta / scale).to(pred.dtype)
        if isinstance(out, tuple):
            return (pred,) + tuple(out[1:])
        out.sample = pred
        return out

    unet.forward = forward
    try:
        yield pipe
    finally:
        del unet.forward                        # the class's forward again, exactly


def _cond_rows(m, embeds, kwargs, rows):
    if m.family == "sdxl":
        added = kwargs.get("added_cond_kwargs") or {}
        return dict(embeds=embeds[rows], pooled=added["text_embeds"][rows])
    return embeds[rows]


@torch.no_grad()
def _delta(m, g: Guidance, x_vp: torch.Tensor, timestep, pred: torch.Tensor, cond, max_batch) -> torch.Tensor:
    """The terms' change of the conditional prediction, in the pipeline's prediction space."""
    den = m.denoiser
    t = torch.as_tensor(timestep, dtype=torch.float64).reshape(-1)[:1].expand(x_vp.shape[0])
    sigma = den.schedule.sigma_at(t.round()).to(x_vp.device, torch.float32)   # the pipelines step on integer t
    s = sigma.view(-1, 1, 1, 1)
    alpha = 1 / (1 + s ** 2).sqrt()
    x = x_vp.float() / alpha                                         # VE state
    v_pred = isinstance(den, VDenoiser)
    d_pos = alpha * x_vp.float() - s * alpha * pred.float() if v_pred else x - s * pred.float()
    guided = GuidedDenoiser(_KnownPositive(den, x, d_pos), g, max_batch)
    delta_d = guided(x, sigma, cond) - d_pos
    return -delta_d / (s * alpha) if v_pred else -delta_d / s


def _no_weak(name: str):
    raise WindowguideError("windowguide.patch takes no weak model by name yet; pass Guidance objects for autoguidance")


__all__ = ["patch"]
