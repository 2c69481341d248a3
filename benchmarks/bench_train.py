#!/usr/bin/env python
"""Time the victim-training recipes on CIFAR-10, clean and with class-wise noise.

For every (recipe, data) pair this trains one victim with ``unlearnable.train.train_victim``
(after an untimed warm-up run per recipe on CUDA, which pays for torch.compile and cuDNN
autotuning), and prints a Markdown table: recipe, arch, data, epochs, s/epoch, train seconds
(training steps only, timed with CUDA events on a GPU), final and best test accuracy. The
table is appended to ``benchmarks/RESULTS.md`` with the device, torch version, date and the
exact command.

``classwise`` is the class-wise random noise of Huang et al. (ICLR 2021, "Unlearnable
Examples", §4.1 baseline): one uniform pattern in [-8, 8] grey levels per class, added to
every training image of that class and clipped to 0..255. A recipe that learns it as a
shortcut drops towards chance on the clean test set.

Examples::

    python benchmarks/bench_train.py                                  # GPU: fast, screen, paper
    python benchmarks/bench_train.py --recipes fast --data clean --runs 3
    python benchmarks/bench_train.py --synthetic 256 --recipes cpu-small --epochs 1 --out /tmp/r.md  # CPU smoke
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_DATA, RESULTS, append_results, command_line, epoch_progress, load_splits, split_arrays  # noqa: E402

Split = Tuple[np.ndarray, np.ndarray]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path", nargs="?", default=str(DEFAULT_DATA),
                   help="CIFAR-10 copy: the .tar.gz, an unpacked folder, or anything unlearnable.data.load_images reads "
                        "(default: ../shared/datasets/cifar10-jpeg.tar.gz from the repo root)")
    p.add_argument("--recipes", default="fast,screen,paper", help="comma-separated recipes or recipe specs (paper,paper:compile=true)")
    p.add_argument("--data", default="clean,classwise", help="comma-separated: clean, classwise")
    p.add_argument("--epochs", type=int, default=None, help="override every recipe's epochs")
    p.add_argument("--arch", default=None, help="override every recipe's architecture")
    p.add_argument("--defense", default="standard", help="defense spec for training (default: standard)")
    p.add_argument("--runs", type=int, default=1, help="timed runs per cell (seeds 0..runs-1); mean ± std reported")
    p.add_argument("--limit", type=int, default=None, help="use only N training and N test images (smoke tests)")
    p.add_argument("--synthetic", type=int, default=None, metavar="N",
                   help="N random 32x32 training images (N//4 test) instead of loading CIFAR-10")
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when available)")
    p.add_argument("--warmup", choices=("auto", "yes", "no"), default="auto",
                   help="untimed warm-up run per recipe (auto: on CUDA only)")
    p.add_argument("--out", default=str(RESULTS), help="Markdown file to append to ('-': none)")
    return p.parse_args(argv)


# -- data ----------------------------------------------------------------------------------
def synthetic(n: int, seed: int = 0) -> Tuple[Split, Split]:
    """Random images with a faint class-dependent tint, so training has something to learn."""
    rng = np.random.default_rng(seed)
    k = 10
    tint = rng.integers(-40, 41, (k, 1, 1, 3))

    def make(m: int) -> Split:
        y = rng.integers(0, k, m)
        x = rng.integers(60, 196, (m, 32, 32, 3)) + tint[y]
        return np.clip(x, 0, 255).astype(np.uint8), y.astype(np.int64)

    return make(n), make(max(n // 4, 10))


def load_cifar(path: str) -> Tuple[Split, Split]:
    """Train and test splits as uint8 NHWC + int64 labels (decoded once, cached)."""
    return split_arrays(*load_splits(path))


def classwise_noise(x: np.ndarray, y: np.ndarray, eps: int = 8, seed: int = 0) -> np.ndarray:
    """Add one uniform [-eps, eps] grey-level pattern per class (H x W x 3), clip to 0..255."""
    rng = np.random.default_rng(seed)
    k = int(y.max()) + 1
    patterns = rng.integers(-eps, eps + 1, size=(k,) + x.shape[1:], dtype=np.int16)
    return np.clip(x.astype(np.int16) + patterns[y], 0, 255).astype(np.uint8)


# -- timing --------------------------------------------------------------------------------
def _fmt(values: List[float], digits: int, scale: float = 1.0) -> str:
    vals = [v * scale for v in values]
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f}"
    return f"{statistics.mean(vals):.{digits}f} ± {statistics.stdev(vals):.{digits}f}"


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from unlearnable.device import describe_device
    from unlearnable.train.engine import train_victim
    from unlearnable.registry import split_spec_list
    from unlearnable.train.recipes import get_recipe

    data_kinds = [d.strip() for d in args.data.split(",") if d.strip()]
    for d in data_kinds:
        if d not in ("clean", "classwise"):
            raise SystemExit(f"error: unknown --data {d!r}; use clean and/or classwise")
    recipes = [get_recipe(r) for r in split_spec_list(args.recipes)]

    if args.synthetic:
        (xtr, ytr), (xte, yte) = synthetic(args.synthetic)
        source = f"synthetic({args.synthetic})"
    else:
        (xtr, ytr), (xte, yte) = load_cifar(args.path)
        source = "CIFAR-10 (JPEG copy)"
    if args.limit:
        rng = np.random.default_rng(0)
        itr = np.sort(rng.permutation(len(xtr))[: args.limit])
        ite = np.sort(rng.permutation(len(xte))[: args.limit])
        xtr, ytr, xte, yte = xtr[itr], ytr[itr], xte[ite], yte[ite]
        source += f", limit {args.limit}"
    datasets: Dict[str, np.ndarray] = {"clean": xtr}
    if "classwise" in data_kinds:
        datasets["classwise"] = classwise_noise(xtr, ytr)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dev_name = describe_device(device)
    warmup = args.warmup == "yes" or (args.warmup == "auto" and device.type == "cuda")
    print(f"# {source}: {len(xtr)} train / {len(xte)} test, device {dev_name}, torch {torch.__version__}", file=sys.stderr)

    rows = []
    for recipe in recipes:
        recipe = get_recipe(recipe, epochs=args.epochs, arch=args.arch)
        if warmup:
            # Same shapes as the timed run (compile specialises on them), one epoch, untimed.
            train_victim(xtr, ytr, xte, yte, recipe=recipe.replace(epochs=1),
                         defense=args.defense, seed=12345, device=device)
        for kind in data_kinds:
            results = []
            for run in range(args.runs):
                r = train_victim(datasets[kind], ytr, xte, yte, recipe=recipe, defense=args.defense,
                                 seed=run, device=device, progress=epoch_progress(f"{recipe.name} {kind} seed {run}"))
                results.append(r)
                print(f"{recipe.name:>10} {kind:>9} seed {run}: final {r.final_acc:.4f} best {r.best_acc:.4f} "
                      f"train {r.train_seconds:.2f}s ({'compiled' if r.compiled else 'eager'}, {r.amp})", file=sys.stderr)
            rows.append((recipe, kind, results))

    header = "| recipe | arch | data | epochs | s/epoch | train s | final acc | best acc | runs |\n|---|---|---|---|---|---|---|---|---|"
    lines = [header]
    for recipe, kind, results in rows:
        lines.append(
            f"| {recipe.name} | {recipe.arch} | {kind} | {recipe.epochs} "
            f"| {_fmt([r.train_seconds / recipe.epochs for r in results], 3)} "
            f"| {_fmt([r.train_seconds for r in results], 2)} "
            f"| {_fmt([r.final_acc for r in results], 2, 100)} % "
            f"| {_fmt([r.best_acc for r in results], 2, 100)} % | {len(results)} |"
        )
    table = "\n".join(lines)
    print(table)

    if args.out and args.out != "-":
        compiled = sorted({"compiled" if r.compiled else "eager" for _, _, rs in rows for r in rs})
        amps = sorted({r.amp for _, _, rs in rows for r in rs})
        text = (
            f"Device: {dev_name}; torch {torch.__version__}. Data: {source}, {len(xtr)} train / {len(xte)} test; "
            f"defense `{args.defense}`; {', '.join(compiled)}, {', '.join(amps)}; train s = training steps only "
            f"({'CUDA events' if device.type == 'cuda' else 'wall clock'}), after "
            f"{'an untimed warm-up run' if warmup else 'no warm-up'}; accuracy on the clean test set "
            f"(final epoch; best epoch for reference only).\n\n{table}\n"
        )
        append_results("Victim-training recipes", text, command_line("bench_train.py", argv), Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
