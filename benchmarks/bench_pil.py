#!/usr/bin/env python
"""Time PIL generation on CIFAR-10 and (optionally) train a victim on the protected set.

Reports: load time (not part of generation), surrogate fit time, attack time, total
``protect`` time (fit + attack + quantisation + verification), surrogate train/test accuracy,
the measured ℓ∞ change in grey levels, and with ``--victim RECIPE`` the clean test accuracy
of a victim trained on the protected set (and, with ``--clean-victim``, on the clean set).

``--labels pseudo`` protects the set as if it were unlabelled (k-means pseudo-labels,
``pseudo_classes`` clusters); victims still train on the true labels, which measures how much
weaker label-free protection is. ``--subset N`` protects a seeded random subset of N training
images (the surrogate then sees only those).

With ``--record`` the printed block is appended to ``benchmarks/RESULTS.md`` under ``## PIL``
with the device, torch version, date and the exact command.

Examples::

    python benchmarks/bench_pil.py --data .data/cifar10-jpeg                       # 50k, default device
    python benchmarks/bench_pil.py --data .data/cifar10-jpeg --threads 1 --record
    python benchmarks/bench_pil.py --data .data/cifar10-jpeg --subset 10000 --surrogate-fit fast \\
        --victim cpu-small --victim-arch linear --victim-epochs 10 --victim-defense none --clean-victim
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_DATA, add_record_args, epoch_progress, load_splits, record, seeded_subset  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="CIFAR-10 copy: tarball or unpacked folder")
    ap.add_argument("--device", default=None, help="cpu, cuda (default: cuda when available)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--eps", default="8/255")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--subset", type=int, default=None, help="protect a seeded random subset of N training images")
    ap.add_argument("--surrogate-fit", default="paper", choices=["paper", "fast"])
    ap.add_argument("--attack-batch", type=int, default=None)
    ap.add_argument("--labels", default="true", choices=["true", "pseudo"])
    ap.add_argument("--victim", default=None, help="victim recipe (paper, fast, cpu-small, ...)")
    ap.add_argument("--victim-arch", default=None, help="override the recipe's architecture (e.g. linear)")
    ap.add_argument("--victim-epochs", type=int, default=None)
    ap.add_argument("--victim-defense", default="standard", help="trainer's defense spec; 'none' for no augmentation")
    ap.add_argument("--victim-seeds", default=None, metavar="S,S,...",
                    help="train the victims once per seed (default: --seed) and print each test-accuracy curve")
    ap.add_argument("--clean-victim", action="store_true", help="also train the victim on the clean (sub)set")
    ap.add_argument("--param", action="append", metavar="NAME=VALUE",
                    help="further PIL hyperparameter, e.g. surrogate_reference_size=0 (repeatable)")
    add_record_args(ap)
    args = ap.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from unlearnable.data.imageset import ImageSet
    from unlearnable.methods import create_method
    from unlearnable.device import describe_device, resolve_device
    from unlearnable.methods.pil import surrogate_accuracy

    dev = str(resolve_device(args.device))
    lines = []

    def out(s=""):
        print(s, flush=True)
        lines.append(s)

    t = time.perf_counter()
    train, test = load_splits(args.data)
    load_s = time.perf_counter() - t
    train = seeded_subset(train, args.subset, args.seed)
    target = train if args.labels == "true" else ImageSet(train.stacked(), None, [], train.ids)

    from unlearnable.cli import parse_params, parse_seeds

    extra = parse_params(args.param)
    method = create_method("pil", surrogate_fit=args.surrogate_fit, attack_batch=args.attack_batch, **extra)
    if dev.startswith("cuda"):  # warm-up: CUDA context and kernels, not part of the timing
        create_method("pil", surrogate_epochs=1, steps=1).protect(train.subset(range(min(2048, len(train)))),
                                                                 args.eps, seed=args.seed, device=dev)
        torch.cuda.synchronize()
    res = method.protect(target, args.eps, seed=args.seed, device=dev)
    run = method.last_run
    w1, w2 = run["surrogate"]
    xte = torch.from_numpy(test.stacked().reshape(len(test), -1))
    test_acc = surrogate_accuracy(w1, w2, xte, torch.from_numpy(test.labels))

    out(f"device: {describe_device(dev)}; torch {torch.__version__}; threads {torch.get_num_threads()}; "
        f"load average {os.getloadavg()[0]:.2f} (1 min) on {os.cpu_count()} CPUs; {platform.python_version()}")
    out(f"data: {len(train)} CIFAR-10 train images ({'subset' if args.subset else 'all'}), labels={args.labels}"
        + (f" (k-means k={res.pseudo_labels['k']})" if res.pseudo_labels else "")
        + f"; eps {args.eps}; seed {args.seed}; surrogate_fit={args.surrogate_fit}; "
          f"attack_batch={method.attack_batch or 'default'}"
        + "".join(f"; {k}={v}" for k, v in extra.items()))
    out(f"load (not in generation): {load_s:.2f} s")
    out(f"surrogate fit: {run['fit_seconds']:.2f} s | attack: {run['attack_seconds']:.2f} s | "
        f"total protect (fit+attack+quantise+verify): {res.seconds:.2f} s")
    out(f"surrogate: {run['surrogate_epochs']} epochs | accuracy: train {run['surrogate_train_acc']:.4f} "
        f"(vs its own labels) | clean test {test_acc:.4f}")
    out(f"measured linf: max {res.norms['linf']['max']:.0f} / mean {res.norms['linf']['mean']:.2f} grey levels; "
        f"mean |change| {res.norms['mean_abs']['mean']:.2f}; within budget: {res.within_budget}")

    if args.victim:
        from unlearnable.train.engine import train_victim
        from unlearnable.train.recipes import get_recipe

        recipe = get_recipe(args.victim, epochs=args.victim_epochs)
        defense = None if args.victim_defense == "none" else args.victim_defense
        clean_x, test_x = train.stacked(), test.stacked()
        sets = [("protected", res.protected.stacked())] + ([("clean", clean_x)] if args.clean_victim else [])
        seeds = parse_seeds(args.victim_seeds, "--victim-seeds") if args.victim_seeds else [args.seed]
        # The clean counterparts, for defenses that use them (clean-mix, early-stop:source=clean).
        context = {"clean_x": clean_x, "clean_y": train.labels}
        for name, x in sets:
            for vs in seeds:
                v = train_victim(x, train.labels, test_x, test.labels, recipe=recipe, defense=defense,
                                 arch=args.victim_arch, num_classes=10, seed=vs, device=dev, context=context,
                                 progress=epoch_progress(f"victim on {name} seed {vs}"))
                sel = "" if v.selected_epoch is None else f" selected {v.selected_acc:.4f} (epoch {v.selected_epoch})"
                out(f"victim on {name}{f' (seed {vs})' if args.victim_seeds else ''}: {v.arch}, recipe {recipe.name} "
                    f"({recipe.epochs} ep), defense {args.victim_defense}: "
                    f"final {v.final_acc:.4f} best {v.best_acc:.4f}{sel} ({v.seconds:.1f} s)")
                if args.victim_seeds:
                    out("  test accuracy per epoch: " + " ".join(f"{e['test_acc']:.3f}" for e in v.curve))

    record(args, "PIL", "\n".join(["```", *lines, "```"]), "bench_pil.py", argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
