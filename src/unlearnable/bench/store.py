"""The results database: every victim run and every generated protected set, in one SQLite file.

One row per victim run, identified by (``run_key``, method, budget, method seed): the run key
(:func:`unlearnable.audit.run_key`) already hashes the training pixels, the defense, the recipe,
the victim seed, the image size and the device type, so the clean baseline of a defense is one
row (method ``""``) shared by every method made from the same data, and a protected run is
attributed to the method, budget and generation seed that made its data. One row per protected
set (``generations``) holds its generation time, device and measured norms.

Each row is committed on its own, so a run interrupted at any point keeps everything it
finished; the full record (curve, recipe, device, ...) is kept as JSON beside the indexed
columns. SQLite ships with Python: no server, one file to copy between machines.

Two facts a report needs beyond the columns live in the record: ``dataset_fingerprint``
(:func:`data_fingerprint` of the data set the ``dataset`` label names, so two different data
sets of the same name do not merge into one table) and, for protected sets the method name
does not identify (imported poisons, protected folders), ``protected_id`` (e.g. the poison
file's sha256), so two poisons under one label do not merge into one column.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

from ..errors import UnlearnableError

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_key TEXT NOT NULL,
    dataset TEXT NOT NULL,
    method TEXT NOT NULL,          -- '' for a victim trained on clean data
    budget TEXT NOT NULL,          -- '' for clean runs
    method_seed INTEGER NOT NULL,  -- -1 for clean runs
    defense TEXT NOT NULL,
    arch TEXT, recipe TEXT, seed INTEGER, trained_on TEXT NOT NULL,
    acc REAL, final_acc REAL, best_acc REAL, seconds REAL,
    device TEXT, version TEXT, created TEXT NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (run_key, method, budget, method_seed)
);
CREATE TABLE IF NOT EXISTS generations (
    gen_key TEXT PRIMARY KEY,
    dataset TEXT NOT NULL, method TEXT NOT NULL, budget TEXT NOT NULL, method_seed INTEGER NOT NULL,
    n_images INTEGER, seconds REAL, device TEXT, linf_max REAL, version TEXT, created TEXT NOT NULL,
    record TEXT NOT NULL
);
"""

#: The columns of ``runs`` a CSV export and a query return (``record`` is expanded instead).
RUN_COLUMNS = ("dataset", "method", "budget", "method_seed", "defense", "arch", "recipe", "seed", "trained_on",
               "acc", "final_acc", "best_acc", "seconds", "device", "version", "created", "run_key")
GENERATION_COLUMNS = ("dataset", "method", "budget", "method_seed", "n_images", "seconds", "device", "linf_max",
                      "version", "created", "gen_key")


def data_fingerprint(ids, sha256=None, source_files=None, images=None) -> Optional[str]:
    """A short content fingerprint of a data set, whatever order it was loaded in: its ids with
    their files' sha256 (folder data) and its container files' sha256 (CIFAR batches, NPZ);
    without either, its pixels (``images``), else None (unknown).

    The grid fingerprints the data set it loads, ``audit --db`` the clean input a protected
    folder's manifest lists: the same data give the same fingerprint.
    """
    ids = list(ids)
    sha = list(sha256) if sha256 else [""] * len(ids)
    if not any(sha) and not source_files and images is None:
        return None
    h = hashlib.sha256()
    order = sorted(range(len(ids)), key=lambda i: ids[i])
    for i in order:
        h.update(f"{ids[i]}\t{sha[i] or ''}\n".encode())
    for k in sorted(source_files or {}):
        h.update(f"{k}:{source_files[k]}\n".encode())
    if not any(sha) and not source_files:
        import numpy as np

        for i in order:
            h.update(np.ascontiguousarray(images[i]).tobytes())
    return h.hexdigest()[:16]


