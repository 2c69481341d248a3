"""What every benchmark script shares: finding and caching the CIFAR-10 copy, seeded subsets,
and appending results to ``RESULTS.md`` (append only, with date and exact command).

Not part of the package: the scripts import it as a sibling module.
"""

from __future__ import annotations

import datetime as dt
import os
import shlex
import shutil
import sys
import tarfile
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "RESULTS.md"
CACHE = REPO / ".data"  # git-ignored
# ../shared does not travel to a GPU machine: copy the tarball into .data/ and carry it there.
DEFAULT_DATA = next((p for p in (REPO / ".." / "shared" / "datasets" / "cifar10-jpeg.tar.gz",
                                 REPO / ".data" / "cifar10-jpeg.tar.gz") if p.exists()),
                    REPO / ".." / "shared" / "datasets" / "cifar10-jpeg.tar.gz")


def unpacked(path: Path) -> Path:
    """Unpack a .tar.gz once into the git-ignored .data/ folder; return the folder to load."""
    path = Path(path)
    if path.is_dir() or not path.name.endswith((".tar.gz", ".tgz")):
        return path
    stem = path.name[: -len(".tar.gz")] if path.name.endswith(".tar.gz") else path.stem
    dest = CACHE / stem
    if not dest.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = CACHE / (stem + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)  # leftovers of an interrupted unpack
        print(f"unpacking {path} -> {dest}", file=sys.stderr)
        with tarfile.open(path) as tf:
            kw = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tf.extractall(tmp, **kw)
        inner = tmp / stem
        os.replace(inner if inner.is_dir() else tmp, dest)
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def load_splits(path=None):
    """Train and test :class:`ImageSet` of a CIFAR-style copy (tarball, folder, pickles or NPZ).

    Decoding 60,000 JPEGs takes seconds; the decoded arrays (with ids and class names) are
    cached next to the unpacked folder as ``<name>.splits.npz`` and reused.
    """
    from unlearnable.data import load_images
    from unlearnable.data.imageset import ImageSet

    src = Path(path) if path else DEFAULT_DATA
    if not src.exists():
        raise SystemExit(f"error: dataset {src} not found (copy ../shared/datasets/cifar10-jpeg.tar.gz to .data/)")
    folder = unpacked(src)
    cache = CACHE / (folder.name + ".splits.npz") if folder.is_dir() else None
    if cache is not None and cache.exists() and cache.stat().st_mtime >= folder.stat().st_mtime:
        z = np.load(cache, allow_pickle=False)
        classes = [str(c) for c in z["classes"]]
        return (ImageSet(z["x_train"], z["y_train"], classes, [str(i) for i in z["id_train"]]),
                ImageSet(z["x_test"], z["y_test"], classes, [str(i) for i in z["id_test"]]))
    train = load_images(folder, split="train")
    test = load_images(folder, split="test")
    if cache is not None and train.uniform and test.uniform:
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(cache.name + ".partial.npz")
        np.savez(tmp, x_train=train.stacked(), y_train=train.labels, id_train=np.array(train.ids),
                 x_test=test.stacked(), y_test=test.labels, id_test=np.array(test.ids), classes=np.array(train.classes))
        os.replace(tmp, cache)
    return train, test


def seeded_subset(data, n: Optional[int], seed: int):
    """:meth:`ImageSet.sample`: a seeded random subset of ``n`` images (all when ``n`` is None)."""
    return data.sample(n, seed)


def epoch_progress(label: str):
    """A ``train_victim`` progress callback: an epoch line with an ETA on stderr (at most one
    every 5 s), so a long CPU run is not silent for its whole length."""
    from unlearnable.progress import LineProgress, epoch_tick

    return epoch_tick(LineProgress().task(label))


def command_line(script: str, argv: Optional[Sequence[str]] = None) -> str:
    """The command as typed, for the results file."""
    given = sys.argv[1:] if argv is None else list(argv)
    return " ".join(shlex.quote(a) for a in ["python", f"benchmarks/{script}", *given])


def append_results(section: str, text: str, command: str, path: Path = RESULTS) -> None:
    """Append ``text`` under ``## section`` (written when the file's last ``##`` section differs),
    as ``### <UTC time>``, the command, then the text exactly as printed. Never rewrites."""
    path = Path(path)
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    heads = [ln.strip() for ln in old.splitlines() if ln.startswith("## ")]
    block = "# Benchmark results\n" if not old else ("" if old.endswith("\n") else "\n")
    if not heads or heads[-1] != f"## {section}":
        block += f"\n## {section}\n"
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    block += f"\n### {stamp}\n\n`{command}`\n\n{text.rstrip()}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(block)
    print(f"appended to {path}", file=sys.stderr)


def add_record_args(ap) -> None:
    """``--record`` and ``--results``: whether and where :func:`record` appends."""
    ap.add_argument("--record", action="store_true", help="append the results to --results")
    ap.add_argument("--results", default=str(RESULTS), help="results file for --record (default: benchmarks/RESULTS.md)")


def record(args, section: str, text: str, script: str, argv: Optional[Sequence[str]] = None) -> None:
    """With ``--record``, append ``text`` under ``## section`` of ``--results`` with the command."""
    if args.record:
        append_results(section, text, command_line(script, argv), Path(args.results))


def run_grid_on(grid, data, db_path: Optional[str], device: str, quiet: bool) -> dict:
    """:func:`unlearnable.bench.run_grid` on already loaded ``(train, test)``, into the results
    database at ``db_path`` (resumable), or into a throw-away one when it is None; with progress
    lines unless ``quiet``. Returns run_grid's result."""
    import tempfile

    from unlearnable.bench import ResultsDB, run_grid
    from unlearnable.errors import UnlearnableError
    from unlearnable.progress import progress_ui

    log = (lambda m: None) if quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    with tempfile.TemporaryDirectory() as tmp:
        try:
            db = ResultsDB(db_path or Path(tmp) / "runs.db")
        except UnlearnableError as e:
            raise SystemExit(f"error: {e}") from None
        with db, progress_ui(not quiet) as ui:
            return run_grid(grid, db, device=device, data=data, progress=ui, log=log)


def split_arrays(train, test) -> Tuple[Tuple[np.ndarray, np.ndarray], Tuple[np.ndarray, np.ndarray]]:
    """``((x_train, y_train), (x_test, y_test))`` as uint8 NHWC + int64 labels."""
    return (train.stacked(), train.labels), (test.stacked(), test.labels)
