#!/usr/bin/env python
"""Generate the optimising baselines (EM, EM-classwise, REM, SEM, TAP, TAP-untargeted, SEP) on
CIFAR-10, time them, and optionally train a victim on each protected set.

Prints one Markdown table — method, budget, measured ℓ∞ (max grey levels), generation seconds,
rounds/passes, victim recipe, final and best clean test accuracy — and with ``--record``
appends it, with the device, torch version, date and the exact command, to
``benchmarks/RESULTS.md`` under a ``## Baselines`` heading (append only).

``--steps-scale F`` multiplies every iteration count of every method (rounds, steps, passes,
PGD/EOT inner steps, surrogate epochs, checkpoints; each at least 1) for smoke runs; the table
then is no paper reproduction, and says so in its header.

Examples::

    # GPU, paper settings, fast victims:
    python benchmarks/bench_baselines.py --data .data/cifar10-jpeg --victim fast --record
    # CPU smoke test:
    python benchmarks/bench_baselines.py --data .data/cifar10-jpeg --limit 200 --surrogate small-cnn \\
        --steps-scale 0.05 --surrogate-recipe cpu-small --victim cpu-small --victim-epochs 2 --device cpu
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_DATA, add_record_args, epoch_progress, load_splits, record, seeded_subset  # noqa: E402

ALL = ["em", "em-classwise", "rem", "sem", "tap", "tap-untargeted", "sep"]
#: Iteration-count fields scaled by --steps-scale (inner and outer loops).
SCALED = ("max_rounds", "train_steps", "pgd_steps", "steps", "lr_decay_every", "rho_steps", "eot",
          "surrogate_epochs", "num_checkpoints")


def method_kwargs(name: str, args) -> dict:
    """The method's hyperparameters for this run: defaults, CLI overrides, scaled counts."""
    from unlearnable.methods import METHODS
    from unlearnable.registry import parse_value as _parse_value

    cls = METHODS.get(name)
    fields = {f.name: f.default for f in dataclasses.fields(cls) if f.init}
    kw = {}
    if args.surrogate and "surrogate" in fields:  # synthetic methods (lsp, ops, ...) have none
        kw["surrogate"] = args.surrogate
    if args.surrogate_recipe and "surrogate_recipe" in fields:
        kw["surrogate_recipe"] = args.surrogate_recipe
    for item in args.set or []:
        key, _, value = item.partition("=")
        target, _, field = key.rpartition(".")
        if (not target or target == name) and field in fields:
            kw[field] = _parse_value(value)
    if args.steps_scale != 1.0:
        for f in SCALED:
            if f not in fields:
                continue
            base = kw.get(f, fields[f])
            if base is None and f == "surrogate_epochs":
                from unlearnable.methods.sep import SEP_RECIPE
                from unlearnable.methods.tap import TAP_RECIPE, surrogate_from_recipe

                rec = surrogate_from_recipe(kw.get("surrogate_recipe", fields["surrogate_recipe"]),
                                            {"tap": TAP_RECIPE, "sep": SEP_RECIPE})
                base = rec.epochs
            if isinstance(base, int) and not isinstance(base, bool):
                kw[f] = max(1, int(round(base * args.steps_scale)))
    return kw


