"""The FID Inception-v3, defined here so that the standard weights load into it exactly.

The network is TensorFlow's ``inception-2015-12-05`` graph as ported to PyTorch by pytorch-fid
(file ``pt_inception-2015-12-05-6726825d.pth``, the file pytorch-fid loads; torchmetrics loads
torch-fidelity's own port, ``weights-inception-2015-12-05-6726825d.pth``, with another input protocol): the
torchvision Inception3 layout with 1008 classes, no auxiliary head, and the FID-specific blocks
(average pooling without the padded zeros in the A, C and first E blocks; max pooling in the last E
block). The parameter names and shapes are those of that file, so ``load_state_dict(strict=True)``
reads it as is. No torchvision is needed.

Protocol (pytorch-fid's): uint8 images -> [0, 1] -> bilinear resize to 299 x 299
(``align_corners=False``, no antialias) -> 2x - 1; features are the 2048-d average pool; the class
probabilities for the Inception Score are softmax(W f) over the 1008 logits without the bias
("logits_unbiased", as torch-fidelity and torchmetrics compute IS).
"""
from __future__ import annotations

import hashlib
import os
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import WindowguideError

WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_SHA256_PREFIX = "6726825d"   # torch.hub's convention: the hash's start is in the file name
WEIGHTS_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + WEIGHTS_NAME
ENV = "WINDOWGUIDE_INCEPTION"


class BasicConv2d(nn.Module):
    """conv (no bias) -> batch norm (eps 1e-3) -> ReLU."""

    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _avg3(x):
    # TF's average pooling divides by the number of real pixels, not the padded window
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, 1)
        self.branch5x5_1 = BasicConv2d(cin, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, 1)

    def forward(self, x):
        return torch.cat([self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
                          self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          self.branch_pool(_avg3(x))], 1)


class InceptionB(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x):
        return torch.cat([self.branch3x3(x), self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          F.max_pool2d(x, 3, stride=2)], 1)


class InceptionC(nn.Module):
    def __init__(self, cin: int, c7: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 192, 1)
        self.branch7x7_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for i in range(1, 6):
            d = getattr(self, f"branch7x7dbl_{i}")(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg3(x))], 1)


class InceptionD(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x):
        b = x
        for i in range(1, 5):
            b = getattr(self, f"branch7x7x3_{i}")(b)
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionE(nn.Module):
    """The last blocks; ``pool`` is 'avg' (Mixed_7b, TF's average pool) or 'max' (Mixed_7c: the TF
    graph has a max pool there)."""

    def __init__(self, cin: int, pool: str):
        super().__init__()
        self.pool = pool
        self.branch1x1 = BasicConv2d(cin, 320, 1)
        self.branch3x3_1 = BasicConv2d(cin, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x):
        b = self.branch3x3_1(x)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = _avg3(x) if self.pool == "avg" else F.max_pool2d(x, 3, stride=1, padding=1)
        return torch.cat([self.branch1x1(x), self.branch3x3_2a(b), self.branch3x3_2b(b),
                          self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d), self.branch_pool(pooled)], 1)


PROTOCOLS = ("pytorch-fid", "edm2")


def tf1_bilinear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """TensorFlow 1.x ``resize_bilinear`` with align_corners=False (no half-pixel centres): output pixel i
    samples the input at i * in / out, linearly between floor and floor + 1 (clamped to the last row).
    The resize of the original TF FID graph, which EDM2's and StyleGAN's Inception (and torch-fidelity)
    reproduce; PyTorch's bilinear with align_corners=False samples at (i + 0.5) in / out - 0.5 instead."""
    out = x.float()
    for dim, n_out in ((2, size[0]), (3, size[1])):
        n_in = out.shape[dim]
        src = torch.arange(n_out, dtype=torch.float32, device=x.device) * torch.tensor(n_in / n_out, dtype=torch.float32)
        lo = src.long().clamp(max=n_in - 1)
        hi = (lo + 1).clamp(max=n_in - 1)
        frac = (src - lo.float()).view(*([1] * dim), n_out, *([1] * (3 - dim)))
        a, b = out.index_select(dim, lo.to(x.device)), out.index_select(dim, hi.to(x.device))
        out = a + (b - a) * frac
    return out


