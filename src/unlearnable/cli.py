"""The ``unlearnable`` command.

Every error a user can cause ends in one line ``error: <cause>`` on stderr and exit status 2
(verification failures exit 1); an interrupted ``protect`` keeps its hidden partial folder for
``--resume``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from .errors import Interrupted, UnlearnableError
from .registry import parse_value, split_spec_list


def parse_params(items: Optional[List[str]]) -> Dict[str, Any]:
    """``["k=v", ...]`` → ``{"k": v}`` with ints, floats and booleans parsed."""
    out: Dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise UnlearnableError(f"--param {item!r} must look like name=value")
        k, v = item.split("=", 1)
        out[k.strip().replace("-", "_")] = parse_value(v.strip())
    return out


def _print(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _warnings_only(msg: str) -> None:
    # --quiet silences progress and information, not what the user must know about the result.
    if msg.startswith("warning:"):
        _print(msg)


# -- commands ---------------------------------------------------------------------------------
def cmd_protect(args: argparse.Namespace) -> int:
    from .progress import progress_ui
    from .protect import ProtectJob, protect_folder

    job = ProtectJob(input=args.input, out=args.out, method=args.method, budget=args.eps, seed=args.seed,
                     params=parse_params(args.param), split=args.split, labels=args.labels, device=args.device,
                     overwrite=args.overwrite, resume=args.resume, npz=args.npz)
    t0 = time.perf_counter()
    with progress_ui(not args.quiet) as ui:
        manifest = protect_folder(job, progress=ui, log=_print if not args.quiet else _warnings_only)
    n = manifest["norms"]
    b = manifest["budget"]
    print(f"protected {manifest['input']['n_images']} images with {manifest['method']} "
          f"({b['spec'] or b['norm']}) → {Path(args.out).resolve()}")
    print(f"measured change: ℓ∞ max {n['linf_grey_levels']['max']:.0f} grey levels "
          f"(mean {n['linf_grey_levels']['mean']:.2f}), ℓ2 max {n['l2']['max']:.3f}, "
          f"mean |Δ| {n['mean_abs_grey_levels']['mean']:.2f} levels; this command took {time.perf_counter() - t0:.1f}s")
    if args.quiet:
        pass
    elif manifest.get("labels_used") != "given":  # audit scores victims against the true classes
        _print("how much a trainer can still learn from it: `unlearnable audit` needs class labels; audit a copy "
               "of (some of) these images sorted into class folders, protected the same way")
    else:  # the budget says how small the change is, not how well it protects
        _print(f"how much a trainer can still learn from it: unlearnable audit {shlex.quote(str(args.out))} "
               f"--clean {shlex.quote(str(args.input))} --defenses none,standard,jpeg10,op+strong-aug+cutmix:p=0.5,standard+early-stop:source=clean")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from .progress import progress_ui
    from .protect import raise_if_failed, verify_output

    from .budget import parse_budget

    expect = parse_budget(args.eps) if args.eps is not None else None
    with progress_ui(not args.quiet) as ui:
        report = verify_output(args.output, args.clean, progress=ui, expect=expect)
    if args.json:  # stdout is the JSON alone, for a pipe; the human lines go to stderr
        print(json.dumps({"ok": report.ok, "n_files": report.n_files, "violations": report.violations,
                          "budget": report.budget.to_dict(), "declared_budget": report.declared.to_dict(),
                          "method": report.method, "norms": report.norms,
                          "budget_checked": report.checked_budget}, indent=1))
    say = _print if args.json else print
    for v in report.violations[:10]:
        _print(f"violation: {v}")
    raise_if_failed(report)
    made = f"made by {report.method or '?'}, declared {report.declared.describe()}"
    if report.checked_budget:
        lmax = report.norms.get("linf", {}).get("max", 0.0)
        # No bound declared (CUDA, imported poisons): nothing to be within, only what was measured.
        within = "" if report.budget.norm == "none" else f" and are within {report.budget.describe()}"
        say(f"OK: {report.n_files} files match their hashes{within} (measured ℓ∞ max {lmax:.0f} grey levels; {made})")
    else:
        say(f"OK: {report.n_files} files match their hashes ({made}; pass --clean INPUT to re-measure the budget)")
    return 0


def parse_seeds(text: str, flag: str = "--seeds") -> List[int]:
    """``"0,1,2"`` → ``[0, 1, 2]`` (the audit's and the benchmarks' seed lists)."""
    try:
        seeds = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UnlearnableError(f"{flag} takes comma-separated integers, e.g. 0,1,2; got {text!r}") from None
    if not seeds:
        raise UnlearnableError(f"{flag} is empty")
    return seeds


def _test_set(args: argparse.Namespace, protected, clean):
    """The clean test set for victims: ``--test``, the ``--clean`` folder's test split, or a
    ``--holdout`` fraction of the clean images (default 0.2 when there is nothing else),
    dropped from both training sets. Returns ``(protected, clean, test, note)``."""
    from .audit import check_counterparts, test_overlap

    protected, clean, test, note = _pick_test_set(args, protected, clean)
    if clean is not None:
        check_counterparts(protected.ids, clean.ids)
    shared = test_overlap(test, clean)
    if shared > len(test) // 2:  # the same folder twice, not a few duplicate photos
        raise UnlearnableError(f"{shared} of the {len(test)} test images are also clean training images; "
                               "pass a test set the victims do not train on (or leave out --test to hold one out)")
    if shared:
        _print(f"warning: {shared} of the {len(test)} test images are also clean training images (duplicate files)")
    return protected, clean, test, note


def _pick_test_set(args: argparse.Namespace, protected, clean):
    from .audit import holdout_split
    from .data import find_splits, load_for_training

    if args.holdout is not None and args.test:
        raise UnlearnableError("pass either --test TEST or --holdout FRACTION, not both")
    if args.test:
        return protected, clean, load_for_training(args.test, split="test", size=args.size), ""
    if args.clean and args.holdout is None and "test" in find_splits(args.clean):
        return protected, clean, load_for_training(args.clean, split="test", size=args.size), ""
    if not args.clean:
        raise UnlearnableError("no test set: pass --test TEST, or --clean CLEAN to hold out part of it as one")
    # A data owner's own folder: test on clean images that neither victim trains on.
    fraction = 0.2 if args.holdout is None else args.holdout
    protected, clean, test = holdout_split(protected, clean, fraction, seed=args.seed)
    return protected, clean, test, f" ({fraction:.0%} of the clean images per class, held out of both training sets)"


def cmd_audit(args: argparse.Namespace) -> int:
    from .audit import AuditLog, best_epoch_warnings, diverged_warnings, markdown_table, recovered_accuracy, run_audit
    from .data.save import check_writable
    from .data import load_for_training
    from .progress import progress_ui

    defenses = split_spec_list(args.defenses)
    if not defenses:
        raise UnlearnableError("--defenses is empty")
    seeds = parse_seeds(args.seeds) if args.seeds else [args.seed]
    # Before loading anything: a clash with an existing --json fails at once.
    log = AuditLog(args.json, resume=args.resume, overwrite=args.overwrite, reuse=args.reuse or ())
    if args.markdown:
        check_writable(args.markdown)
    recipe = _check_victim_args(args, defenses)
    db = None
    if args.db:
        from .bench import ResultsDB

        db = ResultsDB(args.db)
        cell = _audit_cell(args.protected)
        label = Path(args.clean or args.protected).expanduser().resolve().name  # + the holdout, once known

        def keep(record):
            log.add(record)
            db.add_run(record, dataset=label, **cell)
    from .protect import load_protected

    # At the victims' input size as they load: a folder of photos never sits in memory at full size.
    protected = load_protected(args.protected, split="train", training=True, size=args.size)
    clean = load_for_training(args.clean, split="train", size=args.size) if args.clean else None
    if clean is not None and len(protected) < len(clean) and set(protected.ids) <= set(clean.ids):
        # A poison that covers part of the set (imported, matched by content): the clean
        # victim trains on the clean versions of the same images.
        _print(f"the protected set covers {len(protected)} of the {len(clean)} clean images; "
               "clean victims train on those")
        clean = clean.subset(clean.positions(protected.ids))
    protected, clean, test, held = _test_set(args, protected, clean)
    if db is not None and held:  # named as a grid names a set with a held-out test part
        from .bench.grid import holdout_label

        label = holdout_label(label, 0.2 if args.holdout is None else args.holdout)
    _print(f"protected: {protected.summary()}; test: {test.summary()}{held}"
           + (f"; clean: {clean.summary()}" if clean else ""))
    if len(protected) < 500 or len(test) < 200:
        _print(f"warning: {len(protected)} training and {len(test)} test images are few; "
               "accuracies from so few images are noisy and say little about protection")
    try:
        with progress_ui(not args.quiet) as ui:
            records = run_audit(protected, test, clean=clean, defenses=defenses, arch=args.arch,
                                recipe=recipe,
                                epochs=args.epochs, seed=seeds, device=args.device, size=args.size,
                                progress=ui, on_result=keep if db else log.add,
                                reuse=log.earlier + (db.runs() if db else []))
    except KeyboardInterrupt:
        if args.json and log.records:
            _print(f"{len(log.records)} finished runs are in {args.json}; the same command with --resume continues")
        elif db and log.records:
            _print(f"{len(log.records)} finished runs are in {args.db}; the same command continues")
        raise
    finally:
        if db:
            db.close()
    n_reused = sum(1 for r in records if r.get("reused"))
    if n_reused:
        _print(f"reused {n_reused} of {len(records)} runs from earlier records (same data, defense, recipe, seed)")
    table = markdown_table(records)
    print(table)
    if args.markdown:
        _write_text(args.markdown, table + "\n")
    rec = recovered_accuracy(records)
    if rec:
        over = f"; mean of {rec['n']} seeds, best run {100 * rec['max_acc']:.2f}%" if rec["n"] > 1 else ""
        _print(f"recovered accuracy: {100 * rec['final_acc']:.2f}% ({rec['defense']}{over})")
    for w in best_epoch_warnings(records) + diverged_warnings(records):
        _print(f"warning: {w}")
    return 0


def _audit_cell(protected_path: str) -> Dict[str, Any]:
    """Method, budget and seed of a protected set, for its rows in a results database (the
    keyword arguments of :meth:`~unlearnable.bench.ResultsDB.add_run`): from its manifest (our
    outputs and imported poisons), else named after the file or folder.

    An imported poison's method is ``import:<format>:<name>`` (the name it was imported under)
    and its ``protected_id`` the poison file's sha256, a protected folder's the hash of its
    method and hyperparameters: the report gives two poisons of one name a column each. The
    manifest's list of clean input hashes fingerprints the data set, so that two data sets of
    one name get a table each.
    """
    import hashlib

    from .bench.store import manifest_fingerprint
    from .budget import Budget
    from .protect import MANIFEST, read_manifest

    p = Path(protected_path).expanduser()
    if p.is_dir() and (p / MANIFEST).is_file():
        m = read_manifest(p)
        seed = m.get("seed")
        method = str(m.get("method") or p.name)
        hyper = m.get("hyperparameters") or {}
        if method.startswith("import:") and hyper.get("name"):
            method = f"{method}:{hyper['name']}"
        ident = hyper.get("sha256") if method.startswith("import:") else None
        if not ident:
            ident = hashlib.sha256(json.dumps([method, hyper], sort_keys=True, default=str).encode()).hexdigest()
        return {"method": method, "budget": Budget.from_dict(m["budget"]).label,
                "method_seed": int(seed) if isinstance(seed, int) else -1,
                "dataset_fingerprint": manifest_fingerprint(m), "protected_id": ident}
    return {"method": p.resolve().name, "budget": "", "method_seed": -1}


def _aligned_pair(protected_path: str, clean_path: str, split: str, training: bool = False,
                  size: Optional[int] = None):
    """Protected and clean sets of one split, the clean one reordered to the protected ids;
    with ``training``, both as a victim sees them (:func:`load_for_training`: a folder of photos
    is read a chunk at a time and kept small, never whole at full size)."""
    from .audit import check_counterparts, check_same_classes
    from .data import load_for_training, load_images

    from .protect import load_protected

    protected = load_protected(protected_path, split=split, training=training, size=size)
    clean = (load_for_training(clean_path, split=split, size=size) if training
             else load_images(clean_path, split=split))
    check_same_classes(protected, clean, "protected set", "clean set")
    check_counterparts(protected.ids, clean.ids)
    clean = clean.subset(clean.positions(protected.ids))
    for i in range(len(protected)):
        if protected.shape_of(i) != clean.shape_of(i):
            raise UnlearnableError(f"image {protected.ids[i]!r} is {protected.shape_of(i)} protected but "
                                   f"{clean.shape_of(i)} clean")
    return protected, clean


def _native_quality(protected_path: str, clean_path: str, split: str) -> Tuple[int, Dict[str, Any]]:
    """PSNR/SSIM of every protected image against its clean one at their own size, a chunk of
    pairs at a time (:func:`decode_in_chunks`, as ``verify`` reads): ``(n, quality_summary)``."""
    import numpy as np

    from .analysis.quality import psnr, quality_summary, ssim
    from .audit import check_counterparts
    from .data.load import decode_files, decode_in_chunks, index_images
    from .protect import original_ids

    pidx, cidx = index_images(protected_path, split), index_images(clean_path, split)
    if pidx is None or cidx is None:  # container files hold small images: loaded whole
        protected, clean = _aligned_pair(protected_path, clean_path, split)
        _print(f"protected: {protected.summary()}; clean: {clean.summary()}")
        return len(protected), quality_summary(psnr(clean.images, protected.images),
                                               ssim(clean.images, protected.images))
    ids = original_ids(protected_path, pidx.ids)
    check_counterparts(ids, cidx.ids)
    where = {i: k for k, i in enumerate(cidx.ids)}
    _print(f"{len(ids)} protected images against their clean ones at their own sizes")
    ps, ss = [], []
    for start, prot, _ in decode_in_chunks(pidx.paths):
        chunk = range(start, start + len(prot))
        ref, _ = decode_files([cidx.paths[where[ids[k]]] for k in chunk])
        for k, a, b in zip(chunk, ref, prot):
            if a.shape != b.shape:
                raise UnlearnableError(f"image {ids[k]!r} is {b.shape} protected but {a.shape} clean")
        ps.append(psnr(list(ref), list(prot)))
        ss.append(ssim(list(ref), list(prot)))
    return len(ids), quality_summary(np.concatenate(ps), np.concatenate(ss))


def cmd_analyze(args: argparse.Namespace) -> int:
    import math

    import numpy as np

    from .data import check_split
    from .data.save import check_writable

    what = args.what
    for dest in (args.json, args.out if what == "tsne" else None):
        if dest:
            check_writable(dest)
    check_split(args.clean, args.split)
    if what == "quality" and not args.size:  # at each image's own size, a chunk of pairs at a time
        n, rep = _native_quality(args.protected, args.clean, args.split)
    else:  # at a working size (--size, else the victims'): both sets small in memory
        protected, clean = _aligned_pair(args.protected, args.clean, args.split, training=True, size=args.size)
        _print(f"protected: {protected.summary()}; clean: {clean.summary()} (resized as victims see them: "
               "native up to 64 px, else 32x32; --size N to choose)")
        n = len(protected)
    out: Dict[str, Any] = {"analysis": what, "protected": str(args.protected), "clean": str(args.clean),
                           "n_images": n}
    if what == "quality":
        if args.size:
            from .analysis.quality import quality_report

            rep = quality_report(clean.images, protected.images, size=args.size)
        out.update({k: v for k, v in rep.items() if not isinstance(v, np.ndarray)})
        print(f"PSNR mean {rep['psnr_mean']:.2f} dB (min {rep['psnr_min']:.2f}); SSIM mean {rep['ssim_mean']:.4f} "
              f"(min {rep['ssim_min']:.4f}); {rep['n_identical']} images unchanged")
        out = {k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in out.items()}
    elif what in ("separability", "csd", "tsne"):
        from .analysis.separability import perturbations

        y = protected.require_labels(what)
        px, cx = protected.stacked(), clean.stacked()  # loaded at one size (load_for_training)
        delta = perturbations(px, cx)
        if what == "separability":
            from .analysis.separability import separability_report

            rep = separability_report(px, cx, y, steps=args.steps, device=args.device, num_classes=protected.num_classes)
            out["train_accuracy"] = rep
            out["steps"] = args.steps
            print(f"linear separability (training accuracy, L-BFGS {args.steps} steps): perturbations "
                  f"{100 * rep['perturbation']:.2f}%, protected images {100 * rep['protected']:.2f}%, "
                  f"clean images {100 * rep['clean']:.2f}%")
            if rep.get("trivially_separable"):
                _print(f"note: {len(protected)} images in {px[0].size} dimensions: any labelling of so few is "
                       "linearly separable, so these numbers say nothing; use more images or a smaller --size")
        elif what == "csd":
            from .analysis.csd import csd

            value = csd(delta, y, num_classes=protected.num_classes)
            out["csd"] = None if math.isinf(value) else value
            print(f"CSD of the perturbations: {value:.4f} (lower = more class-separable)")
        else:
            from .analysis.tsne import tsne_plot

            png = args.out or "tsne.png"
            tsne_plot(delta, y, png, n=args.n, seed=args.seed, class_names=protected.classes)
            out["png"] = str(png)
            print(f"wrote t-SNE of {min(args.n, len(protected))} perturbations to {png}")
    elif what == "dfr":
        from .analysis.dfr import dfr
        from .audit import as_training_arrays, check_same_classes, training_size
        from .progress import epoch_tick, progress_ui

        protected, clean, test, held = _test_set(args, protected, clean)
        if held:
            _print(f"test: {test.summary()}{held}")
        check_same_classes(protected, test, "protected set", "test set")
        hw = (args.size, args.size) if args.size else training_size(protected, test, clean)
        px, py = as_training_arrays(protected, hw)
        cx, cy = as_training_arrays(clean, hw)
        tx, ty = as_training_arrays(test, hw)
        from .train.recipes import get_recipe

        rec = get_recipe(auto_recipe(args.recipe, args.device), epochs=args.epochs)
        with progress_ui(not args.quiet) as ui:
            tick = ui("dfr") if ui else None
            res = dfr(px, py, cx, cy, tx, ty, recipe=rec, arch=args.arch, defense=args.defense,
                      n_clean=args.n_clean, bn_mode=args.bn_mode, seed=args.seed, device=args.device,
                      num_classes=test.num_classes,
                      progress=epoch_tick(tick))
        out.update(res.to_dict())
        base = "—" if res.baseline_acc is None else f"{100 * res.baseline_acc:.2f}%"
        print(f"DFR ({res.n_clean} clean images, BN {res.bn_mode}): max {100 * res.max_acc:.2f}% at epoch "
              f"{res.best_epoch} (victim itself: {100 * res.victim_accs[-1]:.2f}% at the end); random-init "
              f"baseline {base}")
    else:  # pragma: no cover - argparse restricts the choices
        raise UnlearnableError(f"unknown analysis {what!r}")
    if args.json:
        _write_text(args.json, json.dumps(out, indent=1, default=float))
    return 0


def auto_recipe(name: str, device: Optional[str]) -> str:
    """``auto``: the paper protocol where a GPU makes it affordable, the small CPU recipe elsewhere."""
    from .train.recipes import resolve_recipe

    chosen = resolve_recipe(name, device)
    if chosen != name and chosen.startswith("cpu-small"):
        _print("recipe: cpu-small (no GPU; its numbers are not comparable with papers' — pass --recipe paper to insist)")
    return chosen


def _check_victim_args(args: argparse.Namespace, defenses: List[str]) -> str:
    """The recipe name, once the recipe, architecture, device and every defense are known to
    build: found before a large folder is loaded, not after."""
    from .defenses import create_defense
    from .device import resolve_device
    from .models import MODELS
    from .train.recipes import get_recipe

    resolve_device(args.device)
    recipe = auto_recipe(args.recipe, args.device)
    get_recipe(recipe, epochs=args.epochs, arch=args.arch)
    if args.arch and args.arch not in MODELS:
        raise UnlearnableError(f"unknown architecture {args.arch!r}; available: {', '.join(MODELS.list())}")
    seen: Dict[str, str] = {}
    for d in defenses:
        same = seen.setdefault(create_defense(d).spec, d)
        if same != d:  # jpeg10 and jpeg:quality=10 would train the same victims twice
            raise UnlearnableError(f"defenses {same!r} and {d!r} are the same ({create_defense(d).spec}); list it once")
    return recipe


def _write_text(path: str, text: str) -> None:
    from .data.save import atomic_write_bytes, check_writable

    atomic_write_bytes(check_writable(path), text.encode())


def cmd_export(args: argparse.Namespace) -> int:
    from .data import check_split
    from .data.save import check_npz_destination, export_npz
    from .protect import check_output_location, load_protected

    fmt = args.format or ("npz" if str(args.out).endswith(".npz") else "png-index")
    dest = Path(args.out).expanduser().resolve()
    if fmt == "npz":  # refused before the input is read, not after
        check_npz_destination(dest, args.overwrite)
    else:
        check_output_location(Path(args.input).expanduser().resolve(), dest, args.overwrite)
    check_split(args.input, args.split)
    data = load_protected(args.input, split=args.split)  # a protected folder in its input's order
    if args.size:
        data = data.resized((args.size, args.size))
    if fmt == "npz" and not data.uniform:
        raise UnlearnableError(f"{args.input} has images of several sizes; an NPZ holds one: pass --size N to "
                               "resize them to N x N")
    if fmt == "npz":
        export_npz(data, dest, overwrite=args.overwrite)
    else:
        from .data.formats import export_png_index

        export_png_index(data, dest, overwrite=args.overwrite)
    print(f"wrote {data.summary()} to {args.out} ({fmt})")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from .data.formats import import_to_folder

    manifest = import_to_folder(args.poison, args.clean, args.out, fmt=args.format, overwrite=args.overwrite,
                                check_order=not args.no_alignment_check, match=args.match)
    n = manifest["norms"]
    inp = manifest["input"]
    part = f" (matched by content to {inp['n_images']} of the {inp['subset_of']} clean images)" if inp.get("subset_of") else ""
    print(f"imported {inp['n_images']} images ({manifest['method']}){part} → {Path(args.out).resolve()}")
    print(f"measured change against the clean set: ℓ∞ max {n['linf_grey_levels']['max']:.0f} grey levels, "
          f"ℓ2 max {n['l2']['max']:.3f}, ℓ0 max {n['l0_pixels']['max']:.0f} px")
    return 0


def cmd_grid(args: argparse.Namespace) -> int:
    from .bench import ResultsDB, load_grid, markdown_report, run_grid
    from .bench.grid import held_out, prepare
    from .progress import fmt_seconds, progress_ui

    grid = load_grid(args.grid)
    if args.markdown:  # checked before hours of training, not after
        from .data.save import check_writable

        check_writable(args.markdown)
    # Every name and the data set's path, before the database file is created: a typo leaves nothing behind.
    prepare(grid, device=args.device)
    held_out(grid)
    db_path = Path(args.db).expanduser()
    created = not db_path.exists()
    with ResultsDB(args.db) as db:
        try:
            with progress_ui(not args.quiet) as ui:
                counts = run_grid(grid, db, cache=Path(args.cache).expanduser() if args.cache else None,
                                  device=args.device, progress=ui, log=_print if not args.quiet else _warnings_only)
        except KeyboardInterrupt:  # kept even when empty: a generation's checkpoints resume from the cache
            _print(f"every finished run is in {args.db}; the same command continues from there")
            raise
        except Exception:
            try:
                empty = created and not db.runs() and not db.generations()
            except UnlearnableError:
                empty = False
            if empty:  # a database this command created and stored nothing in: not left behind
                db.close()
                db_path.unlink(missing_ok=True)
            raise
    text = markdown_report(counts["records"], counts["generations"])
    print(text)
    if args.markdown:
        _write_text(args.markdown, text)
    _print(f"grid done in {fmt_seconds(counts['seconds'])}: {counts['generated']} protected sets made, "
           f"{counts['cached']} from the cache; {counts['trained']} victims trained, {counts['reused']} from "
           f"{args.db}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .bench import ResultsDB, report_markdown, runs_csv
    from .bench.report import plot_format

    if args.plot:
        plot_format(args.plot)  # an extension matplotlib cannot write: refused before anything is read
    for path in (args.markdown, args.csv, args.plot):
        if path:
            from .data.save import check_writable

            check_writable(path)
    with ResultsDB(args.db, readonly=True) as db:  # a report never writes to the file it reads
        text = report_markdown(db, dataset=args.dataset)
        if args.csv:
            _write_text(args.csv, runs_csv(db))
        if args.plot:
            from .bench.report import plot_report

            plot_report(db, args.plot, dataset=args.dataset)
    print(text)
    if args.markdown:
        _write_text(args.markdown, text)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from .defenses import DEFENSES
    from .methods import METHODS
    from .models import MODELS
    from .train.recipes import RECIPES

    kind = args.kind
    registry = {"methods": METHODS, "defenses": DEFENSES, "models": MODELS, "recipes": RECIPES}[kind]
    if kind == "defenses" and not registry.list(args.pattern):
        return _explain_defense_spec(args.pattern)
    if not registry.list(args.pattern):
        raise UnlearnableError(f"no {kind} match {args.pattern!r}; available: {', '.join(registry.list())}")
    if kind == "methods":
        for name in METHODS.list(args.pattern):
            cls = METHODS.get(name)
            print(f"{name:20s} {cls.budget_norm:5s} {cls.default_budget:8s} {cls.paper}")
            _print_params(METHODS.defaults(name), "--param defaults:")
        if args.pattern == "*":
            from .methods import streaming_methods

            print(f"\nfolders of photos of any size are read a batch at a time by {', '.join(streaming_methods())}; "
                  "the others hold the whole set in memory")
    elif kind == "defenses":
        for name in DEFENSES.list(args.pattern):
            print(f"{name:20s} {_summary(DEFENSES.get(name))}")
            _print_params(DEFENSES.defaults(name), "defaults:")
        if args.pattern == "*":
            print("\nspecs: name:key=value,... sets parameters (jpeg:quality=10); a+b composes in order "
                  "(jpeg10+at8); short forms: " + ", ".join(f"{k} = {v}" for k, v in _short_form_examples()))
    elif kind == "models":
        for name in MODELS.list(args.pattern):
            print(name)
    elif kind == "recipes":
        from .train.recipes import SPEC_FIELDS, get_recipe

        for name in RECIPES.list(args.pattern):
            r = get_recipe(name)
            print(f"{name:20s} {r.description}")
            _print_params({k: getattr(r, k) for k in SPEC_FIELDS}, f"fields ({name}:key=value):")
    return 0


def _short_form_examples() -> List[Tuple[str, str]]:
    """The field's short forms as they expand (``jpeg10`` → ``jpeg:quality=10``)."""
    from .defenses.base import _expand_short_form

    return [(s, _expand_short_form(s)) for s in ("jpeg10", "bdr2", "at8") if _expand_short_form(s) != s]


