"""Linear separability of perturbations and of protected images.

Sandoval-Segura, Singla, Geiping, Goldblum, Goldstein, "What Can We Learn from Unlearnable
Datasets?" (NeurIPS 2023), §4 (and Yu et al., "Availability Attacks Create Shortcuts", KDD
2022): fit a linear classifier with bias on the flattened perturbations δ = x' − x, min–max
normalised to [0, 1], with full-batch L-BFGS for 500 steps, and report its **training**
accuracy; the same on the protected images x'. Reported (CIFAR-10): most methods reach 100% on
δ; AR 39.58%, against 53.88% for the clean images themselves.

Caveat: with as many samples as dimensions or fewer (``N <= D + 1`` for a classifier with a
bias, e.g. 300 CIFAR images of 3072 values), *any* labelling of points in general position is
linearly separable, so 100% says nothing about the data: clean images score 100% too.
:func:`separability_report` flags this as ``trivially_separable``; compare against the clean
images' number, or use more samples than dimensions (or a lower ``--size``).

Normalisation: ``"minmax"`` (default) maps the whole array affinely to [0, 1] (one min and one
max over the set: an affine map, which leaves linear separability unchanged and only
conditions the optimisation); ``"sample"`` min–max normalises each sample on its own;
``"none"`` uses the values as given.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Union

import numpy as np

from ..data.imageset import label_array
from ..errors import UnlearnableError

__all__ = ["perturbations", "linear_separability", "separability_report"]


def perturbations(protected: np.ndarray, clean: np.ndarray) -> np.ndarray:
    """δ = x' − x in the [−1, 1] scale, float32, same shape as the inputs (uint8 NHWC, one size).

    Raises:
        UnlearnableError: if the shapes differ or the inputs are not uint8 arrays.
    """
    p, c = np.asarray(protected), np.asarray(clean)
    if p.dtype != np.uint8 or c.dtype != np.uint8:
        raise UnlearnableError(f"perturbations need uint8 images, got {p.dtype} and {c.dtype}")
    if p.shape != c.shape:
        raise UnlearnableError(f"protected images {p.shape} and clean images {c.shape} differ in shape")
    return (p.astype(np.float32) - c.astype(np.float32)) / 255.0


def _normalise(f: np.ndarray, how: str) -> np.ndarray:
    if how == "none":
        return f
    if how == "minmax":
        lo, hi = float(f.min()), float(f.max())
        return (f - lo) / (hi - lo) if hi > lo else np.zeros_like(f)
    if how == "sample":
        lo, hi = f.min(1, keepdims=True), f.max(1, keepdims=True)
        span = np.where(hi > lo, hi - lo, 1.0)
        return (f - lo) / span
    raise UnlearnableError(f"normalize must be 'minmax', 'sample' or 'none', got {how!r}")


def linear_separability(features: np.ndarray, labels, *, steps: int = 500, normalize: str = "minmax",
                        device: Union[str, None] = None, num_classes: Optional[int] = None) -> float:
    """Training accuracy of a linear classifier (with bias) fitted by full-batch L-BFGS.

    Args:
        features: ``(N, ...)`` array — uint8 images (scaled to [0, 1]) or float values such as
            :func:`perturbations`; flattened per sample.
        labels: ``(N,)`` integer labels.
        steps: L-BFGS iterations (one full-batch step each, strong-Wolfe line search).
        normalize: ``"minmax"`` (whole set to [0, 1]), ``"sample"`` or ``"none"``.
        device: torch device (``None``: CUDA when available).
        num_classes: K (default: largest label + 1).

    Returns:
        Training accuracy in [0, 1] (1.0 = linearly separable, up to the optimiser). With
        ``N <= D + 1`` samples in ``D`` dimensions it is 1.0 for any labelling of points in
        general position (see the module's caveat).
    """
    import torch
    import torch.nn.functional as F

    from ..device import resolve_device

    f = np.asarray(features)
    y = label_array(labels, f.shape[0], "labels", num_classes, flatten=True)
    if f.shape[0] == 0:
        raise UnlearnableError("linear separability needs samples: got none")
    f = f.reshape(f.shape[0], -1).astype(np.float32) / (255.0 if f.dtype == np.uint8 else 1.0)
    f = _normalise(f, normalize)
    dev = resolve_device(device)
    k = int(num_classes if num_classes is not None else y.max() + 1)
    xt = torch.from_numpy(np.ascontiguousarray(f)).to(dev)
    yt = torch.from_numpy(y).to(dev)
    lin = torch.nn.Linear(xt.shape[1], k).to(dev)
    torch.nn.init.zeros_(lin.weight)  # deterministic start: the loss is convex
    torch.nn.init.zeros_(lin.bias)
    opt = torch.optim.LBFGS(lin.parameters(), lr=1.0, max_iter=int(steps), history_size=20,
                            tolerance_grad=1e-10, tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(lin(xt), yt)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        return float((lin(xt).argmax(1) == yt).float().mean())


def separability_report(protected: np.ndarray, clean: np.ndarray, labels, *, steps: int = 500,
                        device: Union[str, None] = None, num_classes: Optional[int] = None) -> Dict[str, Any]:
    """Linear separability (training accuracy) of δ = x' − x, of x' and of x.

    Args:
        protected: uint8 ``(N, H, W, C)`` protected images.
        clean: their clean versions, same shape and order.
        labels: ``(N,)`` labels.
        steps: L-BFGS iterations per fit.
        device: torch device.
        num_classes: K.

    Returns:
        ``{"perturbation": acc, "protected": acc, "clean": acc, "trivially_separable": bool}``,
        accuracies as fractions in [0, 1]. ``trivially_separable`` is ``N <= D + 1`` (``N``
        images of ``D = H·W·C`` values): then any labelling is linearly separable and the
        accuracies near 100% say nothing about the perturbations (the clean images reach it
        too); a reader should be told.
    """
    delta = perturbations(protected, clean)
    kw = dict(steps=steps, device=device, num_classes=num_classes)
    n, d = delta.shape[0], int(np.prod(delta.shape[1:]))
    return {
        "perturbation": linear_separability(delta, labels, **kw),
        "protected": linear_separability(np.asarray(protected), labels, **kw),
        "clean": linear_separability(np.asarray(clean), labels, **kw),
        "trivially_separable": bool(n <= d + 1),
    }
