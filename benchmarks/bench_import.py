#!/usr/bin/env python
"""Pairing a poison released in its own order with the clean set, by content.

Builds an NTGA-style release from the CIFAR-10 copy: a seeded subset of ``--n`` training images
in a shuffled order (NTGA: 40,000 of 50,000, in ``tensorflow_datasets``' order, shuffled), each
changed by ±ε sign noise, and pairs it with the clean training set with
:func:`unlearnable.data.matching.match_by_content`, with the poison's labels and without.
Reports the time and how many pairs are right (an image paired with an identical copy of its
source counts as right: CIFAR-10 has a few duplicates).

With ``--record`` appends the table to ``benchmarks/RESULTS.md`` under ``## Import by content``.

Example (CPU, about a minute on 2 cores)::

    python benchmarks/bench_import.py --record
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_DATA, add_record_args, load_splits, record  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--n", type=int, default=40000, help="images in the simulated release")
    ap.add_argument("--eps", default="8,16", help="comma-separated ±ε in grey levels")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    add_record_args(ap)
    args = ap.parse_args(argv)

    import torch

    from unlearnable.data.matching import match_by_content
    from unlearnable.device import describe_device

    if args.threads:
        torch.set_num_threads(args.threads)
    clean, _ = load_splits(args.data)
    x = clean.stacked()
    rng = np.random.default_rng(args.seed)
    src = rng.permutation(len(x))[: min(args.n, len(x))]
    lines = [f"device: {describe_device(torch.device('cpu'))}; torch {torch.__version__}; threads {torch.get_num_threads()}",
             f"clean: {len(x)} CIFAR-10 training images; release: {len(src)} of them, shuffled (seed {args.seed}), "
             "±ε sign noise", "",
             "| ε (grey levels) | labels | seconds | right pairs | max pair mean abs diff |", "|---|---|---|---|---|"]
    for eps in (int(e) for e in args.eps.split(",")):
        noise = rng.choice(np.array([-eps, eps], dtype=np.int16), size=(len(src),) + x.shape[1:])
        poison = np.clip(x[src].astype(np.int16) + noise, 0, 255).astype(np.uint8)
        for labels in (clean.labels[src], None):
            t0 = time.perf_counter()
            index, dist = match_by_content(poison, clean, labels)
            seconds = time.perf_counter() - t0
            wrong = np.flatnonzero(index != src)
            right = len(src) - sum(not np.array_equal(x[index[i]], x[src[i]]) for i in wrong)
            lines.append(f"| {eps} | {'given' if labels is not None else 'none'} | {seconds:.1f} | "
                         f"{right} of {len(src)} | {dist.max():.2f} |")
            print(lines[-1], flush=True)
    text = "\n".join(lines)
    print(text)
    record(args, "Import by content", text, "bench_import.py", argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
