"""Audit: how much can a trainer still learn from protected data?

For each defense, a victim is trained on the clean and on the protected training set with one
named recipe, and tested on the clean test set. The report gives per-defense accuracies, the
drop, and the recovered accuracy (the best any defense reached on protected data: the data
owner's worst case).

The accuracy a defense is credited with is its final-epoch clean test accuracy, except for
defenses that select an epoch on held-out training data (``early-stop``): they are credited
with the test accuracy at the selected epoch (``selected_acc``), which is what such a trainer
would deploy. Each record's ``acc`` holds the credited number.

Every record carries a ``run_key``: a hash of everything that determines the run (training and
test pixels and labels, the defense's canonical spec, every recipe field, seed, image size,
device type and package version). A record passed back through ``reuse`` is taken instead of
training again when its key matches, which is how an interrupted audit resumes and how the
clean baselines of one audit serve the next audit of another poison made from the same data.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from .data.imageset import ImageSet
from .errors import UnlearnableError
from .progress import epoch_tick

EpochTick = Optional[Callable[[str], Callable[[int, int], None]]]


def training_size(*sets: ImageSet, default: int = 32) -> Tuple[int, int]:
    """The victim's input size, by the methods' resolution policy
    (:func:`~unlearnable.methods.base.working_size_of`): the native size when every set shares
    one of at most 64 px (CIFAR), else ``default``² (mixed sizes, and photos: a folder from one
    camera shares its 12-megapixel size, which no CIFAR-style victim trains at)."""
    from .methods.base import working_size_of

    shapes = []
    for s in sets:
        if s is None or len(s) == 0:
            continue
        if not s.uniform:
            return (default, default)
        shapes.append(tuple(s.shape_of(0)))
    return working_size_of(shapes, default) if shapes else (default, default)


def as_training_arrays(data: ImageSet, size: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray]:
    """uint8 NHWC images at ``size`` and int64 labels, as the engine takes them."""
    return data.stacked_at(size), data.require_labels("training a victim")


def check_same_classes(a: ImageSet, b: ImageSet, what_a: str, what_b: str) -> None:
    if a.classes != b.classes:
        raise UnlearnableError(f"{what_a} and {what_b} have different classes: {a.classes} vs {b.classes}")


def check_counterparts(protected_ids: Sequence[str], clean_ids: Iterable[str]) -> None:
    """Refuse a clean set that is not the clean version of the protected images (by id): the
    clean victims would train on other images, an analysis would compare unrelated pixels.
    The clean set may hold more (a poison matched by content covers part of it)."""
    known = set(clean_ids)
    missing = [i for i in protected_ids if i not in known]
    if missing:
        raise UnlearnableError(f"{len(missing)} of the {len(protected_ids)} protected images have no clean counterpart "
                               f"(first: {missing[0]!r}): the two sets do not have the same ids; --clean must be the "
                               "folder (and split) that was protected")


def test_overlap(test: ImageSet, *train: Optional[ImageSet]) -> int:
    """How many test images are also training images (by source file sha256 when every set
    has them, else by pixels): a test set drawn from the training images measures memory,
    not generalisation."""
    sets = [t for t in train if t is not None]
    if not sets:
        return 0

    def keys(s: ImageSet) -> List[str]:
        if all(t.sha256 is not None for t in [test, *sets]):
            return list(s.sha256)
        return [fingerprint(s.image(i)) for i in range(len(s))]

    seen = {k for t in sets for k in keys(t)}
    return sum(1 for k in keys(test) if k in seen)


def holdout_split(protected: ImageSet, clean: ImageSet, fraction: float = 0.2,
                  seed: int = 0) -> Tuple[ImageSet, ImageSet, ImageSet]:
    """A test set for a data owner who has only their own images.

    Holds out ``fraction`` of each class of the clean images (chosen by a seeded draw over
    the sorted ids, so the split does not depend on load order) as the clean test set, and
    drops the same ids from both training sets: victims are tested on images they never saw,
    in either version. Every class keeps at least one training image.

    Returns:
        ``(protected_train, clean_train, test)``.
    """
    if not 0.0 < fraction < 1.0:
        raise UnlearnableError(f"--holdout must be a fraction between 0 and 1, got {fraction:g}")
    labels = clean.require_labels("holding out a test set")
    check_same_classes(protected, clean, "protected set", "clean set")
    check_counterparts(protected.ids, clean.ids)
    rng = np.random.default_rng(seed)
    held = set()
    wanted = set(protected.ids)
    for k in range(clean.num_classes):
        ids = sorted(clean.ids[i] for i in np.flatnonzero(labels == k) if clean.ids[i] in wanted)
        n_test = min(int(round(fraction * len(ids))), len(ids) - 1)
        held.update(ids[j] for j in rng.permutation(len(ids))[:max(0, n_test)])
    if not held:
        raise UnlearnableError(f"too few images to hold out {fraction:.0%} as a test set; pass --test TEST")
    test = clean.subset(clean.positions(sorted(held)))
    keep_p = [j for j, i in enumerate(protected.ids) if i not in held]
    keep_c = [j for j, i in enumerate(clean.ids) if i not in held]
    return protected.subset(keep_p), clean.subset(keep_c), test


def fingerprint(*arrays: np.ndarray) -> str:
    """Hash of arrays' shapes, dtypes and bytes (part of a run key)."""
    h = hashlib.blake2b(digest_size=16)
    for a in arrays:
        h.update(f"{a.shape}{a.dtype}".encode())
        h.update(np.ascontiguousarray(a).data)
    return h.hexdigest()


