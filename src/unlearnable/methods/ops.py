"""OPS: the one-pixel shortcut (Wu et al., ICLR 2023).

Reference: Shutong Wu, Sizhe Chen, Cihang Xie, Xiaolin Huang, "One-Pixel Shortcut: on the
Learning Preference of Deep Neural Networks", ICLR 2023. Model-free and class-wise
(specs/BASELINES.md §8): for each class k = 0..K−1 in order, choose one pixel position p and
one RGB-cube corner colour c ∈ {0, 1}³ and set that pixel to c in **every** image of the class.

Search (exact, vectorised): with X_k the class's images in [0, 1],

    score(p, v) = mean(D) / std(D),   D = |c_v − X_k[:, p, :]|

over all n_k·3 entries jointly (population std). Colour code v = 0..7 is
c = (⌊v/4⌋, ⌊v/2⌋ mod 2, v mod 2) in RGB order; p = r·W + s (row-major). |c − x| is x where
c = 0 and 1 − x where c = 1, so every score comes from per-pixel sums Σx and Σx² of the class:
one pass over the images, then 8 × H·W closed-form scores. A (p, v) pair chosen by an earlier
class scores 0 (the same position with another colour stays allowed). The argmax takes the
**last** index on ties, in the flattened (p, v) order, p-major, as the official argsort does.

Decisions:

* A zero std (every entry equally far from c) scores +∞ when the mean is positive and 0 when
  it is 0 (the pixel already equals c in every image): 0/0 would be NaN, which the official
  argsort would pick, changing nothing.
* The budget is ℓ0 = number of pixel positions per image (default 1). With ``l0:k`` the k
  best (p, v) pairs with distinct positions are used. The magnitude is unbounded: the changed
  pixel ends at 0 or 255 per channel, so the measured ℓ∞ reaches 255 and the manifest shows it.
* Application is a replacement, not an additive δ clipped to a radius: :meth:`OPS.apply`
  writes the corner colour into the pixel (``perturb`` still returns the equivalent δ = c − x
  at that pixel, 0 elsewhere). An image that already has colour c there is unchanged (ℓ0 = 0).
* Mixed sizes: positions live on a ``pattern_size``² grid (32²) and map to each image by
  nearest-neighbour (grid cell (r, s) → pixel (⌊rH/G⌋, ⌊sW/G⌋)); the scores are computed from
  exactly those pixels. Uniform sets of any size are searched at their native size (the sums
  are cheap).
* The search has no randomness: the output does not depend on the seed (``seeded = False``).
  Classes are keyed by label and the sums do not depend on image order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, List, Optional, Tuple

import numpy as np

from ..budget import Budget
from ..data.imageset import ImageSet, Images
from ..errors import UnlearnableError
from . import register_method
from .base import Deltas, Method, Progress

#: Colour code v → RGB corner in {0, 1}³.
CORNERS = np.array([[v // 4, (v // 2) % 2, v % 2] for v in range(8)], dtype=np.float64)


def pixel_scores(s1: np.ndarray, s2: np.ndarray, n: int) -> np.ndarray:
    """(P, 8) scores mean(D)/std(D) from per-pixel sums over a class.

    Args:
        s1: (P, 3) Σ x over the class's images (x in [0, 1]).
        s2: (P, 3) Σ x² over the class's images.
        n: number of images.
    """
    c = CORNERS[None]  # (1, 8, 3)
    a1, a2 = s1[:, None, :], s2[:, None, :]
    # Σ|c − x| = Σx (c = 0) or n − Σx (c = 1); Σ|c − x|² = Σx² or n − 2Σx + Σx².
    t1 = np.where(c == 0, a1, n - a1).sum(axis=2)
    t2 = np.where(c == 0, a2, n - 2 * a1 + a2).sum(axis=2)
    m = 3 * n
    mean = t1 / m
    std = np.sqrt(np.maximum(t2 / m - mean ** 2, 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        score = np.where(std > 1e-12, mean / np.where(std > 1e-12, std, 1.0),
                         np.where(mean > 1e-12, np.inf, 0.0))
    return score


def choose(scores: np.ndarray, taken: set, k: int) -> List[Tuple[int, int]]:
    """The k best (position, colour) pairs with distinct positions; ties go to the last index."""
    flat = scores.reshape(-1).copy()
    for p, v in taken:
        flat[p * 8 + v] = 0.0
    chosen: List[Tuple[int, int]] = []
    for _ in range(min(k, scores.shape[0])):
        # the last occurrence of the maximum in the flattened (p, v) order
        j = len(flat) - 1 - int(np.argmax(flat[::-1]))
        p, v = divmod(j, 8)
        chosen.append((p, v))
        flat[p * 8:p * 8 + 8] = -np.inf  # one colour per position
    return chosen


@register_method("ops")
@dataclass
class OPS(Method):
    """One-pixel shortcut: per class, one pixel set to one RGB corner colour in every image.

    Wu et al., "One-Pixel Shortcut", ICLR 2023. Bounded in ℓ0 (default 1 pixel); the magnitude
    is unbounded (measured ℓ∞ up to 255).

    Args:
        pattern_size: side of the position grid for sets of mixed image sizes.
    """

    pattern_size: int = 32
    budget_norm = "l0"
    default_budget = "l0:1"
    seeded: ClassVar[bool] = False
    paper = "Wu et al., One-Pixel Shortcut: on the Learning Preference of Deep Neural Networks, ICLR 2023"
    mixed_size_caveat = ("lost its protection, when measured, on images a trainer resizes (the downsampling "
                         "averages its pixel away): a 32-px victim on CIFAR-10 upscaled to 40-72 px reached "
                         "60.70 % vs 59.40 % clean (28.10 % vs 61.05 % on the original 32-px images); pil keeps "
                         "protecting such images")

    def _grid(self, data: ImageSet) -> Tuple[int, int]:
        if data.uniform:
            return data.shape_of(0)
        return (self.pattern_size, self.pattern_size)

    def _pixels(self, im: np.ndarray, grid: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray]:
        """Rows and columns of ``im`` sampled on the position grid (nearest neighbour)."""
        (h, w), (g_h, g_w) = im.shape[:2], grid
        return (np.arange(g_h) * h) // g_h, (np.arange(g_w) * w) // g_w

    def plan(self, data: ImageSet, k: int = 1) -> List[List[Tuple[int, int]]]:
        """Per class, the chosen (position index on the grid, colour code) pairs."""
        labels = data.require_labels("ops")
        grid = self._grid(data)
        P = grid[0] * grid[1]
        taken: set = set()
        result: List[List[Tuple[int, int]]] = []
        for c in range(data.num_classes):
            idx = np.flatnonzero(labels == c)
            s1 = np.zeros((P, 3))
            s2 = np.zeros((P, 3))
            for s in range(0, len(idx), 1024):
                part = idx[s:s + 1024]
                if isinstance(data.images, np.ndarray) and data.shape_of(0) == grid:
                    x = data.images[part].astype(np.float64).reshape(len(part), P, 3) / 255.0
                else:
                    x = np.stack([data.images[i][np.ix_(*self._pixels(data.images[i], grid))]
                                  for i in part]).astype(np.float64).reshape(len(part), P, 3) / 255.0
                s1 += x.sum(axis=0)
                s2 += (x * x).sum(axis=0)
            if len(idx) == 0:
                result.append([])
                continue
            chosen = choose(pixel_scores(s1, s2, len(idx)), taken, k)
            taken.update(chosen)
            result.append(chosen)
        return result

    def perturb(self, data: ImageSet, budget: Budget, *, seed: int, device: str,
                workdir: Optional[str] = None, progress: Progress = None) -> Deltas:
        plan = self.plan(data, int(budget.eps))
        grid = self._grid(data)
        labels = data.labels
        out = []
        for i in range(len(data)):
            im = data.images[i]
            d = np.zeros(im.shape, np.float32)
            rows, cols = self._pixels(im, grid)
            for p, v in plan[int(labels[i])]:
                r, s = divmod(p, grid[1])
                d[rows[r], cols[s]] = CORNERS[v] - im[rows[r], cols[s]] / 255.0
            out.append(d)
        return np.stack(out) if isinstance(data.images, np.ndarray) else out

    def apply(self, data: ImageSet, deltas: Deltas, budget: Budget, x_chunk: int = 4096) -> Images:
        """Replace the chosen pixels by their corner colour (exact: 0 or 255 per channel)."""
        if len(deltas) != len(data):
            raise RuntimeError(f"ops: {len(deltas)} perturbations for {len(data)} images")
        out = []
        for i in range(len(data)):
            im = data.images[i]
            d = np.asarray(deltas[i], np.float64)
            new = im.copy()
            mask = np.abs(d).max(axis=-1) > 0
            if int(mask.sum()) > int(budget.eps):
                raise RuntimeError(f"ops: {int(mask.sum())} pixels to set in image {i}, budget {budget.describe()}")
            # x + δ is exactly a corner: round away the float error, then it is 0 or 1.
            new[mask] = np.rint(im[mask] / 255.0 + d[mask]).clip(0, 1).astype(np.uint8) * 255
            out.append(new)
        return np.stack(out) if isinstance(data.images, np.ndarray) else out

    def parse_budget(self, budget=None) -> Budget:
        b = super().parse_budget(budget)
        if b.norm != "l0":
            raise UnlearnableError(f"ops is bounded in ℓ0 (pixels per image); give a budget like l0:1, not {b.spec!r}")
        return b
