"""Batch bookkeeping for conditions.

A condition is ``None``, a tensor whose first dimension is the batch, or a dict of such tensors
(e.g. a text embedding and a pooled embedding). These helpers let the guidance evaluator select,
repeat and concatenate conditions without knowing what they mean.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from .errors import WindowguideError

Cond = Any  # None | Tensor | dict[str, Tensor]


def cond_batch_size(cond: Cond) -> int | None:
    """Batch size of a condition, or None for an unconditional call."""
    if cond is None:
        return None
    if isinstance(cond, torch.Tensor):
        return cond.shape[0] if cond.dim() > 0 else None
    if isinstance(cond, dict):
        sizes = {k: cond_batch_size(v) for k, v in cond.items()}
        distinct = set(sizes.values())
        if len(distinct) != 1:
            raise WindowguideError(f"condition dict has entries of different batch sizes: {sizes}")
        return distinct.pop()
    raise TypeError(f"a condition must be None, a tensor or a dict of tensors, got {type(cond).__name__}")


def check_cond(cond: Cond, n: int) -> None:
    """Raise unless ``cond`` is None or has batch size ``n``."""
    size = cond_batch_size(cond)
    if cond is not None and size != n:
        raise WindowguideError(f"condition has batch size {size}, but x has {n} samples; "
                         f"give one condition per sample (first dimension {n})")


def cond_select(cond: Cond, index: torch.Tensor | None) -> Cond:
    """cond[index] along the batch; ``index=None`` means all."""
    if cond is None or index is None:
        return cond
    if isinstance(cond, dict):
        return {k: cond_select(v, index) for k, v in cond.items()}
    return cond[index.to(cond.device)]


def cond_repeat(cond: Cond, k: int) -> Cond:
    """Each sample's condition repeated k times in a row (matches windows' sample-major order)."""
    if cond is None or k == 1:
        return cond
    if isinstance(cond, dict):
        return {key: cond_repeat(v, k) for key, v in cond.items()}
    return cond.repeat_interleave(k, dim=0)


def cond_cat(conds: Sequence[Cond]) -> Cond:
    """Concatenate conditions along the batch; all must be None, all tensors, or all dicts."""
    if all(c is None for c in conds):
        return None
    if any(c is None for c in conds):
        raise WindowguideError("cannot batch a conditional call with an unconditional call of the same network; "
                         "give the unconditional case an explicit null condition")
    if all(isinstance(c, dict) for c in conds):
        keys = conds[0].keys()
        if any(c.keys() != keys for c in conds):
            raise WindowguideError("condition dicts with different keys cannot share a batch")
        return {k: cond_cat([c[k] for c in conds]) for k in keys}
    return torch.cat(list(conds), dim=0)


def broadcast_null(null: Cond, like: Cond, n: int) -> Cond:
    """A null condition for n samples: given per sample, or once (without batch dim) and expanded."""
    if isinstance(null, dict):
        return {k: broadcast_null(v, like[k] if isinstance(like, dict) else None, n) for k, v in null.items()}
    if not isinstance(null, torch.Tensor):
        null = torch.as_tensor(null)
    if isinstance(like, torch.Tensor):
        null = null.to(device=like.device, dtype=like.dtype)
        if null.shape == like.shape[1:]:
            return null.unsqueeze(0).expand(n, *null.shape).clone()
    if null.dim() > 0 and null.shape[0] == n:
        return null
    if null.dim() == 0:
        return null.expand(n).clone()
    raise WindowguideError(f"null condition of shape {tuple(null.shape)} fits neither one sample "
                     f"nor a batch of {n}")


def cond_to(cond: Cond, device) -> Cond:
    """The condition on ``device``."""
    if isinstance(cond, dict):
        return {k: cond_to(v, device) for k, v in cond.items()}
    return cond.to(device) if isinstance(cond, torch.Tensor) else cond