def run_key(*, defense: str, train: str, test: str, recipe: Any, seed: int, size: Sequence[int], device: str,
            clean: Optional[str] = None) -> str:
    """The identity of one victim run: fingerprints of its data plus every setting that changes it."""
    from . import __version__

    cfg = {"defense": defense, "train": train, "test": test, "clean": clean, "recipe": dataclasses.asdict(recipe),
           "seed": int(seed), "size": list(size), "device": device, "version": __version__}
    return hashlib.blake2b(json.dumps(cfg, sort_keys=True, default=str).encode(), digest_size=16).hexdigest()


class AuditLog:
    """An audit's records in a JSON file, rewritten after every finished run.

    An existing file is refused unless ``resume`` (its records become reusable) or
    ``overwrite``; ``reuse`` names other audits' JSON files whose matching runs are taken too.
    Pass :attr:`earlier` as ``run_audit(reuse=...)`` and :meth:`add` as its ``on_result``.
    """

    def __init__(self, path: Optional[str] = None, *, resume: bool = False, overwrite: bool = False,
                 reuse: Sequence[str] = ()):
        from pathlib import Path

        self.path = Path(path).expanduser() if path else None
        self.records: List[Dict[str, Any]] = []
        paths = [Path(p).expanduser() for p in reuse]
        if resume and self.path is None:
            raise UnlearnableError("--resume continues the audit written to --json FILE; pass --json")
        if self.path is not None and self.path.exists():
            if not (resume or overwrite):
                raise UnlearnableError(f"{path} exists: pass --resume to continue that audit or --overwrite to "
                                       "start again")
            if resume:
                paths.append(self.path)
        if self.path is not None:
            from .data.save import check_writable

            check_writable(self.path)
        self.earlier = [r for p in paths for r in _read_records(p)]

    def add(self, record: Dict[str, Any]) -> None:
        """Keep ``record`` and rewrite the file (atomically), so an interruption loses only the run in progress."""
        from .data.save import atomic_write_bytes

        self.records.append(record)
        if self.path is not None:
            atomic_write_bytes(self.path, json.dumps(self.records, indent=1).encode())


