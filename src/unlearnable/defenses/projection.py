"""Orthogonal Projection (OP): remove the directions a linear model finds in the training set.

Sandoval-Segura, Singla, Geiping, Goldblum, Goldstein, "What Can We Learn from Unlearnable
Datasets?" (NeurIPS 2023), §5. Many unlearnable perturbations are linearly separable shortcuts
(class-wise noise, Regions, OPS, LSP, class-wise EM). OP fits a bias-free linear classifier
``W`` (K × d, d = C·H·W) on the (poisoned) training images, orthonormalises its K rows (QR,
``Q``: d × K) and trains the victim on ``x_r = x − Q·Qᵀ·x`` — the images with the linear
classifier's directions removed. Test images are left alone. Reported (ResNet-18, CIFAR-10):
OPS 15.35 → 87.94, class-wise random noise 10.03 → 90.37, clean 94.37 → 90.16; weak against
sample-wise EM, AR and TAP (specs/METHODS.md).

Recipe (the paper's): SGD, lr 0.1, no momentum, no weight decay, batch 1024, 20 epochs
(``epochs=60`` is recommended for CIFAR-100), lr × 0.1 at 50% and 75% of the epochs;
cross-entropy on the flattened images in [0, 1]; the classifier's initial weights come from
the training run's seeded generator.

Back to uint8 (this package's contract for ``transform_dataset``). The paper trains on the
float ``x_r``, which leaves [0, 1]. Two choices keep the rounding/clipping step minimal:

* ``center=True`` (default) projects around the training set's mean image ``m``:
  ``x_r = x − Q·Qᵀ·(x − m)``. This differs from the paper's ``x_r`` by the constant vector
  ``Q·Qᵀ·m`` (the same for every image, so it carries no class information and a network
  with biases absorbs it), but the removed component now has mean zero over the set, so far
  fewer pixels leave [0, 1]. ``center=False`` is the paper's formula exactly.
* The result is rounded to the nearest grey level and clipped to [0, 255]. Clipping can put a
  trace of the removed directions back; :attr:`OrthogonalProjection.last_stats` reports the
  fraction of clipped values so that this can be checked (a few per cent at most on the
  planted-pattern tests with ``center=True``).

The seed paper's numbers come with its victims' stronger augmentation and CutMix on half of
the batches: ``op+strong-aug+cutmix:p=0.5`` (:mod:`unlearnable.defenses.strong`). Measured on
all of CIFAR-10 with ``screen`` victims (``benchmarks/RESULTS.md``, "Orthogonal Projection
against class-wise noise"): class-wise noise 10.25 % → 10.33 % with projection plus crop and
flip, → 83.98 % with the paper's recipe. 42.5 % of each class pattern's norm lies outside the
span of the linear classifier's weights (``benchmarks/bench_projection.py``); a linear probe
no longer finds it, a network does unless the augmentation breaks it up.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from ..errors import UnlearnableError
from .base import Defense, register_defense

__all__ = ["OrthogonalProjection", "fit_linear_classifier", "orthogonal_projection"]


def _flat(x: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) → float (B, C·H·W) in [0, 1], logical NCHW order."""
    return x.float().div_(255.0).reshape(x.shape[0], -1)


