#!/usr/bin/env python
"""How much of a class-wise pattern Orthogonal Projection removes (CPU, seconds).

Protects the CIFAR-10 training set with a class-wise method, fits OP's linear classifier on
the protected images (the defense's own ``fit_linear_classifier``), and reports, per class,
the fraction of the class pattern's norm (the class mean of ``x' − x``) that lies outside the
span of the classifier's weights, i.e. what the projection leaves in the images. A fresh
linear probe on the projected images then says whether a *linear* model still finds the
pattern (compare its accuracy with the same probe on clean images); a network may find what
is left even when a linear probe does not.

Example::

    python benchmarks/bench_projection.py --record
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_DATA, add_record_args, load_splits, record  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="CIFAR-10 copy: tarball or folder with train/ and test/")
    ap.add_argument("--method", default="random-classwise")
    ap.add_argument("--seed", type=int, default=0)
    add_record_args(ap)
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    from unlearnable.defenses.projection import _flat, fit_linear_classifier, orthogonal_projection
    from unlearnable.methods import create_method

    def nchw(images: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()

    def acc(w, x, y) -> float:
        return float(((_flat(x) @ w.t()).argmax(1) == y).float().mean())

    train, test = load_splits(args.data)
    res = create_method(args.method).protect(train, seed=args.seed)
    xc, xp, xt = nchw(train.stacked()), nchw(res.protected.stacked()), nchw(test.stacked())
    y, yt = torch.from_numpy(train.labels).long(), torch.from_numpy(test.labels).long()
    k = train.num_classes
    w = fit_linear_classifier(xp, y, k, generator=torch.Generator().manual_seed(args.seed))
    q, _ = torch.linalg.qr(w.t().float())
    delta = _flat(xp) - _flat(xc)
    left = []
    for c in range(k):
        dc = delta[y == c].mean(0)
        left.append(float((dc - q @ (q.t() @ dc)).norm() / dc.norm()))
    lines = [f"device: cpu; torch {torch.__version__}; data: {len(train)} CIFAR-10 training images; "
             f"method {args.method} (seed {args.seed}); OP's linear classifier: train accuracy on the "
             f"protected images {acc(w, xp, y):.4f}",
             "", "fraction of each class pattern's norm left after the projection: "
             + " ".join(f"{v:.3f}" for v in left) + f" (mean {np.mean(left):.3f})", "",
             "| images a fresh linear probe trains on | probe train acc | clean test acc |", "|---|---|---|"]
    for center in (True, False):
        xr, stats = orthogonal_projection(xp, w, center=center)
        probe = fit_linear_classifier(xr, y, k, generator=torch.Generator().manual_seed(args.seed + 1))
        lines.append(f"| protected, projected (center={center}; clipped {stats['clipped_fraction']:.4f}) "
                     f"| {acc(probe, xr, y):.4f} | {acc(probe, xt, yt):.4f} |")
    probe = fit_linear_classifier(xc, y, k, generator=torch.Generator().manual_seed(args.seed + 1))
    lines.append(f"| clean, not projected | {acc(probe, xc, y):.4f} | {acc(probe, xt, yt):.4f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    record(args, "Orthogonal projection: what it leaves", text, "bench_projection.py", argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
