"""UEraser: erase unlearnable-example shortcuts by (adversarial) augmentation.

Qin et al., "Learning the Unlearnable: Adversarial Augmentations Suppress
Unlearnable Example Attacks", arXiv 2303.15127 (ICCV 2023 workshops); code ``lafeat/ueraser``,
re-used in APBench (``lafeat/apbench``). Specification: ``specs/BASELINES.md`` §10.1.

Three registered variants:

=================  ==========================================================================
``ueraser-lite``   one augmented copy per image, every epoch (an ``augment`` hook)
``ueraser``        the max-loss copy among ``repeats`` = 5 for the first ``max_fraction`` of
                   the run (paper: 60 of 200 epochs, so 0.3), then like Lite
``ueraser-max``    the max-loss copy throughout (APBench ``--repeat_epoch 300``)
=================  ==========================================================================

Max-loss copy: the objective is ``L = mean_i max_k loss(f(A_k(x_i)), y_i)``. The gradient of
a max is the gradient of its arg-max term (almost everywhere; a sub-gradient at ties), so
training on the batch made of each sample's highest-loss copy gives exactly the gradient of
``L``, when a sample's loss does not depend on the rest of its batch. The ``adversary`` hook
therefore builds ``repeats`` augmented copies of the batch, runs one ``torch.no_grad()``
forward over all of them (the model stays in its current, train, mode), picks per sample the
copy with the highest cross-entropy (hard or soft labels) and returns that batch; the engine's
ordinary step then back-propagates the max loss, with one backward instead of ``repeats``.
Where it is not exact: BatchNorm in train mode normalises the selection pass with the
statistics of all ``repeats * B`` copies (as the reference, which tiles the batch and
forwards it once) but the training pass with those of the selected ``B``; the engine's bf16
autocast and label smoothing do not apply to the selection pass. The selection pass does not
change the model: its buffers (BatchNorm running statistics) are restored afterwards.

Augmentation pipeline (kornia ``AugmentationSequential`` on float images in [0, 1]):
``RandomPlasmaBrightness(roughness=(0.3, 0.7), intensity=(0.5, 1.0))``,
``RandomPlasmaContrast(roughness=(0.3, 0.7))``, ``RandomChannelShuffle(p=0.5)``, kornia's
``TrivialAugment`` (default policy). The plasma probability is ``plasma_p``: 0.5 in the
authors' library function (``lafeat/ueraser:ueraser.py``, our default), 1.0 in their EM
notebook and in APBench (``ueraser:plasma_p=1.0``). kornia's TrivialAugment picks one
operation per call for the whole batch (per-row magnitudes); we call the pipeline once per
copy, as APBench and the LSP script do, so the ``repeats`` copies get different operations
(the library function augments the tiled batch once: all copies share one operation).
``jpeg=10`` adds the ``UEraserJPEG`` variant of the library (the four operations, then a real
JPEG round trip at that quality; CPU-bound). APBench picks its JPEG variant by the attack's
name; here it is an explicit option.

Randomness: kornia draws from torch's global RNG. Every pipeline call forks the global RNG
and seeds it from the engine's generator, so the same seed gives the same training on CPU
and the global streams are left untouched. kornia is imported lazily.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F

from ..errors import UnlearnableError
from .base import Defense, draw_seeds, register_defense, seeded_global_rng

__all__ = ["UEraserLite", "UEraser", "UEraserMax", "max_loss_copies"]


def _prob(v, who: str, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
        raise UnlearnableError(f"{who}: {what} is a probability in [0, 1], got {v!r}")
    return float(v)


def _build_pipeline(plasma_p: float, shuffle_p: float):
    try:
        import kornia.augmentation as K
        from kornia.augmentation.auto import TrivialAugment
    except ImportError:  # pragma: no cover - depends on the environment
        raise UnlearnableError("UEraser needs kornia: pip install kornia") from None
    return K.AugmentationSequential(
        K.RandomPlasmaBrightness(roughness=(0.3, 0.7), intensity=(0.5, 1.0), p=plasma_p),
        K.RandomPlasmaContrast(roughness=(0.3, 0.7), p=plasma_p),
        K.RandomChannelShuffle(p=shuffle_p),
        TrivialAugment(),
    )


def max_loss_copies(model: torch.nn.Module, copies: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per sample, the copy with the highest cross-entropy under ``model``.

    Args:
        model: the classifier (left in its mode; its buffers are restored afterwards).
        copies: ``(K, B, C, H, W)`` augmented copies of one batch.
        y: ``(B,)`` int64 labels or ``(B, K')`` label distributions.

    Returns:
        ``(B, C, H, W)``: sample ``i`` taken from copy ``argmax_k loss(model(copies[k, i]), y[i])``.
    """
    k, b = copies.shape[:2]
    flat = copies.reshape(k * b, *copies.shape[2:])
    yk = y.repeat(k) if y.ndim == 1 else y.repeat(k, 1)
    buffers = list(model.buffers())
    saved = [t.clone() for t in buffers]
    with torch.no_grad():
        logits = model(flat)
        losses = F.cross_entropy(logits.float(), yk, reduction="none").view(k, b)
        for t, s in zip(buffers, saved):
            t.copy_(s)
    pick = losses.argmax(0)  # (B,)
    return copies[pick, torch.arange(b, device=copies.device)]


