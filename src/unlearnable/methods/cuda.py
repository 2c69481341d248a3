"""CUDA: convolution-based unlearnable datasets (Sadasivan et al., CVPR 2023).

Reference: Vinu Sankar Sadasivan, Mahdi Soltanolkotabi, Soheil Feizi, "CUDA: Convolution-based
Unlearnable Datasets", CVPR 2023 (arXiv 2303.04278, §3). Implemented from the paper's
description only (specs/BASELINES.md §9); nothing is taken from the authors' code.

Model-free, class-wise and multiplicative: one random k×k blur filter per class, drawn from a
private key (the seed); every image of class c is convolved with filter c:

* filter taps w[u, v] ~ U(0, p_b) i.i.d. (p_b = 0.3), then one tap chosen uniformly at random
  is set to 1.0 (it keeps the content);
* the same filter for R, G and B, applied depthwise (each channel on its own), no bias, zero
  padding (k−1)/2, output the same size as the input (cross-correlation, as ``conv2d``);
* the filtered image (input in [0, 1]) is divided by its single global maximum over all
  channels and pixels, so it lies in [0, 1] (no clipping before that); an all-black image
  stays black;
* ``mix`` poisons only a fraction of the images: each image is convolved with probability
  ``mix`` (default 1.0: all).

Decisions:

* One generator seeded by (seed, "cuda") draws the K filters in class order, so filters depend
  on (seed, K, k, p_b) only; the ``mix`` draw of an image is keyed by (seed, sha256 of its id),
  so permuting the input permutes the output.
* Images are convolved at their native size (mixed sizes need nothing special).
* No ℓp budget (``budget_norm = "none"``): :meth:`CUDA.apply` writes round(255·y) (the paper's
  code truncates; BASELINES §9 allows the shared rounding), and the manifest records the
  measured ℓ∞/ℓ2/ℓ0 change. A bounded budget is refused.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from ..budget import Budget
from ..data.imageset import ImageSet, Images
from ..errors import UnlearnableError
from . import register_method
from .base import Deltas, PerImageMethod, rng_for


def cuda_filters(num_classes: int, seed: int, k: int = 3, p_b: float = 0.3) -> np.ndarray:
    """(K, k, k) class filters: U(0, p_b) taps with one uniformly chosen tap set to 1."""
    rng = rng_for(seed, "cuda")
    out = np.empty((num_classes, k, k))
    for c in range(num_classes):
        w = rng.uniform(0.0, p_b, size=k * k)
        w[rng.integers(0, k * k)] = 1.0
        out[c] = w.reshape(k, k)
    return out


def blur(images: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Depthwise "same" correlation of (N, H, W, 3) float images with one (k, k) kernel, zero-padded,
    then each image divided by its global maximum."""
    k = kernel.shape[0]
    r = k // 2
    n, h, w, _ = images.shape
    pad = np.zeros((n, h + 2 * r, w + 2 * r, 3), np.float64)
    pad[:, r:r + h, r:r + w] = images
    out = np.zeros((n, h, w, 3), np.float64)
    for u in range(k):
        for v in range(k):
            out += kernel[u, v] * pad[:, u:u + h, v:v + w]
    peak = out.reshape(n, -1).max(axis=1)
    peak = np.where(peak > 0, peak, 1.0)
    return out / peak[:, None, None, None]


def _id_word(id_: str) -> int:
    return int.from_bytes(hashlib.sha256(id_.encode()).digest()[:4], "little")


@register_method("cuda")
@dataclass
class CUDA(PerImageMethod):
    """Class-wise random blur: every image of class c convolved with filter c, then max-normalised.

    Sadasivan et al., "CUDA: Convolution-based Unlearnable Datasets", CVPR 2023. Unbounded
    (multiplicative): the manifest records the measured change.

    Args:
        kernel_size: filter side k (odd).
        blur_parameter: p_b, the upper end of the U(0, p_b) taps.
        mix: fraction of images convolved (Bernoulli per image).
    """

    kernel_size: int = 3
    blur_parameter: float = 0.3
    mix: float = 1.0
    budget_norm = "none"
    default_budget = "none"
    paper = "Sadasivan et al., CUDA: Convolution-based Unlearnable Datasets, CVPR 2023"

    def parse_budget(self, budget=None) -> Budget:
        if isinstance(budget, Budget):
            given = budget.spec if budget.norm != "none" else None
        else:  # a bare number would parse as "none" here: any budget but none is refused by its text
            given = None if budget is None or str(budget).strip().lower() in ("none", "unbounded") else str(budget)
        if given is not None:
            raise UnlearnableError(f"cuda is a blur with no ℓp bound: leave out the budget (or give 'none'), not {given!r}")
        return Budget.parse("none", default_norm="none")

    def plan(self, data: ImageSet, shapes, budget: Budget, *, seed: int, device: str):
        if self.mix < 1.0:
            chosen = np.array([rng_for(seed, "cuda-mix", _id_word(i)).random() < self.mix for i in data.ids])
        else:
            chosen = np.ones(len(data), bool)
        return {"filters": cuda_filters(data.num_classes, seed, self.kernel_size, self.blur_parameter),
                "labels": data.require_labels("cuda"), "chosen": chosen}

    def deltas_for(self, state, images: Images, idx: np.ndarray, budget: Budget, *, device: str) -> Deltas:
        labels, chosen, filters = state["labels"][idx], state["chosen"][idx], state["filters"]
        if isinstance(images, np.ndarray):  # one class's images of the batch at a time
            out = np.zeros(images.shape, np.float32)
            for c in np.unique(labels[chosen]):
                part = np.flatnonzero((labels == c) & chosen)
                for s in range(0, len(part), 1024):
                    xf = images[part[s:s + 1024]].astype(np.float64) / 255.0
                    out[part[s:s + 1024]] = blur(xf, filters[c]) - xf
            return out
        deltas = []
        for im, y, pick in zip(images, labels, chosen):
            if not pick:
                deltas.append(np.zeros(im.shape, np.float32))
                continue
            xf = im.astype(np.float64)[None] / 255.0
            deltas.append((blur(xf, filters[y]) - xf)[0].astype(np.float32))
        return deltas

    def apply(self, data: ImageSet, deltas: Deltas, budget: Budget, x_chunk: int = 4096) -> Images:
        """x' = round(255·(x + δ)) = round(255·y): the blurred image itself, no projection."""
        if len(deltas) != len(data):
            raise RuntimeError(f"cuda: {len(deltas)} perturbations for {len(data)} images")

        def one(x: np.ndarray, d: np.ndarray) -> np.ndarray:
            v = x.astype(np.float64) + 255.0 * np.asarray(d, np.float64)
            return np.clip(np.rint(v), 0, 255).astype(np.uint8)

        if isinstance(data.images, np.ndarray):
            out = np.empty_like(data.images)
            for s in range(0, len(out), x_chunk):
                out[s:s + x_chunk] = one(data.images[s:s + x_chunk], deltas[s:s + x_chunk])
            return out
        return [one(x, d) for x, d in zip(data.images, deltas)]
