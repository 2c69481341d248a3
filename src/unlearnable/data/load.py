"""Loading image datasets from disk into an :class:`~unlearnable.data.imageset.ImageSet`.

Supported inputs (``load_images`` dispatches on what the path is):

* an ``.npz`` file with ``x`` (uint8 NHWC) and ``y`` (integer labels), optional ``classes``
  and ``ids``; or with per-split keys ``x_train``/``y_train``/``x_test``/``y_test``;
* a CIFAR-10 / CIFAR-100 "python version" directory (``data_batch_1`` .. ``test_batch`` /
  ``train``, ``test``, ``meta``), or a directory containing ``cifar-10-batches-py`` or
  ``cifar-100-python``; the pickles are read with a restricted unpickler that only admits
  numpy array reconstruction;
* a directory with split folders (``train/`` and optionally ``test/``, ``val/``), each an
  image folder;
* an image folder ``ROOT/<class>/.../<image>`` (labelled), or a folder of images without
  class folders (unlabelled, "flat").

Image folders: class names are the sorted class-folder names; images are ordered by class,
then by POSIX path relative to ``ROOT`` (which is also their id, e.g. ``cat/0001.jpg``).
Class folders are walked recursively (following symbolic links); names starting with ``.``
are skipped; every other file inside a class folder must be an image. Non-image files
directly under ``ROOT`` (manifest.json, README, LICENSE) are ignored.

Conversion to RGB (every decoded image becomes an ``(H, W, 3)`` uint8 C-contiguous array):

1. EXIF orientation is applied (``ImageOps.exif_transpose``), so the array is upright.
2. Multi-frame files (animated GIF, multi-page TIFF, APNG): only the first frame is used.
3. Integer images deeper than 8 bits (modes ``I;16*`` and ``I``) are scaled linearly from
   0..65535 to 0..255 with rounding (mode ``I`` values are clipped to 0..65535 first).
   Floating-point (mode ``F``) images are taken to be in [0, 1] when their maximum is <= 1,
   otherwise in [0, 255]; they are clipped to that range and rounded. The grey value is
   replicated to the three channels.
4. Images with transparency (RGBA, LA, PA, or a palette/grey/RGB image with a transparency
   entry) are alpha-composited over a white background.
5. Everything else (L, 1, P, CMYK, YCbCr, LAB, HSV, ...) goes through Pillow's
   ``convert("RGB")``.

Truncated files are errors (``ImageFile.LOAD_TRUNCATED_IMAGES`` is left False), as are
files Pillow cannot identify and decompression bombs. Every user-caused failure raises a
one-line :class:`~unlearnable.errors.UnlearnableError` naming the file or folder.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import os
import pickle
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import UnlearnableError
from .imageset import ImageSet

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
    from numpy._core.numeric import _frombuffer as _np_frombuffer
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct as _np_reconstruct  # type: ignore
    from numpy.core.numeric import _frombuffer as _np_frombuffer  # type: ignore

__all__ = ["read_image", "load_images", "find_splits", "check_split"]

PathLike = Union[str, "os.PathLike[str]"]
Progress = Callable[[int, int], None]

#: Names of split folders recognised in a "split directory" (``train`` must be present).
SPLIT_NAMES = ("train", "test", "val", "valid", "validation")
LABEL_MODES = ("auto", "none", "folders")

_CIFAR10_DIR = "cifar-10-batches-py"
_CIFAR100_DIR = "cifar-100-python"
_CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_EXIF_ORIENTATION = 0x0112
_TRANSPARENT_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


# ---------------------------------------------------------------------------------------
# one image
# ---------------------------------------------------------------------------------------
_FORMAT_BY_EXT: Dict[str, str] = {}


def _formats_by_extension() -> Dict[str, str]:
    """``{".jpg": "JPEG", ...}`` for every format Pillow can open (computed once)."""
    if not _FORMAT_BY_EXT:
        _FORMAT_BY_EXT.update({ext.lower(): fmt for ext, fmt in Image.registered_extensions().items()
                               if fmt in Image.OPEN})
    return _FORMAT_BY_EXT


def _image_extensions() -> frozenset:
    return frozenset(ext.lower() for ext in Image.registered_extensions())


def _open(data: bytes, name: str) -> Image.Image:
    """Open with the format the extension suggests first (faster), then with any format."""
    fmt = _formats_by_extension().get(os.path.splitext(name)[1].lower())
    if fmt is not None:
        try:
            return Image.open(io.BytesIO(data), formats=[fmt])
        except UnidentifiedImageError:
            pass  # misnamed file: let Pillow try every format
    return Image.open(io.BytesIO(data))


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))


def _to_rgb_array(im: Image.Image) -> np.ndarray:
    """Apply conversion rules 3-5 (see the module docstring) to a loaded frame."""
    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        return np.asarray(im)
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(im).astype(np.int64)
        if mode == "I":
            np.clip(a, 0, 65535, out=a)
        return _gray_to_rgb(((a * 255 + 32767) // 65535).astype(np.uint8))
    if mode == "F":
        f = np.nan_to_num(np.asarray(im, dtype=np.float64), nan=0.0)
        if f.size and f.max() <= 1.0:
            f = f * 255.0
        return _gray_to_rgb(np.rint(np.clip(f, 0.0, 255.0)).astype(np.uint8))
    if mode in _TRANSPARENT_MODES or "transparency" in im.info:
        rgba = np.asarray(im if mode == "RGBA" else im.convert("RGBA"))
        alpha = rgba[:, :, 3:4].astype(np.uint16)
        rgb = rgba[:, :, :3].astype(np.uint16)
        out = (rgb * alpha + 255 * (255 - alpha) + 127) // 255
        return np.ascontiguousarray(out.astype(np.uint8))
    return np.asarray(im.convert("RGB"))


def _decode(data: bytes, name: str) -> np.ndarray:
    """Decode image bytes to an (H, W, 3) uint8 array (possibly read-only)."""
    try:
        with _open(data, name) as im:
            im.load()  # the first frame; raises on truncated/corrupt data
            if im.getexif().get(_EXIF_ORIENTATION, 1) not in (0, 1):
                frame = ImageOps.exif_transpose(im)
                return _to_rgb_array(frame)
            return _to_rgb_array(im)
    except UnidentifiedImageError:
        raise UnlearnableError(f"{name} is not an image (Pillow cannot identify it: unknown format or damaged header)") from None
    except Image.DecompressionBombError as e:
        raise UnlearnableError(f"{name} is too large to decode safely (decompression bomb?): {e}") from None
    except UnlearnableError:
        raise
    except MemoryError:
        raise UnlearnableError(f"not enough memory to decode {name}") from None
    except Exception as e:  # corrupt data surfaces as OSError, SyntaxError, ValueError, zlib.error...
        raise UnlearnableError(f"{name} is corrupt or truncated: {type(e).__name__}: {e}") from None


def _read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        if os.path.islink(path):
            raise UnlearnableError(f"cannot read {path}: broken symbolic link") from None
        raise UnlearnableError(f"no such file: {path}") from None
    except PermissionError:
        raise UnlearnableError(f"cannot read {path}: permission denied") from None
    except IsADirectoryError:
        raise UnlearnableError(f"{path} is a folder, not a file") from None
    except OSError as e:
        raise UnlearnableError(f"cannot read {path}: {e.strerror or e}") from None


def _numpy_error(path: str, what: str, e: Exception) -> UnlearnableError:
    """NumPy reads any file that is neither ``.npy`` nor zip as a pickle and, refusing it, tells
    the user to "load it unsafely"; the error says what the file is not instead."""
    if isinstance(e, ValueError) and "Object arrays" in str(e):
        reason = "it holds arrays of pickled objects, which are never loaded (unpickling can run code)"
    elif isinstance(e, ValueError) and "pickled" in str(e):
        reason = "not a NumPy file (neither .npy nor a zip archive)"
    else:
        reason = f"{type(e).__name__}: {e}"
    return UnlearnableError(f"cannot read {path} as {what}: {reason}")


def read_numpy(path: str, what: str = ".npz", data: Optional[bytes] = None) -> Union[np.ndarray, Dict[str, np.ndarray]]:
    """An ``.npy`` array or an ``.npz`` archive's arrays, without unpickling, or a one-line error."""
    try:
        obj = np.load(io.BytesIO(_read_bytes(path) if data is None else data), allow_pickle=False)
        if not isinstance(obj, np.lib.npyio.NpzFile):
            return obj
        with obj:
            return {k: obj[k] for k in obj.files}
    except UnlearnableError:
        raise
    except Exception as e:
        raise _numpy_error(path, what, e) from None