@register_defense("ueraser-lite")
class UEraserLite(Defense):
    """UEraser-Lite (Qin et al., arXiv 2303.15127): one strongly augmented copy per image, every epoch.

    Args:
        plasma_p: probability of each plasma operation (authors' library: 0.5; APBench: 1.0).
        shuffle_p: probability of the channel shuffle (0.5 everywhere).
        jpeg: JPEG quality applied after the four operations (0: off; ``UEraserJPEG``: 10).
    """

    def __init__(self, plasma_p: float = 0.5, shuffle_p: float = 0.5, jpeg: int = 0):
        self.plasma_p = _prob(plasma_p, self._who(), "plasma_p")
        self.shuffle_p = _prob(shuffle_p, self._who(), "shuffle_p")
        if isinstance(jpeg, bool) or not isinstance(jpeg, int) or not 0 <= jpeg <= 100:
            raise UnlearnableError(f"{self._who()}: jpeg is a JPEG quality in [1, 100] or 0 (off), got {jpeg!r}")
        self.jpeg = jpeg
        self._pipe = None
        self._fallback = torch.Generator().manual_seed(0)  # for an adversary called without augment

    def _who(self) -> str:
        return type(self).__dict__.get("registry_name", "ueraser")

    def _augment_with_seed(self, x: torch.Tensor, seed: int) -> torch.Tensor:
        if self._pipe is None:
            self._pipe = _build_pipeline(self.plasma_p, self.shuffle_p)
        with seeded_global_rng(x.device, seed):
            out = self._pipe(x.float()).clamp_(0, 1)
        if self.jpeg:
            from .squeeze import jpeg_roundtrip

            u8 = out.mul(255).round_().to(torch.uint8)
            out = jpeg_roundtrip(u8, self.jpeg).float().div_(255)
        return out.to(x.dtype)

    def augment(self, x, y, generator=None):
        if x.shape[0] == 0:
            return x, y
        (seed,) = draw_seeds(1, generator, x.device)
        return self._augment_with_seed(x, seed), y