def _explain_defense_spec(spec: str) -> int:
    """``unlearnable defenses jpeg10+at8``: what a spec that is not a name builds, part by part
    (the same parser audit uses, so a spec that lists here is one audit takes)."""
    from .defenses import DEFENSES
    from .defenses.base import parse_spec

    try:
        parts = parse_spec(spec)
    except UnlearnableError as exc:
        raise UnlearnableError(f"no defenses match {spec!r}, and it is not a defense spec ({exc})") from None
    for name, kwargs in parts:
        if name not in DEFENSES:
            raise UnlearnableError(f"no defenses match {spec!r}; available: {', '.join(DEFENSES.list())}")
    from .registry import format_value

    print(f"{spec} = " + " + ".join(name + (":" + ",".join(f"{k}={format_value(v)}" for k, v in kw.items())
                                              if kw else "") for name, kw in parts))
    for name, kwargs in parts:
        print(f"{name:20s} {_summary(DEFENSES.get(name))}")
        _print_params({**DEFENSES.defaults(name), **kwargs}, "with:")
    return 0


def _summary(obj: Any) -> str:
    """The first paragraph of ``obj``'s docstring, on one line."""
    import inspect

    return " ".join((inspect.getdoc(obj) or "").split("\n\n")[0].split())


def _print_params(defaults: Dict[str, Any], how: str) -> None:
    """The settable parameters and their defaults, wrapped and indented under the entry."""
    import inspect
    import textwrap

    from .registry import format_value

    def show(v: Any) -> str:
        if isinstance(v, tuple):
            return "(" + ",".join(map(show, v)) + ")"
        return "none" if v is None else f"{v:.6g}" if isinstance(v, float) else format_value(v)

    items = [k if v is inspect.Parameter.empty else f"{k}={show(v)}" for k, v in defaults.items()]
    if items:
        print(textwrap.fill(f"{how} " + " ".join(items), width=110, initial_indent=" " * 21,
                            subsequent_indent=" " * 23, break_on_hyphens=False))