def npz_keys(path: str) -> List[str]:
    """The array names of an ``.npz`` archive, read from its zip directory only (the arrays
    are read once, later, by whoever loads them)."""
    try:
        obj = np.load(path, allow_pickle=False, mmap_mode="r")
    except Exception as e:
        raise _numpy_error(path, ".npz", e) from None
    if not isinstance(obj, np.lib.npyio.NpzFile):
        raise UnlearnableError(f"{path}: expected an .npz archive, got a single .npy array")
    with obj:
        return list(obj.files)


def read_npz(path: str, data: Optional[bytes] = None) -> Dict[str, np.ndarray]:
    """:func:`read_numpy` for a file that must be an ``.npz`` archive."""
    arrays = read_numpy(path, ".npz", data)
    if not isinstance(arrays, dict):
        raise UnlearnableError(f"{path}: expected an .npz archive, got a single .npy array")
    return arrays


def _read_image(path: str) -> Tuple[np.ndarray, str]:
    data = _read_bytes(path)
    digest = hashlib.sha256(data).hexdigest()
    return _decode(data, path), digest


def read_image(path: PathLike) -> Tuple[np.ndarray, str]:
    """Read one image file: ``(uint8 (H, W, 3) RGB array, sha256 hex of the file bytes)``.

    The file is read once; the hash and the decoded pixels come from the same bytes. See the
    module docstring for the conversion rules. Raises :class:`UnlearnableError` naming the
    file when it is missing, unreadable, not an image, corrupt, truncated or a
    decompression bomb.
    """
    arr, digest = _read_image(os.fspath(path))
    if not arr.flags.writeable:
        arr = arr.copy()
    return arr, digest


