#!/usr/bin/env python
"""Run a grid file on the CIFAR-10 copy and print its report (``--record``: into RESULTS.md).

The grid (:mod:`unlearnable.bench.grid`) names the methods, budgets, defenses, recipes and
seeds; its ``dataset`` only names the data here: ``--data`` (default: the shared CIFAR-10 copy,
tarball or folder) is loaded through the benchmarks' decoded cache, then the grid's ``limit``,
``test_limit`` and ``subset_seed`` draw the subsets. With ``--db FILE`` every run is stored as it
finishes and the same command later trains only what the database lacks (an interrupted grid
resumes, across device calls too); without it the runs go to a throw-away database.

Prints the device, torch version, data and wall time, then the grid's report: how each protected
set was made, and a defense table per recipe and architecture. ``--record`` appends that to
``benchmarks/RESULTS.md`` under ``## Grids`` with the date and the exact command.

Examples::

    # GPU: the synthetic baselines and PIL under three defenses with `screen`, minutes:
    python benchmarks/bench_grid.py benchmarks/grids/synthetic-screen.yaml --db .data/grids.db --record
    # CPU: the same on a subset with the small CNN:
    python benchmarks/bench_grid.py benchmarks/grids/synthetic-cpu.yaml --device cpu --record
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_DATA, add_record_args, load_splits, record, run_grid_on  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("grid", help="grid file (.yaml or .json)")
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="CIFAR-10 copy: tarball or folder with train/ and test/")
    ap.add_argument("--db", default=None, metavar="FILE", help="results database (resumable); default: throw-away")
    ap.add_argument("--device", default=None)
    add_record_args(ap)
    ap.add_argument("--quiet", action="store_true", help="no progress lines")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from unlearnable.bench import load_grid, markdown_report
    from unlearnable.device import describe_device, resolve_device
    from unlearnable.errors import UnlearnableError

    try:
        grid = load_grid(args.grid)
    except UnlearnableError as e:
        raise SystemExit(f"error: {e}") from None
    dev = str(resolve_device(args.device))
    train, test = load_splits(args.data)
    train, test = train.sample(grid.limit, grid.subset_seed), test.sample(grid.test_limit, grid.subset_seed + 1)
    out = run_grid_on(grid, (train, test), args.db, dev, args.quiet)
    text = (f"device: {describe_device(dev)}; torch {torch.__version__}\n"
            f"data: {len(train)} train / {len(test)} test images from {args.data}; grid {args.grid}; "
            f"wall {out['seconds'] / 60:.1f} min ({out['generated']} protected sets made, {out['cached']} cached; "
            f"{out['trained']} victims trained, {out['reused']} reused)\n\n"
            + markdown_report(out["records"], out["generations"], level=4))  # under RESULTS.md's ## and ###
    print(text)
    record(args, "Grids", text, "bench_grid.py", argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
