"""AR: autoregressive perturbations (Sandoval-Segura et al., NeurIPS 2022).

Reference: Pedro Sandoval-Segura, Vasu Singla, Jonas Geiping, Micah Goldblum, Tom Goldstein,
David W. Jacobs, "Autoregressive Perturbations for Data Poisoning", NeurIPS 2022. Model-free
(specs/BASELINES.md §7): every class c owns a 3-channel 2-D autoregressive (AR) process with a
3×3 causal window per channel; every image gets a *fresh* sample of its class's process,
scaled to ℓ2 = ε (default 1.0). A simple convolution (the process's own filter) separates the
classes, while the noise itself is far less linearly separable than LSP's.

Generation of one sample at H×W (32×32 for CIFAR): s ~ N(0, 1) of shape 3×(H+4)×(W+4); in
raster order, every position (i+2, j+2), i ≤ H+1, j ≤ W+1, is *replaced* by the depthwise
weighted sum of its 3×3 window (window rows i..i+2, columns j..j+2; the current pixel's own
weight is 0), no innovation noise; the first two rows and columns keep their Gaussian start.
The first 4 rows and columns are cropped (top-left only) and the result is scaled to ℓ2 = ε.
The recurrence runs over all images of a class at once (it is only sequential in space).

Coefficients. The released coefficients are not used (they are data from the authors'
repository); each seed finds its own with the procedure the paper describes:

* **Proposal.** b ~ N(0, 1)^{3×3×3} (one 3×3 window per channel), the current-pixel entry
  (2, 2) set to 0, each channel divided by the sum of its 8 entries, so the window weights sum
  to 1 (a stationary-mean recurrence).
* **Stability check.** Three trial samples at the working size; the proposal is rejected if
  any trial's ℓ2 norm before scaling exceeds ``norm_bound`` (50 at 32 px, scaled by
  √(HW/1024) at other sizes) or is not finite. Unstable processes grow geometrically along
  the raster, so this bound is what keeps the noise from blowing up.
* **Distinctness check.** For every already accepted process k, its filter (its window with
  −1 at (2, 2), so the process maps its own samples to 0) is applied to the proposal's last
  trial as one 3-channel 3×3 kernel ("valid" correlation, summed over channels); the
  response is the sum of the ReLU of the output. The proposal is accepted when every
  response is ≥ ``required_response`` (10 at 32 px, scaled by HW/1024), i.e. no earlier
  class's filter explains it.
* Proposals come from one generator seeded by the protect seed, in order; classes are filled
  in order 0..K−1, so the coefficients depend only on (seed, K, working size). At most
  ``max_proposals`` are tried; lower ``required_response`` for many classes (the paper uses 3
  for CIFAR-100).

Order independence: class c's images are taken in ``ids`` order (sorted) and draw their
Gaussian starts from a generator keyed by (seed, c), so permuting the input permutes the output.

Resolution policy: uniform sets up to 64 px run at their native size; mixed-size sets and
larger photos run at 32×32 and each δ is resized (nearest) to its image and rescaled to ε.

Quantisation: the shared step (round to nearest, clip), as the official code rounds. The ℓ∞
change is not bounded (median ≈ 24/255 at 32 px with ε = 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

from ..budget import Budget
from ..data.imageset import ImageSet
from ..errors import UnlearnableError
from . import register_method
from .base import Deltas, Method, Progress, resize_delta, rng_for, working_size
from .lsp import class_order

_BATCH = 64  # proposals checked per vectorised batch


def random_coefficients(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` proposals (n, 3, 3, 3): N(0, 1) windows, centre 0, each channel summing to 1."""
    b = rng.standard_normal((n, 3, 3, 3))
    b[:, :, 2, 2] = 0.0
    return b / b.sum(axis=(2, 3), keepdims=True)


def ar_generate(coef: np.ndarray, start: np.ndarray) -> np.ndarray:
    """Run the AR recurrence on Gaussian starts and crop.

    Args:
        coef: (3, 3, 3) or (B, 3, 3, 3) windows (broadcast against ``start``).
        start: (B, 3, H+4, W+4) float64 starting values (overwritten in place).
    Returns:
        (B, 3, H, W) samples, before scaling.
    """
    s = start
    b = coef if coef.ndim == 4 else coef[None]
    _, _, hh, ww = s.shape
    with np.errstate(over="ignore", invalid="ignore"):
        for i in range(hh - 2):
            for j in range(ww - 2):
                s[:, :, i + 2, j + 2] = np.einsum("bcuv,bcuv->bc", b, s[:, :, i:i + 3, j:j + 3]) \
                    if b.shape[0] > 1 else np.einsum("cuv,bcuv->bc", b[0], s[:, :, i:i + 3, j:j + 3])
    return s[:, :, 4:, 4:]