def set_fingerprint(data) -> str:
    """:func:`data_fingerprint` of an :class:`~unlearnable.data.imageset.ImageSet`."""
    return data_fingerprint(data.ids, data.sha256, data.source_files, data.images)


def manifest_fingerprint(manifest: Dict[str, Any]) -> Optional[str]:
    """:func:`data_fingerprint` of the clean input a protected folder's manifest lists (None
    when it lists no file hashes: an in-memory input)."""
    files = manifest.get("files") or []
    return data_fingerprint([f.get("id", "") for f in files], [f.get("input_sha256") or "" for f in files],
                            (manifest.get("input") or {}).get("source_files"))


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


class ResultsDB:
    """A results database file (created when ``create`` and absent).

    Args:
        path: the SQLite file.
        create: create the file when it does not exist; else a missing file is an error
            (reports read an existing database).
        readonly: open the file for reading only (reports): nothing is written to it, not
            even the schema, and a file without this package's tables is refused.

    Raises:
        UnlearnableError: a missing file (``create=False`` or ``readonly``), a folder that does
            not exist, a file that is not a results database, or one written by a newer schema.
    """

    def __init__(self, path, *, create: bool = True, readonly: bool = False):
        from ..data.save import check_writable

        self.path = Path(path).expanduser()
        if not self.path.exists():
            if not create or readonly:
                raise UnlearnableError(f"{self.path}: no such results database")
            check_writable(self.path)
        elif self.path.is_dir():
            raise UnlearnableError(f"{self.path} is a folder, not a results database")
        if readonly:
            self._open_readonly()
            return
        try:
            # Another process writing the same file holds its lock for one commit: wait for it.
            self.conn = sqlite3.connect(str(self.path), timeout=60)
            with self.conn:
                self.conn.executescript(_SCHEMA)
                row = self.conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
                if row is None:
                    self.conn.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        except sqlite3.DatabaseError as e:
            raise UnlearnableError(f"{self.path} is not a results database ({e})") from None
        if row is not None and int(row[0]) > SCHEMA_VERSION:
            raise UnlearnableError(f"{self.path} was written by a newer unlearnable (schema {row[0]}); upgrade to "
                                   "read it")

    def _open_readonly(self) -> None:
        from urllib.parse import quote

        not_ours = UnlearnableError(f"{self.path} holds no unlearnable results")
        try:
            self.conn = sqlite3.connect(f"file:{quote(str(self.path.resolve()))}?mode=ro", uri=True, timeout=60)
        except sqlite3.Error as e:
            raise UnlearnableError(f"cannot open {self.path}: {e}") from None
        try:
            tables = {name for (name,) in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            row = None
            if {"meta", "runs", "generations"} <= tables:
                row = self.conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        except sqlite3.DatabaseError:  # not an SQLite file at all
            self.conn.close()
            raise not_ours from None
        if row is None:
            self.conn.close()
            raise not_ours
        if int(row[0]) > SCHEMA_VERSION:
            self.conn.close()
            raise UnlearnableError(f"{self.path} was written by a newer unlearnable (schema {row[0]}); upgrade to "
                                   "read it")

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "ResultsDB":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- writing ---------------------------------------------------------------------------
    def add_run(self, record: Dict[str, Any], *, dataset: str, method: str = "", budget: str = "",
                method_seed: int = -1, dataset_fingerprint: Optional[str] = None,
                protected_id: Optional[str] = None) -> None:
        """Store one audit record (:func:`unlearnable.audit.run_audit`), committed at once.

        A record already stored under the same key and cell is replaced (a re-run of the same
        settings), so re-running a grid never duplicates rows.

        Args:
            dataset_fingerprint: :func:`data_fingerprint` of the data set ``dataset`` names.
            protected_id: what identifies the protected set when ``method`` does not (an
                imported poison's sha256); ignored for clean runs.
        """
        if record.get("trained_on") == "clean":
            method, budget, method_seed, protected_id = "", "", -1, None
        rec = {k: v for k, v in record.items() if k not in ("reused", "dataset_fingerprint", "protected_id")}
        if dataset_fingerprint:
            rec["dataset_fingerprint"] = dataset_fingerprint
        if protected_id:
            rec["protected_id"] = protected_id
        if not rec.get("run_key"):
            raise ValueError("a record needs its run_key to be stored")
        row = (rec["run_key"], dataset, method, budget, int(method_seed), rec["defense"], rec.get("arch"),
               rec.get("recipe"), rec.get("seed"), rec["trained_on"], rec.get("acc"), rec.get("final_acc"),
               rec.get("best_acc"), rec.get("seconds"), rec.get("device"), _version(), _now(),
               json.dumps(rec, default=str))
        self._insert("runs", row)

    def add_generation(self, gen_key: str, *, dataset: str, method: str, budget: str, method_seed: int,
                       n_images: int, seconds: float, device: str, linf_max: Optional[float],
                       record: Dict[str, Any]) -> None:
        """Store how a protected set was made (time, device, norms, hyperparameters)."""
        row = (gen_key, dataset, method, budget, int(method_seed), int(n_images), float(seconds), device,
               linf_max, _version(), _now(), json.dumps(record, default=str))
        self._insert("generations", row)

    def _insert(self, table: str, row: tuple) -> None:
        try:
            with self.conn:  # one transaction per row: an interruption keeps every finished one
                self.conn.execute(f"INSERT OR REPLACE INTO {table} VALUES ({','.join('?' * len(row))})", row)
        except sqlite3.OperationalError as e:  # locked past the timeout, disk full, read-only file
            raise UnlearnableError(f"cannot write to {self.path}: {e}") from None

    # -- reading ---------------------------------------------------------------------------
    def runs(self, **where: Any) -> List[Dict[str, Any]]:
        """Stored run records, each with its cell (``dataset``, ``method``, ``budget``,
        ``method_seed``) merged in; ``where`` filters on columns (``dataset="cifar10"``)."""
        return [{**json.loads(rec), **dict(zip(RUN_COLUMNS[:4], cell))}
                for *cell, rec in self._select("runs", ("dataset", "method", "budget", "method_seed", "record"),
                                               where)]

    def generations(self, **where: Any) -> List[Dict[str, Any]]:
        """Stored generation rows (indexed columns plus their ``record``)."""
        out = []
        for row in self._select("generations", (*GENERATION_COLUMNS, "record"), where):
            d = dict(zip((*GENERATION_COLUMNS, "record"), row))
            d["record"] = json.loads(d["record"])
            out.append(d)
        return out

    def datasets(self) -> List[str]:
        """The data set labels the database holds runs for, in the order first stored."""
        return list(dict.fromkeys(d for (d,) in self._select("runs", ("dataset",), {})))

    def run_table(self, **where: Any) -> List[Dict[str, Any]]:
        """The indexed columns of stored runs, one dict per row (what the CSV export writes)."""
        return [dict(zip(RUN_COLUMNS, row)) for row in self._select("runs", RUN_COLUMNS, where)]

    def _select(self, table: str, columns: Iterable[str], where: Dict[str, Any]) -> List[tuple]:
        allowed = RUN_COLUMNS if table == "runs" else GENERATION_COLUMNS
        bad = [k for k in where if k not in allowed]
        if bad:
            raise UnlearnableError(f"cannot filter {table} on {bad[0]!r}; columns: {', '.join(allowed)}")
        clause = " AND ".join(f"{k} = ?" for k in where)
        sql = f"SELECT {', '.join(columns)} FROM {table}" + (f" WHERE {clause}" if clause else "") + " ORDER BY rowid"
        try:
            return self.conn.execute(sql, tuple(where.values())).fetchall()
        except sqlite3.OperationalError as e:
            raise UnlearnableError(f"cannot read {self.path}: {e}") from None


def _version() -> str:
    from .. import __version__

    return __version__
