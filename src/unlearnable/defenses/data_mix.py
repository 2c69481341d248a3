"""Trainer-side data choices: a clean fraction of the training set, and early stopping.

* ``clean-mix`` — the trainer also holds part of the training set clean (partial protection:
  the data owner protected only what was published, or an older clean copy leaked). A seeded
  random fraction η of the training images is replaced by their clean counterparts. Fu et al.
  (REM, ICLR 2022) and Huang et al. (EM, ICLR 2021 §4.2) show that a small clean fraction
  already lets the victim learn the clean part; this defense measures it for a given η.
  Needs the clean images: the audit provides them with ``--clean``.
* ``early-stop`` — a real trainer holds out part of its (protected) training data as a
  validation set and keeps the epoch with the best validation accuracy (ordinary model
  selection; the DFR analysis of Sandoval-Segura et al., NeurIPS 2023, shows that useful
  features can exist at some epoch of a run on protected data). The engine (``train_victim``) reads this defense's
  :meth:`EarlyStop.validation_split` and ``patience`` and reports ``selected_epoch`` and
  ``selected_acc`` (clean test accuracy at the selected epoch). The validation set is drawn
  from the protected data — the only data such a trainer has — so its accuracy rewards the
  shortcut too; that is the realistic setting.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch

from ..errors import UnlearnableError
from .base import Defense, register_defense

__all__ = ["CleanMix", "EarlyStop"]


def _clean_like(clean, x: torch.Tensor, who: str) -> torch.Tensor:
    """The clean counterparts (uint8 NHWC numpy from the context, or NCHW) as NCHW, checked
    against the training images ``x`` they stand beside."""
    if isinstance(clean, np.ndarray):
        clean = torch.from_numpy(np.ascontiguousarray(clean)).permute(0, 3, 1, 2)
    if tuple(clean.shape) != tuple(x.shape):
        raise UnlearnableError(f"{who}: clean images {tuple(clean.shape)} do not match the training images "
                               f"{tuple(x.shape)} (N, C, H, W)")
    return clean


@register_defense("clean-mix")
class CleanMix(Defense):
    """Replace a seeded random fraction η of the training images by their clean versions.

    Partial protection (the clean-ratio setting studied since EM, Huang et al., ICLR 2021): the victim trains on a mix of protected and clean images of the same
    samples. Requires ``clean_x`` (uint8 NHWC, aligned with the training images) in the
    training context; the audit passes it when run with ``--clean``.

    Args:
        eta: fraction of the training images replaced, in [0, 1] (``round(eta·N)`` images).
    """

    requires_clean = True  # the audit checks this before training

    def __init__(self, eta: float = 0.2):
        if not 0.0 <= float(eta) <= 1.0:
            raise UnlearnableError(f"clean-mix: eta is a fraction in [0, 1], got {eta!r}")
        self.eta = float(eta)
        self._clean: Optional[np.ndarray] = None
        #: indices (into the training set) replaced by the last transform_dataset
        self.last_replaced: Optional[torch.Tensor] = None

    def prepare(self, context: Dict[str, Any]) -> None:
        clean = context.get("clean_x")
        if clean is None:
            raise UnlearnableError("clean-mix needs the clean training images: run the audit with --clean CLEAN")
        self._clean = clean

    def transform_dataset(self, x: torch.Tensor, y: torch.Tensor, generator: Optional[torch.Generator] = None
                          ) -> Tuple[torch.Tensor, torch.Tensor]:
        if self._clean is None:
            raise UnlearnableError("clean-mix needs the clean training images: run the audit with --clean CLEAN")
        clean = _clean_like(self._clean, x, "clean-mix")
        n = x.shape[0]
        k = int(round(self.eta * n))
        idx = torch.randperm(n, device=x.device, generator=generator)[:k]
        out = x.clone()
        out[idx] = clean.to(x.device)[idx]
        self.last_replaced = idx
        return out, y


@register_defense("early-stop")
class EarlyStop(Defense):
    """Hold out part of the training data and keep the epoch with the best validation accuracy.

    Standard model selection by a trainer who has only the (protected) data. The engine trains
    on the rest, measures validation accuracy (no augmentation) after every epoch, and reports
    ``selected_epoch`` / ``selected_acc``; the audit table reports ``selected_acc`` for this
    defense. The split is drawn after every ``transform_dataset`` of a composition (so in
    ``clean-mix+early-stop`` the validation set holds mixed data, as that trainer's would),
    from its own seeded stream.

    Args:
        val_fraction: fraction of the training images held out (a seeded uniform random
            subset, not stratified; at least one image, and at least two left to train on).
        patience: stop training after this many epochs without a new best validation accuracy
            (``None``: train all epochs and select afterwards; the learning-rate schedule is
            that of the full run either way).
        source: ``protected`` (default): validate on the held-out protected images, all such
            a trainer has. ``clean``: validate on the clean versions of the held-out images,
            as a trainer who labelled a few clean images would (needs ``--clean``); against
            poisons whose victims pass through a good epoch before the shortcut takes over
            (PIL, measured), this is the selection that finds it.
    """

    SOURCES = ("protected", "clean")

    def __init__(self, val_fraction: float = 0.1, patience: Optional[int] = None, source: str = "protected"):
        if not 0.0 < float(val_fraction) < 1.0:
            raise UnlearnableError(f"early-stop: val_fraction must lie in (0, 1), got {val_fraction!r}")
        if patience is not None and (int(patience) != patience or patience < 1):
            raise UnlearnableError(f"early-stop: patience must be a positive integer or none, got {patience!r}")
        if source not in self.SOURCES:
            raise UnlearnableError(f"early-stop: source must be one of {', '.join(self.SOURCES)}, got {source!r}")
        self.val_fraction = float(val_fraction)
        self.patience = None if patience is None else int(patience)
        self.source = source
        self.requires_clean = source == "clean"  # the audit checks this before training
        self._clean: Optional[np.ndarray] = None

    def prepare(self, context: Dict[str, Any]) -> None:
        self._clean = context.get("clean_x") if self.source == "clean" else None
        if self.source == "clean" and self._clean is None:
            raise UnlearnableError("early-stop:source=clean needs the clean training images: run the audit with --clean")

    def validation_images(self, x: torch.Tensor, val_idx: torch.Tensor) -> torch.Tensor:
        """The images the held-out indices are validated on: the training images themselves,
        or (``source=clean``) their clean versions, NCHW uint8 on ``x``'s device."""
        if self.source == "protected":
            return x[val_idx]
        return _clean_like(self._clean, x, "early-stop")[val_idx.cpu()].to(x.device)

    def validation_split(self, n: int, generator: Optional[torch.Generator] = None
                         ) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(train_idx, val_idx)``: a seeded random split of ``range(n)`` (both sorted)."""
        if n < 3:
            raise UnlearnableError(f"early-stop needs at least 3 training images, got {n}")
        k = min(max(1, int(round(self.val_fraction * n))), n - 2)  # keep >= 2 for BatchNorm
        dev = generator.device if generator is not None else torch.device("cpu")
        perm = torch.randperm(n, device=dev, generator=generator)
        return perm[k:].sort().values, perm[:k].sort().values
