"""Per-class cosine similarity between loss gradients of protected and of clean samples.

Asked by PIL's reviewers (Liu, Chen, Zhang, ICLR 2026): if the protected samples of a class
pull a model's parameters in a direction unrelated to that of their clean counterparts, a model
trained on them learns little that transfers to clean data. For each class k we take the mean
cross-entropy gradient over the protected samples of class k and over the same samples clean,
and report the cosine between the two mean gradients.

Gradients are taken with respect to the model's **parameters** by default (what training
follows; this is what the reviewers asked about), or with respect to the **inputs**
(``wrt="input"``: the mean input gradient, which needs images of one size).
"""

from __future__ import annotations

import numpy as np

from ..errors import UnlearnableError

from ._inputs import as_float_nchw, as_labels, model_device

__all__ = ["class_gradient_cosine"]


def _mean_grad(model, x, y, idx, wrt: str, batch_size: int):
    import torch
    import torch.nn.functional as F

    dev = model_device(model)
    params = [p for p in model.parameters() if p.requires_grad]
    total = None
    for s in range(0, len(idx), batch_size):
        b = idx[s:s + batch_size]
        xb = as_float_nchw(x[b], dev)
        yb = y[b].to(dev)
        if wrt == "input":
            xb = xb.clone().requires_grad_(True)
            g, = torch.autograd.grad(F.cross_entropy(model(xb), yb, reduction="sum"), xb)
            flat = g.sum(0).reshape(-1)
        else:
            gs = torch.autograd.grad(F.cross_entropy(model(xb), yb, reduction="sum"), params)
            flat = torch.cat([g.reshape(-1) for g in gs])
        total = flat.double() if total is None else total + flat.double()
    return total / max(1, len(idx))


def class_gradient_cosine(model, clean_x, protected_x, y, num_classes: int = None, *, wrt: str = "params",
                          batch_size: int = 256) -> np.ndarray:
    """Cosine similarity, per class, of the mean CE gradient on protected vs on clean samples.

    The model is evaluated in eval mode (BatchNorm uses its running statistics), so the two
    gradients differ only through the images.

    Args:
        model: a classifier (float NCHW in [0, 1] → logits), e.g. a victim trained on clean data.
        clean_x: clean images, uint8 NHWC numpy array or NCHW tensor.
        protected_x: their protected versions, same shape and order.
        y: ``(N,)`` labels (the true labels of the clean images).
        num_classes: K (default: largest label + 1).
        wrt: ``"params"`` (default) or ``"input"``.
        batch_size: images per backward pass.

    Returns:
        ``(K,)`` float64 array; ``nan`` for a class with no samples (or a zero gradient).
    """
    import torch

    if wrt not in ("params", "input"):
        raise ValueError(f"wrt must be 'params' or 'input', got {wrt!r}")
    if tuple(clean_x.shape) != tuple(protected_x.shape):
        raise UnlearnableError(f"clean_x {tuple(clean_x.shape)} and protected_x {tuple(protected_x.shape)} must "
                               "hold the same images")
    yy = as_labels(y, len(clean_x), num_classes)
    k = int(num_classes if num_classes is not None else int(yy.max()) + 1)
    was_training = model.training
    model.eval()
    out = np.full(k, np.nan)
    try:
        for c in range(k):
            idx = torch.nonzero(yy == c).flatten().numpy()
            if len(idx) == 0:
                continue
            gp = _mean_grad(model, protected_x, yy, idx, wrt, batch_size)
            gc = _mean_grad(model, clean_x, yy, idx, wrt, batch_size)
            denom = float(gp.norm() * gc.norm())
            if denom > 0:
                out[c] = float(gp @ gc) / denom
    finally:
        model.train(was_training)
    return out
