#!/usr/bin/env python
"""A data owner's folder of camera photos: time and peak memory of protect, verify and audit.

Writes ``--n`` synthetic photos (smooth random colour fields, JPEG quality 90, two class
folders) of the given sizes into a temporary folder, then runs ``unlearnable protect``,
``unlearnable verify`` and a one-epoch ``unlearnable audit`` (on a held-out fifth of the photos;
at least 10 photos) on it as a user would, each in its own process, and reports the wall
time, the seconds per photo and the peak resident memory of each process
(``os.wait4``'s resource usage, Linux).

Examples::

    python benchmarks/bench_photos.py --n 20 --record
    python benchmarks/bench_photos.py --n 8 --sizes 1920x1080 --method random-classwise
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, add_record_args, record  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=20, help="number of photos")
    ap.add_argument("--sizes", default="4000x3000,3264x2448", help="comma-separated WxH, used in turn")
    ap.add_argument("--method", default="pil")
    ap.add_argument("--device", default=None)
    ap.add_argument("--seed", type=int, default=0)
    add_record_args(ap)
    return ap.parse_args(argv)


def write_photos(root: Path, n: int, sizes, seed: int) -> float:
    """``n`` JPEG photos in two class folders; returns their total megapixels."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    mp = 0.0
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        folder = root / ("a" if i % 2 == 0 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        coarse = rng.integers(0, 256, (max(2, h // 100), max(2, w // 100), 3), dtype=np.uint8)
        Image.fromarray(coarse).resize((w, h), Image.BICUBIC).save(folder / f"{i:03d}.jpg", quality=90)
        mp += w * h / 1e6
    return mp


def timed(cmd) -> tuple:
    """Run ``cmd``; return (seconds, that process's own peak resident memory in GB)."""
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err,
                                env={**os.environ, "PYTHONPATH": str(REPO / "src")})
        _, status, usage = os.wait4(proc.pid, 0)  # this child's rusage, not the running maximum
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            last = err.read().decode(errors="replace").strip().splitlines()[-1:]
            raise SystemExit(f"error: {' '.join(cmd[2:4])} failed ({proc.returncode}): {last}")
    return seconds, usage.ru_maxrss / 1024 ** 2  # KiB on Linux


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from unlearnable.device import describe_device, resolve_device

    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes.split(",")]
    dev = str(resolve_device(args.device))
    cli = [sys.executable, "-m", "unlearnable.cli"]
    with tempfile.TemporaryDirectory() as tmp:
        photos, out = Path(tmp) / "photos", Path(tmp) / "protected"
        mp = write_photos(photos, args.n, sizes, args.seed)
        p_s, p_gb = timed(cli + ["protect", str(photos), "--out", str(out), "--method", args.method,
                                 "--seed", str(args.seed), "--device", dev, "--quiet"])
        v_s, v_gb = timed(cli + ["verify", str(out), "--clean", str(photos), "--quiet"])
        # A one-epoch audit: its memory is loading both sets at the victims' size (its accuracies
        # on so few photos are meaningless and not reported).
        a_s, a_gb = timed(cli + ["audit", str(out), "--clean", str(photos), "--defenses", "none", "--recipe",
                                 "cpu-small", "--epochs", "1", "--device", dev, "--quiet"])
    text = (f"device: {describe_device(dev)}; torch {torch.__version__}; python {platform.python_version()}\n"
            f"photos: {args.n} synthetic JPEGs of {args.sizes} px ({mp:.0f} megapixels in all); method {args.method}\n\n"
            "| step | wall s | s per photo | peak memory GB |\n|---|---|---|---|\n"
            f"| protect | {p_s:.1f} | {p_s / args.n:.2f} | {p_gb:.2f} |\n"
            f"| verify --clean | {v_s:.1f} | {v_s / args.n:.2f} | {v_gb:.2f} |\n"
            f"| audit (1 epoch, cpu-small) | {a_s:.1f} | {a_s / args.n:.2f} | {a_gb:.2f} |\n")
    print(text)
    record(args, "Large photos", text, "bench_photos.py", argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
