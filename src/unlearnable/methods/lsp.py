"""LSP / SN: synthetic linearly separable noise (Yu et al., KDD 2022).

Reference: Da Yu, Huishuai Zhang, Wei Chen, Jian Yin, Tie-Yan Liu, "Availability Attacks
Create Shortcuts", KDD 2022 (the "synthetic noise" / LSP poison). Model-free and sample-wise
within each class (specs/BASELINES.md §6):

1. Draw a Gaussian-cluster classification set in d = g·g·3 dimensions with scikit-learn's
   ``make_classification`` (n_informative = d, no redundant/repeated features, one cluster per
   class, ``class_sep`` = 10, ``flip_y`` = 0, balanced, hypercube, shuffled). At 32 px with
   ``patch_size`` = 8 the grid is g = 4, so d = 48.
2. Reshape each point to (g, g, 3) (H×W×C order) and repeat every entry over a patch: at
   32 px one 8×8 patch per entry.
3. Rescale each perturbation to ℓ2 = ε (default √3072·6/255 ≈ 1.304, the ℓ2 ball that
   "matches" ℓ∞ = 6/255).
4. Class c's synthetic points, in generated order, go to class c's images (BASELINES §0.4).

Decisions:

* **Seed.** ``random_state`` of ``make_classification`` is the protect seed. The official
  script does not pass one and seeds NumPy's global generator with ``--seed`` (default 1),
  which draws the same stream: ``seed=1`` with the same scikit-learn version reproduces it.
* **Sample count.** ``n_samples = C · max_c n_c`` so every class has enough points also for
  unbalanced sets; for balanced sets (CIFAR) this is exactly the official ``N``.
* **Order independence.** "The k-th image of class c" is the k-th in the order of the images'
  ``ids`` (sorted) within the class, not the order the files were read in. For CIFAR loaded
  from its pickles the ids (``<class>/<index:05d>.png``) sort in dataset order, as officially.
* **Other sizes.** The patch *grid* is fixed (g = 32 / ``patch_size``, i.e. 4×4) and each
  grid cell is stretched over ``H/g × W/g`` pixels (nearest-neighbour resize of the g×g×3
  point), so at 64 px a patch is 16×16 and mixed-size sets work at each image's native size.
  The perturbation is rescaled to ℓ2 = ε at the image's own size. The default ε is the 32-px
  value; pass a larger ℓ2 budget for larger images if the per-pixel strength should match.
* **Quantisation.** The shared step (round to nearest, clip, in-budget ℓ2 fall-back of
  :meth:`Budget.quantize`). ``faithful=True`` truncates like the official code,
  ``floor(clip(255·(x + δ), 0, 255))`` in float64 (a −0.5 grey-level mean bias). Flooring
  pushes about a quarter of the images a little above ℓ2 = ε (a negative coordinate grows by
  up to one level); in those, the fewest coordinates needed are truncated toward zero instead
  (a few per image), so the declared budget still holds. The manifest's measured norms show
  the difference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..budget import Budget
from ..data.imageset import ImageSet, Images
from ..errors import UnlearnableError
from . import register_method
from .base import Deltas, PerImageMethod, resize_delta

#: √(32·32·3) · 6/255: the ℓ2 ball matching ℓ∞ = 6/255 at 32 px (the official ``--eps 6``).
LSP_EPS = math.sqrt(3072) * 6 / 255


def class_order(data: ImageSet, labels: np.ndarray, c: int) -> np.ndarray:
    """Indices of class ``c``'s images, ordered by id (independent of the read order)."""
    idx = np.flatnonzero(labels == c)
    return idx[np.argsort(np.array([data.ids[i] for i in idx], dtype=object), kind="stable")] if len(idx) else idx


def _scale_to(delta: np.ndarray, eps: float) -> np.ndarray:
    n = float(np.linalg.norm(delta.astype(np.float64)))
    return (delta * (eps / n)).astype(np.float32) if n > 0 else delta.astype(np.float32)