def fit_linear_classifier(x: torch.Tensor, y: torch.Tensor, num_classes: int, *, epochs: int = 20,
                          lr: float = 0.1, batch_size: int = 1024,
                          generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Fit a bias-free linear classifier on uint8 images with the OP paper's SGD recipe.

    Args:
        x: ``(N, C, H, W)`` uint8 images (any device).
        y: ``(N,)`` int64 labels.
        num_classes: K.
        epochs: passes over the data; lr × 0.1 at 50% and 75% of them.
        lr: initial learning rate (plain SGD, no momentum, no weight decay).
        batch_size: images per step.
        generator: random stream (initial weights, shuffling) on ``x``'s device.

    Returns:
        ``W``, a ``(K, d)`` float32 tensor.
    """
    n = x.shape[0]
    d = x[0].numel()
    dev = x.device
    bound = 1.0 / d ** 0.5  # nn.Linear's default initialisation range
    w = (torch.rand((num_classes, d), device=dev, generator=generator) * 2 - 1).mul_(bound).requires_grad_(True)
    opt = torch.optim.SGD([w], lr=lr, momentum=0.0)
    milestones = (0.5 * epochs, 0.75 * epochs)
    with torch.enable_grad():
        for epoch in range(epochs):
            for group in opt.param_groups:
                group["lr"] = lr * 0.1 ** sum(epoch >= m for m in milestones)
            perm = torch.randperm(n, device=dev, generator=generator)
            for i in range(0, n, batch_size):
                idx = perm[i:i + batch_size]
                loss = F.cross_entropy(_flat(x[idx]) @ w.t(), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    return w.detach()


def orthogonal_projection(x: torch.Tensor, w: torch.Tensor, *, center: bool = True, chunk: int = 4096
                          ) -> Tuple[torch.Tensor, Dict[str, float]]:
    """Project uint8 images onto the orthogonal complement of ``w``'s rows; back to uint8.

    Args:
        x: ``(N, C, H, W)`` uint8 images.
        w: ``(K, d)`` directions to remove (``d = C·H·W``), orthonormalised here by QR.
        center: project around the set's mean image (see the module docstring).
        chunk: images per matrix product (memory bound).

    Returns:
        ``(x_r, stats)``: uint8 images of ``x``'s shape, and ``{"clipped_fraction": ...,
        "removed_norm": mean ‖Q·Qᵀ·(x − m)‖₂ per image in the [0, 1] scale}``.
    """
    n = x.shape[0]
    q, _ = torch.linalg.qr(w.t().float())  # (d, K), orthonormal columns spanning W's rows
    mean = torch.zeros(q.shape[0], device=x.device)
    if center:
        for i in range(0, n, chunk):
            mean += _flat(x[i:i + chunk]).sum(0)
        mean /= max(n, 1)
    out = torch.empty_like(x)
    clipped = torch.zeros((), device=x.device)
    removed = torch.zeros((), device=x.device)
    for i in range(0, n, chunk):
        f = _flat(x[i:i + chunk])
        part = ((f - mean) @ q) @ q.t()
        r = (f - part).mul_(255.0).round_()
        clipped += ((r < 0) | (r > 255)).sum()
        removed += part.norm(dim=1).sum()
        out[i:i + chunk] = r.clamp_(0, 255).to(torch.uint8).reshape(f.shape[0], *x.shape[1:])
    total = max(x.numel(), 1)
    return out, {"clipped_fraction": clipped.item() / total, "removed_norm": removed.item() / max(n, 1)}


@register_defense("op")
class OrthogonalProjection(Defense):
    """Orthogonal Projection (Sandoval-Segura et al., NeurIPS 2023): remove a linear model's directions.

    A ``transform_dataset`` defense: fits a bias-free linear classifier on the training images
    (SGD lr 0.1, batch 1024, lr × 0.1 at 50%/75%) and projects every training image onto the
    orthogonal complement of its K weight vectors. Compose with augmentation as usual
    (``op+standard``; the paper's recipe: ``op+strong-aug+cutmix:p=0.5``).

    Args:
        epochs: epochs of the linear classifier (20 in the paper for CIFAR-10; 60 recommended
            for CIFAR-100).
        lr: its learning rate.
        batch_size: its batch size.
        center: project around the mean image (default; fewer clipped pixels) instead of the
            origin (the paper's formula); the two differ by one constant image.
    """

    def __init__(self, epochs: int = 20, lr: float = 0.1, batch_size: int = 1024, center: bool = True):
        if int(epochs) != epochs or epochs < 1:
            raise UnlearnableError(f"op: epochs must be a positive integer, got {epochs!r}")
        if not lr > 0 or int(batch_size) != batch_size or batch_size < 1:
            raise UnlearnableError(f"op: need lr > 0 and a positive integer batch_size, got {lr!r}, {batch_size!r}")
        self.epochs = int(epochs)
        self.lr = float(lr)
        self.batch_size = int(batch_size)
        self.center = bool(center)
        self._num_classes: Optional[int] = None
        #: after transform_dataset: clipped fraction, mean removed norm, linear train accuracy
        self.last_stats: Dict[str, float] = {}

    def prepare(self, context: Dict[str, Any]) -> None:
        self._num_classes = context.get("num_classes")

    def transform_dataset(self, x: torch.Tensor, y: torch.Tensor, generator: Optional[torch.Generator] = None
                          ) -> Tuple[torch.Tensor, torch.Tensor]:
        k = int(self._num_classes or int(y.max().item()) + 1)
        w = fit_linear_classifier(x, y, k, epochs=self.epochs, lr=self.lr, batch_size=self.batch_size,
                                  generator=generator)
        with torch.no_grad():
            correct = sum(int(((_flat(x[i:i + 4096]) @ w.t()).argmax(1) == y[i:i + 4096]).sum())
                          for i in range(0, x.shape[0], 4096))
            xr, stats = orthogonal_projection(x, w, center=self.center)
        stats["linear_train_acc"] = correct / max(x.shape[0], 1)
        self.last_stats = stats
        return xr, y
