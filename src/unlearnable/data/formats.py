"""Other tools' poisons in, ours out.

:func:`import_poison` turns a third-party poison (protected images or additive noise) plus the
clean set it was made from into a :class:`~unlearnable.methods.base.ProtectedSet`, so that
``unlearnable verify`` and ``unlearnable audit`` work on it; :func:`import_to_folder` writes it
as a verifiable protected folder. :func:`export_png_index` writes one PNG per index (what TAP's
and AR's evaluation loaders read); NPZ export is :func:`unlearnable.data.save.export_npz`.

Formats (``fmt``; ``"auto"`` detects from the path):

``png-index``
    A folder of ``<index>.png`` files (TAP and AR releases: one PNG per training index, named
    by the index; APBench/ISS re-use these releases). The files may sit directly in the folder,
    in one sub-folder (TAP's ``data/``), or in per-class sub-folders
    (``<class>/<index>.png``); the index is always the integer file stem (``12.png``,
    ``00012.png``), wherever the file is. Indices must be exactly 0..N−1 for the N clean
    images; file index i is clean image i. When a file's parent folder is named like a clean
    class (its name, or its class number), it must agree with clean image i's label.
``em-pt``
    EM's ``perturbation.pt``: a float tensor (N, 3, H, W) (sample-wise) or (K, 3, H, W)
    (class-wise, one per class, indexed by label), read with ``torch.load(weights_only=True)``.
    Units are detected: max |δ| ≤ 1 is the [0, 1] scale (EM saves this), above 1 grey levels.
    Applied with the shared step, round(clip(x + 255δ)) (not EM's positive-half truncation,
    BASELINES §1.3).
``rem-pkl``
    REM/SEM ``*-fin-def-noise.pkl``: a pickled NumPy integer array of grey levels (int8,
    (N, 3, H, W); (N, H, W, 3) is accepted too), read through the restricted unpickler of
    :mod:`unlearnable.data.load` (NumPy array reconstruction only). Applied exactly:
    clip(x + noise, 0, 255) in integers (BASELINES §2).
``ntga-npy``
    NTGA's ``.npy`` of poisoned *images* (N, H, W, 3) or (N, 3, H, W), read with
    ``allow_pickle=False``: uint8 is taken as is; floats with max ≤ 1 are the [0, 1] scale,
    otherwise [0, 255]; floats are rounded to grey levels. NTGA releases its labels beside the
    images (``y_train_cifar10.npy`` next to ``x_train_cifar10_ntga_cnn_best.npy``, one-hot):
    a ``y_<prefix>.npy`` beside ``x_<prefix>….npy`` is read and must equal the clean labels
    index by index, as AVATAR's ``targets`` (NTGA loaded CIFAR-10 through
    ``tensorflow_datasets``, whose order is not the python pickles').
``avatar-npz``
    An ``.npz`` (``allow_pickle=False``) holding either poisoned images under one of
    ``x``, ``x_train``, ``data``, ``images``, ``poison``, ``poisoned`` (read like ``ntga-npy``)
    or additive noise under ``noise``, ``delta``, ``perturbation`` (read like ``em-pt``; integer
    noise is grey levels). With a single array and no known key, its dtype decides: integer
    images if uint8, else noise if it has negative values, else images. AVATAR's own archives
    hold ``data`` (uint8 images) and ``targets``; labels under ``targets``, ``labels``, ``y``
    or ``y_train`` must equal the clean labels index by index, which catches a clean set
    loaded in another order.

Index order: noise row i / image i goes to clean image i in the clean set's order — the
tool's dataset index (CIFAR's order, BASELINES §0.4) when the clean set was loaded from the
CIFAR pickles, an NPZ or one of our PNG-per-index exports. An ImageFolder is class-sorted, so
a sample-wise poison made in CIFAR order only lines up with a clean set in that order. A poison
whose images differ from the clean ones by a median of more than 32 grey levels per pixel
(:func:`check_alignment`) is refused: that is another image order, not a perturbation.

Content order (``match="content"``, ``--match content``): for formats that hold poisoned images
(not noise), each poisoned image is paired with the clean image it was made from, whatever the
order and however many there are (:mod:`unlearnable.data.matching`): NTGA's release (40,000
images in ``tensorflow_datasets``' order, shuffled), or a folder in CIFAR's order against a
class-sorted copy. The result covers the matched clean images only, in the clean set's order.
Measured on the CIFAR-10 JPEG copy (2 CPU cores, ``benchmarks/bench_import.py``): 40,000 shuffled
images with ±8/255 or ±16/255 noise all paired correctly, in about 4 s with labels and 17 s without.

Budget: ``none`` (an imported poison's bound is not known); the measured norms go into the
manifest. ``method`` is ``import:<fmt>``; ``hyperparameters`` say where it came from (file,
format, sha256, units, layout). Every user-caused failure is a one-line
:class:`~unlearnable.errors.UnlearnableError` naming the file.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import re
import shutil
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ..budget import Budget
from ..errors import UnlearnableError
from .imageset import ImageSet, Images
from .load import _RestrictedUnpickler, _read_bytes, load_images, read_image, read_npz, read_numpy
from .save import atomic_write_bytes, check_output_folder, encode_png, move_into_place

FORMATS = ("png-index", "em-pt", "rem-pkl", "ntga-npy", "avatar-npz")
_IMAGE_KEYS = ("x", "x_train", "data", "images", "poison", "poisoned")
_NOISE_KEYS = ("noise", "delta", "perturbation", "perturbations")
_LABEL_KEYS = ("targets", "labels", "y", "y_train")
_INDEX = re.compile(r"^\d+$")

__all__ = ["FORMATS", "detect_format", "import_poison", "import_to_folder", "export_png_index"]


# ---------------------------------------------------------------------------------------
# detection
# ---------------------------------------------------------------------------------------
def detect_format(path) -> str:
    """The format of ``path`` from what it is: a folder → png-index, else by extension."""
    p = Path(path)
    if p.is_dir():
        return "png-index"
    ext = p.suffix.lower()
    by_ext = {".pt": "em-pt", ".pth": "em-pt", ".pkl": "rem-pkl", ".pickle": "rem-pkl", ".npy": "ntga-npy",
              ".npz": "avatar-npz"}
    if not p.exists():
        raise UnlearnableError(f"no such file or folder: {p}")
    if ext not in by_ext:
        raise UnlearnableError(f"{p}: cannot tell the poison format from the name; pass --format ({', '.join(FORMATS)})")
    return by_ext[ext]


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------
_BY_CONTENT = "--match content pairs poisoned images with clean ones in any order or number"


def _check_count(n: int, clean: ImageSet, path, what: str, hint: str = "") -> None:
    if n != len(clean):
        raise UnlearnableError(f"{path}: {n} {what} for {len(clean)} clean images" + (f" ({hint})" if hint else ""))


def _to_nhwc(arr: np.ndarray, path, what: str) -> Tuple[np.ndarray, str]:
    """(N, H, W, 3) view of a 4-D array in NCHW or NHWC; the layout found."""
    if arr.ndim != 4 or 3 not in (arr.shape[1], arr.shape[-1]):
        raise UnlearnableError(f"{path}: {what} must have shape (N, 3, H, W) or (N, H, W, 3), got {arr.shape}")
    if arr.shape[1] == 3 and arr.shape[-1] != 3:
        return arr.transpose(0, 2, 3, 1), "NCHW"
    if arr.shape[-1] == 3 and arr.shape[1] != 3:
        return arr, "NHWC"
    return arr.transpose(0, 2, 3, 1), "NCHW"  # 3×…×3: the tools write NCHW


def _check_sizes(clean: ImageSet, shape_hw: Tuple[int, int], path, what: str) -> None:
    sizes = {clean.shape_of(i) for i in range(len(clean))}
    if sizes != {tuple(shape_hw)}:
        want = "x".join(map(str, next(iter(sizes)))) if len(sizes) == 1 else f"{len(sizes)} different sizes"
        raise UnlearnableError(f"{path}: {what} are {shape_hw[0]}x{shape_hw[1]}, the clean images {want}")


def _label_vector(labels) -> np.ndarray:
    """Labels as a vector; one-hot rows (NTGA keeps its labels this way) become class numbers."""
    y = np.asarray(labels)
    if y.ndim == 2 and y.shape[1] > 1:
        y = y.argmax(axis=1)
    return y.reshape(-1)


def _check_labels(labels: np.ndarray, clean: ImageSet, path, key: str) -> Dict[str, Any]:
    """Labels stored beside a poison (AVATAR's ``targets``) must be the clean set's, in its order.

    This is what catches the usual index-order mistake: a poison made in CIFAR's order
    imported against a class-sorted ImageFolder copy of the same images.
    """
    y = _label_vector(labels)
    if y.dtype.kind not in "iuf" or len(y) != len(clean):
        raise UnlearnableError(f"{path}: {key!r} holds {len(y)} {y.dtype} labels for {len(clean)} clean images")
    if clean.labels is None:
        return {"labels": f"{key!r} not checked (the clean set has no labels)"}
    bad = np.flatnonzero(y.astype(np.int64) != clean.labels.astype(np.int64))
    if bad.size:
        i = int(bad[0])
        raise UnlearnableError(
            f"{path}: its labels ({key!r}) disagree with the clean set's at {bad.size} of {len(y)} indices "
            f"(first: index {i}, {int(y[i])} vs {int(clean.labels[i])}); is the clean set in the poison's "
            f"index order (CIFAR's, not a class-sorted folder)? ({_BY_CONTENT})")
    return {"labels": f"{key!r} match the clean labels"}


def _clean_stack(clean: ImageSet) -> np.ndarray:
    try:
        return clean.stacked()
    except UnlearnableError:
        raise UnlearnableError("the clean set has images of different sizes; array poisons need one size") from None


def _float_noise(noise: np.ndarray, path) -> Tuple[np.ndarray, str]:
    """Noise in the [0, 1] scale and the units it was found in."""
    if noise.dtype.kind in "iu":
        return noise.astype(np.float64) / 255.0, "grey levels (integer)"
    if noise.dtype.kind != "f":
        raise UnlearnableError(f"{path}: noise must be numbers, got {noise.dtype}")
    noise = noise.astype(np.float64)
    if not np.isfinite(noise).all():
        raise UnlearnableError(f"{path}: noise has NaN or infinite values")
    if noise.size and np.abs(noise).max() > 1.0:
        return noise / 255.0, "grey levels (max |noise| > 1)"
    return noise, "[0, 1] scale (max |noise| <= 1)"


def _add_noise(clean: ImageSet, noise: np.ndarray, path, kind: str) -> Tuple[np.ndarray, Dict[str, Any]]:
    """Apply float ([0,1]-scale) NHWC noise, sample-wise (N rows) or class-wise (K rows)."""
    x = _clean_stack(clean)
    k = clean.num_classes
    if len(noise) == len(clean):
        wise = "sample-wise"
    elif clean.labels is not None and len(noise) == k:
        wise = "class-wise"
        noise = noise[clean.labels]
    else:
        extra = f" or {k} classes" if clean.labels is not None else ""
        raise UnlearnableError(f"{path}: {len(noise)} {kind} rows for {len(clean)} clean images{extra}")
    _check_sizes(clean, noise.shape[1:3], path, kind)
    out = np.clip(np.rint(x.astype(np.float64) + 255.0 * noise), 0, 255).astype(np.uint8)
    return out, {"wise": wise}


def _images_from_array(arr: np.ndarray, clean: ImageSet, path) -> Tuple[np.ndarray, Dict[str, Any]]:
    a, layout = _to_nhwc(arr, path, "the images")
    _check_count(len(a), clean, path, "images", _BY_CONTENT)
    _check_sizes(clean, a.shape[1:3], path, "the images")
    return _uint8_images(a, path, layout)


def _uint8_images(a: np.ndarray, path, layout: str) -> Tuple[np.ndarray, Dict[str, Any]]:
    """NHWC images of any number type as uint8 grey levels ([0, 1] floats scaled, floats rounded)."""
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a), {"layout": layout, "units": "uint8"}
    if a.dtype.kind not in "fiu":
        raise UnlearnableError(f"{path}: images must be numbers, got {a.dtype}")
    f = a.astype(np.float64)
    if not np.isfinite(f).all():
        raise UnlearnableError(f"{path}: images have NaN or infinite values")
    if f.min() < 0 or f.max() > 255:
        raise UnlearnableError(f"{path}: image values outside [0, 255] ({f.min():g}..{f.max():g}); is it noise?")
    units = "[0, 1] scale" if f.max() <= 1.0 and a.dtype.kind == "f" else "[0, 255]"
    if units == "[0, 1] scale":
        f = f * 255.0
    return np.clip(np.rint(f), 0, 255).astype(np.uint8), {"layout": layout, "units": units}


def _noise_from_array(arr: np.ndarray, clean: ImageSet, path, kind: str) -> Tuple[np.ndarray, Dict[str, Any]]:
    a, layout = _to_nhwc(arr, path, kind)
    noise, units = _float_noise(np.asarray(a), path)
    out, info = _add_noise(clean, noise, path, kind)
    return out, {"layout": layout, "units": units, **info}


# ---------------------------------------------------------------------------------------
# readers
# ---------------------------------------------------------------------------------------
def _index_files(path: Path) -> Dict[int, Path]:
    """The ``<index>.png`` files under ``path`` by index (hidden files and other types skipped)."""
    found: Dict[int, Path] = {}
    for f in sorted(path.rglob("*")):
        rel = f.relative_to(path)
        if any(part.startswith(".") for part in rel.parts) or not f.is_file():
            continue
        if f.suffix.lower() != ".png":
            continue  # labels files, READMEs
        if not _INDEX.match(f.stem):
            raise UnlearnableError(f"{f}: not named by an index (<index>.png)")
        i = int(f.stem)
        if i in found:
            raise UnlearnableError(f"{f}: index {i} appears twice (also {found[i]})")
        found[i] = f
    if not found:
        raise UnlearnableError(f"no <index>.png files under {path}")
    return found


def _folder_label(f: Path, path: Path, clean: ImageSet) -> Optional[int]:
    """The class a file's parent folder names (a clean class name or number), if any."""
    rel = f.relative_to(path)
    if clean.labels is None or len(rel.parts) < 2:
        return None
    parent = rel.parts[-2]
    if parent in clean.classes:
        return clean.classes.index(parent)
    return int(parent) if _INDEX.match(parent) and int(parent) < clean.num_classes else None


def _read_png_index(path: Path, clean: ImageSet) -> Tuple[Images, Dict[str, Any]]:
    found = _index_files(path)
    if len(found) < len(clean) and max(found) <= len(clean) - 1:  # gaps in 0..N-1: name the first
        missing = min(set(range(len(clean))) - set(found))
        raise UnlearnableError(f"{path}: index {missing} is missing ({len(found)} PNG files for {len(clean)} clean "
                               f"images; {_BY_CONTENT})")
    _check_count(len(found), clean, path, "PNG files", _BY_CONTENT)
    if max(found) != len(clean) - 1:
        missing = min(set(range(len(clean))) - set(found))
        raise UnlearnableError(f"{path}: index {missing} is missing (indices must be 0..{len(clean) - 1})")
    images: List[np.ndarray] = []
    for i in range(len(clean)):
        f = found[i]
        k = _folder_label(f, path, clean)
        if k is not None and k != int(clean.labels[i]):
            raise UnlearnableError(f"{f}: in class folder {f.parent.name!r} but clean image {i} is "
                                   f"{clean.classes[int(clean.labels[i])]!r}; is the clean set in another order? "
                                   f"({_BY_CONTENT})")
        im, _ = read_image(f)
        if im.shape != clean.image(i).shape:
            raise UnlearnableError(f"{f}: size {im.shape[1]}x{im.shape[0]} differs from clean image {i} "
                                   f"({clean.image(i).shape[1]}x{clean.image(i).shape[0]})")
        images.append(im)
    layout = "flat" if all(len(found[i].relative_to(path).parts) == 1 for i in found) else "sub-folders"
    out: Images = np.stack(images) if isinstance(clean.images, np.ndarray) else images
    return out, {"layout": layout}


def _read_em_pt(path: Path, clean: ImageSet) -> Tuple[np.ndarray, Dict[str, Any]]:
    import torch

    raw = _read_bytes(str(path))
    # torch.save writes a zip archive (or, before torch 1.6, a pickle): anything else is another format.
    not_torch = UnlearnableError(f"{path} is not a torch file (torch.save writes a zip archive); "
                                 "pass --format for what it is")
    try:
        obj = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # weights_only=True refuses anything but tensors and plain containers
        if raw[:2] != b"PK" and raw[:1] != b"\x80":
            raise not_torch from None
        raise UnlearnableError(f"refusing to load {path}: it holds objects other than tensors "
                               "(read with torch.load(weights_only=True))") from None
    except Exception as e:
        if raw[:2] != b"PK" and raw[:1] != b"\x80":
            raise not_torch from None
        raise UnlearnableError(f"cannot read {path} as a tensor file (damaged or truncated?): "
                               f"{type(e).__name__}: {e}") from None
    if not isinstance(obj, torch.Tensor):
        raise UnlearnableError(f"{path}: expected one tensor of noise, got {type(obj).__name__}")
    if not obj.is_floating_point():
        raise UnlearnableError(f"{path}: noise must be a float tensor, got {obj.dtype}")
    return _noise_from_array(obj.detach().to(torch.float64).numpy(), clean, path, "noise")


def _read_rem_pkl(path: Path, clean: ImageSet) -> Tuple[np.ndarray, Dict[str, Any]]:
    data = _read_bytes(str(path))
    try:
        obj = _RestrictedUnpickler(io.BytesIO(data), str(path)).load()
    except UnlearnableError:
        raise
    except Exception as e:
        raise UnlearnableError(f"cannot read {path} as a pickled noise array: {type(e).__name__}: {e}") from None
    if not isinstance(obj, np.ndarray):
        raise UnlearnableError(f"{path}: expected a pickled NumPy array of noise, got {type(obj).__name__}")
    if obj.dtype.kind not in "iu":
        raise UnlearnableError(f"{path}: REM/SEM noise must be integer grey levels (int8), got {obj.dtype}")
    a, layout = _to_nhwc(obj, path, "noise")
    _check_count(len(a), clean, path, "noise rows")
    _check_sizes(clean, a.shape[1:3], path, "noise")
    x = _clean_stack(clean)
    out = np.clip(x.astype(np.int32) + a.astype(np.int32), 0, 255).astype(np.uint8)
    return out, {"layout": layout, "units": f"grey levels ({obj.dtype})", "wise": "sample-wise"}


def _load_npy(path: Path) -> np.ndarray:
    return read_numpy(str(path), ".npy")


def _ntga_labels_file(path: Path) -> Optional[Path]:
    """NTGA's label file for ``x_<stem>.npy``: the sibling ``y_<p>.npy`` with the longest ``p``
    that begins ``<stem>`` (``y_train_cifar10.npy`` for ``x_train_cifar10_ntga_cnn_best.npy``)."""
    if not path.name.startswith("x_"):
        return None
    stem = path.stem[2:]
    found = [q for q in path.parent.glob("y_*.npy") if q.is_file() and stem.startswith(q.stem[2:]) and q.stem[2:]]
    return max(found, key=lambda q: len(q.stem)) if found else None


def _read_ntga_npy(path: Path, clean: ImageSet) -> Tuple[np.ndarray, Dict[str, Any]]:
    arr = _load_npy(path)
    if not isinstance(arr, np.ndarray):
        raise UnlearnableError(f"{path}: expected one array, got an archive")
    out, info = _images_from_array(arr, clean, path)
    labels_file = _ntga_labels_file(path)
    if labels_file is not None:
        info.update(_check_labels(_load_npy(labels_file), clean, path, labels_file.name))
    return out, info


def _load_npz(path: Path) -> Tuple[Dict[str, np.ndarray], Optional[str], Optional[str], Optional[str]]:
    """An AVATAR-style archive's arrays and which keys hold labels, images and noise."""
    arrays = read_npz(str(path))
    label_key = next((k for k in _LABEL_KEYS if k in arrays), None)
    rest = {k: v for k, v in arrays.items() if k != label_key}
    image_key = next((k for k in _IMAGE_KEYS if k in rest), None)
    noise_key = next((k for k in _NOISE_KEYS if k in rest), None)
    if image_key is None and noise_key is None:
        if len(rest) != 1:
            raise UnlearnableError(f"{path}: no poison array: expected one of {', '.join(_IMAGE_KEYS + _NOISE_KEYS)}, "
                                   f"found {', '.join(sorted(rest)) or 'nothing'}")
        (key, arr), = rest.items()
        is_noise = arr.dtype != np.uint8 and arr.size > 0 and float(arr.min()) < 0
        image_key, noise_key = (None, key) if is_noise else (key, None)
    return arrays, label_key, image_key, noise_key


def _read_avatar_npz(path: Path, clean: ImageSet) -> Tuple[np.ndarray, Dict[str, Any]]:
    arrays, label_key, image_key, noise_key = _load_npz(path)
    labels_info = _check_labels(arrays[label_key], clean, path, label_key) if label_key else {}
    if image_key is not None:
        out, info = _images_from_array(arrays[image_key], clean, path)
        return out, {"key": image_key, "content": "images", **info, **labels_info}
    out, info = _noise_from_array(arrays[noise_key], clean, path, "noise")
    return out, {"key": noise_key, "content": "noise", **info, **labels_info}


def _poison_images(path: Path, fmt: str, clean: ImageSet) -> Tuple[np.ndarray, Optional[np.ndarray], Dict[str, Any]]:
    """A poison's images and labels (if it has them) as released, in its own order and number.

    For :func:`unlearnable.data.matching.match_by_content`; only formats holding images qualify.
    """
    if fmt == "png-index":
        found = _index_files(path)
        files = [found[i] for i in sorted(found)]
        images = [read_image(f)[0] for f in files]
        if len({im.shape for im in images}) > 1:
            raise UnlearnableError(f"{path}: the images differ in size; matching by content needs one size")
        labels = [_folder_label(f, path, clean) for f in files]
        y = np.array(labels, dtype=np.int64) if all(k is not None for k in labels) else None
        return np.stack(images), y, {"layout": "flat" if y is None else "class folders"}
    if fmt == "ntga-npy":
        arr = _load_npy(path)
        labels_file = _ntga_labels_file(path)
        y = _label_vector(_load_npy(labels_file)) if labels_file is not None else None
        info = {"labels": labels_file.name} if labels_file is not None else {}
    elif fmt == "avatar-npz":
        arrays, label_key, image_key, _ = _load_npz(path)
        if image_key is None:
            raise UnlearnableError(f"{path}: holds noise, not images; noise only lines up by index (--match index)")
        arr = arrays[image_key]
        y = _label_vector(arrays[label_key]) if label_key else None
        info = {"key": image_key, **({"labels": label_key} if label_key else {})}
    else:
        raise UnlearnableError(f"{path}: a {fmt} file holds noise, not images; noise only lines up by index "
                               "(--match index)")
    a, layout = _to_nhwc(arr, path, "the images")
    if y is not None and (y.dtype.kind not in "iuf" or len(y) != len(a)):
        raise UnlearnableError(f"{path}: {len(y)} labels for {len(a)} images")
    images, conv = _uint8_images(a, path, layout)
    return images, None if y is None else y.astype(np.int64), {**info, **conv}


_READERS = {"png-index": _read_png_index, "em-pt": _read_em_pt, "rem-pkl": _read_rem_pkl,
            "ntga-npy": _read_ntga_npy, "avatar-npz": _read_avatar_npz}


def _sha256_of(path: Path) -> str:
    if path.is_file():
        return hashlib.sha256(_read_bytes(str(path))).hexdigest()
    # A folder: the hash of the sorted (relative name, file hash) list of its PNGs.
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*.png") if p.is_file()):
        h.update(f"{f.relative_to(path).as_posix()}\t{hashlib.sha256(f.read_bytes()).hexdigest()}\n".encode())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------
# Median per-image mean |Δ| above which a poison is taken for a different image order: measured
# on 2,000 CIFAR-10 images, the most visible method here (CUDA's blur) changes a median 11 grey
# levels, ±8/255 noise 8, while the images of a shuffled clean set differ by a median 68
# (5th percentile 42).
MISALIGNED_MEAN_ABS = 32.0


def check_alignment(per_image: List[Dict[str, float]], path, threshold: float = MISALIGNED_MEAN_ABS) -> None:
    """Refuse a poison whose images are mostly other images than the clean ones (wrong order)."""
    vals = np.array([r["mean_abs"] for r in per_image], dtype=np.float64)
    if vals.size and float(np.median(vals)) > threshold:
        raise UnlearnableError(
            f"{path}: its images differ from the clean ones by a median {np.median(vals):.0f} grey levels per pixel "
            f"({int((vals > threshold).sum())} of {vals.size} above {threshold:.0f}); the clean set is probably not "
            "the one it was made from, or not in its index order (--match content pairs the images by content; "
            "--no-alignment-check imports anyway)")


MATCHES = ("index", "content")


def import_poison(path, clean: ImageSet, fmt: str = "auto", name: Optional[str] = None,
                  check_order: bool = True, match: str = "index"):
    """Build the protected set another tool made from ``clean``.

    Args:
        path: the poison file or folder.
        clean: the clean set, in the tool's index order (module doc) for ``match="index"``.
        fmt: one of :data:`FORMATS`, or ``"auto"``.
        name: a label for the poison (e.g. ``"tap"``), kept in the hyperparameters.
        check_order: refuse a poison that looks made from other images or another order
            (:func:`check_alignment`); with ``match="content"``, refuse pairs that are not the
            same image.
        match: ``"index"`` (poison item i is clean image i) or ``"content"``: each poisoned
            image is paired with the clean image it was made from, whatever the order, and a
            poison of fewer images covers only those
            (:func:`unlearnable.data.matching.match_by_content`; formats holding images only).
    Returns:
        A :class:`~unlearnable.methods.base.ProtectedSet` with budget ``none``, method
        ``import:<fmt>`` and the measured per-image change. With ``match="content"`` its
        clean set is the matched clean images, in the clean set's order.
    """
    from ..methods.base import ProtectedSet, measure_set

    p = Path(path).expanduser()
    if not p.exists():
        raise UnlearnableError(f"no such file or folder: {p}")
    fmt = detect_format(p) if fmt == "auto" else fmt
    if fmt not in _READERS:
        raise UnlearnableError(f"unknown poison format {fmt!r}; use one of auto, {', '.join(FORMATS)}")
    if fmt == "png-index" and not p.is_dir():
        raise UnlearnableError(f"{p}: the png-index format is a folder of <index>.png files")
    if fmt != "png-index" and p.is_dir():
        raise UnlearnableError(f"{p} is a folder; the {fmt} format is a file")
    if match not in MATCHES:
        raise UnlearnableError(f"unknown match {match!r}; use one of {', '.join(MATCHES)}")
    if len(clean) == 0:
        raise UnlearnableError("the clean set has no images")
    t0 = time.perf_counter()
    if match == "content":
        from .matching import match_by_content

        poison, labels, info = _poison_images(p, fmt, clean)
        index, pair_abs = match_by_content(poison, clean, labels, strict=check_order, what=str(p))
        order = np.argsort(index, kind="stable")
        info = {**info, "match": "content", "matched": len(index), "of_clean": len(clean),
                "match_mean_abs_max": round(float(pair_abs.max()), 3)}
        clean, images = clean.subset(index[order]), poison[order]
    else:
        images, info = _READERS[fmt](p, clean)
    per_image = measure_set(clean.images, images)
    if match == "index" and check_order:  # matching by content has checked every pair
        check_alignment(per_image, p)
    hyper = {"name": name or p.stem, "source": str(p.resolve()), "format": fmt, "sha256": _sha256_of(p), **info}
    return ProtectedSet(clean=clean, protected=clean.with_images(images), method=f"import:{fmt}",
                        hyperparameters=hyper, budget=Budget.parse("none"), seed=None, device="cpu",
                        seconds=time.perf_counter() - t0, per_image=per_image)


def import_to_folder(path, clean_path, out, fmt: str = "auto", overwrite: bool = False,
                     name: Optional[str] = None, check_order: bool = True, match: str = "index") -> Dict[str, Any]:
    """Import a poison made from ``clean_path``'s train split and write it as a protected folder.

    The folder is what ``unlearnable protect`` writes (PNG per id + manifest), so
    ``unlearnable verify OUT --clean CLEAN`` and ``unlearnable audit`` work on it. A poison
    matched by content to part of the clean set holds that part only (the manifest's
    ``input.subset_of`` says of how many). Returns the manifest.
    """
    from ..protect import save_protected

    clean = load_images(clean_path, split="train")
    result = import_poison(path, clean, fmt=fmt, name=name, check_order=check_order, match=match)
    notes = (f"imported from {result.hyperparameters['source']} ({result.hyperparameters['format']}, "
             f"sha256 {result.hyperparameters['sha256']}); budget unknown, norms measured against the clean set")
    subset_of = len(clean) if len(result.clean) < len(clean) else None
    if subset_of:
        notes += f"; the poison covers {len(result.clean)} of the {len(clean)} clean images, matched by content"
    return save_protected(result, out, overwrite=overwrite, input_path=str(clean_path), notes=notes,
                          subset_of=subset_of)


def export_png_index(protected: ImageSet, folder, overwrite: bool = False) -> Path:
    """Write ``protected`` as ``<index:05d>.png`` files (index = position in the set).

    The folder appears atomically: files are written into a hidden temporary folder beside it,
    which is renamed into place at the end. An existing ``folder`` is refused, or with
    ``overwrite`` replaced once the new one is complete.
    """
    out = Path(folder).expanduser().resolve()
    check_output_folder(out, overwrite)
    part = out.parent / f".{out.name}.partial"
    if part.exists():
        shutil.rmtree(part)
    part.mkdir()
    try:
        for i in range(len(protected)):
            atomic_write_bytes(part / f"{i:05d}.png", encode_png(protected.image(i)))
        move_into_place(part, out)
    except BaseException:
        shutil.rmtree(part, ignore_errors=True)
        raise
    return out
