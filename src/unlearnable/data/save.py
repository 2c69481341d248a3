"""Writing protected sets: lossless PNG folders, NPZ exports, atomic file replacement.

Every file is written to a temporary name beside its destination and renamed into place, so
an interrupted run never leaves a half-written file under its final name.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np

from ..errors import UnlearnableError
from .imageset import ImageSet, check_id


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """The sha256 of a file's bytes, read a megabyte at a time (photos' PNGs are tens of MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _file_mode() -> int:
    """The mode a plain ``open()`` would give a new file under the process umask: mkstemp makes
    its files 0600, and a folder meant for publishing must not come out unreadable to others."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_FILE_MODE = _file_mode()


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it into place
    atomically: ``path`` is either its old self or complete, never half-written."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            if hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and an atomic rename."""
    atomic_write(path, lambda f: f.write(data))


def atomic_write_json(path: Path, obj: object) -> None:
    atomic_write_bytes(Path(path), (json.dumps(obj, indent=1, ensure_ascii=False) + "\n").encode())


def encode_png(image: np.ndarray) -> bytes:
    """Lossless RGB PNG bytes of a uint8 HWC image."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image), "RGB").save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def output_names(ids: Sequence[str]) -> List[str]:
    """Output relative path of each id: the same path with a ``.png`` suffix.

    ``cat/001.jpg`` → ``cat/001.png``. When two inputs would collide (``a.jpg`` and ``a.png``
    in one folder), the colliding ones keep their full name: ``a.jpg.png``.
    """
    ids = [check_id(i) for i in ids]  # never a path outside the output folder
    stems = [str(PurePosixPath(i).with_suffix(".png")) if PurePosixPath(i).suffix else i + ".png" for i in ids]
    counts: Dict[str, int] = {}
    for s in stems:
        counts[s] = counts.get(s, 0) + 1
    out = []
    for i, s in zip(ids, stems):
        if counts[s] > 1 and PurePosixPath(i).suffix.lower() != ".png":
            s = i + ".png"
        out.append(s)
    if len(set(out)) != len(out):
        raise UnlearnableError("two input files map to the same output name; rename one of them")
    return out


def write_pngs(root: Path, names: Sequence[str], images: Sequence[np.ndarray], skip: Iterable[int] = (),
               on_written: Optional[Callable[[int, str], None]] = None, workers: Optional[int] = None,
               progress: Optional[Callable[[int, int], None]] = None) -> Dict[int, str]:
    """Write ``images[i]`` as PNG at ``root/names[i]`` (atomically), in parallel.

    Args:
        skip: indices already written (resume).
        on_written: called in the calling thread as ``on_written(i, sha256)`` after each file
            is in place (the resume journal).
    Returns:
        ``{index: sha256}`` of the files written by this call.
    """
    root = Path(root)
    skip = set(skip)
    todo = [i for i in range(len(names)) if i not in skip]
    for d in sorted({(root / names[i]).parent for i in todo}):
        d.mkdir(parents=True, exist_ok=True)

    def work(i: int) -> str:
        data = encode_png(images[i])
        atomic_write_bytes(root / names[i], data)
        return sha256_bytes(data)

    written: Dict[int, str] = {}
    workers = workers or min(8, os.cpu_count() or 1)
    total = len(names)
    done = len(skip)
    if progress:
        progress(done, total)  # the rate (ETA) is measured from here, resumed files excluded
    with ThreadPoolExecutor(max_workers=workers) as pool:
        # Bounded windows keep memory flat and make interruption prompt.
        window = 512
        for s in range(0, len(todo), window):
            chunk = todo[s:s + window]
            for i, digest in zip(chunk, pool.map(work, chunk)):
                written[i] = digest
                if on_written:
                    on_written(i, digest)
                done += 1
            if progress:
                progress(done, total)
    return written


def check_writable(path) -> Path:
    """``path`` (expanded) if a file can be created there, else the one-line error: checked
    before long work, so that hours of training do not end in "folder does not exist"."""
    p = Path(path).expanduser()
    if not p.parent.is_dir():
        raise UnlearnableError(f"cannot write {p}: folder {p.parent} does not exist")
    if p.is_dir():
        raise UnlearnableError(f"cannot write {p}: it is a folder")
    return p


def check_output_folder(out: Path, overwrite: bool) -> None:
    """Refuse an output folder that cannot or must not be written, before any work is done.

    With ``overwrite`` an existing folder is replaced only if it is empty or was written by
    this package (a protected folder's ``manifest.json``, or an export's ``NNNNN.png`` files):
    ``--out ~/Documents --overwrite`` must not delete a user's files.
    """
    if out.exists() and not out.is_dir():
        raise UnlearnableError(f"output {out} exists and is not a folder")
    if out.exists() and not overwrite:
        raise UnlearnableError(f"output {out} already exists; pass --overwrite to replace it")
    if out.exists() and not _written_here(out):
        raise UnlearnableError(f"output {out} holds files this tool did not write; refusing to replace it "
                               "(remove it yourself, or choose another folder)")
    if not out.parent.is_dir():
        raise UnlearnableError(f"cannot create {out}: its parent folder {out.parent} does not exist")
    if not os.access(out.parent, os.W_OK | os.X_OK):
        raise UnlearnableError(f"cannot create {out}: no permission to write in {out.parent}")


def _written_here(folder: Path) -> bool:
    """Whether ``folder`` is empty or one of this package's outputs (see check_output_folder)."""
    entries = list(folder.iterdir())
    if not entries:
        return True
    manifest = folder / "manifest.json"
    if manifest.is_file():
        try:
            return str(json.loads(manifest.read_text()).get("format", "")).startswith("unlearnable-")
        except (OSError, ValueError, AttributeError):
            return False
    return all(e.is_file() and e.suffix == ".png" and e.stem.isdigit() for e in entries)


def move_into_place(part: Path, out: Path) -> None:
    """Rename a finished temporary folder to ``out``, replacing an existing ``out`` only once
    the new one is complete (the old one is moved aside first, then removed)."""
    if out.exists():
        old = out.parent / f".{out.name}.old"
        if old.exists():
            shutil.rmtree(old)
        out.rename(old)
        part.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        part.rename(out)


def check_npz_destination(path: Path, overwrite: bool = False) -> Path:
    """Refuse an NPZ destination that cannot or must not be written, before any work is done."""
    path = Path(path)
    if path.suffix != ".npz":
        raise UnlearnableError(f"{path}: NPZ export needs a file name ending in .npz")
    path = check_writable(path)
    if path.exists() and not overwrite:
        raise UnlearnableError(f"{path} already exists; pass --overwrite to replace it")
    return path


def export_npz(data: ImageSet, path: Path, overwrite: bool = False) -> Path:
    """Write a flat NPZ (``x`` uint8 NHWC, ``y``, ``classes``, ``ids``) for fast benchmarking.

    Mixed-size sets cannot be stacked: resize them first (``ImageSet.resized``). An existing
    file is replaced (atomically) only with ``overwrite``.
    """
    path = check_npz_destination(path, overwrite)
    x = data.stacked()
    arrays = {"x": x, "ids": np.array(data.ids, dtype=str), "classes": np.array(data.classes, dtype=str)}
    if data.labels is not None:
        arrays["y"] = data.labels.astype(np.int64)
    atomic_write(path, lambda f: np.savez(f, **arrays))  # streamed: no second copy in memory
    return path