def _read_records(path) -> List[Dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UnlearnableError(f"cannot reuse {path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UnlearnableError(f"cannot reuse {path}: not an audit JSON ({e.__class__.__name__}: {e})") from None
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise UnlearnableError(f"cannot reuse {path}: expected a JSON list of audit records")
    return data


def run_audit(protected: ImageSet, test: ImageSet, *, clean: Optional[ImageSet] = None,
              defenses: Sequence[str] = ("standard",), arch: Optional[str] = None, recipe: str = "paper",
              epochs: Optional[int] = None, seed: Union[int, Sequence[int]] = 0, device: Optional[str] = None,
              size: Optional[int] = None, progress: EpochTick = None,
              on_result: Optional[Callable[[Dict[str, Any]], None]] = None,
              reuse: Iterable[Dict[str, Any]] = ()) -> List[Dict[str, Any]]:
    """Train victims per defense on clean (if given) and protected data; return one record each.

    ``seed`` may be a list: every run is then trained once per seed (a record each), and the
    summaries report the mean over seeds and the worst case for the owner (some poisons'
    final accuracies vary by tens of points between seeds: ``benchmarks/RESULTS.md``).

    Each record holds ``defense``, ``trained_on`` (``clean``/``protected``), ``acc`` (the
    credited accuracy: ``selected_acc`` for defenses that select an epoch on validation data,
    else ``final_acc``), ``final_acc``, ``best_acc``, ``seconds`` and the full training result
    (recipe, curve, device, ``selected_epoch``/``selected_acc``, ...).

    Defenses that need the clean images (``clean-mix``) get them from ``clean``, aligned by
    id; without ``clean`` they fail before any training starts.

    ``reuse``: earlier records (e.g. an interrupted audit's JSON); a run whose ``run_key``
    matches one of them is not trained again, and its record is returned with ``reused``.
    """
    from .defenses import create_defense
    from .train.engine import train_victim
    from .train.recipes import get_recipe

    seeds = [int(seed)] if isinstance(seed, (int, np.integer)) else [int(v) for v in seed]
    if not seeds or len(set(seeds)) != len(seeds):
        raise UnlearnableError(f"seeds must be distinct and at least one, got {seeds}")
    rec = get_recipe(recipe, epochs=epochs, arch=arch)
    if isinstance(defenses, str):  # "standard" or "none,jpeg10": the CLI's list, not its characters
        from .registry import split_spec_list

        defenses = split_spec_list(defenses)
    if not defenses:
        raise UnlearnableError("no defenses to audit: give at least one (e.g. 'standard')")
    defense_objs = [(spec, create_defense(spec)) for spec in defenses]  # fail fast on a bad spec
    check_same_classes(protected, test, "protected set", "test set")
    if clean is not None:
        check_same_classes(clean, test, "clean set", "test set")
    hw = (size, size) if size else training_size(protected, test, clean)
    test_x, test_y = as_training_arrays(test, hw)
    train_sets = []
    if clean is not None:
        train_sets.append(("clean", as_training_arrays(clean, hw)))
    train_sets.append(("protected", as_training_arrays(protected, hw)))

    records: List[Dict[str, Any]] = []
    # Clean counterparts of the protected images, aligned by id, for defenses that mix clean data in.
    context: Dict[str, Any] = {}
    if clean is not None and set(protected.ids) <= set(clean.ids):
        order = clean.positions(protected.ids)
        cx, cy = train_sets[0][1]
        context = {"clean_x": cx[order], "clean_y": cy[order]}
    for spec, defense in defense_objs:
        if not context and _requires_clean(defense):
            raise UnlearnableError(f"defense {spec!r} needs the clean training images: pass --clean CLEAN "
                                   "(with the same image ids as the protected set)")
    from .device import resolve_device

    done = {r["run_key"]: r for r in reuse if isinstance(r, dict) and r.get("run_key")}
    device_type = resolve_device(device).type
    test_fp = fingerprint(test_x, test_y)
    train_fps = {name: fingerprint(*arrays) for name, arrays in train_sets}
    clean_fp = fingerprint(context["clean_x"], context["clean_y"]) if context else None
    for spec, defense in defense_objs:
        for (trained_on, (x, y)), seed in itertools.product(train_sets, seeds):  # a defense's runs together
            needs_clean = trained_on == "protected" and _requires_clean(defense)
            key = run_key(defense=defense.spec, train=train_fps[trained_on], test=test_fp, recipe=rec, seed=seed,
                          size=hw, device=device_type, clean=clean_fp if needs_clean else None)
            if key in done:
                record = {**done[key], "defense": spec, "trained_on": trained_on, "reused": True}
                records.append(record)
                if on_result:
                    on_result(record)
                continue
            label = f"{spec}/{trained_on}" + (f"/seed {seed}" if len(seeds) > 1 else "")
            tick = progress(label) if progress else None
            # On the clean run the "clean counterparts" are the training images themselves.
            ctx = context if trained_on == "protected" else {"clean_x": x, "clean_y": y}
            result = train_victim(x, y, test_x, test_y, recipe=rec, defense=defense, num_classes=test.num_classes,
                                  seed=seed, device=device, context=ctx,
                                  progress=epoch_tick(tick))
            d = result.to_dict()
            acc = d["selected_acc"] if d.get("selected_acc") is not None else d["final_acc"]
            record = {"defense": spec, "trained_on": trained_on, "acc": acc, "final_acc": d["final_acc"],
                      "best_acc": d["best_acc"], "seconds": d["seconds"], "image_size": list(hw), "run_key": key, **{
                          k: v for k, v in d.items() if k not in ("final_acc", "best_acc", "seconds", "defense")}}
            records.append(record)
            if on_result:
                on_result(record)
    return records


def _requires_clean(defense: Any) -> bool:
    return any(getattr(p, "requires_clean", False) for p in getattr(defense, "defenses", [defense]))


def credited_acc(r: Dict[str, Any]) -> float:
    """The credited accuracy of a record (older records have no ``acc``)."""
    if r.get("acc") is not None:
        return r["acc"]
    return r["selected_acc"] if r.get("selected_acc") is not None else r["final_acc"]


def summarize(records: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """One row per defense: clean and protected credited/best accuracy and the drop.

    ``*_final`` is the credited accuracy (final epoch, or the validation-selected epoch for
    ``early-stop``-like defenses, flagged by ``selected``). With several seeds per run,
    ``*_final`` and ``*_best`` are means over the seeds, ``*_sd`` the standard deviation of
    the credited accuracy, ``*_max`` its largest value and ``*_n`` the number of seeds.
    """
    rows: Dict[str, Dict[str, Any]] = {}
    runs: Dict[Tuple[str, str], List[Dict[str, Any]]] = {}
    for r in records:
        rows.setdefault(r["defense"], {"defense": r["defense"]})
        runs.setdefault((r["defense"], r["trained_on"]), []).append(r)
    for (defense, on), rs in runs.items():
        row = rows[defense]
        acc = np.array([credited_acc(r) for r in rs], dtype=np.float64)
        row[f"{on}_final"] = float(acc.mean())
        row[f"{on}_best"] = float(np.mean([r["best_acc"] for r in rs]))
        row[f"{on}_sd"] = float(acc.std(ddof=1)) if len(acc) > 1 else 0.0
        row[f"{on}_max"] = float(acc.max())
        row[f"{on}_n"] = len(acc)
        selected = [r["selected_epoch"] for r in rs if r.get("selected_epoch") is not None]
        if selected:
            row["selected"] = True
            row[f"{on}_selected_epoch"] = selected[0] if len(selected) == 1 else selected
    for row in rows.values():
        if "clean_final" in row and "protected_final" in row:
            row["drop"] = row["clean_final"] - row["protected_final"]
    return list(rows.values())


def recovered_accuracy(records: List[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """The defense whose protected victims scored best (mean over seeds): the owner's worst case.

    Returns ``defense``, ``final_acc`` (its mean credited accuracy), ``max_acc`` (its best
    single run) and ``n`` (runs); ``None`` without protected runs.
    """
    rows = [row for row in summarize(records) if "protected_final" in row]
    if not rows:
        return None
    best = max(rows, key=lambda row: row["protected_final"])
    return {"defense": best["defense"], "final_acc": best["protected_final"], "max_acc": best["protected_max"],
            "n": best["protected_n"]}


def best_epoch_warnings(records: List[Dict[str, Any]], gap: float = 0.10) -> List[str]:
    """Warnings for protected runs whose best epoch beat their credited accuracy by over ``gap``.

    Victims of some poisons learn the real features first and the shortcut late, as the
    learning rate anneals (PIL under augmentation, measured: ``benchmarks/RESULTS.md``, "PIL:
    victim seeds"): 46 % at epoch 11, 18 % at the end. The final-epoch number is the field's
    protocol, but a trainer who keeps the epoch that scores best on a few clean labelled
    images gets the higher one, so the owner should see both.
    """
    out = []
    several = len({r.get("seed") for r in records}) > 1
    for r in records:
        if r.get("trained_on") != "protected" or r.get("best_acc") is None:
            continue
        final = credited_acc(r)
        if r["best_acc"] - final > gap:
            at = f" at epoch {r['best_epoch']}" if r.get("best_epoch") else ""
            run = f" (seed {r.get('seed')})" if several else ""
            ended = "its selected epoch scored" if r.get("selected_acc") is not None else "ended at"
            out.append(f"{r['defense']}{run}: the protected victim reached {100 * r['best_acc']:.1f}%{at} and {ended} "
                       f"{100 * final:.1f}%; a trainer who keeps the epoch that scores best on clean labelled images "
                       "gets the higher number")
    return out


def diverged_warnings(records: List[Dict[str, Any]]) -> List[str]:
    """One line per run whose training diverged (:class:`~unlearnable.train.engine.TrainResult`):
    its accuracy is a failed training, not a measure of the data."""
    return [f"{r['defense']}/{r['trained_on']} (seed {r.get('seed')}) diverged at epoch {r.get('diverged_epoch')}; "
            "its accuracy is not a result (lower the recipe's lr)" for r in records if r.get("diverged")]


def markdown_table(records: List[Dict[str, Any]]) -> str:
    """The audit table in Markdown (accuracies in %, final epoch; best in brackets)."""
    def pct(v):
        return "—" if v is None else f"{100 * v:.2f}"

    def cell(row, on):
        if f"{on}_final" not in row:
            return "—"
        sd = f" ± {100 * row[f'{on}_sd']:.2f}" if row[f"{on}_n"] > 1 else ""
        return f"{pct(row[f'{on}_final'])}{sd} ({pct(row[f'{on}_best'])})"

    lines = ["| defense | clean acc % | protected acc % | drop (points) |", "|---|---|---|---|"]
    rows = summarize(records)
    for row in rows:
        drop = f"{100 * row['drop']:.2f}" if "drop" in row else "—"
        mark = " †" if row.get("selected") else ""
        lines.append(f"| {row['defense']}{mark} | {cell(row, 'clean')} | {cell(row, 'protected')} | {drop} |")
    rec = recovered_accuracy(records)
    seeds = sorted({r["seed"] for r in records if r.get("seed") is not None})
    if rec:
        lines.append("")
        over = (f" Means ± standard deviation over {len(seeds)} seeds ({', '.join(map(str, seeds))}); the best single "
                f"run with `{rec['defense']}` reached {pct(rec['max_acc'])}%." if rec["n"] > 1 else "")
        lines.append(f"Recovered accuracy (best defense on protected data): {pct(rec['final_acc'])}% with `{rec['defense']}`."
                     f" Accuracies are final-epoch; best epoch in brackets.{over}")
    if any(row.get("selected") for row in rows):
        lines.append("")
        lines.append("† Early stopping: accuracy at the epoch with the best validation accuracy on images held out from"
                     " the training set (for the protected run their protected versions, or with `source=clean` their"
                     " clean versions), not the final epoch.")
    return "\n".join(lines)