# ---------------------------------------------------------------------------------------
# parallel decoding
# ---------------------------------------------------------------------------------------
def _default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


class _OverMemory(Exception):
    """Raised by a decoding thread once the decoded images pass the caller's memory limit."""

    def __init__(self, done: int, used: int):
        super().__init__(done, used)
        self.done, self.used = done, used


def available_memory() -> Optional[int]:
    """Bytes of memory this process can still take: the system's available memory, or the
    headroom of the container's (cgroup) limit where that is lower; None where neither can be
    read (no check is made then)."""
    found = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    for limit, current in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                           ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit) as f:
                cap = f.read().strip()
            with open(current) as f:
                used = int(f.read().strip())
            if cap != "max" and int(cap) < 1 << 60:  # cgroup v1 writes a huge number for "no limit"
                found.append(max(0, int(cap) - used))
        except (OSError, ValueError):
            continue
    if not found and hasattr(os, "sysconf"):
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (OSError, ValueError):
            pass
    return min(found) if found else None


@dataclass(frozen=True)
class MemoryCheck:
    """What a caller will hold per decoded byte, so a folder too large for this machine fails
    with a one-line error while decoding, not with the operating system ending the process.

    Args:
        factor: bytes the caller needs per decoded image byte (e.g. 3 for ``protect``: the
            images, their perturbation and the protected copy, all alive at once).
        task: what needs them, for the message (``"protecting them"``).
        advice: what to do instead, for the message.
    """

    factor: float
    task: str
    advice: str

    def error(self, root: str, n: int, over: "_OverMemory", available: int) -> UnlearnableError:
        total = over.used * n / max(1, over.done)  # extrapolated from the images read so far
        return UnlearnableError(
            f"{root}: its {n} images decode to about {_bytes(total)}; {self.task} needs at least "
            f"{self.factor:g}× that ({_bytes(self.factor * total)}) and this machine has {_bytes(available)} "
            f"available: {self.advice}")


def _bytes(n: float) -> str:
    for unit, size in (("GB", 1024 ** 3), ("MB", 1024 ** 2)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n / 1024:.0f} kB"


