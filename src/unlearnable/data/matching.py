"""Pair poisoned images with the clean images they were made from, by content.

A poison released as images in its own order cannot be lined up with a clean set by index:
NTGA loaded CIFAR-10 through ``tensorflow_datasets`` (another order than the python pickles),
shuffled it and kept 40,000 images; a TAP or APBench folder in CIFAR's order meets a
class-sorted ImageFolder copy. Each poisoned image is still the clean image it was made from
plus a small change, so :func:`match_by_content` finds, for every poisoned image, the clean
image closest to it:

1. candidates: the ``k`` nearest clean images (of the same label, when both sides have labels)
   in a coarse view, 4x4-pixel block means (a bounded change moves a block mean by at most its
   bound, while other images differ by tens of grey levels);
2. the candidate with the smallest mean |Δ| at full resolution wins; pairs are made one to one,
   the closest first, so that duplicate images in the clean set each get their own poison;
3. a pair whose mean |Δ| is above ``max_mean_abs`` (32 grey levels, the import's alignment
   threshold) is not the same image: refused with a one-line error.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UnlearnableError
from .formats import MISALIGNED_MEAN_ABS
from .imageset import ImageSet

__all__ = ["match_by_content"]


def _coarse(x: np.ndarray) -> torch.Tensor:
    """(N, H, W, C) uint8 → (N, D) float block means (4x4 blocks; at most 8x8 of them)."""
    t = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).float()
    h, w = t.shape[2:]
    return F.adaptive_avg_pool2d(t, (min(8, h), min(8, w))).flatten(1)


def _candidates(p: np.ndarray, c: np.ndarray, k: int, chunk: int = 1024) -> Tuple[np.ndarray, np.ndarray]:
    """For each poisoned image, its ``k`` best clean candidates and their full-resolution mean |Δ|."""
    pf, cf = _coarse(p), _coarse(c)
    c_sq = (cf * cf).sum(1)
    ct = torch.from_numpy(np.ascontiguousarray(c)).reshape(len(c), -1)
    idx_out = np.empty((len(p), k), dtype=np.int64)
    dist_out = np.empty((len(p), k), dtype=np.float64)
    for s in range(0, len(p), chunk):
        q = pf[s:s + chunk]
        d2 = (q * q).sum(1, keepdim=True) - 2.0 * q @ cf.t() + c_sq  # squared distances, coarse view
        near = d2.topk(k, dim=1, largest=False).indices  # (B, k)
        full = torch.from_numpy(np.ascontiguousarray(p[s:s + chunk])).reshape(len(q), 1, -1).short()
        mean_abs = (full - ct[near].short()).abs().float().mean(2)  # (B, k)
        order = mean_abs.argsort(1)
        idx_out[s:s + chunk] = near.gather(1, order).numpy()
        dist_out[s:s + chunk] = mean_abs.gather(1, order).double().numpy()
    return idx_out, dist_out


def match_by_content(poison: np.ndarray, clean: ImageSet, labels: Optional[np.ndarray] = None, *,
                     k: int = 8, max_mean_abs: float = MISALIGNED_MEAN_ABS, strict: bool = True,
                     what: str = "the poison") -> Tuple[np.ndarray, np.ndarray]:
    """The clean image each poisoned image was made from.

    Args:
        poison: ``(M, H, W, 3)`` uint8 poisoned images, in any order; ``M`` at most the clean count.
        clean: the clean set (one image size, the poison's).
        labels: the poison's labels, if it has them: candidates are then limited to clean images
            of the same label.
        k: clean candidates compared at full resolution per poisoned image.
        max_mean_abs: the largest mean |Δ| (grey levels) a pair may have (the import's
            alignment threshold: above it two images are different images).
        strict: refuse pairs above ``max_mean_abs`` (``False``: keep the closest anyway).
        what: how errors name the poison.

    Returns:
        ``(index, mean_abs)``: for poisoned image ``i``, the clean index ``index[i]`` (all
        distinct) and the pair's mean |Δ|.

    Raises:
        UnlearnableError: sizes differ, more poisoned than clean images (of a label), or a
            poisoned image without a clean image close enough.
    """
    m = len(poison)
    if m == 0:
        raise UnlearnableError(f"{what} has no images")
    try:
        c = clean.stacked()
    except UnlearnableError:
        raise UnlearnableError("the clean set has images of different sizes; matching needs one size") from None
    if poison.shape[1:] != c.shape[1:]:
        raise UnlearnableError(f"{what}: images are {poison.shape[1]}x{poison.shape[2]}, "
                               f"the clean ones {c.shape[1]}x{c.shape[2]}")
    if m > len(c):
        raise UnlearnableError(f"{what} has {m} images, more than the {len(c)} clean ones")
    use_labels = labels is not None and clean.labels is not None
    groups = np.unique(labels) if use_labels else [None]
    cand = np.empty((m, 0), dtype=np.int64)
    dist = np.empty((m, 0), dtype=np.float64)
    for g in groups:
        pi = np.flatnonzero(labels == g) if use_labels else np.arange(m)
        ci = np.flatnonzero(clean.labels == g) if use_labels else np.arange(len(c))
        if len(pi) > len(ci):
            raise UnlearnableError(f"{what} has {len(pi)} images of label {g}, the clean set {len(ci)}")
        kk = min(k, len(ci))
        gi, gd = _candidates(poison[pi], c[ci], kk)
        if cand.shape[1] < k:  # widen to k columns, padding with "no candidate"
            cand = np.pad(cand, ((0, 0), (0, k - cand.shape[1])), constant_values=-1)
            dist = np.pad(dist, ((0, 0), (0, k - dist.shape[1])), constant_values=np.inf)
        cand[pi, :kk], dist[pi, :kk] = ci[gi], gd
    # One to one, closest pairs first: exact duplicates in the clean set each keep a poison.
    index = np.full(m, -1, dtype=np.int64)
    pair_dist = np.full(m, np.inf)
    taken = np.zeros(len(c), dtype=bool)
    for i in np.argsort(dist[:, 0], kind="stable"):
        for j, d in zip(cand[i], dist[i]):
            if j >= 0 and not taken[j]:
                index[i], pair_dist[i], taken[j] = j, d, True
                break
        else:
            raise UnlearnableError(f"{what}: image {i}'s {k} nearest clean images are all taken by closer ones: "
                                   "it holds repeated images, or images that are not of this clean set")
    far = np.flatnonzero(pair_dist > max_mean_abs)
    if strict and far.size:
        i = int(far[0])
        raise UnlearnableError(
            f"{what}: {far.size} of {m} images have no clean image within {max_mean_abs:.0f} grey levels mean |Δ| "
            f"(image {i}: nearest {clean.ids[index[i]]!r} at {pair_dist[i]:.0f}); was it made from this clean set?")
    return index, pair_dist
