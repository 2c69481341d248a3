#!/usr/bin/env python
"""The resolution policy on mixed-size images: does a protection survive the trainer's resize?

Builds "photos" from a seeded CIFAR-10 subset by upscaling every image (bicubic) to its own
random size in [--min-side, --max-side], protects them with one method under each policy (the
method's ``resize`` field, :mod:`unlearnable.methods.resolution`), and trains a victim at each
``--victim-sizes`` side (the audit resizes with antialiased bilinear, as Pillow and torchvision
do). Policies:

* ``bilinear``: δ optimised at the working size (32²) and upsampled bilinearly to each image;
* ``through``: δ optimised at native size through the resize to 32² (for EM and REM, the
  min-min loop runs at 32² and the last δ-phase at native size);
* ``default``: the method as it is (for methods without a ``resize`` field: class-wise
  patterns, which are resized to each image).

``--param NAME=VALUE`` passes further hyperparameters (e.g. a small surrogate for a CPU run of EM).

Prints one Markdown table (victim side × training data → final and best clean test accuracy)
and with ``--record`` appends it to ``benchmarks/RESULTS.md`` under ``## Resolution policy``.

Example (CPU, about 20 minutes on 2 cores)::

    python benchmarks/bench_resolution.py --limit 5000 --test-limit 2000 --device cpu --record
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_DATA, add_record_args, load_splits, record, seeded_subset  # noqa: E402

def mixed_sizes(data, lo: int, hi: int, seed: int):
    """Every image upscaled (bicubic) to its own random size in [lo, hi] per side."""
    from PIL import Image

    from unlearnable.data.imageset import ImageSet

    rng = np.random.default_rng(seed)
    out = []
    for i in range(len(data)):
        h, w = (int(v) for v in rng.integers(lo, hi + 1, 2))
        out.append(np.asarray(Image.fromarray(data.image(i)).resize((w, h), Image.BICUBIC)))
    return ImageSet(out, data.labels, data.classes, data.ids)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--method", default="pil")
    ap.add_argument("--policies", default="bilinear,through")
    ap.add_argument("--param", action="append", metavar="NAME=VALUE", help="method hyperparameter (repeatable)")
    ap.add_argument("--limit", type=int, default=5000)
    ap.add_argument("--test-limit", type=int, default=2000)
    ap.add_argument("--min-side", type=int, default=40)
    ap.add_argument("--max-side", type=int, default=72)
    ap.add_argument("--victim-sizes", default="32,64")
    ap.add_argument("--recipe", default="cpu-small")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--defense", default="none", help="the victim's defense (none: no augmentation)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default=None)
    add_record_args(ap)
    args = ap.parse_args(argv)
    import torch

    from unlearnable.audit import run_audit
    from unlearnable.cli import parse_params
    from unlearnable.device import describe_device, resolve_device
    from unlearnable.methods import create_method

    dev = str(resolve_device(args.device))
    train, test = load_splits(args.data)
    train = mixed_sizes(seeded_subset(train, args.limit, args.seed), args.min_side, args.max_side, args.seed + 2)
    test = mixed_sizes(seeded_subset(test, args.test_limit, args.seed + 1), args.min_side, args.max_side, args.seed + 3)
    sets, notes, extra = {"clean": train}, [], parse_params(args.param)
    for policy in [p.strip() for p in args.policies.split(",") if p.strip()]:
        t = time.perf_counter()
        kw = dict(extra) if policy == "default" else dict(extra, resize=policy)
        res = create_method(args.method, **kw).protect(train, seed=args.seed, device=dev)
        sets[policy] = res.protected
        notes.append(f"- {policy}: protected in {time.perf_counter() - t:.1f} s; native mean |Δ| "
                     f"{res.norms['mean_abs']['mean']:.2f} grey levels, ℓ∞ max {res.norms['linf']['max']:.0f}")
        print(notes[-1], file=sys.stderr, flush=True)
    rows = []
    for side in [int(v) for v in args.victim_sizes.split(",")]:
        for name, data in sets.items():
            r = run_audit(data, test, defenses=[args.defense], recipe=args.recipe, epochs=args.epochs, seed=args.seed,
                          device=dev, size=side)[-1]
            rows.append(f"| {side} | {name} | {100 * r['final_acc']:.2f} | {100 * r['best_acc']:.2f} | {r['seconds']:.0f} |")
            print(rows[-1], file=sys.stderr, flush=True)
    text = (f"device: {describe_device(dev)}; torch {torch.__version__}\n"
            f"data: {len(train)} train / {len(test)} test CIFAR-10 images, each upscaled (bicubic) to its own size in "
            f"[{args.min_side}, {args.max_side}]²; method {args.method} {extra or ''}; victim recipe {args.recipe}"
            f"{f' ({args.epochs} epochs)' if args.epochs else ''}, defense {args.defense}, trained and tested at "
            f"the victim side (antialiased bilinear resize); seed {args.seed}\n"
            + "\n".join(notes) + "\n\n| victim side | trained on | final acc % | best acc % | train s |\n|---|---|---|---|---|\n"
            + "\n".join(rows) + "\n")
    print(text)
    record(args, "Resolution policy", text, "bench_resolution.py", argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