@register_defense("ueraser")
class UEraser(UEraserLite):
    """UEraser (Qin et al., arXiv 2303.15127): max-loss copy of ``repeats`` for the first part of the run.

    The authors' README schedule: 200 epochs, the first 60 adversarial (max over K = 5 copies),
    then single augmentation; we express the 60 as a fraction of the run, ``max_fraction`` =
    0.3, so short recipes keep the proportion (rounded, at least one epoch when positive);
    ``max_epochs`` gives an absolute count instead (APBench: 50). Epochs come from
    :meth:`start_epoch` (1-based); before the first call the defense is in its max phase.

    Args:
        repeats: augmented copies per image in the max phase (paper: 5).
        max_fraction: fraction of the epochs trained on the max-loss copy (paper: 60/200).
        max_epochs: absolute number of max-phase epochs; overrides ``max_fraction`` when set.
        plasma_p: see :class:`UEraserLite`.
        shuffle_p: see :class:`UEraserLite`.
        jpeg: see :class:`UEraserLite`.
    """

    def __init__(
        self,
        repeats: int = 5,
        max_fraction: float = 0.3,
        max_epochs: Optional[int] = None,
        plasma_p: float = 0.5,
        shuffle_p: float = 0.5,
        jpeg: int = 0,
    ):
        super().__init__(plasma_p=plasma_p, shuffle_p=shuffle_p, jpeg=jpeg)
        if isinstance(repeats, bool) or not isinstance(repeats, int) or not 1 <= repeats <= 64:
            raise UnlearnableError(f"{self._who()}: repeats must be an integer in [1, 64], got {repeats!r}")
        self.repeats = repeats
        self.max_fraction = _prob(max_fraction, self._who(), "max_fraction")
        if max_epochs is not None and (isinstance(max_epochs, bool) or not isinstance(max_epochs, int) or max_epochs < 0):
            raise UnlearnableError(f"{self._who()}: max_epochs must be a non-negative integer or none, got {max_epochs!r}")
        self.max_epochs = max_epochs
        self._epoch = 1
        self._epochs: Optional[int] = None
        self._seeds: Optional[List[int]] = None

    # -- schedule --------------------------------------------------------------------------
    def prepare(self, context: Dict[str, Any]) -> None:
        if context.get("epochs") is not None:
            self._epochs = int(context["epochs"])

    def start_epoch(self, epoch: int, epochs: int) -> None:
        self._epoch, self._epochs = int(epoch), int(epochs)

    def max_phase_epochs(self) -> Optional[int]:
        """Epochs trained on the max-loss copy (``None`` while the run length is unknown)."""
        if self.max_epochs is not None:
            return self.max_epochs
        if self._epochs is None:
            return None
        return max(1, round(self.max_fraction * self._epochs)) if self.max_fraction > 0 else 0

    def in_max_phase(self) -> bool:
        """Whether the current epoch trains on the max-loss copy."""
        w = self.max_phase_epochs()
        if w is None:  # run length unknown: max phase unless it is switched off
            return self.max_fraction > 0
        return self._epoch <= w

    # -- hooks -----------------------------------------------------------------------------
    def augment(self, x, y, generator=None):
        if not self.in_max_phase():
            self._seeds = None
            return super().augment(x, y, generator)
        # Max phase: the copies are made in the adversary (it sees the batch after any later
        # augment of a composition); draw their seeds here, from the engine's generator.
        self._seeds = draw_seeds(self.repeats, generator, x.device)
        return x, y

    def adversary(self, model, x, y):
        if not self.in_max_phase() or x.shape[0] == 0:
            return x
        seeds, self._seeds = self._seeds, None
        if seeds is None or len(seeds) != self.repeats:
            seeds = draw_seeds(self.repeats, self._fallback, torch.device("cpu"))
        copies = torch.stack([self._augment_with_seed(x, s) for s in seeds])
        return max_loss_copies(model, copies, y)


@register_defense("ueraser-max")
class UEraserMax(UEraser):
    """UEraser-Max (Qin et al., arXiv 2303.15127; APBench ``--repeat_epoch 300``): the
    max-loss copy of ``repeats`` throughout training.

    Args:
        repeats: augmented copies per image (paper: 5).
        plasma_p: see :class:`UEraserLite`.
        shuffle_p: see :class:`UEraserLite`.
        jpeg: see :class:`UEraserLite`.
    """

    def __init__(self, repeats: int = 5, plasma_p: float = 0.5, shuffle_p: float = 0.5, jpeg: int = 0):
        super().__init__(repeats=repeats, max_fraction=1.0, plasma_p=plasma_p, shuffle_p=shuffle_p, jpeg=jpeg)

    def in_max_phase(self) -> bool:
        return True
