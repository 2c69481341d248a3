"""How a perturbation made at the working resolution reaches each image's own pixels.

Methods optimise at ``working_size``² when a set has mixed sizes or large images (base
:func:`~unlearnable.methods.base.working_size`). A trainer who resizes those images to that size
applies the antialiased bilinear resize ``R`` (Pillow's ``BILINEAR``, torchvision's ``Resize``),
which is linear and separable: ``R(δ) = A_h · δ · A_wᵀ`` per channel (:func:`resize_matrix`).
So what the trainer sees of a native-size δ is ``R(δ)``, and there are two ways to make δ
(the methods' ``resize`` field):

* ``through`` (the default): optimise the native δ directly, the surrogate seeing
  ``R(x + δ) = R(x) + R(δ)`` and the gradient pulled back by ``Rᵀ``
  (:func:`~unlearnable.methods.pil.pil_attack_native`, :func:`~unlearnable.methods.optim.through_resize`);
  for class patterns, the native δ whose resize correlates most with the class's pattern
  (:func:`patterns_through_resize`).
* ``bilinear``: optimise at the working size and upsample. Cheap, but ``R`` blurs the δ: measured
  (``benchmarks/RESULTS.md``, "Resolution policy"), victims then learn from PIL-protected data
  as from clean data, and EM (linear surrogate) protects a little less. Fitting the native δ in
  the budget whose resize is closest to the working δ (a box-constrained least-squares "lift")
  did not help either: the ε-box cannot reproduce a high-frequency ±ε pattern after an
  antialiased downsampling (measured in the same section).

Images of different sizes share a batch (:func:`size_batches`, :class:`PaddedResize`): each is
zero-padded to the batch's largest size, where its resize matrices are zero and its δ is held at 0.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .base import grey_levels

__all__ = ["resize_matrix", "size_batches", "batch_pass", "PaddedResize", "patterns_through_resize", "RESIZE_MODES",
           "NATIVE_PIXELS"]

#: How a working-size δ reaches native size (see the module docstring).
RESIZE_MODES = ("through", "bilinear")
#: Padded native pixels per batch (a few float copies of 3 × this stay in memory).
NATIVE_PIXELS = 2**22


def resize_matrix(n_in: int, n_out: int, device="cpu") -> torch.Tensor:
    """``A`` (n_out × n_in): one axis of the antialiased bilinear resize (Pillow's ``BILINEAR``,
    torchvision's ``Resize``; within a grey level of Pillow). The 2-D resize is separable:
    ``R(δ) = A_h · δ · A_wᵀ`` per channel, and its adjoint is ``A_hᵀ · g · A_w``."""
    if n_in == n_out:
        return torch.eye(n_in, device=device)
    # Channel c holds the unit signal e_c along H. The dummy width is 2: torch's antialiased
    # kernel takes another path for a width of 1 and then differs from its 2-D resize.
    eye = torch.eye(n_in).reshape(1, n_in, n_in, 1).expand(1, n_in, n_in, 2).contiguous()
    cols = F.interpolate(eye, size=(n_out, 2), mode="bilinear", antialias=True, align_corners=False)
    return cols[0, :, :, 0].T.contiguous().to(device)


def size_batches(shapes: Sequence[Tuple[int, int]], batch_size: int,
                 max_pixels: int = NATIVE_PIXELS) -> List[List[int]]:
    """Indices grouped into batches of similar sizes: a batch closes at ``batch_size`` images, at
    ``max_pixels`` padded pixels, or before padding would exceed a quarter of it."""
    batches: List[List[int]] = []
    cur: List[int] = []
    hm = wm = area = 0
    for i in sorted(range(len(shapes)), key=lambda i: tuple(shapes[i])):
        H, W = shapes[i]
        nh, nw = max(hm, H), max(wm, W)
        padded = (len(cur) + 1) * nh * nw
        if cur and (len(cur) >= batch_size or padded > max_pixels or padded > 1.25 * (area + H * W)):
            batches.append(cur)
            cur, nh, nw, area = [], H, W, 0
        cur.append(i)
        hm, wm, area = nh, nw, area + H * W
    if cur:
        batches.append(cur)
    return batches


class PaddedResize:
    """A batch of native images of different sizes, zero-padded to the largest, with each
    image's resize to ``hw`` as batched matrices (zero on the padding).

    Attributes:
        x: ``(B, 3, Hm, Wm)`` float images in [0, 1] (zero on the padding).
        shapes: each image's ``(H, W)``.
    """

    def __init__(self, images: Sequence[np.ndarray], hw: Tuple[int, int], device="cpu",
                 cache: Optional[Dict[Tuple[int, int], torch.Tensor]] = None):
        h, w = hw
        cache = {} if cache is None else cache

        def mat(n_in: int, n_out: int) -> torch.Tensor:
            if (n_in, n_out) not in cache:
                cache[(n_in, n_out)] = resize_matrix(n_in, n_out, device)
            return cache[(n_in, n_out)]

        self.shapes = [tuple(im.shape[:2]) for im in images]
        B = len(images)
        Hm = max(s[0] for s in self.shapes)
        Wm = max(s[1] for s in self.shapes)
        self.x = torch.zeros((B, 3, Hm, Wm), device=device)
        self.ah = torch.zeros((B, 1, h, Hm), device=device)
        self.aw = torch.zeros((B, 1, w, Wm), device=device)
        self.mask = torch.zeros((B, 1, Hm, Wm), dtype=torch.bool, device=device)
        for j, im in enumerate(images):
            H, W = self.shapes[j]
            xi = torch.from_numpy(np.array(im, copy=True)).to(device).permute(2, 0, 1).float().div_(255.0)
            self.x[j, :, :H, :W] = xi
            self.ah[j, 0, :, :H] = mat(H, h)
            self.aw[j, 0, :, :W] = mat(W, w)
            self.mask[j, :, :H, :W] = True
        self.aw_t = self.aw.transpose(-1, -2)
        self.ah_t = self.ah.transpose(-1, -2)

    def down(self, t: torch.Tensor) -> torch.Tensor:
        """``R(t)``: the batch resized to the working size, ``(B, 3, h, w)``."""
        return self.ah @ t @ self.aw_t

    def up(self, g: torch.Tensor) -> torch.Tensor:
        """``Rᵀ(g)``: a working-size gradient pulled back to native size (zero on the padding)."""
        return self.ah_t @ g @ self.aw

    def bounds(self, eps: float, sign: int = 1) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per-pixel box of δ: the ℓ∞ ball ∩ ``x + sign·δ ∈ [0, 1]``; ``(0, 0)`` on the padding."""
        if sign > 0:
            lo, hi = (-self.x).clamp(min=-eps), (1.0 - self.x).clamp(max=eps)
        else:
            lo, hi = (self.x - 1.0).clamp(min=-eps), self.x.clamp(max=eps)
        return lo.mul_(self.mask), hi.mul_(self.mask)

    def crop(self, t: torch.Tensor, j: int) -> np.ndarray:
        """Image ``j`` of a native-size batch tensor as an HWC float32 array at its own size."""
        H, W = self.shapes[j]
        return t[j, :, :H, :W].permute(1, 2, 0).cpu().numpy().astype(np.float32)


@torch.no_grad()
def patterns_through_resize(images: Sequence[np.ndarray], labels: np.ndarray, patterns: np.ndarray, eps: float, *,
                            batch_size: int = 512, device="cpu") -> List[np.ndarray]:
    """Class patterns made on each image's own pixels: ``δ_i = argmax ⟨R(δ), P_{y_i}⟩`` over the
    box ``max(−ε, −x) ≤ δ ≤ min(ε, 1 − x)``, i.e. ``ε·sign(Rᵀ P_{y_i})`` clipped to the image range.

    What a trainer who resizes to the working size then sees correlates as much as the budget
    allows with the class's working-size pattern. Measured for random class-wise noise on CIFAR-10
    upscaled to 40-72 px (``benchmarks/RESULTS.md``, "Resolution policy"): a 32-px victim reached
    54.80 % with nearest-upsampled patterns and 47.15 % with this, against 59.40 % clean; a 64-px
    victim 51.80 % and 33.25 %, against 55.60 % (the same noise on the original 32-px images:
    24.15 % against 61.05 %).

    Args:
        images: uint8 HWC images at their own sizes.
        labels: each image's class.
        patterns: ``(K, h, w, 3)`` float class patterns at the working size.
        eps: ℓ∞ radius in [0, 1] units.
        batch_size, device: batching (by similar sizes) and where to compute. Each image's δ
            depends on its own pixels and class alone, whatever batch it shares.

    Returns:
        One δ per image, in order, in whole grey levels (:func:`~unlearnable.methods.base.grey_levels`).
    """
    h, w = patterns.shape[1:3]
    p = torch.from_numpy(np.ascontiguousarray(patterns, dtype=np.float32)).permute(0, 3, 1, 2).to(device)
    labels = np.asarray(labels)
    out: List[Optional[np.ndarray]] = [None] * len(images)
    cache: Dict[Tuple[int, int], torch.Tensor] = {}
    for idx in size_batches([im.shape[:2] for im in images], batch_size):
        b = PaddedResize([images[i] for i in idx], (h, w), device, cache)
        lo, hi = b.bounds(eps)
        d = torch.minimum(torch.maximum(b.up(p[torch.as_tensor(labels[idx], device=device)]).sign_().mul_(eps), lo), hi)
        for j, i in enumerate(idx):
            out[i] = grey_levels(b.crop(d, j))  # ±ε clipped to the image: on the grey-level grid
    return out  # type: ignore[return-value]


def batch_pass(plan: List[List[int]], images: Any, skip: Optional[Callable[[List[int]], bool]] = None,
               progress: Optional[Callable[[int, int], None]] = None) -> Iterator[Tuple[int, List[int]]]:
    """``(k, plan[k])`` for the batches to compute, in order, in a pass over ``images``: batches ``skip``
    is true for are left out (a resumed stream: their results are written), progress is reported
    after each batch (skipped ones included), and a sequence that decodes from disk (a
    ``prefetch`` method) starts decoding the next batch to compute while this one is."""
    n = sum(len(b) for b in plan)
    skipped = [skip is not None and skip(idx) for idx in plan]
    pending = [k for k, s in enumerate(skipped) if not s]
    after = dict(zip(pending, pending[1:]))
    prefetch = getattr(images, "prefetch", None)
    done = 0
    if progress is not None:
        progress(0, n)
    for k, idx in enumerate(plan):
        if prefetch is not None and k in after:
            prefetch(plan[after[k]])
        if not skipped[k]:
            yield k, idx
        done += len(idx)
        if progress is not None:
            progress(done, n)
