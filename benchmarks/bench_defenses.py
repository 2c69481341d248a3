#!/usr/bin/env python
"""The defense table: every defense, on clean data and on each protected set.

A grid (:mod:`unlearnable.bench.grid`) over the CIFAR-10 training set: each method protects it
(timed), then victims train under each defense with the chosen recipe, on the clean and on each
protected set. The clean victims are trained once and shared by every method; with ``--db FILE``
every finished run is stored in a results database, so running the same command again trains
only what it lacks (an interrupted table resumes, ``--seeds 0,1`` adds only the new seed).

Prints one Markdown table — a row per defense; columns: the clean victim's accuracy, its
training seconds and their ratio to the ``none`` row (the adversarial-training cost target is
PGD-k ≤ (k + 1.5)× a clean run), then each method's protected accuracy — followed by each
method's recovered accuracy (the best defense on its data: the data owner's worst case).
Accuracies are the credited ones (final epoch; ``early-stop``: its validation-selected epoch).
``--record`` appends it to ``benchmarks/RESULTS.md`` under ``## Defense table``.

Examples::

    # GPU, the paper protocol (hours: the same --db across device calls resumes):
    python benchmarks/bench_defenses.py --recipe paper --db $OUT/defenses.db --record
    # CPU, a small protocol:
    python benchmarks/bench_defenses.py --recipe cpu-small --limit 5000 --test-limit 2000 --device cpu
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_DATA, add_record_args, load_splits, record, run_grid_on, seeded_subset  # noqa: E402

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
    ap.add_argument("--db", default=None, metavar="FILE",
                    help="results database (SQLite): every run is stored as it finishes, and the runs it already "
                         "holds are not trained again (an interrupted table resumes; `unlearnable report FILE`)")
    add_record_args(ap)
    ap.add_argument("--quiet", action="store_true", help="no progress lines")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from unlearnable.bench import defense_table, grid_from_dict
    from unlearnable.cli import parse_seeds
    from unlearnable.device import describe_device, resolve_device
    from unlearnable.registry import split_spec_list
    from unlearnable.train.recipes import get_recipe

    seeds = parse_seeds(args.seeds) if args.seeds else [args.seed]
    defenses = split_spec_list(args.defenses)
    dev = str(resolve_device(args.device))
    recipe = get_recipe(args.recipe, epochs=args.epochs, arch=args.arch)

    t0 = time.perf_counter()
    train, test = load_splits(args.data)
    load_s = time.perf_counter() - t0
    train = seeded_subset(train, args.limit, args.seed)
    test = seeded_subset(test, args.test_limit, args.seed + 1)
    print(f"# {len(train)} train / {len(test)} test, {describe_device(dev)}, recipe {recipe.name}", file=sys.stderr)
    name = Path(args.data).name.removesuffix(".tar.gz") + (f"[{len(train)}/{len(test)}]" if args.limit or args.test_limit else "")
    grid = grid_from_dict({"dataset": str(args.data), "name": name, "methods": args.methods, "defenses": defenses,
                           "recipes": [args.recipe], "archs": [args.arch], "epochs": args.epochs,
                           "method_seeds": [args.seed], "seeds": seeds}, where="bench_defenses")
    out = run_grid_on(grid, (train, test), args.db, dev, args.quiet)
    gens = {g["method"]: g for g in out["generations"]}
    records = out["records"]
    text = (f"device: {describe_device(dev)}; torch {torch.__version__}\n"
            f"data: {len(train)} train / {len(test)} test images from {args.data} (load {load_s:.1f} s, not timed); "
            f"victim: recipe {recipe.name}, {recipe.arch}, {recipe.epochs} epochs, batch {recipe.batch_size}; "
            f"seed {args.seed}" + (f", victim seeds {args.seeds}" if args.seeds else "") + "; accuracy on the clean test set (final epoch; early-stop: selected epoch); "
            f"wall {out['seconds'] / 60:.1f} min ({out['reused']} runs reused)\n"
            + "".join(f"- {m}: {gens[m]['budget']}, generated in {gens[m]['seconds']:.1f} s on {gens[m]['device']} "
                      f"(measured ℓ∞ max {gens[m]['linf_max']:.0f} grey levels)\n" for m in grid.methods if m in gens)
            + "\n" + defense_table(records, defenses) + "\n")
    print(text)
    record(args, "Defense table", text, "bench_defenses.py", argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