def _decode_files(paths: Sequence[str], workers: Optional[int], progress: Optional[Progress],
                  max_bytes: Optional[int] = None):
    """Decode ``paths`` in order with a thread pool; returns (images, sha256s).

    With ``max_bytes``, stops with :class:`_OverMemory` once the decoded images pass it."""
    n = len(paths)
    workers = _default_workers() if workers is None else int(workers)
    if workers < 1:
        raise UnlearnableError(f"workers must be at least 1, got {workers}")
    arrays: List[Optional[np.ndarray]] = [None] * n
    digests: List[str] = [""] * n
    _formats_by_extension()  # fill the extension map before threads use it
    chunk = max(16, min(256, n // (workers * 8) or 1))
    starts = list(range(0, n, chunk))
    stop = False
    used = [0, 0]  # decoded bytes, images
    lock = threading.Lock()

    def work(start: int) -> int:
        end = min(start + chunk, n)
        for i in range(start, end):
            if stop:
                break
            arrays[i], digests[i] = _read_image(paths[i])
            if max_bytes is not None:
                with lock:
                    used[0] += arrays[i].nbytes
                    used[1] += 1
                    if used[0] > max_bytes:
                        raise _OverMemory(used[1], used[0])
        return end

    if progress is not None:
        progress(0, n)
    if workers == 1 or len(starts) == 1:
        for s in starts:
            done = work(s)
            if progress is not None:
                progress(done, n)
    else:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="unlearnable-load") as pool:
            futures = [pool.submit(work, s) for s in starts]
            try:
                for fut in futures:  # in order: the first failing file is reported
                    done = fut.result()
                    if progress is not None:
                        progress(done, n)
            except BaseException:
                stop = True
                for fut in futures:
                    fut.cancel()
                raise
    return _collect(arrays), digests


def _collect(arrays: List[Optional[np.ndarray]]):
    """Stack equally-sized images into one array (freeing each as it is copied), else a list."""
    n = len(arrays)
    if n == 0:
        return np.zeros((0, 1, 1, 3), np.uint8)
    shape = arrays[0].shape  # type: ignore[union-attr]
    if all(a.shape == shape for a in arrays):  # type: ignore[union-attr]
        out = np.empty((n,) + shape, np.uint8)
        for i in range(n):
            out[i] = arrays[i]
            arrays[i] = None
        return out
    return [a if a.flags.writeable else a.copy() for a in arrays]  # type: ignore[union-attr]


# ---------------------------------------------------------------------------------------
# folder scanning
# ---------------------------------------------------------------------------------------
#: Files and folders the operating system drops into photo folders (Windows thumbnail caches,
#: folder settings, the resource forks macOS zips carry in ``__MACOSX``): skipped like hidden
#: files, where any other non-image file is an error.
_OS_METADATA = frozenset({"thumbs.db", "ehthumbs.db", "ehthumbs_vista.db", "desktop.ini", "icon\r", "__macosx"})


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name.lower() in _OS_METADATA


def _scandir(path: str) -> List[os.DirEntry]:
    try:
        with os.scandir(path) as it:
            return sorted(it, key=lambda e: e.name)
    except FileNotFoundError:
        raise UnlearnableError(f"no such folder: {path}") from None
    except PermissionError:
        raise UnlearnableError(f"cannot read folder {path}: permission denied") from None
    except NotADirectoryError:
        raise UnlearnableError(f"{path} is not a folder") from None
    except OSError as e:
        raise UnlearnableError(f"cannot read folder {path}: {e.strerror or e}") from None


def _entry_is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _entry_is_file(entry: os.DirEntry) -> bool:
    try:
        return entry.is_file()
    except OSError:
        return False


def _walk_class(top: str, rel_top: str, out: List[Tuple[str, str]]) -> None:
    """Collect (relative POSIX path, path) of every non-hidden file under ``top``.

    Follows symbolic links to folders; a link back to an enclosing folder is an error.
    """
    try:
        st = os.stat(top)
    except OSError as e:
        raise UnlearnableError(f"cannot read folder {top}: {e.strerror or e}") from None
    stack = [(top, rel_top, frozenset([(st.st_dev, st.st_ino)]))]
    while stack:
        path, rel, ancestors = stack.pop()
        subdirs = []
        for entry in _scandir(path):
            if _is_hidden(entry.name):
                continue
            entry_rel = f"{rel}/{entry.name}"
            if _entry_is_dir(entry):
                try:
                    est = entry.stat()
                except OSError as e:
                    raise UnlearnableError(f"cannot read folder {entry.path}: {e.strerror or e}") from None
                key = (est.st_dev, est.st_ino)
                if key in ancestors:
                    raise UnlearnableError(f"symbolic link loop at {entry.path}")
                subdirs.append((entry.path, entry_rel, ancestors | {key}))
            elif _entry_is_file(entry):
                out.append((entry_rel, entry.path))
            elif entry.is_symlink():
                raise UnlearnableError(f"cannot read {entry.path}: broken symbolic link")
            else:
                raise UnlearnableError(f"{entry.path} is not a regular file")
        stack.extend(reversed(subdirs))


def _scan_image_folder(root: str, labels: str):
    """Return (classes or None, [(rel, path)], per-file label indices or None)."""
    entries = _scandir(root)
    exts = _image_extensions()
    class_dirs: List[os.DirEntry] = []
    root_images: List[os.DirEntry] = []
    for entry in entries:
        if _is_hidden(entry.name):
            continue
        if _entry_is_dir(entry):
            class_dirs.append(entry)
        elif os.path.splitext(entry.name)[1].lower() in exts and _entry_is_file(entry):
            root_images.append(entry)
        # other files directly under the root (manifest.json, README, LICENSE) are ignored

    if class_dirs and root_images:
        raise UnlearnableError(
            f"images directly under {root} next to class folders (e.g. {root_images[0].name}): "
            "move them into a class folder"
        )
    if not class_dirs:
        if not root_images:
            raise UnlearnableError(f"no images under {root}")
        if labels == "folders":
            raise UnlearnableError(
                f"no class folders under {root} ({len(root_images)} images directly in it); "
                "labelled data must be laid out as ROOT/<class>/<image>"
            )
        files = [(e.name, e.path) for e in root_images]
        return None, files, None

    classes: List[str] = []
    files: List[Tuple[str, str]] = []
    label_of: List[int] = []
    for entry in class_dirs:
        found: List[Tuple[str, str]] = []
        _walk_class(entry.path, entry.name, found)
        if not found:
            if labels == "none":
                continue
            raise UnlearnableError(f"class folder {entry.path} has no images")
        found.sort(key=lambda t: t[0])
        label_of.extend([len(classes)] * len(found))
        classes.append(entry.name)
        files.extend(found)
    if not files:
        raise UnlearnableError(f"no images under {root}")
    if labels != "none" and len(classes) < 2:
        raise UnlearnableError(
            f"only one class ({classes[0]}) under {root}; at least two are needed "
            "(or load it unlabelled with labels='none')"
        )
    return classes, files, label_of


@dataclass
class FolderIndex:
    """An image folder's files, ids and labels, before any pixel is decoded.

    What :func:`load_images` decodes, and what a caller that cannot hold every image in memory
    decodes piece by piece (:func:`decode_files`): both build their set with :meth:`imageset`.
    """

    root: str
    files: List[Tuple[str, str]]  # (id: relative POSIX path, path on disk), in load order
    classes: Optional[List[str]]  # None: a flat folder
    label_of: List[int]
    labels: str  # the labels mode asked for

    @property
    def ids(self) -> List[str]:
        return [rel for rel, _ in self.files]

    @property
    def paths(self) -> List[str]:
        return [p for _, p in self.files]

    @property
    def labelled(self) -> bool:
        return self.classes is not None and self.labels != "none"

    def imageset(self, images, digests: List[str]) -> ImageSet:
        """The :class:`ImageSet` of these files with ``images`` (all of them, any sizes)."""
        resolved = Path(os.path.realpath(self.root))
        source = "flat" if self.classes is None else "imagefolder"
        if not self.labelled:
            return ImageSet(images, None, [], self.ids, root=resolved, source=source, sha256=digests)
        return ImageSet(images, np.asarray(self.label_of, dtype=np.int64), list(self.classes), self.ids,
                        root=resolved, source=source, sha256=digests)


def index_images(path: PathLike, split: Optional[str] = "train", labels: str = "auto") -> Optional[FolderIndex]:
    """The :class:`FolderIndex` of an image-folder input (as :func:`load_images` would read it),
    or None for inputs that are one container file (NPZ, CIFAR batches)."""
    return _folder_index(*_resolve_input(path, labels), split, labels)


def _resolve_input(path: PathLike, labels: str):
    """``(kind, where)`` of an input (:func:`_resolve`), after checking the labels mode."""
    if labels not in LABEL_MODES:
        raise UnlearnableError(f"labels must be one of {', '.join(LABEL_MODES)}; got {labels!r}")
    return _resolve(_check_path(path))


def _folder_index(kind: str, where, split: Optional[str], labels: str) -> Optional[FolderIndex]:
    if kind in ("npz", "cifar10", "cifar100"):
        return None
    if kind == "splits":
        parent, folders = where
        name = split or "train"
        if name not in folders:
            raise UnlearnableError(f"split '{name}' not found in {parent}; available: {', '.join(sorted(folders))}")
        where = folders[name]
    classes, files, label_of = _scan_image_folder(where, labels)
    return FolderIndex(where, files, classes, label_of, labels)


def largest_side(path: str) -> Optional[int]:
    """The longer side of an image, from its header alone (no pixels decoded; orientation does
    not change it); None when Pillow cannot read the header (decoding will say why)."""
    try:
        with Image.open(path) as im:
            return max(im.size)
    except Exception:  # a damaged or foreign file: the decoder gives the one-line error
        return None


def decode_files(paths: Sequence[str], workers: Optional[int] = None):
    """Decode image files (in parallel, in order) by the loader's rules: ``(images, sha256s)``,
    the images one stacked array when they share a size, else a list."""
    return _decode_files(paths, workers, None)


#: Decoded bytes a chunk of :func:`decode_in_chunks` aims at: a few photos, thousands of thumbnails.
CHUNK_BYTES = 256 * 1024 ** 2


def chunk_length(bytes_per_image: float, target: int = CHUNK_BYTES, most: int = 4096) -> int:
    """How many images of this size make a chunk of about ``target`` decoded bytes (1 to ``most``)."""
    return int(max(1, min(most, target // max(1.0, bytes_per_image))))


def decode_in_chunks(paths: Sequence[str], first: int = 8, target: int = CHUNK_BYTES):
    """Decode ``paths`` in order, a chunk at a time: yields ``(start, images, sha256s)``.

    The first chunk has ``first`` files; each next one is sized from the images decoded so far
    to hold about ``target`` bytes, so a folder of photos and a folder of thumbnails both go by
    in chunks that fit in memory and are large enough to decode in parallel.
    """
    start, size, n = 0, max(1, int(first)), len(paths)
    while start < n:
        images, sha = _decode_files(paths[start:start + size], None, None)
        yield start, images, sha
        nbytes = images.nbytes if isinstance(images, np.ndarray) else sum(im.nbytes for im in images)
        start += len(sha)
        size = chunk_length(nbytes / max(1, len(sha)), target)


def read_views(paths: Sequence[str], views: Sequence[Callable[[np.ndarray], np.ndarray]],
               progress: Optional[Progress] = None, chunk_bytes: int = CHUNK_BYTES):
    """Read images a chunk at a time (:func:`decode_in_chunks`) and keep only small views of
    them: ``views[v](image)`` for each image, so a folder of photos never sits in memory whole.

    Returns:
        ``(kept, shapes, sha256s)``: ``kept[v]`` the list of view ``v`` of every image, each
        image's native ``(H, W)``, and each file's hash.
    """
    kept: List[List[np.ndarray]] = [[] for _ in views]
    shapes: List[Tuple[int, int]] = []
    digests: List[str] = []
    for s, images, sha in decode_in_chunks(paths, target=chunk_bytes):
        for im in images:
            shapes.append(tuple(im.shape[:2]))
            for out, view in zip(kept, views):
                out.append(view(im))
        digests += sha
        if progress is not None:
            progress(s + len(sha), len(paths))
    return kept, shapes, digests


def load_for_training(path: PathLike, split: Optional[str] = "train", labels: str = "auto",
                      size: Optional[int] = None, default: int = 32, max_native: int = 64,
                      progress: Optional[Progress] = None, chunk_bytes: int = CHUNK_BYTES) -> ImageSet:
    """A set as a victim trains on it: at ``size``², or by the resolution policy (native when
    all images share one size of at most ``max_native``, else ``default``²).

    An image folder is decoded a chunk at a time (:func:`decode_in_chunks`, about
    ``chunk_bytes``) and each image larger than ``max_native`` is resized at once, so a folder of
    photos never sits in memory at full size.
    Ids, labels and file hashes are those :func:`load_images` gives; the pixels are those of
    ``load_images(...).stacked_at(...)`` at the same size. Container files (NPZ, CIFAR) are
    loaded whole (they hold small images) and returned as they are.
    """
    from ..methods.base import working_size_of
    from .imageset import resize_image

    index = index_images(path, split, labels)
    if index is None:
        data = load_images(path, split=split, labels=labels, progress=progress)
        return data.resized((size, size)) if size else data
    def view(im: np.ndarray) -> np.ndarray:
        if size:
            return resize_image(im, (size, size))
        # Small images stay native until the policy has seen them all.
        return im if max(im.shape[:2]) <= max_native else resize_image(im, (default, default))

    (kept,), shapes, digests = read_views(index.paths, [view], progress, chunk_bytes)
    hw = (size, size) if size else working_size_of(shapes, default, max_native)
    images = np.stack([resize_image(im, hw) for im in kept]) if kept else np.zeros((0, *hw, 3), np.uint8)
    return index.imageset(images, digests)


def _load_image_folder(index: FolderIndex, workers, progress, memory: Optional[MemoryCheck] = None) -> ImageSet:
    available = available_memory() if memory is not None else None
    try:
        images, digests = _decode_files(index.paths, workers, progress,
                                        max_bytes=None if available is None else int(available / memory.factor))
    except _OverMemory as over:
        raise memory.error(index.root, len(index.files), over, available) from None
    return index.imageset(images, digests)


def _split_folders(path: str) -> Optional[Dict[str, str]]:
    """``{split: folder}`` when ``path`` is a split directory, else None."""
    try:
        entries = _scandir(path)
    except UnlearnableError:
        return None
    exts = _image_extensions()
    dirs: Dict[str, str] = {}
    for entry in entries:
        if _is_hidden(entry.name):
            continue
        if _entry_is_dir(entry):
            dirs[entry.name] = entry.path
        elif os.path.splitext(entry.name)[1].lower() in exts:
            return None  # images at the top: an image folder (and an error there)
    if "train" in dirs and all(name in SPLIT_NAMES for name in dirs):
        return dirs
    return None


# ---------------------------------------------------------------------------------------
# CIFAR python batches
# ---------------------------------------------------------------------------------------
class _RestrictedUnpickler(pickle.Unpickler):
    """Admits only what the CIFAR python pickles contain: numpy array reconstruction.

    ``_codecs.encode`` (a pure function) is also admitted: Python 3 writes ``bytes`` with
    it at pickle protocol 2, so CIFAR-style files re-written by Python 3 need it.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,
        # Protocol 5 (Python 3.14's default) rebuilds arrays from a bytes buffer: pure, no code.
        ("numpy._core.numeric", "_frombuffer"): _np_frombuffer,
        ("numpy.core.numeric", "_frombuffer"): _np_frombuffer,
    }

    def __init__(self, file, name: str):
        super().__init__(file, encoding="bytes")
        self._name = name

    def find_class(self, module, name):  # noqa: D401 - pickle API
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise UnlearnableError(f"refusing to unpickle {module}.{name} from {self._name}") from None


def _unpickle(path: str) -> Tuple[dict, str]:
    data = _read_bytes(path)
    digest = hashlib.sha256(data).hexdigest()
    try:
        obj = _RestrictedUnpickler(io.BytesIO(data), path).load()
    except UnlearnableError:
        raise
    except Exception as e:
        raise UnlearnableError(f"cannot read CIFAR batch {path}: {type(e).__name__}: {e}") from None
    if not isinstance(obj, dict):
        raise UnlearnableError(f"{path} is not a CIFAR batch file (expected a dict, got {type(obj).__name__})")
    return {(k.decode("latin-1") if isinstance(k, bytes) else str(k)): v for k, v in obj.items()}, digest


def _cifar_dir(path: str) -> Optional[Tuple[str, str]]:
    """``(kind, batch folder)`` with kind "cifar10"/"cifar100" when ``path`` is CIFAR data."""
    p = Path(path)
    if (p / "batches.meta").is_file():
        return "cifar10", path
    if (p / "meta").is_file() and ((p / "train").is_file() or (p / "test").is_file()):
        return "cifar100", path
    found = [(k, os.path.join(path, d)) for k, d in (("cifar10", _CIFAR10_DIR), ("cifar100", _CIFAR100_DIR))
             if (p / d).is_dir()]
    if len(found) > 1:
        raise UnlearnableError(f"{path} contains both {_CIFAR10_DIR} and {_CIFAR100_DIR}: pass one of them")
    return found[0] if found else None


def _cifar_splits(kind: str, folder: str) -> Dict[str, List[str]]:
    if kind == "cifar10":
        return {"train": list(_CIFAR10_TRAIN), "test": ["test_batch"]}
    return {"train": ["train"], "test": ["test"]}


def _names(values, path: str, key: str) -> List[str]:
    if not isinstance(values, (list, tuple, np.ndarray)):
        raise UnlearnableError(f"{path}: {key} is not a list of names")
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


def _load_cifar(kind: str, folder: str, split: Optional[str], labels: str) -> ImageSet:
    splits = _cifar_splits(kind, folder)
    split = split or "train"
    if split not in splits:
        raise UnlearnableError(f"split '{split}' not found in {folder}; available: {', '.join(sorted(splits))}")
    meta_name, names_key, labels_key = (
        ("batches.meta", "label_names", "labels") if kind == "cifar10"
        else ("meta", "fine_label_names", "fine_labels")
    )
    source_files: Dict[str, str] = {}
    meta_path = os.path.join(folder, meta_name)
    meta, source_files[meta_name] = _unpickle(meta_path)
    if names_key not in meta:
        raise UnlearnableError(f"{meta_path} has no {names_key}")
    classes = _names(meta[names_key], meta_path, names_key)

    batches = []
    for name in splits[split]:
        bpath = os.path.join(folder, name)
        if not os.path.exists(bpath):
            raise UnlearnableError(f"CIFAR batch file missing: {bpath}")
        batch, source_files[name] = _unpickle(bpath)
        data, y = batch.get("data"), batch.get(labels_key)
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
            raise UnlearnableError(f"{bpath}: data must be uint8 (N, 3072), got {desc}")
        try:
            y = np.asarray(y, dtype=np.int64).reshape(-1)
        except (TypeError, ValueError):
            raise UnlearnableError(f"{bpath}: {labels_key} are not integers") from None
        if len(y) != len(data):
            raise UnlearnableError(f"{bpath}: {len(y)} labels for {len(data)} images")
        if len(y) and (y.min() < 0 or y.max() >= len(classes)):
            raise UnlearnableError(f"{bpath}: labels outside 0..{len(classes) - 1}")
        batches.append((data, y))

    n = sum(len(d) for d, _ in batches)
    images = np.empty((n, 32, 32, 3), np.uint8)
    y_all = np.empty(n, np.int64)
    pos = 0
    for data, y in batches:  # rows are CHW, row-major: R plane, G plane, B plane
        images[pos:pos + len(data)] = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        y_all[pos:pos + len(data)] = y
        pos += len(data)
    ids = [f"{classes[c]}/{i:05d}.png" for i, c in enumerate(y_all.tolist())]
    root = Path(os.path.realpath(folder))
    if labels == "none":
        return ImageSet(images, None, [], ids, root=root, source="cifar", source_files=source_files)
    return ImageSet(images, y_all, classes, ids, root=root, source="cifar", source_files=source_files)


# ---------------------------------------------------------------------------------------
# NPZ
# ---------------------------------------------------------------------------------------
def _npz_splits(keys) -> List[str]:
    return sorted(k[2:] for k in keys if k.startswith("x_") and len(k) > 2)


def _str_array(value: np.ndarray, path: str, key: str) -> List[str]:
    if value.dtype.kind == "U":
        return [str(v) for v in value.reshape(-1)]
    if value.dtype.kind == "S":
        return [v.decode("utf-8") for v in value.reshape(-1)]
    raise UnlearnableError(f"{path}: {key} must be an array of strings, got {value.dtype}")


def _load_npz(path: str, split: Optional[str], labels: str) -> ImageSet:
    data = _read_bytes(path)
    digest = hashlib.sha256(data).hexdigest()
    arrays = read_npz(path, data)

    splits = _npz_splits(arrays)
    if split and f"x_{split}" in arrays:
        xk, yk, idk = f"x_{split}", f"y_{split}", f"ids_{split}"
    elif "x" in arrays and (not splits or not split or split == "train"):
        xk, yk, idk = "x", "y", "ids"  # a single set: ``split`` does not apply
    elif splits:
        raise UnlearnableError(f"split '{split}' not found in {path}; available: {', '.join(splits)}")
    else:
        raise UnlearnableError(
            f"{path} has no image array: expected key 'x' (or 'x_train'/'x_test'), found {', '.join(sorted(arrays)) or 'nothing'}"
        )

    x = arrays[xk]
    if x.dtype != np.uint8:
        raise UnlearnableError(f"{path}: {xk} must be uint8 (0..255), got {x.dtype}; scale and convert it first")
    if x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim == 3:
        x = np.repeat(x[..., None], 3, axis=-1)
    elif x.ndim != 4 or x.shape[-1] != 3:
        raise UnlearnableError(f"{path}: {xk} must have shape (N, H, W, 3), (N, H, W, 1) or (N, H, W), got {x.shape}")
    x = np.ascontiguousarray(x)
    n = len(x)
    if n == 0:
        raise UnlearnableError(f"no images in {path} ({xk} is empty)")

    y = None
    classes: List[str] = []
    if yk in arrays:
        y = arrays[yk]
        if y.dtype.kind not in "iu":
            raise UnlearnableError(f"{path}: {yk} must be integers, got {y.dtype}")
        y = y.reshape(-1).astype(np.int64) if y.ndim == 2 and y.shape[1] == 1 else y.astype(np.int64)
        if y.shape != (n,):
            raise UnlearnableError(f"{path}: {yk} has shape {y.shape}, expected ({n},)")
        if y.min() < 0:
            raise UnlearnableError(f"{path}: {yk} has negative labels")
        if "classes" in arrays:
            classes = _str_array(arrays["classes"], path, "classes")
            if y.max() >= len(classes):
                raise UnlearnableError(
                    f"{path}: {yk} has label {int(y.max())} but only {len(classes)} classes are named"
                )
        else:
            classes = [str(i) for i in range(int(y.max()) + 1)]
        if len(set(classes)) != len(classes):
            raise UnlearnableError(f"{path}: class names are not unique")
    elif labels == "folders":
        raise UnlearnableError(f"{path} has no labels ({yk})")

    if idk in arrays:
        ids = _str_array(arrays[idk], path, idk)
        if len(ids) != n:
            raise UnlearnableError(f"{path}: {len(ids)} ids for {n} images")
        if len(set(ids)) != n:
            raise UnlearnableError(f"{path}: ids are not unique")
    elif y is not None:
        ids = [f"{classes[c]}/{i:05d}.png" for i, c in enumerate(y.tolist())]
    else:
        ids = [f"{i:05d}.png" for i in range(n)]

    if y is not None and labels != "none" and len(classes) < 2:
        raise UnlearnableError(f"only one class ({classes[0]}) in {path}; at least two are needed")
    source_files = {os.path.basename(path): digest}
    root = Path(os.path.realpath(path))
    if labels == "none" or y is None:
        return ImageSet(x, None, [], ids, root=root, source="npz", source_files=source_files)
    return ImageSet(x, y, classes, ids, root=root, source="npz", source_files=source_files)


# ---------------------------------------------------------------------------------------
# dispatch
# ---------------------------------------------------------------------------------------
def _check_path(path: PathLike) -> str:
    p = os.path.expanduser(os.fspath(path))
    if not p:
        raise UnlearnableError("empty path")
    try:
        os.stat(p)
    except FileNotFoundError:
        raise UnlearnableError(f"no such file or folder: {p}") from None
    except PermissionError:
        raise UnlearnableError(f"cannot access {p}: permission denied") from None
    except OSError as e:
        raise UnlearnableError(f"cannot access {p}: {e.strerror or e}") from None
    return p


def _resolve(path: str):
    """Classify ``path``: ("npz", file) | (cifar kind, folder) | ("splits", {..}) | ("folder", path)."""
    if os.path.isfile(path):
        if path.lower().endswith(".npz"):
            return "npz", path
        raise UnlearnableError(f"{path} is a file; expected an image folder, a CIFAR folder or an .npz file")
    if not os.path.isdir(path):
        raise UnlearnableError(f"{path} is neither a file nor a folder")
    cifar = _cifar_dir(path)
    if cifar is not None:
        return cifar
    splits = _split_folders(path)
    if splits is not None:
        return "splits", (path, splits)
    # a folder holding exactly one folder that is a split directory (e.g. an unpacked tarball)
    entries = [e for e in _scandir(path) if not _is_hidden(e.name)]
    dirs = [e for e in entries if _entry_is_dir(e)]
    exts = _image_extensions()
    if len(dirs) == 1 and not any(os.path.splitext(e.name)[1].lower() in exts for e in entries):
        inner = _split_folders(dirs[0].path)
        if inner is not None:
            return "splits", (dirs[0].path, inner)
    return "folder", path


def find_splits(path: PathLike) -> List[str]:
    """The splits ``path`` offers (e.g. ``["test", "train"]``); ``[]`` for a single set."""
    p = _check_path(path)
    kind, where = _resolve(p)
    if kind == "npz":
        return _npz_splits(npz_keys(where))
    if kind in ("cifar10", "cifar100"):
        return sorted(_cifar_splits(kind, where))
    if kind == "splits":
        return sorted(where[1])
    return []


def check_split(path: PathLike, split: Optional[str]) -> None:
    """Refuse a split other than the default that ``path`` cannot offer: the loaders read a
    single set whatever ``split`` says (a test folder is loaded with ``split="test"``), so a
    user's ``--split test`` on a folder without splits would silently protect all of it."""
    if split and split != "train" and not find_splits(path):
        raise UnlearnableError(f"{path} has no split folders (train/, test/, ...): --split {split} does not apply; "
                               "leave it out to use the whole folder")


def load_images(
    path: PathLike,
    split: Optional[str] = "train",
    labels: str = "auto",
    workers: Optional[int] = None,
    progress: Optional[Progress] = None,
    memory: Optional[MemoryCheck] = None,
) -> ImageSet:
    """Load a dataset from ``path`` (see the module docstring for the accepted layouts).

    Args:
        path: an image folder, a folder of split folders, a CIFAR python folder or an .npz.
        split: which split to load when ``path`` offers several (``find_splits``); ignored
            for a path holding a single set.
        labels: ``"auto"`` (class folders when present, else unlabelled), ``"none"``
            (ignore the class structure but keep ids and order) or ``"folders"`` (require
            class folders / labels).
        workers: decoding threads (default ``min(8, cpu_count)``).
        progress: optional ``progress(done, total)`` callback, called from this thread.
        memory: for image folders, stop with a one-line error once the decoded images pass
            the share of the available memory this check allows (:class:`MemoryCheck`).
    """
    kind, where = _resolve_input(path, labels)
    index = _folder_index(kind, where, split, labels)
    if index is not None:
        return _load_image_folder(index, workers, progress, memory)
    if kind == "npz":
        result = _load_npz(where, split, labels)
    else:
        result = _load_cifar(kind, where, split, labels)
    if progress is not None:
        progress(len(result), len(result))
    return result