@register_method("lsp")
@dataclass
class LSP(PerImageMethod):
    """LSP / synthetic noise: per-class Gaussian clusters upsampled to patches, ℓ2-bounded.

    Yu et al., "Availability Attacks Create Shortcuts", KDD 2022. Bounded in ℓ2
    (default √3072·6/255 ≈ 1.304); ℓ∞ is not bounded (≈10/255 median at 32 px).

    Args:
        patch_size: patch side at 32 px (8 → a 4×4 grid, 48 features); the grid is kept at
            other sizes and patches scale with the image.
        class_sep: ``make_classification``'s ``class_sep`` (hypercube vertices at ±class_sep).
        faithful: truncate instead of rounding, as the official code does (BASELINES §0.2).
    """

    patch_size: int = 8
    class_sep: float = 10.0
    faithful: bool = False
    budget_norm = "l2"
    default_budget = "l2:1.3041"  # √3072·6/255 = 1.30413 (RMS 6 grey levels at 32 px), rounded down
    paper = "Yu et al., Availability Attacks Create Shortcuts, KDD 2022 (LSP / synthetic noise)"
    mixed_size_caveat = ("kept little of its protection, when measured, on images a trainer resizes: a 32-px victim on "
                         "CIFAR-10 upscaled to 40-72 px reached 51.70 % vs 59.40 % clean (39.80 % vs 61.05 % on "
                         "the original 32-px images); pil keeps protecting such images")

    def grid(self) -> int:
        if self.patch_size < 1 or 32 % self.patch_size:
            raise UnlearnableError(f"lsp: patch_size must divide 32 (1, 2, 4, 8, 16, 32), got {self.patch_size}")
        return 32 // self.patch_size

    def points(self, data: ImageSet, seed: int) -> np.ndarray:
        """(N, g, g, 3) synthetic points, row i belonging to image i (see the module doc)."""
        from sklearn.datasets import make_classification

        g = self.grid()
        labels = data.require_labels("lsp")
        k = data.num_classes
        counts = np.bincount(labels, minlength=k)
        d = g * g * 3
        if k > 2 ** d:
            raise UnlearnableError(f"lsp: {k} classes need a finer patch grid than {g}×{g}")
        x, y = make_classification(
            n_samples=int(k * counts.max()), n_features=d, n_informative=d, n_redundant=0, n_repeated=0,
            n_classes=k, n_clusters_per_class=1, class_sep=float(self.class_sep), flip_y=0.0,
            hypercube=True, shift=0.0, scale=1.0, shuffle=True, weights=None, random_state=int(seed) & 0xFFFFFFFF)
        out = np.empty((len(data), g, g, 3), np.float32)
        for c in range(k):
            idx = class_order(data, labels, c)
            if len(idx):
                out[idx] = x[y == c][:len(idx)].reshape(-1, g, g, 3)
        return out

    def plan(self, data: ImageSet, shapes, budget: Budget, *, seed: int, device: str) -> np.ndarray:
        return self.points(data, seed)

    def deltas_for(self, pts: np.ndarray, images: Images, idx: np.ndarray, budget: Budget, *, device: str) -> Deltas:
        d = [_scale_to(resize_delta(pts[i], im.shape[:2], "nearest"), budget.eps) for i, im in zip(idx, images)]
        return np.stack(d) if isinstance(images, np.ndarray) else d

    def apply(self, data: ImageSet, deltas: Deltas, budget: Budget, x_chunk: int = 4096) -> Images:
        if not self.faithful:
            return super().apply(data, deltas, budget, x_chunk)
        out = [_truncate(data.images[i], np.asarray(deltas[i]), budget) for i in range(len(data))]
        return np.stack(out) if isinstance(data.images, np.ndarray) else out


def _truncate(x: np.ndarray, delta: np.ndarray, budget: Budget) -> np.ndarray:
    """The official application: floor(clip(255·(x/255 + δ))) in float64, kept inside ℓ2 ≤ ε.

    Where flooring pushes ‖Δ‖₂ above ε, the fewest floored coordinates (largest |Δ| first,
    each reduction removing the most squared norm) are moved one level back toward zero
    (i.e. truncated toward zero instead), until the image is inside the ball.
    """
    xf = x.astype(np.float64)
    v = np.clip(xf + 255.0 * delta.astype(np.float64), 0, 255)
    out = np.floor(v + 1e-9)  # 1e-9: (k/255)·255 landing a hair below k must not lose a level
    diff = (out - xf).reshape(-1)
    limit = (budget.eps * 255.0) ** 2 * (1 - 1e-12)
    sq = float((diff ** 2).sum())
    if sq > limit:
        toward_zero = np.trunc(v - xf).reshape(-1)
        cand = np.flatnonzero(toward_zero != diff)  # floored below the float value: one level lower
        order = cand[np.argsort(-np.abs(diff[cand]), kind="stable")]
        gain = np.abs(diff[order]) * 2 - 1  # d² − (|d| − 1)²
        need = np.searchsorted(np.cumsum(gain), sq - limit) + 1
        fix = order[:need]
        diff[fix] = toward_zero[fix]
        out = xf + diff.reshape(xf.shape)
    return out.astype(np.uint8)
