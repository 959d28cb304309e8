"""Shared references for the tests: closed-form denoisers and a batch-invariant toy network."""
from __future__ import annotations

import math

import torch


def gaussian_denoiser(mu: torch.Tensor, cov: torch.Tensor):
    """Exact posterior mean of x0 ~ N(mu, Sigma) given x = x0 + sigma n, for data shaped [N, d, 1, 1]:

        D(x, sigma) = mu + Sigma (Sigma + sigma^2 I)^-1 (x - mu).
    """
    mu64 = mu.double()
    lam, Q = torch.linalg.eigh(cov.double())   # Sigma = Q diag(lam) Q^T, so the gain is diagonal in Q

    def D(x, sigma, cond=None):
        y = (x.double().flatten(1) - mu64) @ Q                      # [N, d] in the eigenbasis
        gain = lam / (lam + sigma.double().view(-1, 1) ** 2)
        return (mu64 + (gain * y) @ Q.T).to(x.dtype).view_as(x)
    return D


def mixture_denoiser(means: torch.Tensor, weights: torch.Tensor, std: float):
    """Exact posterior mean for an isotropic Gaussian mixture sum_k p_k N(m_k, std^2 I) in d dims:
    responsibilities r_k(x) ∝ p_k N(x; m_k, (std^2 + sigma^2) I), and per component the Gaussian
    posterior mean m_k + std^2 / (std^2 + sigma^2) (x - m_k)."""
    means, logp = means.double(), weights.double().log()

    def D(x, sigma, cond=None):
        xf = x.double().flatten(1)                                  # [N, d]
        var = std ** 2 + sigma.double().view(-1, 1) ** 2             # [N, 1]
        d2 = ((xf[:, None, :] - means[None]) ** 2).sum(-1)           # [N, K]
        r = torch.softmax(logp[None] - d2 / (2 * var), dim=1)        # [N, K]
        comp = means[None] + (std ** 2 / var)[:, :, None] * (xf[:, None, :] - means[None])
        return (r[:, :, None] * comp).sum(1).to(x.dtype).view_as(x)
    return D


class InvariantNet:
    """A toy conditional denoiser built only from elementwise ops and per-sample reductions, so its
    output for a sample does not depend on the batch it is in (unlike oneDNN/cuDNN convolutions).
    It mixes space (through the per-sample mean), so crops see different context than the full image."""

    def __init__(self, channels: int = 3, classes: int = 10, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.a = torch.randn(channels, generator=g).view(1, -1, 1, 1)
        self.emb = torch.randn(classes + 1, channels, generator=g)
        self.null = torch.tensor(classes)

    def __call__(self, x, sigma, cond=None):
        s = sigma.view(-1, 1, 1, 1)
        ctx = torch.tanh(x.mean(dim=(2, 3), keepdim=True) * self.a)
        out = x / (1 + s ** 2) + ctx * s / (1 + s) + torch.sin(x * self.a) * 0.1
        if cond is not None:
            out = out + self.emb[cond].view(x.shape[0], -1, 1, 1) * torch.cos(x)
        return out


def sample_stats(x: torch.Tensor):
    """Mean and covariance of samples [N, d, 1, 1]."""
    f = x.double().flatten(1)
    return f.mean(0), torch.cov(f.T)


SQRT2 = math.sqrt(2)


def interrupt_at_call(real, n: int):
    """A stand-in for ``real`` that raises KeyboardInterrupt at its n-th call (a Ctrl-C mid-training)."""
    calls = {"n": 0}

    def wrapped(*args):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return real(*args)
    return wrapped


def edm2_pickle(networks: dict, module_src: str = "raise SystemExit('the embedded source ran')") -> bytes:
    """Pickle {name: module or plain object} the way NVlabs' torch_utils.persistence does: every
    persistent object (our EDM2 modules, renamed to the authors' class names, and encoder stand-ins)
    becomes a call of torch_utils.persistence._reconstruct_persistent_obj(meta) with meta = {type,
    version, module_src, class_name, state = the object's __dict__}; the source here would exit the
    interpreter if anything ran it."""
    import pickle
    import sys
    import types

    def _reconstruct_persistent_obj(meta):       # never called: only its name goes into the file
        raise AssertionError("the fixture's reconstruct function ran")
    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    fake = types.ModuleType("torch_utils.persistence")
    fake._reconstruct_persistent_obj = _reconstruct_persistent_obj
    names = {"EDM2Precond": "Precond", "UNet": "UNet", "Block": "Block", "MPConv": "MPConv", "MPFourier": "MPFourier"}
    swapped = []

    def persist(obj, class_name):
        base = type(obj)

        def __reduce__(self):
            state = dict(self.__dict__)
            meta = dict(type="class", version=6, module_src=module_src, class_name=class_name, state=state)
            return (_reconstruct_persistent_obj, (meta,), None)
        swapped.append((obj, base))
        obj.__class__ = type(class_name, (base,), {"__reduce__": __reduce__})
        obj._init_args, obj._init_kwargs = (), dict(getattr(obj, "config", {}))

    for value in networks.values():
        modules = value.modules() if isinstance(value, torch.nn.Module) else [value]
        for m in modules:
            name = names.get(type(m).__name__, type(m).__name__ if not isinstance(m, torch.nn.Module) else None)
            if name:
                persist(m, name)
    old = {k: sys.modules.get(k) for k in ("torch_utils", "torch_utils.persistence")}
    sys.modules.update({"torch_utils": types.ModuleType("torch_utils"), "torch_utils.persistence": fake})
    try:
        return pickle.dumps(networks, protocol=4)
    finally:
        for k, v in old.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
        for obj, base in swapped:
            obj.__class__ = base


class StabilityVAEEncoder:
    """Stand-in of EDM2's latent encoder for the fixtures: its pickled state (scale, bias, vae name)."""

    def __init__(self, raw_mean=(5.81, 3.25, 0.12, -2.15), raw_std=(4.17, 4.62, 3.71, 3.28), final_std=0.5):
        import numpy as np
        self.vae_name = "stabilityai/sd-vae-ft-mse"
        self.scale = np.float32(final_std) / np.float32(raw_std)
        self.bias = np.float32(0) - np.float32(raw_mean) * self.scale
        self.batch_size = 8
        self._vae = None
