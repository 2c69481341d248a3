"""The stronger augmentation that the Orthogonal Projection paper's victims train with.

Sandoval-Segura, Singla, Geiping, Goldblum, Goldstein, "What Can We Learn from Unlearnable
Datasets?" (NeurIPS 2023). Its OP training script applies, unless told otherwise:
rotation by up to ±10°, an affine map with shear up to ±10° and scale in [0.8, 1.2], colour
jitter (brightness, contrast and saturation factors in [0.8, 1.2]), then the standard random
crop (padding 4) and horizontal flip; and CutMix on half of the batches. The paper's OP numbers
(class-wise noise 10.03 → 90.37 %) come from that recipe, which here is
``op+strong-aug+cutmix:p=0.5``. Projection with crop and flip alone leaves part of a class-wise
pattern in the images, and a network still finds it: on all of CIFAR-10 a ``screen`` victim
reached 10.33 % that way and 83.98 % with this recipe (``benchmarks/RESULTS.md``,
"Orthogonal Projection against class-wise noise").

The geometric operations resample with nearest neighbours and fill with black, as the
reference's torchvision defaults do; they and the jitter are kornia's batched augmentations,
each sample drawing its own parameters. The model inputs stay in [0, 1] (the reference
normalises by the CIFAR mean and std; our models have no hidden normalisation). Randomness
as in UEraser: torch's global RNG is forked and seeded from the engine's generator.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..errors import UnlearnableError
from ..train.augment import random_crop, random_flip
from .base import Defense, draw_seeds, register_defense, seeded_global_rng

__all__ = ["StrongAugment"]


@register_defense("strong-aug")
class StrongAugment(Defense):
    """The OP paper's victim augmentation (Sandoval-Segura et al., NeurIPS 2023).

    Rotation, shear and scale, colour jitter, then crop and flip; see the module docstring.

    Args:
        degrees: maximum rotation in degrees.
        shear: maximum shear angle in degrees (horizontal).
        scale: the scale factor is drawn from ``[1 - scale, 1 + scale]``.
        jitter: brightness, contrast and saturation factors drawn from ``[1 - jitter, 1 + jitter]``.
        pad: padding of the random crop.
        flip: probability of a horizontal flip.
    """

    def __init__(self, degrees: float = 10.0, shear: float = 10.0, scale: float = 0.2, jitter: float = 0.2,
                 pad: int = 4, flip: float = 0.5):
        for name, v, top in (("degrees", degrees, 180.0), ("shear", shear, 89.0), ("scale", scale, 0.99),
                             ("jitter", jitter, 0.99), ("flip", flip, 1.0)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= top:
                raise UnlearnableError(f"strong-aug: {name} must be a number in [0, {top:g}], got {v!r}")
        if isinstance(pad, bool) or int(pad) != pad or pad < 0:
            raise UnlearnableError(f"strong-aug: pad must be a non-negative integer, got {pad!r}")
        self.degrees, self.shear, self.scale, self.jitter = float(degrees), float(shear), float(scale), float(jitter)
        self.pad, self.flip = int(pad), float(flip)
        self._pipe = None

    def _pipeline(self):
        if self._pipe is None:
            try:
                import kornia.augmentation as K
            except ImportError:  # pragma: no cover - depends on the environment
                raise UnlearnableError("strong-aug needs kornia: pip install kornia") from None
            j = self.jitter
            self._pipe = K.AugmentationSequential(
                K.RandomRotation(degrees=self.degrees, resample="nearest", p=1.0),
                K.RandomAffine(degrees=0.0, shear=self.shear, scale=(1 - self.scale, 1 + self.scale),
                               resample="nearest", padding_mode="zeros", p=1.0),
                K.ColorJitter(brightness=j, contrast=j, saturation=j, p=1.0),
            )
        return self._pipe

    def augment(self, x: torch.Tensor, y: torch.Tensor, generator: Optional[torch.Generator] = None
                ) -> Tuple[torch.Tensor, torch.Tensor]:
        if x.shape[0] == 0:
            return x, y
        (seed,) = draw_seeds(1, generator, x.device)
        with seeded_global_rng(x.device, seed):
            out = self._pipeline()(x.float()).clamp_(0, 1).to(x.dtype)
        out = random_crop(out, self.pad, generator)
        return random_flip(out, self.flip, generator), y
