"""Imperceptibility of a protected set: PSNR and SSIM against the clean images.

Images are uint8 HWC (one ``(N, H, W, C)`` array or a list of ``(H, W, C)`` arrays of any
sizes), compared pairwise at their own size (or, in :func:`quality_report`, at ``size``). Both
measures use the peak L = 255 for uint8 images. Float images have no implied peak: they are
refused unless ``data_range`` says it (``data_range=1.0`` for images in [0, 1]), since a guess
of 255 would overstate the PSNR of [0, 1] images by 48 dB.

SSIM is Wang, Bovik, Sheikh, Simoncelli (IEEE TIP 2004): an 11 × 11 Gaussian window with
σ = 1.5, K1 = 0.01, K2 = 0.03, "valid" filtering (no padding; the map covers positions where
the window fits), computed per channel and averaged over channels and positions. Images smaller
than 11 px on a side use a window as large as the image fits (same σ). Written here with torch
(no scikit-image dependency).
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Union

import numpy as np

from ..errors import UnlearnableError

__all__ = ["psnr", "ssim", "quality_report"]

Images = Union[np.ndarray, Sequence[np.ndarray]]


def _pairs(clean: Images, protected: Images):
    if len(clean) != len(protected):
        raise ValueError(f"{len(clean)} clean images but {len(protected)} protected ones")
    for a, b in zip(clean, protected):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape:
            raise ValueError(f"image shapes differ: {a.shape} vs {b.shape}")
        yield a, b


def _single(x) -> bool:
    return isinstance(x, np.ndarray) and x.ndim == 3


def _peak(clean: Images, protected: Images, data_range: Optional[float], who: str) -> float:
    """The peak value L: ``data_range`` if given, else 255 for uint8 (integer) images; float
    images without ``data_range`` are refused (their scale, [0, 1] or [0, 255], is unknown).
    The layouts are checked first: an ``(N, H, W)`` grey stack would otherwise read as one image
    of N channels."""
    for images in (clean, protected):
        stacked = isinstance(images, np.ndarray)
        for a in [images] if stacked else [np.asarray(a) for a in images]:
            if a.ndim not in ((3, 4) if stacked else (3,)) or a.shape[-1] not in (1, 3, 4):
                raise UnlearnableError(
                    f"{who}: images must be HWC, (N, H, W, C) or a list of HWC with C = 1, 3 or 4, got shape "
                    f"{a.shape} (add a channel axis to grey images: x[..., None])")
    if data_range is not None:
        if isinstance(data_range, bool) or not isinstance(data_range, (int, float)) \
                or not math.isfinite(data_range) or data_range <= 0:
            raise UnlearnableError(f"{who}: data_range must be a positive number, got {data_range!r}")
        return float(data_range)
    for images in (clean, protected):
        arrays = [images] if isinstance(images, np.ndarray) else [np.asarray(a) for a in images]
        for a in arrays:
            if a.dtype == np.uint8 or a.dtype == np.bool_:
                continue
            if np.issubdtype(a.dtype, np.integer) and (a.size == 0 or (a.min() >= 0 and a.max() <= 255)):
                continue
            raise UnlearnableError(
                f"{who}: got {a.dtype} images, not uint8: pass data_range (1.0 for images in [0, 1], "
                f"255 for [0, 255]) or give uint8 images")
    return 255.0


def psnr(clean: Images, protected: Images, *, data_range: Optional[float] = None) -> Union[float, np.ndarray]:
    """Peak signal-to-noise ratio in dB, ``10 log10(L² / MSE)``; ``inf`` for identical images.

    Args:
        clean: one uint8 HWC image, an ``(N, H, W, C)`` array or a list of HWC images.
        protected: the same shape(s).
        data_range: the peak L. ``None`` (default): 255, and the images must be uint8 (or
            integers in [0, 255]); float images need it said (``1.0`` for [0, 1]).

    Returns:
        A float for one image, else an ``(N,)`` float64 array.

    Raises:
        UnlearnableError: float images without ``data_range``, or a ``data_range`` <= 0.
    """
    peak = _peak(clean, protected, data_range, "psnr")
    if _single(clean):
        return float(psnr(clean[None], np.asarray(protected)[None], data_range=peak)[0])
    mse = np.concatenate([_mse(a, b) for a, b in _batches(clean, protected)]) if len(clean) else np.zeros(0)
    with np.errstate(divide="ignore"):
        return np.where(mse == 0, math.inf, 10.0 * np.log10(peak ** 2 / np.maximum(mse, 1e-300)))


def _mse(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = a.astype(np.float64) - b.astype(np.float64)
    return (d * d).reshape(len(d), -1).mean(1)


def _batches(clean: Images, protected: Images, size: int = 256):
    """``(B, H, W, C)`` pairs: slices of stacked sets (fast), else one image at a time."""
    if isinstance(clean, np.ndarray) and isinstance(protected, np.ndarray) and clean.ndim == 4:
        if clean.shape != protected.shape:
            raise ValueError(f"image shapes differ: {clean.shape} vs {protected.shape}")
        for i in range(0, len(clean), size):
            yield clean[i:i + size], protected[i:i + size]
        return
    for a, b in _pairs(clean, protected):
        yield a[None], b[None]


def _gauss_window(size: int, sigma: float = 1.5):
    import torch

    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-(r ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    return g


def _ssim_batch(a: np.ndarray, b: np.ndarray, win: int, sigma: float, k1: float, k2: float,
                peak: float = 255.0) -> np.ndarray:
    """SSIM of each pair of ``(B, H, W, C)`` images, as a ``(B,)`` array."""
    import torch
    import torch.nn.functional as F

    n, h, w, c = a.shape
    x = torch.from_numpy(a.astype(np.float64)).permute(0, 3, 1, 2).reshape(n * c, 1, h, w)  # channels apart
    y = torch.from_numpy(b.astype(np.float64)).permute(0, 3, 1, 2).reshape(n * c, 1, h, w)
    size = min(win, x.shape[-2], x.shape[-1])
    g = _gauss_window(size, sigma)
    wr, wc = g.view(1, 1, size, 1), g.view(1, 1, 1, size)

    def blur(t):  # separable Gaussian, valid filtering
        return F.conv2d(F.conv2d(t, wr), wc)

    c1, c2 = (k1 * peak) ** 2, (k2 * peak) ** 2
    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx * mx
    syy = blur(y * y) - my * my
    sxy = blur(x * y) - mx * my
    smap = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return smap.reshape(n, -1).mean(1).numpy()


def ssim(clean: Images, protected: Images, *, win: int = 11, sigma: float = 1.5, k1: float = 0.01,
         k2: float = 0.03, data_range: Optional[float] = None) -> Union[float, np.ndarray]:
    """Structural similarity (Gaussian window 11, σ = 1.5; mean over channels and positions).

    Args:
        clean: one uint8 HWC image, an ``(N, H, W, C)`` array or a list of HWC images.
        protected: the same shape(s).
        win: window side (capped at the image size).
        sigma: Gaussian standard deviation of the window.
        k1: luminance stabiliser, ``C1 = (k1 · L)²``.
        k2: contrast stabiliser, ``C2 = (k2 · L)²``.
        data_range: the peak L, as for :func:`psnr` (default 255, uint8 images only).

    Returns:
        A float in [-1, 1] for one image (1 for identical images), else an ``(N,)`` array.

    Raises:
        UnlearnableError: float images without ``data_range``, or a ``data_range`` <= 0.
    """
    peak = _peak(clean, protected, data_range, "ssim")
    if isinstance(win, bool) or not isinstance(win, int) or win < 1:
        raise UnlearnableError(f"ssim: win must be a positive integer, got {win!r}")
    if _single(clean):
        return float(ssim(clean[None], np.asarray(protected)[None], win=win, sigma=sigma, k1=k1, k2=k2,
                          data_range=peak)[0])
    if not len(clean):
        return np.zeros(0)
    return np.concatenate([_ssim_batch(a, b, win, sigma, k1, k2, peak) for a, b in _batches(clean, protected)])


def _resized(images: Images, size: int) -> np.ndarray:
    from ..data.imageset import resize_image  # the one resize of every working-size view

    out = []
    for a in images:
        a = np.asarray(a)
        if a.ndim != 3 or a.shape[-1] not in (1, 3, 4):
            raise UnlearnableError(f"quality: expected HWC images with 1, 3 or 4 channels, got shape {a.shape}")
        r = resize_image(a[..., 0] if a.shape[-1] == 1 else a, (size, size))
        out.append(r.reshape(size, size, a.shape[-1]))
    if len({o.shape for o in out}) > 1:
        raise UnlearnableError("quality: the images differ in channel count; convert them to one mode first")
    return np.stack(out) if out else np.zeros((0, size, size, 3), np.uint8)


def quality_report(clean: Images, protected: Images, *, size: Optional[int] = None) -> Dict[str, object]:
    """PSNR and SSIM per image and summarised over the set.

    Args:
        clean: the clean images (uint8 HWC, stacked or a list).
        protected: the protected images, same shapes.
        size: if given, both sets are first resized to ``size`` x ``size`` (Pillow bilinear,
            antialiased, as every working-size view: the numbers a trainer working at that
            size sees); ``None``: each pair at its own size.

    Returns:
        ``{"psnr": (N,) array, "ssim": (N,) array, "psnr_mean": mean over images that changed
        (``inf`` if none did), "psnr_min": float, "ssim_mean": float, "ssim_min": float,
        "n_identical": images left unchanged, "size": the side measured at or None}``.

    Raises:
        UnlearnableError: a ``size`` that is not a positive integer, or images that are not uint8.
    """
    if size is not None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise UnlearnableError(f"quality: size must be a positive integer, got {size!r}")
        _peak(clean, protected, None, "quality")
        if len(clean) != len(protected):
            raise UnlearnableError(f"{len(clean)} clean images but {len(protected)} protected ones")
        clean, protected = _resized(clean, size), _resized(protected, size)
    return quality_summary(psnr(clean, protected), ssim(clean, protected), size)


def quality_summary(p: np.ndarray, s: np.ndarray, size: Optional[int] = None) -> Dict[str, object]:
    """:func:`quality_report`'s dict from per-image PSNR and SSIM (computed a chunk at a time
    by a caller that cannot hold a folder of photos in memory)."""
    p, s = np.asarray(p, np.float64), np.asarray(s, np.float64)
    finite = p[np.isfinite(p)]
    return {
        "psnr": p, "ssim": s,
        "psnr_mean": float(finite.mean()) if finite.size else math.inf,
        "psnr_min": float(p.min()) if p.size else math.inf,
        "ssim_mean": float(s.mean()) if s.size else 1.0,
        "ssim_min": float(s.min()) if s.size else 1.0,
        "n_identical": int((~np.isfinite(p)).sum()),
        "size": size,
    }
