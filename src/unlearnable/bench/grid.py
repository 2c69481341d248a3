"""Grids: the comparison table of many methods, budgets, defenses, recipes and seeds, as one file.

A grid file (YAML, or JSON) names one data set and the axes to cross::

    dataset: .data/cifar10-jpeg      # folder with train/ and test/, CIFAR batches, NPZ, or `digits`
    limit: 10000                     # optional: seeded subset of the training images
    methods: [random-classwise, regions-4, "pil:surrogate_epochs=10"]
    budgets: [default]               # default = each method's paper budget; or 8/255, l2:0.5, ...
    method_seeds: [0]
    defenses: [none, standard, jpeg10, "op+strong-aug+cutmix:p=0.5"]
    recipes: [screen]                # default auto: paper on a GPU, cpu-small on CPU
    archs: [default]                 # default = the recipe's architecture
    seeds: [0, 1]                    # victim seeds

The test set is ``test`` (a data set of its own), else the data set's test split; a data set
without one (an NPZ with only ``x``/``y``, a folder without ``train/`` and ``test/``) gets
``holdout`` (default 0.2) of its images per class held out, seeded by ``subset_seed``, before
anything else: protected sets are made from the rest, and no victim trains on the held-out
images. The data set's label then says so (``mydata (held out 20%)``).

Every (method, budget, method seed) protected set is generated once, timed, and cached as an NPZ
beside the results database; every (defense, recipe, architecture, seed) victim is trained on
it and on the clean data, through :func:`unlearnable.audit.run_audit`. Results go to a
:class:`~unlearnable.bench.store.ResultsDB` as each run finishes. Running the same grid again
(after an interruption, or with more axes added) trains only what the database does not hold:
clean baselines are shared by every method, and any run already stored under its run key is
taken as it is. Generations interrupted midway resume from their own checkpoints.

The runner works in-process, one run after another; the cells are independent, so an executor
that spreads them over several GPUs can take the same grid file.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from ..data.imageset import ImageSet
from ..errors import UnlearnableError
from .store import ResultsDB

#: A dataset name the runner provides itself (scikit-learn's bundled digits, as in the quick start).
BUILTIN_DATASETS = ("digits",)


@dataclass
class Grid:
    """A parsed grid file (see the module docstring for the keys and their meaning)."""

    dataset: str
    methods: List[str]
    defenses: List[str] = field(default_factory=lambda: ["standard"])
    recipes: List[str] = field(default_factory=lambda: ["auto"])
    archs: List[Optional[str]] = field(default_factory=lambda: [None])
    budgets: List[Optional[str]] = field(default_factory=lambda: [None])
    method_seeds: List[int] = field(default_factory=lambda: [0])
    seeds: List[int] = field(default_factory=lambda: [0])
    test: Optional[str] = None
    name: Optional[str] = None
    limit: Optional[int] = None
    test_limit: Optional[int] = None
    subset_seed: int = 0
    epochs: Optional[int] = None
    size: Optional[int] = None
    holdout: Optional[float] = None

    @property
    def label(self) -> str:
        """The data set's name in the database and the report."""
        return self.name or (self.dataset if self.dataset in BUILTIN_DATASETS else Path(self.dataset).name)

    def cells(self) -> List[Tuple[str, Optional[str], int]]:
        """The protected sets to make: (method spec, budget or None, method seed)."""
        return list(itertools.product(self.methods, self.budgets, self.method_seeds))

    def victim_runs(self) -> int:
        """How many victims the grid trains when the database holds none of them."""
        per_set = len(self.defenses) * len(self.recipes) * len(self.archs) * len(self.seeds)
        return per_set * (len(self.cells()) + 1)


_LIST_KEYS = ("methods", "defenses", "recipes", "archs", "budgets", "method_seeds", "seeds")
_INT_KEYS = ("limit", "test_limit", "subset_seed", "epochs", "size")
#: The test fraction held out of a data set without a test split (as ``audit --holdout``).
DEFAULT_HOLDOUT = 0.2


