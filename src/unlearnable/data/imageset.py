"""The in-memory image collection every stage passes around.

Contract: images cross public boundaries as ``uint8`` arrays in NHWC (RGB) layout — one
``(N, H, W, 3)`` array when every image has the same size, otherwise a list of ``(H, W, 3)``
arrays. Labels are ``int64`` class indices into ``classes`` (sorted class names), or ``None``
for an unlabelled (flat) folder. ``ids`` are stable identifiers: the POSIX path relative to
the dataset root for folder data, ``<class>/<index:05d>.png`` for array formats (CIFAR, NPZ).
Order is deterministic: classes sorted, then ids sorted within a class for folders; the
file's own order for array formats.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import UnlearnableError

Images = Union[np.ndarray, List[np.ndarray]]


def resize_image(image: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """A uint8 HWC image at ``size`` = (H, W): Pillow's bilinear, antialiased when shrinking
    (the image itself when it already has that size). The one resize of every working-size view."""
    from PIL import Image

    h, w = size
    if image.shape[:2] == (h, w):
        return image
    return np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))


def label_array(y: object, n: int, what: str = "labels", num_classes: Optional[int] = None,
                copy: bool = False, flatten: bool = False) -> np.ndarray:
    """``y`` (array, list or torch tensor) as ``(n,)`` int64 class indices, or a one-line error
    naming what is wrong: not numbers, fractions, the wrong count, or outside ``[0, num_classes)``
    (below 0 when that is unknown). ``flatten`` takes an ``(n, 1)`` column too. The one label
    check of image sets, victim training and the analyses."""
    if hasattr(y, "detach"):  # a torch tensor
        y = y.detach().cpu().numpy()
    given = np.asarray(y).reshape(-1) if flatten else np.asarray(y)
    if given.dtype.kind not in "biuf":
        raise UnlearnableError(f"{what} must be integer class indices, got {given.dtype}")
    if given.dtype.kind == "f" and not (np.isfinite(given).all() and np.array_equal(given, np.round(given))):
        raise UnlearnableError(f"{what} must be whole class indices, got fractions or non-finite values")
    out = np.array(given, dtype=np.int64, copy=True) if copy else given.astype(np.int64, copy=False)
    if out.shape != (n,):
        raise UnlearnableError(f"{what}: {out.size} labels (shape {out.shape}) for {n} images")
    if n and out.min() < 0:
        raise UnlearnableError(f"{what} must be class indices >= 0, got {int(out.min())}")
    if n and num_classes is not None and out.max() >= num_classes:
        raise UnlearnableError(f"{what} must lie in [0, {num_classes}), got {int(out.max())}")
    return out


def check_id(id_: object) -> str:
    """An image id as outputs use it: a relative POSIX path inside the output folder. Ids name the
    files ``protect`` and ``save_protected`` write, so one that is absolute or climbs out with
    ``..`` (from an NPZ's ``ids``, say) would write outside it: refused."""
    if not isinstance(id_, str) or not id_:
        raise UnlearnableError(f"image ids must be non-empty strings, got {id_!r}")
    parts = id_.split("/")
    if id_.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\0" in id_:
        raise UnlearnableError(f"image id {id_!r} is not a relative path inside the set (no leading '/', "
                               "'.', '..' or empty parts): outputs are written under it")
    return id_


@dataclass
class ImageSet:
    """Images, labels, class names and stable ids of one split.

    Attributes:
        images: ``(N, H, W, 3)`` uint8 array, or a list of ``(H, W, 3)`` uint8 arrays.
        labels: ``(N,)`` int64 class indices, or ``None`` when the set is unlabelled.
        classes: class names; ``labels`` index into it.
        ids: one stable identifier per image (relative POSIX path for folder data).
        root: where the set was loaded from, if anywhere.
        source: the loader's name (``imagefolder``, ``flat``, ``cifar``, ``npz``, ``array``).
        sha256: per-image sha256 of the source file (folder data), else ``None``.
        source_files: ``{relative path: sha256}`` of container files (CIFAR batches, NPZ).
    """

    images: Images
    labels: Optional[np.ndarray]
    classes: List[str]
    ids: List[str]
    root: Optional[Path] = None
    source: str = "array"
    sha256: Optional[List[str]] = None
    source_files: Dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.images)
        if isinstance(self.images, np.ndarray):
            if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[-1] != 3:
                raise ValueError(f"images must be uint8 (N, H, W, 3), got {self.images.dtype} {self.images.shape}")
        else:
            for im in self.images:
                if im.dtype != np.uint8 or im.ndim != 3 or im.shape[-1] != 3:
                    raise ValueError(f"each image must be uint8 (H, W, 3), got {im.dtype} {im.shape}")
        if len(self.ids) != n:
            raise ValueError(f"{len(self.ids)} ids for {n} images")
        if len(set(self.ids)) != n:
            raise ValueError("ids must be unique")
        for id_ in self.ids:
            check_id(id_)
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"class names must be unique, got {list(self.classes)}")
        if self.labels is not None:
            # A copy: the set's labels do not change when the caller's array does, or the reverse.
            self.labels = label_array(self.labels, n, "labels", len(self.classes), copy=True)

    # -- shape ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def uniform(self) -> bool:
        """True when all images share one size (``images`` can be stacked)."""
        if isinstance(self.images, np.ndarray):
            return True
        return len({im.shape for im in self.images}) <= 1

    def shape_of(self, i: int) -> Tuple[int, int]:
        """(H, W) of image ``i``."""
        return tuple(self.images[i].shape[:2])  # type: ignore[return-value]

    def image(self, i: int) -> np.ndarray:
        return self.images[i]

    def stacked(self) -> np.ndarray:
        """All images as one ``(N, H, W, 3)`` array; fails for mixed sizes."""
        if isinstance(self.images, np.ndarray):
            return self.images
        if not self.uniform:
            raise UnlearnableError("images have different sizes; resize them first (see ImageSet.resized)")
        if not self.images:
            return np.zeros((0, 1, 1, 3), np.uint8)
        return np.stack(self.images)

    def require_labels(self, what: str) -> np.ndarray:
        """The labels, or a one-line error saying ``what`` needs them."""
        if self.labels is None:
            raise UnlearnableError(f"{what} needs class labels, but the input has no class folders")
        return self.labels

    # -- derived sets --------------------------------------------------------------------
    def subset(self, index: Sequence[int]) -> "ImageSet":
        """A new set with the images at ``index`` (in that order)."""
        idx = np.asarray(index, dtype=np.int64)
        if isinstance(self.images, np.ndarray):
            images: Images = self.images[idx]
        else:
            images = [self.images[i] for i in idx]
        return replace(
            self,
            images=images,
            labels=None if self.labels is None else self.labels[idx],
            ids=[self.ids[i] for i in idx],
            sha256=None if self.sha256 is None else [self.sha256[i] for i in idx],
        )

    def sample(self, n: Optional[int], seed: int = 0) -> "ImageSet":
        """A seeded random subset of ``n`` images, kept in their original order; the whole set
        when ``n`` is None or not smaller. (Folder sets are class-sorted: the first ``n`` would
        be a few classes only.)"""
        if not n or n >= len(self):
            return self
        return self.subset(np.sort(np.random.default_rng(seed).choice(len(self), n, replace=False)))

    def positions(self, ids: Sequence[str]) -> np.ndarray:
        """Where the images with these ids are (``subset(positions(ids))`` selects them by id).

        Raises:
            UnlearnableError: an id the set does not hold (the first one named).
        """
        index = {id_: i for i, id_ in enumerate(self.ids)}
        missing = next((i for i in ids if i not in index), None)
        if missing is not None:
            raise UnlearnableError(f"no image with id {missing!r} in this set")
        return np.asarray([index[i] for i in ids], dtype=np.int64)

    def with_images(self, images: Images) -> "ImageSet":
        """The same set (labels, ids, classes) with other pixels, e.g. the protected ones."""
        if len(images) != len(self):
            raise ValueError("with_images needs one image per id")
        return replace(self, images=images, sha256=None, source="array", source_files={})

    def resized(self, size: Tuple[int, int]) -> "ImageSet":
        """Every image resized to ``size`` = (H, W) (:func:`resize_image`), stacked."""
        h, w = size
        out = np.empty((len(self), h, w, 3), np.uint8)
        for i in range(len(self)):
            out[i] = resize_image(self.images[i], size)
        return self.with_images(out)

    def stacked_at(self, size: Tuple[int, int]) -> np.ndarray:
        """All images as one ``(N, H, W, 3)`` uint8 array at ``size``, resized only where they differ."""
        if self.uniform and len(self) and self.shape_of(0) == tuple(size):
            return self.stacked()
        return self.resized(size).stacked()

    def summary(self) -> str:
        sizes = {im.shape[:2] for im in self.images} if not isinstance(self.images, np.ndarray) else {self.images.shape[1:3]}
        size = "x".join(map(str, next(iter(sizes)))) if len(sizes) == 1 else f"{len(sizes)} sizes"
        lab = f"{self.num_classes} classes" if self.labels is not None else "unlabelled"
        return f"{len(self)} images, {size}, {lab}"