class FIDInceptionV3(nn.Module):
    """Inception-v3 of FID: ``features(u8)`` the 2048-d pool, ``probs(u8)`` the 1008-class softmax
    of the unbiased logits; input NCHW uint8 (or float in [0, 255]) RGB images of any size.

    ``protocol``: how images reach the network. 'pytorch-fid' (default): [0, 1], PyTorch's bilinear to
    299 x 299 (align_corners=False), 2x - 1. 'edm2': TF 1.x bilinear to 299 x 299 on the 0..255 values
    (``tf1_bilinear``), then (x - 128) / 128, as the TF graph that EDM2's calculate_metrics.py loads
    (and torch-fidelity) computes. On 24 x 24 images the inputs differ by up to 0.73; the FIDs of the
    M-SWG and EDM2 papers are under 'edm2'."""

    feature_dim = 2048
    name = "inception"

    def __init__(self, protocol: str = "pytorch-fid"):
        super().__init__()
        if protocol not in PROTOCOLS:
            raise WindowguideError(f"--protocol {protocol!r}: accepted: {', '.join(PROTOCOLS)}")
        self.protocol = protocol
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, 32)
        self.Mixed_5c = InceptionA(256, 64)
        self.Mixed_5d = InceptionA(288, 64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, 128)
        self.Mixed_6c = InceptionC(768, 160)
        self.Mixed_6d = InceptionC(768, 160)
        self.Mixed_6e = InceptionC(768, 192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, "avg")
        self.Mixed_7c = InceptionE(2048, "max")
        self.fc = nn.Linear(2048, 1008)
        self.eval().requires_grad_(False)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [0, 255] -> the protocol's resize to 299 x 299 -> [-1, 1] (class docstring)."""
        if self.protocol == "edm2":
            x = images.float()
            if x.shape[-2:] != (299, 299):
                x = tf1_bilinear(x, (299, 299))
            return (x - 128) / 128
        x = images.float() / 255
        if x.shape[-2:] != (299, 299):
            x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        return 2 * x - 1

    def features(self, images: torch.Tensor) -> torch.Tensor:
        x = self.preprocess(images.to(self.fc.weight.device))
        for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3"):
            x = getattr(self, name)(x)
        x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(F.max_pool2d(x, 3, stride=2))), 3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return x.mean((2, 3))

    def probs(self, images: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        f = self.features(images) if features is None else features
        return (f @ self.fc.weight.T).softmax(1)


def weights_path(path: str | None = None) -> str:
    """The Inception weights file: ``path``, else $WINDOWGUIDE_INCEPTION; a clear error when missing."""
    path = path or os.environ.get(ENV)
    if not path or not os.path.isfile(path):
        where = f"{path!r} does not exist" if path else "no file given"
        raise WindowguideError(
            f"FID needs the Inception weights file {WEIGHTS_NAME} (pytorch-fid's; SHA-256 starts with "
            f"{WEIGHTS_SHA256_PREFIX}) and {where}. windowguide never downloads: fetch it from {WEIGHTS_URL} "
            f"on a machine with internet, then pass --inception PATH or set {ENV}=PATH")
    return path


def load_inception(path: str | None = None, device="cpu", protocol: str = "pytorch-fid") -> FIDInceptionV3:
    """The FID Inception with the weights of ``path`` (state dict, strict keys and shapes, read with
    ``weights_only=True``). A file whose SHA-256 does not start with 6726825d is loaded with a warning:
    its FID is not comparable with published numbers."""
    path = weights_path(path)
    net = FIDInceptionV3(protocol)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        net.load_state_dict(state, strict=True)
    except Exception as e:   # a wrong file is a user's input error, named with the file
        raise WindowguideError(f"{path} is not the FID Inception state dict ({' '.join(str(e).split())})") from None
    if not _sha256(path).startswith(WEIGHTS_SHA256_PREFIX):
        warnings.warn(f"{path} is not the standard FID Inception file (SHA-256 does not start with "
                      f"{WEIGHTS_SHA256_PREFIX}); its FID is not comparable with published numbers", stacklevel=2)
    return net.to(device)


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


__all__ = ["FIDInceptionV3", "load_inception", "weights_path", "WEIGHTS_NAME", "ENV"]