def cmd_quickstart(args: argparse.Namespace) -> int:
    from .quickstart import run_quickstart

    run_quickstart(methods=[m.strip() for m in args.methods.split(",")], epochs=args.epochs, seed=args.seed,
                   eps=args.eps, quiet=args.quiet)
    return 0


# -- parser -----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = _Parser(prog="unlearnable", description=__doc__.splitlines()[0].strip("`. ") if __doc__ else None)
    p.add_argument("--version", action="version", version=f"unlearnable {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    q = sub.add_parser("protect", help="protect a folder (or CIFAR/NPZ set) of images")
    q.add_argument("input", help="ImageFolder (root/<class>/<file>), flat folder, CIFAR batch folder or .npz")
    q.add_argument("--out", required=True, help="output folder (must not exist, unless --overwrite)")
    q.add_argument("--method", default="pil",
                   help="protection method (default pil: no network to train; see `unlearnable methods`)")
    q.add_argument("--eps", default=None,
                   help="budget: 8/255, 8 (grey levels), 0.0314, l2:1.0; for an ℓ2 method a bare number is its ℓ2 "
                        "total in [0, 1] units (default: the method's)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--param", action="append", metavar="NAME=VALUE", help="method hyperparameter (repeatable)")
    q.add_argument("--split", default="train", help="split to protect when the input has splits (default train)")
    q.add_argument("--labels", default="auto", choices=["auto", "folders", "none"], help="class labels from folders")
    q.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    q.add_argument("--overwrite", action="store_true", help="replace an existing output")
    q.add_argument("--resume", action="store_true", help="continue an interrupted run")
    q.add_argument("--npz", default=None, help="also write the protected set as one NPZ file")
    q.add_argument("--quiet", action="store_true")
    q.set_defaults(func=cmd_protect)

    v = sub.add_parser("verify", help="re-check a protected output's hashes and budget")
    v.add_argument("output")
    v.add_argument("--clean", default=None, help="the clean input, to re-measure the budget")
    v.add_argument("--eps", default=None, help="hold the images to this budget (e.g. 8/255) instead of the one "
                   "the manifest declares; needs --clean")
    v.add_argument("--json", action="store_true", help="print the report as JSON on stdout (messages on stderr)")
    v.add_argument("--quiet", action="store_true")
    v.set_defaults(func=cmd_verify)

    a = sub.add_parser("audit", help="train victims on clean and protected data under each defense")
    a.add_argument("protected", help="protected training set (folder or .npz)")
    a.add_argument("--clean", default=None, help="clean training set (and test split, if it has one)")
    _add_victim_args(a, "")
    a.add_argument("--defenses", default="standard", help="comma-separated defense specs (default: standard); "
                   "e.g. none,standard,jpeg10,op+strong-aug+cutmix:p=0.5 (see `unlearnable defenses`)")
    a.add_argument("--size", type=_positive_int, default=None, help="training image side (default: native up to 64 px, else 32: mixed sizes and photos)")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--seeds", default=None, metavar="S,S,...",
                   help="train every victim once per seed and report mean ± sd (some poisons' results vary "
                        "by tens of points between seeds); overrides --seed")
    a.add_argument("--device", default=None)
    a.add_argument("--json", default=None, metavar="FILE",
                   help="write the records as JSON (rewritten after every finished run)")
    a.add_argument("--resume", action="store_true",
                   help="continue the audit in --json FILE: runs it already holds are not trained again")
    a.add_argument("--overwrite", action="store_true", help="replace an existing --json FILE")
    a.add_argument("--reuse", action="append", default=None, metavar="FILE",
                   help="an earlier audit's JSON whose matching runs (same data, defense, recipe, seed, size, "
                        "device type) are taken as they are, e.g. the clean baselines; repeatable")
    a.add_argument("--markdown", default=None, metavar="FILE", help="write the table as Markdown")
    a.add_argument("--db", default=None, metavar="FILE",
                   help="also store every run in a results database (as `unlearnable grid` does), under the method, "
                        "budget and seed of the protected set's manifest; runs it already holds are not trained again "
                        "(`unlearnable report FILE` prints them beside other poisons)")
    a.add_argument("--quiet", action="store_true")
    a.set_defaults(func=cmd_audit)

    z = sub.add_parser("analyze", help="analyse a protected set against its clean version (separability, CSD, ...)")
    z.add_argument("what", choices=["separability", "csd", "tsne", "quality", "dfr"],
                   help="separability: linear separability of δ = x' − x, x' and x; csd: TUE's class-wise "
                        "separability of δ; tsne: t-SNE plot of δ; quality: PSNR/SSIM; dfr: deep feature "
                        "reweighting over a victim run")
    z.add_argument("protected", help="protected training set (folder or .npz)")
    z.add_argument("--clean", required=True, help="the clean set the protected one was made from (same ids)")
    _add_victim_args(z, "dfr: ")
    z.add_argument("--split", default="train", help="split to compare when the inputs have splits (default train)")
    z.add_argument("--json", default=None, metavar="FILE", help="write the results as JSON")
    z.add_argument("--out", default=None, metavar="PNG", help="tsne: output image (default tsne.png)")
    z.add_argument("--n", type=_positive_int, default=2000, help="tsne: samples drawn for the embedding")
    z.add_argument("--steps", type=_positive_int, default=500, help="separability: L-BFGS iterations")
    z.add_argument("--defense", default="standard", help="dfr: the victim's training defense")
    z.add_argument("--n-clean", type=_positive_int, default=5000, help="dfr: clean images for the last-layer refit")
    z.add_argument("--bn-mode", default="eval", choices=["eval", "train"],
                   help="dfr: BatchNorm statistics as trained (eval) or re-estimated on the clean subset (train)")
    z.add_argument("--size", type=_positive_int, default=None,
                   help="image side the analysis works at (default: native, or 32 for mixed sizes)")
    z.add_argument("--seed", type=int, default=0)
    z.add_argument("--device", default=None)
    z.add_argument("--quiet", action="store_true")
    z.set_defaults(func=cmd_analyze)

    e = sub.add_parser("export", help="write a data set (e.g. a protected folder) as NPZ or PNG-per-index")
    e.add_argument("input")
    e.add_argument("out", help="file.npz, or a folder for PNG-per-index")
    e.add_argument("--format", default=None, choices=["npz", "png-index"], help="default: npz for *.npz, else png-index")
    e.add_argument("--split", default="train")
    e.add_argument("--size", type=_positive_int, default=None, help="resize to SIZE x SIZE (needed for mixed sizes)")
    e.add_argument("--overwrite", action="store_true", help="replace an existing output")
    e.set_defaults(func=cmd_export)

    from .data.formats import FORMATS

    m = sub.add_parser("import", help="turn another tool's poison into a verifiable protected folder")
    m.add_argument("poison", help="PNG-per-index folder, EM perturbation.pt, REM/SEM .pkl, NTGA .npy, AVATAR .npz")
    m.add_argument("--clean", required=True, help="the clean set the poison was made from (its train split)")
    m.add_argument("--out", required=True, help="output folder")
    m.add_argument("--format", default="auto", choices=["auto", *FORMATS])
    m.add_argument("--overwrite", action="store_true")
    m.add_argument("--match", default="index", choices=["index", "content"],
                   help="index: poison item i belongs to clean image i (the tools' own order); content: pair each "
                        "poisoned image with the clean image it was made from, in any order or number (NTGA's "
                        "tfds order; a class-sorted copy of CIFAR); needs poisoned images, not noise")
    m.add_argument("--no-alignment-check", action="store_true",
                   help="import even when the poison's images look like other images than the clean ones "
                        "(a median change above 32 grey levels per pixel: usually a clean set in another order)")
    m.set_defaults(func=cmd_import)

    g = sub.add_parser("grid", help="run a grid of methods × budgets × defenses × recipes × seeds into a results "
                                    "database (only what it does not hold yet)")
    g.add_argument("grid", help="grid file (.yaml or .json; keys in `unlearnable.bench.grid`)")
    g.add_argument("--db", required=True, metavar="FILE", help="SQLite results database (created if absent)")
    g.add_argument("--cache", default=None, metavar="DIR",
                   help="protected sets and generation checkpoints (default: DB.cache beside the database)")
    g.add_argument("--device", default=None)
    g.add_argument("--markdown", default=None, metavar="FILE", help="also write the report as Markdown")
    g.add_argument("--quiet", action="store_true")
    g.set_defaults(func=cmd_grid)

    r = sub.add_parser("report", help="print the tables of a results database")
    r.add_argument("db", help="SQLite results database written by `unlearnable grid`")
    r.add_argument("--dataset", default=None, help="only this data set (as the report names it)")
    r.add_argument("--markdown", default=None, metavar="FILE", help="also write the report as Markdown")
    r.add_argument("--csv", default=None, metavar="FILE", help="write every run as a CSV row")
    r.add_argument("--plot", default=None, metavar="FILE",
                   help="draw the defense tables as bar charts, as PNG, SVG or PDF by FILE's extension "
                        "(needs matplotlib: the plots extra)")
    r.set_defaults(func=cmd_report)

    for kind in ("methods", "defenses", "models", "recipes"):
        lp = sub.add_parser(kind, help=f"list {kind}")
        lp.add_argument("pattern", nargs="?", default="*",
                        help="a name or glob (e.g. 'em*')" + ("; or a spec such as jpeg10+at8, to see what it builds"
                                                            if kind == "defenses" else ""))
        lp.set_defaults(func=cmd_list, kind=kind)

    s = sub.add_parser("quickstart", help="protect scikit-learn's digits and compare victims (CPU, < 2 min)")
    s.add_argument("--methods", default="random,random-classwise,regions-4,pil")
    s.add_argument("--eps", default="8/255")
    s.add_argument("--epochs", type=_positive_int, default=None)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_quickstart)
    return p


