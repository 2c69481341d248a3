"""Regions-k: class-wise blocks of constant colour noise.

Reference: the "Regions" synthetic shortcut of Sandoval-Segura et al., "Autoregressive
Perturbations for Data Poisoning", NeurIPS 2022 (used as a baseline by "What Can We Learn from
Unlearnable Datasets?", NeurIPS 2023). Per class, k Bernoulli RGB vectors scaled to ±ε, each
repeated over one block of a √k × √k grid: at 32×32 with k = 4, four 16×16 blocks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..budget import Budget
from ..data.imageset import ImageSet
from ..errors import UnlearnableError
from . import register_method
from .base import Deltas, Images, PerImageMethod, class_patterns_at, rng_for


def regions_patterns(num_classes: int, k: int, eps: float, rng: np.random.Generator) -> np.ndarray:
    """(num_classes, g, g, 3) ±eps block colours, g = √k; resize with nearest to apply."""
    g = math.isqrt(k)
    signs = rng.integers(0, 2, size=(num_classes, g, g, 3), dtype=np.int8) * 2 - 1
    return signs.astype(np.float32) * eps


@register_method("regions-4")
@dataclass
class Regions(PerImageMethod):
    """Regions-k (class-wise): per class, k random ±ε RGB colours, each filling one grid block.

    Blocks are defined relative to each image's size (a √k × √k grid), so the same pattern
    applies at any resolution.

    Args:
        k: number of blocks; a perfect square (4 → 2 × 2 grid).
    """

    k: int = 4
    paper = "Sandoval-Segura et al., Autoregressive Perturbations for Data Poisoning, NeurIPS 2022 (Regions-k)"

    def plan(self, data: ImageSet, shapes, budget: Budget, *, seed: int, device: str):
        if self.k < 1 or math.isqrt(self.k) ** 2 != self.k:
            raise UnlearnableError(f"regions: k must be a perfect square (1, 4, 9, ...), got {self.k}")
        return {"patterns": regions_patterns(data.num_classes, self.k, budget.eps, rng_for(seed, "regions", self.k)),
                "labels": data.require_labels("a class-wise perturbation")}

    def deltas_for(self, state, images: Images, idx: np.ndarray, budget: Budget, *, device: str) -> Deltas:
        # Nearest-neighbour resizing of a g×g grid gives equal blocks at every image size.
        return class_patterns_at(images, state["labels"][idx], state["patterns"], "nearest")