def load_grid(path) -> Grid:
    """Read and check a grid file (``.yaml``/``.yml`` or ``.json``).

    Raises:
        UnlearnableError: a missing or unreadable file, a key the grid does not know, a value
            of the wrong kind, or an empty axis; the message names the file and the key.
    """
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UnlearnableError(f"{p}: no such grid file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UnlearnableError(f"cannot read grid file {p}: {e}") from None
    if p.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise UnlearnableError(f"{p} is not valid JSON: {e}") from None
    else:
        try:
            import yaml
        except ImportError:  # a dependency, but a bare machine (a lent GPU) may lack it
            raise UnlearnableError(f"reading {p} needs PyYAML (pip install pyyaml), or write the grid as JSON") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise UnlearnableError(f"{p} is not valid YAML: {' '.join(str(e).split())}") from None
    return grid_from_dict(data, where=str(p))


def grid_from_dict(data: Any, where: str = "grid") -> Grid:
    """A :class:`Grid` from a parsed mapping; scalars stand for one-element lists, and
    ``defenses``/``methods`` may also be comma-separated strings (as on the command line)."""
    from ..registry import split_spec_list

    if not isinstance(data, dict):
        raise UnlearnableError(f"{where}: a grid is a mapping of keys (dataset, methods, defenses, ...)")
    known = {f.name for f in fields(Grid)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise UnlearnableError(f"{where}: unknown key {unknown[0]!r}; keys: {', '.join(sorted(known))}")
    for key in ("dataset", "methods"):
        if data.get(key) in (None, "", []):
            raise UnlearnableError(f"{where}: {key!r} is required")
    kw: Dict[str, Any] = {}
    for key, value in data.items():
        if key in _LIST_KEYS:
            items = value if isinstance(value, list) else [value]
            if key in ("methods", "defenses"):
                items = [s for v in items for s in (split_spec_list(v) if isinstance(v, str) else [v])]
            if not items:
                raise UnlearnableError(f"{where}: {key!r} is empty")
            if key in ("method_seeds", "seeds"):
                items = [_int(where, key, v) for v in items]
                if len(set(items)) != len(items):
                    raise UnlearnableError(f"{where}: {key!r} repeats a seed: {items}")
            elif key in ("archs", "budgets"):
                items = [None if v in (None, "default") else str(v) for v in items]
            else:
                if not all(isinstance(v, str) and v.strip() for v in items):
                    raise UnlearnableError(f"{where}: {key!r} must be names or specs, got {items}")
                items = [v.strip() for v in items]
            kw[key] = items
        elif key in _INT_KEYS:
            kw[key] = None if value is None else _int(where, key, value, positive=key != "subset_seed")
        elif key == "holdout":
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not 0.0 < value < 1.0):
                raise UnlearnableError(f"{where}: 'holdout' takes a fraction between 0 and 1, got {value!r}")
            kw[key] = None if value is None else float(value)
        else:
            if not isinstance(value, str) or not value.strip():
                raise UnlearnableError(f"{where}: {key!r} must be a text, got {value!r}")
            kw[key] = value.strip()
    if kw.get("test") and kw.get("holdout") is not None:
        raise UnlearnableError(f"{where}: give either 'test' (a test set) or 'holdout' (a fraction held out), not both")
    return Grid(**kw)


def _int(where: str, key: str, value: Any, positive: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or (positive and value < 1):
        kind = "a positive integer" if positive else "an integer"
        raise UnlearnableError(f"{where}: {key!r} takes {kind}, got {value!r}")
    return value


@dataclass
class _Prepared:
    """A grid with every name resolved, so a typo fails before hours of work, not after."""

    methods: Dict[str, Any]  # spec -> Method
    budgets: Dict[Tuple[str, Optional[str]], Any]  # (spec, budget) -> Budget
    recipes: List[Any]


def prepare(grid: Grid, device: Optional[str] = None) -> _Prepared:
    """Create every method, budget, defense and recipe the grid names (fails fast on any);
    ``auto`` recipes are resolved for ``device``."""
    from ..defenses import create_defense
    from ..methods import create_method
    from ..registry import parse_named_spec
    from ..train.recipes import get_recipe, resolve_recipe
    from ..models import list_models

    methods = {}
    for spec in grid.methods:
        name, kwargs = parse_named_spec(spec, "method")
        methods[spec] = create_method(name, **kwargs)
    budgets = {(spec, b): m.parse_budget(b) for spec, m in methods.items() for b in grid.budgets}
    for spec in grid.defenses:
        create_defense(spec)
    names = dict.fromkeys(resolve_recipe(r, device) for r in grid.recipes)  # auto may repeat another one
    recipes = [get_recipe(r, epochs=grid.epochs) for r in names]
    archs = set(list_models())
    for a in grid.archs:
        if a is not None and a not in archs:
            raise UnlearnableError(f"unknown architecture {a!r}; see `unlearnable models`")
    return _Prepared(methods, budgets, recipes)


def held_out(grid: Grid) -> Optional[float]:
    """The fraction of the data set the grid holds out as its test set: ``holdout``, or
    :data:`DEFAULT_HOLDOUT` for a data set without a test split; None when it has a test set.

    Raises:
        UnlearnableError: the data set (or ``test``) does not exist.
    """
    from ..data import find_splits

    if grid.dataset in BUILTIN_DATASETS:
        return None
    if grid.test:
        find_splits(grid.test)  # a missing test set fails here, before any work
    if grid.holdout is not None:
        return grid.holdout
    if grid.test or "test" in find_splits(grid.dataset):
        return None
    return DEFAULT_HOLDOUT


def holdout_label(label: str, fraction: Optional[float]) -> str:
    """The data set's label, saying when its test set is a held-out part of it."""
    return label if fraction is None else f"{label} (held out {100 * fraction:g}%)"


def _load(grid: Grid, progress=None) -> Tuple[ImageSet, ImageSet, Optional[float], Optional[str]]:
    """``(train, test, held-out fraction or None, fingerprint of the data set as loaded)``."""
    from ..data import load_images
    from .store import set_fingerprint

    held = held_out(grid)
    if grid.dataset == "digits":
        from ..quickstart import digits_imageset

        train, test = digits_imageset(grid.subset_seed)
        fp = set_fingerprint(train)
    else:
        tick = progress("load") if progress else None
        train = load_images(grid.dataset, split="train", progress=tick)
        fp = set_fingerprint(train)
        if held is None:
            test = load_images(grid.test or grid.dataset, split="test")
        else:
            # No test split: hold a stratified part out before anything else sees the images, so
            # that protected sets are made from the training part only and victims never train
            # on a test image. ``load_images(split="test")`` would return the whole set again.
            from ..audit import holdout_split

            train, _, test = holdout_split(train, train, held, seed=grid.subset_seed)
    return (train.sample(grid.limit, grid.subset_seed), test.sample(grid.test_limit, grid.subset_seed + 1),
            held, fp)


def load_dataset(grid: Grid, progress=None) -> Tuple[ImageSet, ImageSet]:
    """The grid's (train, test) sets, subsets drawn with ``subset_seed``; for a data set without
    a test split, the test set is a seeded, stratified part of it held out of the training set
    (:func:`held_out`)."""
    train, test, _, _ = _load(grid, progress)
    return train, test


def generation_key(method, budget, seed: int, data_fingerprint: str) -> str:
    """What identifies a protected set: method and hyperparameters, budget, seed, data, package version."""
    from .. import __version__
    from ..methods.optim import run_signature

    sig = run_signature(method, budget, seed, data_fingerprint, ignore=("checkpoint_every_s",))
    return hashlib.sha256(f"{sig}:{__version__}".encode()).hexdigest()[:32]


def run_grid(grid: Grid, db: ResultsDB, *, cache: Optional[Path] = None, device: Optional[str] = None,
             data: Optional[Tuple[ImageSet, ImageSet]] = None, progress=None,
             log: Callable[[str], None] = lambda s: None) -> Dict[str, Any]:
    """Run every cell of ``grid`` the database does not hold yet; return counts and wall time.

    Args:
        grid: the parsed grid.
        db: where results go (and what is already done).
        cache: folder for the protected sets and the generation checkpoints (default: beside
            the database, ``<db>.cache``).
        device: ``cpu``, ``cuda``, ... (default: CUDA when available).
        data: ``(train, test)`` already loaded, used instead of the grid's ``dataset``
            (which then only names them) and its subsets.
        progress: a progress factory (``label -> tick``), e.g. :func:`unlearnable.progress.progress_ui`.
        log: where one-line status messages go.

    Returns:
        ``generated``, ``cached`` (protected sets taken from the cache), ``trained`` and
        ``reused`` (victim runs), ``seconds``; ``records``: the grid's runs as stored (each
        with its cell), clean baselines once; ``generations``: the stored rows of its
        protected sets (for :func:`~unlearnable.bench.report.markdown_report`).
    """
    from ..audit import run_audit
    from ..device import describe_device, resolve_device
    from ..progress import fmt_seconds
    from ..protect import fingerprint_set
    from ..train.recipes import resolve_recipe
    from .store import set_fingerprint

    dev = str(resolve_device(device))
    prep = prepare(grid, device=dev)
    cache = Path(cache) if cache else db.path.with_name(db.path.name + ".cache")
    t0 = time.perf_counter()
    if data is not None:
        train, test = data
        held, dataset_fp = None, set_fingerprint(train)
    else:
        train, test, held, dataset_fp = _load(grid, progress)
    label = holdout_label(grid.label, held)
    data_fp = fingerprint_set(train)
    counts: Dict[str, Any] = {"generated": 0, "cached": 0, "trained": 0, "reused": 0}
    records: List[Dict[str, Any]] = []
    total = len(prep.recipes) * len(grid.archs) * len(grid.defenses) * len(grid.seeds) * (len(grid.cells()) + 1)
    trained_s: List[float] = []
    test_note = f" (held out {100 * held:g}% of {grid.label} per class, seed {grid.subset_seed})" if held else ""
    log(f"grid: {label}, {len(train)} train / {len(test)} test images{test_note}, {len(grid.cells())} protected "
        f"sets, up to {total} victim runs, {describe_device(dev)}")
    auto = [r for r in grid.recipes if r.partition(":")[0].strip() == "auto"]
    if auto:
        chosen = resolve_recipe(auto[0], dev).partition(":")[0]
        log(f"recipe auto: {chosen}" + (" (no GPU; its numbers are not comparable with papers' — put "
                                         "recipes: [paper] in the grid to insist)" if chosen == "cpu-small" else ""))

    seen = set()  # clean runs come back once per protected set: count and log them once
    # What the database held, read once and kept current: run keys identify runs across data set names.
    known = {r["run_key"]: r for r in db.runs()}
    keys: List[str] = []

    def stored(cell: Dict[str, Any]) -> Callable[[Dict[str, Any]], None]:
        def keep(record: Dict[str, Any]) -> None:
            ident = (record["run_key"],) if record["trained_on"] == "clean" else (record["run_key"], *cell.values())
            if ident in seen:
                return
            seen.add(ident)
            db.add_run(record, dataset=label, dataset_fingerprint=dataset_fp, **cell)
            known.setdefault(record["run_key"], record)
            rec = {k: v for k, v in record.items() if k != "protected_id"}
            rec.update(dataset=label, dataset_fingerprint=dataset_fp)
            records.append({**rec, **cell} if record["trained_on"] == "protected" else
                           {**rec, "method": "", "budget": "", "method_seed": -1})
            counts["reused" if record.get("reused") else "trained"] += 1
            if not record.get("reused"):
                trained_s.append(record["seconds"])
            done = counts["trained"] + counts["reused"]
            left = ""
            if trained_s and done < total:
                left = f", about {fmt_seconds((total - done) * sum(trained_s) / len(trained_s))} left"
            log(f"  {record['defense']}/{record['trained_on']} (seed {record['seed']}): "
                f"{100 * record['acc']:.2f}%{' (stored before)' if record.get('reused') else ''} — "
                f"{done}/{total} runs{left}")
        return keep

    for i, (spec, budget_spec, mseed) in enumerate(grid.cells(), 1):
        method, budget = prep.methods[spec], prep.budgets[(spec, budget_spec)]
        blabel = budget.label
        key = generation_key(method, budget, mseed, data_fp)
        keys.append(key)
        log(f"[{i}/{len(grid.cells())}] {spec} @ {blabel}, seed {mseed}")
        protected = _cached(cache, key)
        if protected is not None and protected.ids == train.ids:
            counts["cached"] += 1
        else:
            res = method.protect(train, budget, seed=mseed, device=dev, workdir=str(cache / "work" / key),
                                 progress=progress(f"protect {spec}") if progress else None)
            protected = res.protected
            _store(cache, key, protected)
            db.add_generation(key, dataset=label, method=spec, budget=blabel, method_seed=mseed,
                              n_images=len(train), seconds=res.seconds, device=res.device,
                              linf_max=res.norms.get("linf", {}).get("max"),
                              record={"method": res.method, "spec": spec, "hyperparameters": res.hyperparameters,
                                      "budget": res.budget.to_dict(), "seed": mseed, "norms": res.norms,
                                      "data_fingerprint": data_fp, "dataset_fingerprint": dataset_fp,
                                      # rounds/passes it took, whether it resumed (optimising methods)
                                      "run": _plain(getattr(method, "last_run", None))})
            counts["generated"] += 1
            log(f"  protected {len(train)} images in {res.seconds:.1f} s")
        cell = {"method": spec, "budget": blabel, "method_seed": mseed}
        for recipe, arch in itertools.product(prep.recipes, grid.archs):
            run_audit(protected, test, clean=train, defenses=grid.defenses, arch=arch, recipe=recipe,
                      seed=grid.seeds, device=dev, size=grid.size, progress=progress, on_result=stored(cell),
                      reuse=list(known.values()))
    counts["seconds"] = time.perf_counter() - t0
    counts["records"] = records
    mine = set(keys)
    counts["generations"] = [g for g in db.generations() if g["gen_key"] in mine]
    return counts


def _plain(value: Any) -> Any:
    """``value`` with what JSON cannot hold as numbers or text (tensors, arrays) left out."""
    if isinstance(value, dict):
        kept = {k: _plain(v) for k, v in value.items()}
        return {k: v for k, v in kept.items() if v is not _DROP}
    if isinstance(value, (list, tuple)):
        items = [_plain(v) for v in value]
        return _DROP if any(v is _DROP for v in items) else items
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # NumPy / torch scalars
        return value.item()
    return _DROP


_DROP = object()


def _cache_file(cache: Path, key: str) -> Path:
    return cache / f"{key}.npz"


def _cached(cache: Path, key: str) -> Optional[ImageSet]:
    """The protected set stored under ``key``, or None (mixed-size sets are not cached)."""
    from ..data import load_images

    path = _cache_file(cache, key)
    return load_images(path) if path.exists() else None


def _store(cache: Path, key: str, data: ImageSet) -> None:
    """Cache a finished protected set and drop its generation checkpoints (kept for mixed-size
    sets, which an NPZ cannot hold: their re-run resumes from them)."""
    import shutil

    from ..data.save import export_npz

    if not data.uniform:
        return
    cache.mkdir(parents=True, exist_ok=True)
    export_npz(data, _cache_file(cache, key), overwrite=True)
    shutil.rmtree(cache / "work" / key, ignore_errors=True)
