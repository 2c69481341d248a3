"""The benchmark scripts' shared helpers and the defense table, smoke-run on tiny data (CPU)."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import colour_squares

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name):
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(BENCH))


@pytest.fixture
def tiny_npz(tmp_path):
    xtr, ytr = colour_squares(64, seed=0, size=16)
    xte, yte = colour_squares(32, seed=1, size=16)
    path = tmp_path / "tiny.npz"
    np.savez(path, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    return path


def test_append_results_is_append_only(tmp_path):
    common = _load("common")
    path = tmp_path / "R.md"
    common.append_results("A", "one", "python x", path)
    common.append_results("A", "two", "python y", path)
    common.append_results("B", "three", "python z", path)
    text = path.read_text()
    assert text.startswith("# Benchmark results")
    assert text.count("## A") == 1 and text.count("## B") == 1 and text.count("### ") == 3
    assert text.index("one") < text.index("two") < text.index("## B") < text.index("three")
    assert "`python y`" in text


def test_seeded_subset_is_seeded_and_ordered(tiny_npz):
    common = _load("common")
    train, _ = common.load_splits(tiny_npz)
    a, b = common.seeded_subset(train, 10, 0), common.seeded_subset(train, 10, 0)
    assert a.ids == b.ids and a.ids == sorted(a.ids, key=train.ids.index)
    assert common.seeded_subset(train, None, 0) is train


def test_defense_table_smoke_and_resume(tiny_npz, tmp_path, capsys):
    from unlearnable.bench import ResultsDB

    bench = _load("bench_defenses")
    db, results = tmp_path / "d.db", tmp_path / "R.md"
    argv = ["--data", str(tiny_npz), "--methods", "random-classwise,regions-4", "--defenses", "none,jpeg10",
            "--recipe", "cpu-small", "--epochs", "1", "--device", "cpu", "--db", str(db), "--quiet",
            "--record", "--results", str(results)]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    assert "| jpeg10 |" in out and "random-classwise acc %" in out and "**recovered**" in out
    assert "(0 runs reused)" in out and "generated in" in out
    # Clean victims are trained once and shared by the two methods.
    with ResultsDB(db) as d:
        assert len(d.runs()) == 6 and sum(r["trained_on"] == "clean" for r in d.runs()) == 2
    assert "## Defense table" in results.read_text()
    assert bench.main(argv) == 0  # the same command again trains nothing
    assert "(6 runs reused)" in capsys.readouterr().out
    # Two victim seeds: the seed-0 runs are reused, cells are mean ± sd, the clean runs counted once.
    assert bench.main(argv + ["--seeds", "0,1"]) == 0
    out = capsys.readouterr().out
    with ResultsDB(db) as d:
        assert len(d.runs()) == 12
    row = next(line for line in out.splitlines() if line.startswith("| jpeg10 |"))
    assert row.count("±") == 3 and "victim seeds 0,1" in out and "(6 runs reused)" in out
    # Without --db nothing is kept.
    assert bench.main([a for a in argv if a not in ("--db", str(db), "--record")]) == 0
    assert "(0 runs reused)" in capsys.readouterr().out


def test_resolution_bench_smoke(tiny_npz, tmp_path, capsys):
    bench = _load("bench_resolution")
    results = tmp_path / "R.md"
    argv = ["--data", str(tiny_npz), "--method", "em", "--param", "surrogate=small-cnn", "--param", "max_rounds=1",
            "--param", "pgd_steps=2", "--limit", "24", "--test-limit", "12", "--min-side", "18", "--max-side", "26",
            "--victim-sizes", "16", "--epochs", "1", "--device", "cpu", "--record", "--results", str(results)]
    assert bench.main(argv) == 0
    text = results.read_text()
    assert "## Resolution policy" in text and "'surrogate': 'small-cnn'" in text
    rows = [ln for ln in text.splitlines() if ln.startswith("| 16 |")]
    assert [r.split("|")[2].strip() for r in rows] == ["clean", "bilinear", "through"]
    # Methods without a resize field run as they are.
    argv = ["--data", str(tiny_npz), "--method", "regions-4", "--policies", "default", "--limit", "24",
            "--test-limit", "12", "--victim-sizes", "16", "--epochs", "1", "--device", "cpu"]
    assert bench.main(argv) == 0 and "| 16 | default |" in capsys.readouterr().out


def test_pil_bench_smoke(tiny_npz, tmp_path, capsys):
    # The GPU runbook's PIL line, on tiny data: flags, victim seeds with curves, the clean
    # counterparts for early-stop:source=clean, and the record.
    bench = _load("bench_pil")
    results = tmp_path / "R.md"
    argv = ["--data", str(tiny_npz), "--device", "cpu", "--subset", "48", "--param", "steps=3",
            "--victim", "cpu-small", "--victim-epochs", "2", "--victim-seeds", "0,1", "--clean-victim",
            "--victim-defense", "standard+early-stop:source=clean", "--record", "--results", str(results)]
    assert bench.main(argv) == 0
    text = results.read_text()
    assert "## PIL" in text and "; steps=3" in text and "surrogate: 30 epochs" in text
    assert text.count("victim on protected (seed") == 2 and text.count("victim on clean (seed") == 2
    assert text.count("test accuracy per epoch:") == 4 and "selected" in text


def test_train_and_baselines_bench_smoke(tiny_npz, tmp_path):
    train_bench = _load("bench_train")
    results = tmp_path / "R.md"
    assert train_bench.main([str(tiny_npz), "--recipes", "cpu-small", "--data", "clean,classwise", "--epochs", "1",
                             "--device", "cpu", "--out", str(results)]) == 0
    assert "## Victim-training recipes" in results.read_text()
    base = _load("bench_baselines")
    assert base.main(["--data", str(tiny_npz), "--methods", "em,tap,random-classwise", "--limit", "32",
                      "--surrogate", "small-cnn", "--surrogate-recipe", "cpu-small", "--steps-scale", "0.05",
                      "--victim", "cpu-small", "--victim-epochs", "1", "--device", "cpu", "--record",
                      "--results", str(results)]) == 0
    assert "## Baselines" in results.read_text()


def test_import_bench_smoke(tiny_npz, tmp_path, capsys):
    bench = _load("bench_import")
    results = tmp_path / "R.md"
    assert bench.main(["--data", str(tiny_npz), "--n", "40", "--eps", "8", "--record", "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert out.count("| 8 |") >= 2 and "of 40 |" in out
    assert "## Import by content" in results.read_text()


def test_photos_bench_smoke(tmp_path, capsys):
    bench = _load("bench_photos")
    results = tmp_path / "R.md"
    assert bench.main(["--n", "10", "--sizes", "40x30", "--method", "random", "--device", "cpu", "--record",
                       "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert "| protect |" in out and "| verify --clean |" in out and "10 synthetic JPEGs of 40x30 px" in out
    assert "| audit (1 epoch, cpu-small) |" in out
    assert "## Large photos" in results.read_text()


def test_projection_bench_smoke(tiny_npz, tmp_path, capsys):
    bench = _load("bench_projection")
    results = tmp_path / "R.md"
    assert bench.main(["--data", str(tiny_npz), "--record", "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert "fraction of each class pattern's norm left" in out and "| clean, not projected |" in out
    assert "## Orthogonal projection: what it leaves" in results.read_text()


@pytest.mark.parametrize("grid", sorted(p.name for p in (BENCH / "grids").glob("*.yaml")))
def test_the_benchmark_grids_are_valid(grid):
    pytest.importorskip("yaml")
    from unlearnable.bench import load_grid
    from unlearnable.bench.grid import prepare

    prepare(load_grid(BENCH / "grids" / grid))


def test_grid_bench_smoke_and_record(tiny_npz, tmp_path, capsys):
    bench = _load("bench_grid")
    grid, results, db = tmp_path / "g.json", tmp_path / "R.md", tmp_path / "g.db"
    grid.write_text('{"dataset": "tiny", "limit": 48, "methods": ["random-classwise", "regions-4"], '
                    '"defenses": ["none"], "recipes": ["cpu-small:epochs=1"]}')
    argv = [str(grid), "--data", str(tiny_npz), "--device", "cpu", "--db", str(db), "--quiet", "--record",
            "--results", str(results)]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    assert "48 train / 32 test" in out and "2 protected sets made" in out and "3 victims trained" in out
    assert "#### tiny" in out and "##### recipe cpu-small:epochs=1" in out and "| regions-4 | 8/255 |" in out
    text = results.read_text()
    assert "## Grids" in text and text.count("\n## ") == 1  # the report's headings sit below the record's
    assert bench.main(argv) == 0
    assert "0 victims trained, 3 reused" in capsys.readouterr().out
