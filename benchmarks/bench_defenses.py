#!/usr/bin/env python
"""The defense table: every defense, on clean data and on each protected set.

Protects the CIFAR-10 training set with each method (in memory, timed), then runs
``unlearnable.audit.run_audit`` per method with the chosen victim recipe. The clean victims
are trained once and reused for every method (audit ``run_key``s), and with ``--json FILE``
every finished run is saved, so ``--resume`` continues an interrupted table.

Prints one Markdown table — a row per defense; columns: the clean victim's accuracy, its
training seconds and their ratio to the ``none`` row (the adversarial-training cost target is
PGD-k ≤ (k + 1.5)× a clean run), then each method's protected accuracy — followed by each
method's recovered accuracy (the best defense on its data: the data owner's worst case).
Accuracies are the credited ones (final epoch; ``early-stop``: its validation-selected epoch).
``--record`` appends it to ``benchmarks/RESULTS.md`` under ``## Defense table``.

Examples::

    # GPU, the paper protocol (hours: use --json/--resume across device calls):
    python benchmarks/bench_defenses.py --recipe paper --json $OUT/defenses.json --record
    # CPU, a small protocol:
    python benchmarks/bench_defenses.py --recipe cpu-small --limit 5000 --test-limit 2000 --device cpu
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_DATA, add_record_args, load_splits, record, seeded_subset  # noqa: E402

#: The audit suite's defenses (issue list), in their registered spelling.
DEFENSES = ("none,standard,cutout,mixup,cutmix,gray,jpeg10,bdr2,median,gaussian,ueraser-lite,ueraser,ueraser-max,"
            "coin,at8,at-l2,op,op+strong-aug+cutmix:p=0.5,clean-mix,early-stop,standard+early-stop:source=clean")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="CIFAR-10 copy: tarball or folder with train/ and test/")
    ap.add_argument("--methods", default="random-classwise,regions-4,pil", help="comma-separated method names")
    ap.add_argument("--defenses", default=DEFENSES, help="comma-separated defense specs")
    ap.add_argument("--recipe", default="paper", help="victim recipe (paper, fast, screen, cpu-small)")
    ap.add_argument("--arch", default=None, help="override the recipe's architecture")
    ap.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    ap.add_argument("--limit", type=int, default=None, help="seeded random subset of N training images")
    ap.add_argument("--test-limit", type=int, default=None, help="seeded random subset of N test images")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", default=None, metavar="S,S,...",
                    help="victim seeds (default: --seed); cells become mean ± sd over them")
    ap.add_argument("--device", default=None)
    ap.add_argument("--json", default=None, metavar="FILE", help="every run's record, rewritten after each run")
    ap.add_argument("--resume", action="store_true", help="reuse the runs already in --json FILE")
    add_record_args(ap)
    ap.add_argument("--quiet", action="store_true", help="no progress lines")
    return ap.parse_args(argv)


def pct(v) -> str:
    return "—" if v is None else f"{100 * v:.2f}"


def table(defenses, methods, records) -> str:
    """Markdown: a row per defense, clean accuracy/seconds/cost ratio, then one column per method.

    With several seeds a cell is the mean ± sd of the credited accuracy over them."""
    from unlearnable.audit import recovered_accuracy, summarize

    unique = {r.get("run_key") or id(r): r for r in records}.values()  # clean runs are shared by the methods
    clean_recs = [r for r in unique if r["trained_on"] == "clean"]
    clean = {row["defense"]: row for row in summarize(clean_recs)}
    prot = {m: {row["defense"]: row for row in summarize([r for r in records if r["trained_on"] == "protected"
                                                          and r.get("method") == m])} for m in methods}
    secs = {d: float(np.mean([r["seconds"] for r in clean_recs if r["defense"] == d]))
            for d in {r["defense"] for r in clean_recs}}

    def cell(row, on):
        if row is None or f"{on}_final" not in row:
            return "—"
        return pct(row[f"{on}_final"]) + (f" ± {100 * row[f'{on}_sd']:.2f}" if row[f"{on}_n"] > 1 else "")

    base = secs.get("none")
    head = ["defense", "clean acc %", "clean run s", "× none"] + [f"{m} acc %" for m in methods]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for d in defenses:
        ratio = f"{secs[d] / base:.2f}" if base and d in secs else "—"
        cells = [d, cell(clean.get(d), "clean"), f"{secs[d]:.1f}" if d in secs else "—", ratio]
        cells += [cell(prot[m].get(d), "protected") for m in methods]
        lines.append("| " + " | ".join(cells) + " |")
    rec = ["**recovered**", "", "", ""]
    for m in methods:
        best = recovered_accuracy([r for r in records if r.get("method") == m])
        rec.append(f"{pct(best['final_acc'])} ({best['defense']})" if best else "—")
    lines.append("| " + " | ".join(rec) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from unlearnable.audit import AuditLog, run_audit
    from unlearnable.errors import UnlearnableError
    from unlearnable.device import describe_device, resolve_device
    from unlearnable.methods import create_method
    from unlearnable.progress import progress_ui
    from unlearnable.registry import split_spec_list
    from unlearnable.train.recipes import get_recipe

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    from unlearnable.cli import parse_seeds

    seeds = parse_seeds(args.seeds) if args.seeds else [args.seed]
    defenses = split_spec_list(args.defenses)
    dev = str(resolve_device(args.device))
    try:
        log = AuditLog(args.json, resume=args.resume)
    except UnlearnableError as e:
        raise SystemExit(f"error: {e}") from None
    recipe = get_recipe(args.recipe)
    if args.epochs:
        recipe = recipe.replace(epochs=args.epochs)
    if args.arch:
        recipe = recipe.replace(arch=args.arch)

    t0 = time.perf_counter()
    train, test = load_splits(args.data)
    load_s = time.perf_counter() - t0
    train = seeded_subset(train, args.limit, args.seed)
    test = seeded_subset(test, args.test_limit, args.seed + 1)
    print(f"# {len(train)} train / {len(test)} test, {describe_device(dev)}, recipe {recipe.name}", file=sys.stderr)

    gen = {}

    def keep(method: str):
        return lambda r: log.add({**r, "method": method})

    started = time.perf_counter()
    for i, name in enumerate(methods):
        t1 = time.perf_counter()
        res = create_method(name).protect(train, seed=args.seed, device=dev)
        gen[name] = (time.perf_counter() - t1, res.norms["linf"]["max"], res.budget.describe())
        print(f"[{name}] protected in {gen[name][0]:.1f} s", file=sys.stderr, flush=True)
        # Only the first method trains the clean victims; the others reuse them by run key.
        with progress_ui(not args.quiet) as ui:
            run_audit(res.protected, test, clean=train, defenses=defenses, arch=None, recipe=recipe.name,
                      epochs=recipe.epochs, seed=seeds, device=dev, progress=ui, on_result=keep(name),
                      reuse=log.earlier + log.records)
    wall = time.perf_counter() - started
    records = log.records
    text = (f"device: {describe_device(dev)}; torch {torch.__version__}\n"
            f"data: {len(train)} train / {len(test)} test images from {args.data} (load {load_s:.1f} s, not timed); "
            f"victim: recipe {recipe.name}, {recipe.arch}, {recipe.epochs} epochs, batch {recipe.batch_size}; "
            f"seed {args.seed}" + (f", victim seeds {args.seeds}" if args.seeds else "") + "; accuracy on the clean test set (final epoch; early-stop: selected epoch); "
            f"wall {wall / 60:.1f} min ({sum(1 for r in records if r.get('reused'))} runs reused)\n"
            + "".join(f"- {m}: {b}, generated in {s:.1f} s (measured ℓ∞ max {lmax:.0f} grey levels)\n"
                      for m, (s, lmax, b) in gen.items())
            + "\n" + table(defenses, methods, records) + "\n")
    print(text)
    record(args, "Defense table", text, "bench_defenses.py", argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