def rounds_of(name: str, run: dict) -> str:
    if name.startswith("em"):
        return f"{run.get('rounds')} rounds" + (" (stopped)" if run.get("stopped") else " (cap)")
    if name in ("rem", "sem"):
        return f"{run.get('steps')} steps + final pass"
    if name.startswith("tap"):
        return f"{run.get('passes')} passes ({run.get('restarts')} restart(s))"
    if name == "sep":
        return f"{run.get('passes')} passes ({run.get('num_checkpoints')} ckpts)"
    return ""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="CIFAR-10 copy: tarball or folder with train/ and test/")
    ap.add_argument("--methods", default=",".join(ALL), help="comma-separated method names")
    ap.add_argument("--limit", type=int, default=None, help="seeded random subset of N training images")
    ap.add_argument("--test-limit", type=int, default=None, help="seeded random subset of N test images (default: all)")
    ap.add_argument("--budget", default=None, help="budget for every method (default: each method's own)")
    ap.add_argument("--surrogate", default=None, help="surrogate model for every method (e.g. small-cnn)")
    ap.add_argument("--surrogate-recipe", default=None, help="clean-surrogate recipe for tap/sep (e.g. fast)")
    ap.add_argument("--steps-scale", type=float, default=1.0, help="multiply every iteration count (smoke runs)")
    ap.add_argument("--set", action="append", help="extra hyperparameter: [method.]field=value (repeatable)")
    ap.add_argument("--victim", default=None, help="victim recipe (paper, fast, cpu-small); none: no victim")
    ap.add_argument("--victim-epochs", type=int, default=None)
    ap.add_argument("--victim-arch", default=None)
    ap.add_argument("--victim-defense", default="standard")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--workdir", default=None, help="checkpoint folder (resume an interrupted benchmark)")
    add_record_args(ap)
    args = ap.parse_args(argv)
    if args.victim == "none":
        args.victim = None

    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from unlearnable.device import describe_device, resolve_device
    from unlearnable.methods import create_method
    from unlearnable.progress import LineProgress
    from unlearnable.train.engine import train_victim
    from unlearnable.train.recipes import get_recipe

    dev = str(resolve_device(args.device))
    t0 = time.perf_counter()
    train, test = load_splits(args.data)
    load_s = time.perf_counter() - t0
    train = seeded_subset(train, args.limit, args.seed)
    test = seeded_subset(test, args.test_limit, args.seed + 1)

    rows, notes = [], []
    recipe = get_recipe(args.victim, epochs=args.victim_epochs) if args.victim else None
    if args.victim:  # the reference row: the same victim on the clean subset
        tr = train_victim(train.stacked(), train.labels, test.stacked(), test.labels, recipe=recipe,
                          defense=args.victim_defense, num_classes=train.num_classes, arch=args.victim_arch,
                          seed=args.seed, device=dev, progress=epoch_progress("victim on clean"))
        rows.append(dict(method="(clean)", budget="—", linf=0.0, gen_s=0.0, rounds="",
                         recipe=f"{recipe.name} ({recipe.epochs} ep, {tr.arch})", final=f"{100 * tr.final_acc:.2f}",
                         best=f"{100 * tr.best_acc:.2f}"))
    for name in [m.strip() for m in args.methods.split(",") if m.strip()]:
        kw = method_kwargs(name, args)
        method = create_method(name, **kw)
        wd = os.path.join(args.workdir, name) if args.workdir else None
        if wd:
            os.makedirs(wd, exist_ok=True)
        if dev.startswith("cuda"):
            torch.cuda.synchronize()
        t1 = time.perf_counter()
        res = method.protect(train, args.budget, seed=args.seed, device=dev, workdir=wd,
                             progress=LineProgress(every=30.0).task(f"generating {name}"))
        if dev.startswith("cuda"):
            torch.cuda.synchronize()
        gen_s = time.perf_counter() - t1
        run = getattr(method, "last_run", {}) or {}
        row = dict(method=name, budget=res.budget.describe(), linf=res.norms["linf"]["max"], gen_s=gen_s,
                   rounds=rounds_of(name, run), recipe="-", final="-", best="-")
        changed = {k: v for k, v in kw.items()}
        history = run.get("train_acc")  # EM's stop criterion, per round: did it converge, or oscillate?
        notes.append(f"{name}: {changed or 'paper defaults'}; mean linf {res.norms['linf']['mean']:.2f}"
                     + (f"; surrogate accuracy on x+δ per round: {' '.join(f'{a:.2f}' for a in history)}"
                        if history else ""))
        if args.victim:
            tr = train_victim(res.protected.stacked(), train.labels, test.stacked(), test.labels, recipe=recipe,
                              defense=args.victim_defense, num_classes=train.num_classes, arch=args.victim_arch,
                              seed=args.seed, device=dev, progress=epoch_progress(f"victim on {name}"))
            row.update(recipe=f"{recipe.name} ({recipe.epochs} ep, {tr.arch})", final=f"{100 * tr.final_acc:.2f}",
                       best=f"{100 * tr.best_acc:.2f}")
        rows.append(row)
        print(f"[{name}] {gen_s:.1f} s, {row['rounds']}, linf max {row['linf']:.0f}", file=sys.stderr, flush=True)

    head = (f"device: {describe_device(dev)}; torch {torch.__version__}; threads {torch.get_num_threads()}; "
            f"python {platform.python_version()}\n"
            f"data: {len(train)} train / {len(test)} test images from {args.data} (load {load_s:.1f} s, not timed); "
            f"seed {args.seed}; steps-scale {args.steps_scale:g}"
            + ("" if args.steps_scale == 1.0 else " (SMOKE RUN: not the papers' settings)") + "\n")
    table = ["| method | budget | measured ℓ∞ (max) | generation s | rounds / passes | victim recipe | final acc | best acc |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        table.append(f"| {r['method']} | {r['budget']} | {r['linf']:.0f}/255 | {r['gen_s']:.1f} | {r['rounds']} | "
                     f"{r['recipe']} | {r['final']} | {r['best']} |")
    text = head + "\n" + "\n".join(table) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    print(text)
    record(args, "Baselines", text, "bench_baselines.py", argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