def _positive_int(text: str) -> int:
    """argparse type for sizes and counts: ``--size 0`` is refused, not read as "default"."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's one-line errors (a bad flag is not a screen of usage text)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"error: {' '.join(message.split())} (see `{self.prog} --help`)\n")


def _add_victim_args(p: argparse.ArgumentParser, what: str) -> None:
    """The test set and the victim's training, shared by ``audit`` and ``analyze dfr``."""
    p.add_argument("--test", default=None, help=f"{what}clean test set (default: the --clean folder's test split)")
    p.add_argument("--holdout", type=float, default=None, metavar="FRACTION",
                   help=f"{what}test on this fraction of the --clean images, held out of training "
                        "(default 0.2 when there is no --test and --clean has no test split)")
    p.add_argument("--recipe", default="auto",
                   help=f"{what}training recipe: paper, fast, screen, cpu-small, or one with fields changed "
                        "(paper:epochs=30,compile=true); auto = paper on a GPU, cpu-small on CPU")
    p.add_argument("--arch", default=None, help=f"{what}victim architecture (default: the recipe's)")
    p.add_argument("--epochs", type=_positive_int, default=None, help=f"{what}override the recipe's epochs")


_TERMINATED = []  # set by SIGTERM: an interrupted run then exits 143 rather than 130


def _sigterm(signum, frame):  # pragma: no cover - exercised by the resume test via a subprocess
    _TERMINATED.append(signum)
    raise KeyboardInterrupt


def _interrupted_code() -> int:
    return 143 if _TERMINATED else 130


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        signal.signal(signal.SIGTERM, _sigterm)
    except ValueError:  # not in the main thread (library use)
        pass
    try:
        return int(args.func(args) or 0)
    except UnlearnableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return _interrupted_code() if isinstance(exc, Interrupted) else exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return _interrupted_code()
    except BrokenPipeError:  # `unlearnable methods | head`: the reader left, nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 141  # what a shell reports for a process ended by SIGPIPE
    except OSError as exc:  # a folder that cannot be written, a full disk: the cause, not a traceback
        where = f": {exc.filename}" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
