"""Random-noise baselines: sample-wise (`random`) and class-wise (`random-classwise`).

Class-wise random noise is the simplest shortcut: one fixed pattern per class makes CIFAR-10
unlearnable (10.00% measured with ±8/255), while independent noise per image does nothing
(88.1%). Used as controls in Huang et al., "Unlearnable Examples", ICLR 2021.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..budget import Budget
from ..data.imageset import ImageSet
from ..errors import UnlearnableError
from . import register_method
from .base import (Deltas, Images, Method, PerImageMethod, Progress, class_patterns_at, rng_for, worked_at_own_size,
                   working_size_of)
from .resolution import patterns_through_resize

_DISTS = ("sign", "uniform")


def _draw(rng: np.random.Generator, shape, eps: float, dist: str) -> np.ndarray:
    if dist == "sign":
        return (rng.integers(0, 2, size=shape, dtype=np.int8) * 2 - 1).astype(np.float32) * eps
    return rng.uniform(-eps, eps, size=shape).astype(np.float32)


def _check_dist(dist: str) -> None:
    if dist not in _DISTS:
        raise UnlearnableError(f"dist must be one of {', '.join(_DISTS)}, got {dist!r}")


@register_method("random")
@dataclass
class RandomNoise(Method):
    """Sample-wise random noise: an independent ±ε (``sign``) or U(−ε, ε) (``uniform``) δ per image.

    Reference: the random-noise control of Huang et al., "Unlearnable Examples: Making Personal
    Data Unexploitable", ICLR 2021. Bounded in ℓ∞; needs no labels.

    Args:
        dist: ``"sign"`` for ±ε per element, ``"uniform"`` for U(−ε, ε).
    """

    dist: str = "sign"
    needs_labels = False
    paper = "Huang et al., Unlearnable Examples, ICLR 2021 (random-noise control)"

    def perturb(self, data: ImageSet, budget: Budget, *, seed: int, device: str,
                workdir: Optional[str] = None, progress: Progress = None) -> Deltas:
        _check_dist(self.dist)
        rng = rng_for(seed, "random")
        if isinstance(data.images, np.ndarray):
            return _draw(rng, data.images.shape, budget.eps, self.dist)
        return [_draw(rng, im.shape, budget.eps, self.dist) for im in data.images]


@register_method("random-classwise")
@dataclass
class RandomClasswiseNoise(PerImageMethod):
    """Class-wise random noise: one fixed ±ε or uniform pattern per class, added to all its images.

    Reference: the class-wise random-noise control of Huang et al., ICLR 2021. Patterns are
    drawn at the set's native size, or at ``pattern_size``² for mixed or large images.

    Args:
        dist: ``"sign"`` (±ε) or ``"uniform"`` (U(−ε, ε)).
        pattern_size: pattern side for sets of mixed or large image sizes.
        resize: for those, ``through`` (default): each image gets the ±ε δ whose resize to
            ``pattern_size``² correlates most with its class's pattern
            (:func:`~unlearnable.methods.resolution.patterns_through_resize`); ``nearest``: the
            pattern resized to the image with nearest neighbour.
    """

    dist: str = "sign"
    pattern_size: int = 32
    resize: str = "through"
    paper = "Huang et al., Unlearnable Examples, ICLR 2021 (class-wise random-noise control)"

    def plan(self, data: ImageSet, shapes, budget: Budget, *, seed: int, device: str):
        _check_dist(self.dist)
        hw = working_size_of(shapes, self.pattern_size)
        patterns = _draw(rng_for(seed, "random-classwise"), (data.num_classes,) + tuple(hw) + (3,), budget.eps, self.dist)
        return {"patterns": patterns, "labels": data.require_labels("a class-wise perturbation"),
                "through": self.resize == "through" and not worked_at_own_size(shapes, self.pattern_size)}

    def deltas_for(self, state, images: Images, idx: np.ndarray, budget: Budget, *, device: str) -> Deltas:
        labels = state["labels"][idx]
        if state["through"]:
            return patterns_through_resize(images, labels, state["patterns"], budget.eps, device=device)
        return class_patterns_at(images, labels, state["patterns"], "nearest")

    @property
    def mixed_size_caveat(self) -> str:  # type: ignore[override]
        if self.resize == "through":
            return ""
        return ("with resize=nearest kept little of its protection, when measured, on images a trainer resizes: a "
                "32-px victim on CIFAR-10 upscaled to 40-72 px reached 54.80 % vs 59.40 % clean, 47.15 % with "
                "resize=through")

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_dist(self.dist)
        if self.resize not in ("through", "nearest"):
            raise UnlearnableError(f"random-classwise: resize must be one of through, nearest, got {self.resize!r}")
