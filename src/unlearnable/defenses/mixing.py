"""Augmentation-level defenses that erase or mix image regions: Cutout, MixUp, CutMix.

All three are ``augment`` hooks, batched on the device: every random number for a batch is
drawn at once from the engine's generator, masks are built by broadcasting (no per-sample
Python loop), and the same generator state gives the same batch. MixUp and CutMix return
``(B, K)`` label distributions (the engine's cross-entropy accepts them); they take ``K``
from :meth:`Defense.prepare` (``context["num_classes"]``, which the engine always passes) or
from the labels themselves when those are already soft (outside the engine, without
``prepare``, they fall back to the largest label + 1, with a warning).
"""

from __future__ import annotations

import warnings
from typing import Optional

import torch

from ..errors import UnlearnableError
from .base import Defense, register_defense

__all__ = ["Cutout", "MixUp", "CutMix", "sample_beta"]


def sample_beta(alpha: float, device: torch.device, generator: Optional[torch.Generator]) -> torch.Tensor:
    """One draw of Beta(alpha, alpha) as a 0-d tensor on ``device``, from ``generator``.

    alpha = 1 (the MixUp/CutMix default) is U(0, 1): one ``torch.rand`` call, no host sync.
    Other alphas need torch's gamma sampler, which has no generator argument: we seed a
    forked global stream from ``generator`` (deterministic, one host sync per batch).
    """
    if alpha == 1.0:
        return torch.rand((), device=device, generator=generator)
    seed = int(torch.randint(2**62, (1,), device=device, generator=generator))
    devs = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devs):
        torch.manual_seed(seed)
        a = torch.tensor([alpha, alpha], device=device, dtype=torch.float32)
        g = torch._standard_gamma(a)
    return g[0] / (g[0] + g[1])


def _soft(y: torch.Tensor, num_classes: Optional[int], who: str) -> torch.Tensor:
    if y.ndim == 2:
        return y.float()
    if num_classes is None:
        # Only outside the engine (which always calls prepare): a batch may miss the last
        # classes, so this guess can be too small; say so once.
        num_classes = int(y.max()) + 1
        warnings.warn(
            f"{who}: number of classes unknown (prepare() was not called with num_classes); "
            f"using the largest label + 1 = {num_classes}",
            RuntimeWarning,
            stacklevel=3,
        )
    return torch.nn.functional.one_hot(y.long(), num_classes).float()


def _check_alpha(alpha, who: str) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
        raise UnlearnableError(f"{who}: alpha must be a positive number, got {alpha!r}")
    return float(alpha)


@register_defense("cutout")
class Cutout(Defense):
    """Cutout: zero one square patch per image (DeVries & Taylor, 2017, arXiv 1708.04552).

    As in the paper's CIFAR-10 setting: one 16x16 square per image, its centre drawn
    uniformly over all pixels, the square clipped at the borders (so a patch near an edge is
    smaller), pixels set to 0. For images of another size the side is scaled with the image,
    ``round(length * H / 32)`` rows by ``round(length * W / 32)`` columns (at least 1), so the
    patch always covers the same fraction of the image (a square on square images).

    Args:
        length: side of the patch in pixels on a 32x32 image (paper: 16 for CIFAR-10).
        p: probability that an image gets a patch (paper: 1).
    """

    def __init__(self, length: int = 16, p: float = 1.0):
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise UnlearnableError(f"cutout: length must be a positive integer, got {length!r}")
        if not 0.0 <= float(p) <= 1.0:
            raise UnlearnableError(f"cutout: p is a probability in [0, 1], got {p!r}")
        self.length = length
        self.p = float(p)

    def augment(self, x, y, generator=None):
        b, _, h, w = x.shape
        if b == 0 or self.p == 0:
            return x, y
        dev = x.device
        sh = max(1, round(self.length * h / 32))
        sw = max(1, round(self.length * w / 32))
        cy = torch.randint(0, h, (b,), device=dev, generator=generator)
        cx = torch.randint(0, w, (b,), device=dev, generator=generator)
        on = torch.rand(b, device=dev, generator=generator) < self.p
        y0, x0 = cy - sh // 2, cx - sw // 2  # [y0, y0 + sh) x [x0, x0 + sw), clipped by the comparisons
        rows = torch.arange(h, device=dev)
        cols = torch.arange(w, device=dev)
        in_r = (rows >= y0[:, None]) & (rows < (y0 + sh)[:, None])  # (B, H)
        in_c = (cols >= x0[:, None]) & (cols < (x0 + sw)[:, None])  # (B, W)
        mask = in_r[:, :, None] & in_c[:, None, :] & on[:, None, None]  # (B, H, W)
        return x.masked_fill(mask[:, None], 0.0), y


