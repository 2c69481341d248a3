"""Class-wise separability discriminant (CSD) of perturbations.

Ren, Xu, Wan, Ma, Sun, Tang, "Transferable Unlearnable Examples" (ICLR 2023): with class
centroids μ_k = mean of δ_i over class k and spreads s_k = mean ‖δ_i − μ_k‖₂,

    CSD = mean over ordered pairs k ≠ l of (s_k + s_l) / ‖μ_k − μ_l‖₂,

a Davies–Bouldin-style index: **lower = more separable** (tight classes, far-apart centroids).
Class-wise noise has CSD ≈ 0; i.i.d. per-sample noise has a large CSD. Scale-invariant, so the
units of δ (grey levels or [0, 1]) do not matter.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..data.imageset import label_array
from ..errors import UnlearnableError

__all__ = ["csd"]


def csd(delta: np.ndarray, labels, *, num_classes: Optional[int] = None) -> float:
    """CSD of perturbations ``delta`` with class ``labels`` (TUE, ICLR 2023).

    Args:
        delta: ``(N, ...)`` perturbations (e.g. :func:`~unlearnable.analysis.separability.perturbations`),
            flattened per sample.
        labels: ``(N,)`` integer labels.
        num_classes: K (default: largest label + 1); classes without samples are skipped.

    Returns:
        The CSD (≥ 0; ``inf`` if two centroids coincide while some spread is positive).

    Raises:
        UnlearnableError: fewer than two classes with samples, or mismatched lengths.
    """
    d = np.asarray(delta, dtype=np.float64)
    if d.ndim == 0 or d.shape[0] == 0:
        raise UnlearnableError("CSD needs perturbations: got none")
    y = label_array(labels, d.shape[0], "labels", num_classes, flatten=True)
    d = d.reshape(d.shape[0], -1)
    k = int(num_classes if num_classes is not None else (y.max() + 1 if y.size else 0))
    mus, spreads = [], []
    for c in range(k):
        dc = d[y == c]
        if len(dc) == 0:
            continue
        mu = dc.mean(0)
        mus.append(mu)
        spreads.append(float(np.linalg.norm(dc - mu, axis=1).mean()))
    if len(mus) < 2:
        raise UnlearnableError("CSD needs perturbations of at least two classes")
    vals = []
    for a in range(len(mus)):
        for b in range(len(mus)):
            if a == b:
                continue
            dist = float(np.linalg.norm(mus[a] - mus[b]))
            num = spreads[a] + spreads[b]
            vals.append(num / dist if dist > 0 else (0.0 if num == 0 else np.inf))
    return float(np.mean(vals))