def ar_filter_response(coef: np.ndarray, pattern: np.ndarray) -> float:
    """Σ ReLU of process ``coef``'s filter (centre −1) correlated ("valid") with a 3×H×W pattern."""
    f = coef.copy()
    f[:, 2, 2] = -1.0
    h, w = pattern.shape[1:]
    out = np.zeros((h - 2, w - 2))
    for u in range(3):
        for v in range(3):
            out += np.tensordot(f[:, u, v], pattern[:, u:u + h - 2, v:v + w - 2], axes=(0, 0))
    return float(np.maximum(out, 0).sum())


def find_coefficients(num_classes: int, size: Tuple[int, int], seed: int, norm_bound: float = 50.0,
                      required_response: float = 10.0, max_proposals: int = 200_000) -> np.ndarray:
    """(K, 3, 3, 3) coefficients of K stable, mutually distinct AR processes (module doc)."""
    h, w = size
    area = h * w / 1024.0
    bound, need = norm_bound * math.sqrt(area), required_response * area
    rng = rng_for(seed, "ar-coef")
    accepted: List[np.ndarray] = []
    tried = 0
    while len(accepted) < num_classes:
        if tried >= max_proposals:
            raise UnlearnableError(
                f"ar: found only {len(accepted)} of {num_classes} distinct stable AR processes in {max_proposals} "
                f"proposals; lower required_response (the paper uses 3 for 100 classes)")
        props = random_coefficients(rng, _BATCH)
        starts = rng.standard_normal((_BATCH * 3, 3, h + 4, w + 4))
        trials = ar_generate(np.repeat(props, 3, axis=0), starts).reshape(_BATCH, 3, 3, h, w)
        with np.errstate(over="ignore", invalid="ignore"):
            norms = np.sqrt((trials.reshape(_BATCH, 3, -1) ** 2).sum(axis=2))
        stable = np.isfinite(norms).all(axis=1) & (norms <= bound).all(axis=1) & np.isfinite(props).all(axis=(1, 2, 3))
        for p in range(_BATCH):
            tried += 1
            if not stable[p]:
                continue
            last = trials[p, 2]
            if all(ar_filter_response(a, last) >= need for a in accepted):
                accepted.append(props[p])
                if len(accepted) == num_classes:
                    break
    return np.stack(accepted)


@register_method("ar")
@dataclass
class AR(Method):
    """Autoregressive perturbations: a fresh sample of the class's AR process per image, ℓ2 = ε.

    Sandoval-Segura et al., "Autoregressive Perturbations for Data Poisoning", NeurIPS 2022.
    Bounded in ℓ2 (default 1.0); coefficients found per seed (module doc).

    Args:
        norm_bound: stability bound on a trial's ℓ2 norm before scaling (at 32 px).
        required_response: minimum filter response of other classes' filters (at 32 px).
        max_proposals: give up after this many proposals.
        pattern_size: working side for mixed-size sets and photos larger than 64 px.
    """

    norm_bound: float = 50.0
    required_response: float = 10.0
    max_proposals: int = 200_000
    pattern_size: int = 32
    budget_norm = "l2"
    default_budget = "l2:1.0"
    paper = "Sandoval-Segura et al., Autoregressive Perturbations for Data Poisoning, NeurIPS 2022"
    mixed_size_caveat = ("lost its protection, when measured, on images a trainer resizes: a 32-px victim on CIFAR-10 "
                         "upscaled to 40-72 px reached 60.20 % vs 59.40 % clean (34.40 % vs 61.05 % on the "
                         "original 32-px images); pil keeps protecting such images")

    def coefficients(self, num_classes: int, size: Tuple[int, int], seed: int) -> np.ndarray:
        return find_coefficients(num_classes, size, seed, self.norm_bound, self.required_response,
                                 self.max_proposals)

    def perturb(self, data: ImageSet, budget: Budget, *, seed: int, device: str,
                workdir: Optional[str] = None, progress: Progress = None) -> Deltas:
        labels = data.require_labels("ar")
        h, w = working_size(data, self.pattern_size)
        coef = self.coefficients(data.num_classes, (h, w), seed)
        native = isinstance(data.images, np.ndarray) and data.shape_of(0) == (h, w)
        out: List[Optional[np.ndarray]] = [None] * len(data)
        done = 0
        for c in range(data.num_classes):
            idx = class_order(data, labels, c)
            rng = rng_for(seed, "ar-noise", c)
            for s in range(0, len(idx), 2048):  # bounded memory per class
                part = idx[s:s + 2048]
                samples = ar_generate(coef[c], rng.standard_normal((len(part), 3, h + 4, w + 4)))
                if not np.isfinite(samples).all():
                    raise RuntimeError(f"ar: class {c}'s process diverged at {h}×{w}")
                for i, smp in zip(part, samples):
                    d = np.ascontiguousarray(smp.transpose(1, 2, 0))
                    if not native:
                        d = resize_delta(d, data.shape_of(int(i)), "nearest")
                    out[int(i)] = (d * (budget.eps / max(np.linalg.norm(d), 1e-12))).astype(np.float32)
                done += len(part)
                if progress:
                    progress(done, len(data))
        return np.stack(out) if isinstance(data.images, np.ndarray) else out  # type: ignore[arg-type]