class _Mixing(Defense):
    """Shared state for MixUp/CutMix: alpha, the per-batch probability, the number of classes."""

    who = "mixing"

    def __init__(self, alpha: float = 1.0, p: float = 1.0):
        self.alpha = _check_alpha(alpha, self.who)
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
            raise UnlearnableError(f"{self.who}: p is a probability in [0, 1], got {p!r}")
        self.p = float(p)
        self._num_classes: Optional[int] = None

    def skip(self, x: torch.Tensor, generator: Optional[torch.Generator]) -> bool:
        """Whether this batch stays unmixed (probability ``1 − p``, one draw per batch as in
        the reference scripts). With ``p = 1`` nothing is drawn, so the random stream is the
        one of the plain defense."""
        if self.p >= 1.0:
            return False
        return bool(torch.rand((), device=x.device, generator=generator).item() >= self.p)

    def prepare(self, context):
        k = context.get("num_classes")
        if k is not None:
            self._num_classes = int(k)


@register_defense("mixup")
class MixUp(_Mixing):
    """MixUp (Zhang, Cisse, Dauphin, Lopez-Paz, "mixup: Beyond Empirical Risk Minimization", ICLR 2018).

    As in the paper's code: one ``lam ~ Beta(alpha, alpha)`` per batch, partners given by a
    random permutation of the batch, ``x = lam * x + (1 - lam) * x[perm]`` and the same mix
    of the one-hot (or already soft) labels, so the labels are ``(B, K)`` rows summing to 1.

    Args:
        alpha: Beta parameter (paper: 1.0 for CIFAR-10).
        p: probability that a batch is mixed (1: every batch).
    """

    who = "mixup"

    def augment(self, x, y, generator=None):
        b = x.shape[0]
        if b < 2 or self.skip(x, generator):
            return x, y
        ys = _soft(y, self._num_classes, self.who)
        lam = sample_beta(self.alpha, x.device, generator).to(x.dtype)
        perm = torch.randperm(b, device=x.device, generator=generator)
        xm = torch.lerp(x[perm], x, lam)  # lam * x + (1 - lam) * x[perm]
        ym = torch.lerp(ys[perm], ys, lam.to(ys.dtype))
        return xm, ym


@register_defense("cutmix")
class CutMix(_Mixing):
    """CutMix (Yun et al., "CutMix: Regularization Strategy to Train Strong Classifiers with
    Localizable Features", ICCV 2019).

    As in the paper's code: one ``lam ~ Beta(alpha, alpha)`` and one box per batch; the box
    has sides ``H * sqrt(1 - lam)`` by ``W * sqrt(1 - lam)`` (truncated to whole pixels), a
    centre uniform over the image, and is clipped at the borders; inside it each image takes
    the pixels of its partner ``x[perm]``. The label weight is recomputed from the actual
    (clipped) box: ``lam' = 1 - box_area / (H * W)``, labels ``lam' * y + (1 - lam') * y[perm]``.

    Args:
        alpha: Beta parameter (paper: 1.0).
        p: probability that a batch is mixed (1: every batch, as in the CutMix paper's
            CIFAR runs; the OP paper's victims use 0.5).
    """

    who = "cutmix"

    def augment(self, x, y, generator=None):
        b, _, h, w = x.shape
        if b < 2 or self.skip(x, generator):
            return x, y
        dev = x.device
        ys = _soft(y, self._num_classes, self.who)
        lam = sample_beta(self.alpha, dev, generator)
        perm = torch.randperm(b, device=dev, generator=generator)
        cut = torch.sqrt(1.0 - lam)
        ch, cw = (h * cut).long(), (w * cut).long()  # int(), as in the reference code
        cy = torch.randint(0, h, (), device=dev, generator=generator)
        cx = torch.randint(0, w, (), device=dev, generator=generator)
        y0, y1 = (cy - ch // 2).clamp(0, h), (cy + ch // 2).clamp(0, h)
        x0, x1 = (cx - cw // 2).clamp(0, w), (cx + cw // 2).clamp(0, w)
        rows = torch.arange(h, device=dev)
        cols = torch.arange(w, device=dev)
        box = ((rows >= y0) & (rows < y1))[:, None] & ((cols >= x0) & (cols < x1))[None, :]  # (H, W)
        xm = torch.where(box, x[perm], x)
        lam_adj = 1.0 - ((y1 - y0) * (x1 - x0)).to(ys.dtype) / (h * w)
        ym = torch.lerp(ys[perm], ys, lam_adj)
        return xm, ym
