"""Grids, the results database and its reports (tiny digits subsets, one-epoch CPU victims)."""

from __future__ import annotations

import json
import sqlite3

import pytest

from unlearnable.bench import (ResultsDB, defense_table, grid_from_dict, load_grid, markdown_report, report_markdown,
                               run_grid, runs_csv)
from unlearnable.bench.grid import prepare
from unlearnable.cli import main
from unlearnable.errors import UnlearnableError

GRID = {"dataset": "digits", "limit": 120, "test_limit": 80, "methods": ["random-classwise", "regions-4"],
        "defenses": ["none", "standard:pad=2"], "recipes": ["cpu-small:epochs=1"], "seeds": [0]}


def _cells(db):
    return {(r["method"], r["defense"], r["trained_on"], r["seed"]): r["acc"] for r in db.runs()}


# -- grid files ----------------------------------------------------------------------------
def test_grid_file_scalars_lists_and_comma_specs(tmp_path):
    pytest.importorskip("yaml")  # a dependency, but a bare GPU machine may lack it: JSON grids work there
    p = tmp_path / "g.yaml"
    p.write_text("dataset: digits\nmethods: pil\ndefenses: none,early-stop:source=clean,val_fraction=0.2,jpeg10\n"
                 "budgets: [default, 4/255]\nseeds: 3\narchs: [default, linear]\n")
    g = load_grid(p)
    assert g.methods == ["pil"] and g.seeds == [3] and g.budgets == [None, "4/255"] and g.archs == [None, "linear"]
    assert g.defenses == ["none", "early-stop:source=clean,val_fraction=0.2", "jpeg10"]
    assert g.label == "digits" and len(g.cells()) == 2
    # 3 defenses × 2 archs × 1 seed per training set; 2 protected sets plus the clean one.
    assert g.victim_runs() == 3 * 2 * 3
    j = tmp_path / "g.json"
    j.write_text(json.dumps({"dataset": "/data/cifar10", "methods": ["pil"]}))
    assert load_grid(j).label == "cifar10"


@pytest.mark.parametrize("data, cause", [
    ({"methods": ["pil"]}, "'dataset' is required"),
    ({"dataset": "digits"}, "'methods' is required"),
    ({"dataset": "digits", "methods": ["pil"], "defences": ["none"]}, "unknown key 'defences'"),
    ({"dataset": "digits", "methods": ["pil"], "seeds": ["a"]}, "'seeds' takes an integer"),
    ({"dataset": "digits", "methods": ["pil"], "seeds": [0, 0]}, "repeats a seed"),
    ({"dataset": "digits", "methods": ["pil"], "limit": 0}, "'limit' takes a positive integer"),
    ({"dataset": "digits", "methods": ["pil"], "recipes": []}, "'recipes' is empty"),
    ({"dataset": "digits", "methods": [3]}, "'methods' must be names"),
    (["dataset", "digits"], "a grid is a mapping"),
])
def test_bad_grid_names_the_key(data, cause):
    with pytest.raises(UnlearnableError, match=cause):
        grid_from_dict(data, where="g.yaml")


def test_unreadable_grid_files(tmp_path):
    with pytest.raises(UnlearnableError, match="no such grid file"):
        load_grid(tmp_path / "missing.yaml")
    badj = tmp_path / "bad.json"
    badj.write_text("{")
    with pytest.raises(UnlearnableError, match="not valid JSON"):
        load_grid(badj)
    pytest.importorskip("yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: [digits\n")
    with pytest.raises(UnlearnableError, match="not valid YAML"):
        load_grid(bad)


@pytest.mark.parametrize("change, cause", [
    ({"methods": ["nope"]}, "unknown method"),
    ({"methods": ["pil:stepz=3"]}, "no parameter 'stepz'"),
    ({"defenses": ["jpeg:quality=abc"]}, "quality"),
    ({"recipes": ["fastest"]}, "unknown recipe"),
    ({"archs": ["resnet-1000"]}, "unknown architecture"),
    ({"budgets": ["l2:0.5"]}, "bounded in linf"),
])
def test_every_name_is_checked_before_any_work(change, cause, tmp_path):
    grid = grid_from_dict({**GRID, **change})
    with pytest.raises(UnlearnableError, match=cause):
        prepare(grid)
    with ResultsDB(tmp_path / "r.db") as db, pytest.raises(UnlearnableError, match=cause):
        run_grid(grid, db)
    assert not (tmp_path / "r.db.cache").exists()


# -- running -------------------------------------------------------------------------------
def test_grid_runs_once_shares_clean_baselines_and_resumes(tmp_path):
    grid = grid_from_dict(GRID)
    with ResultsDB(tmp_path / "r.db") as db:
        counts = run_grid(grid, db, device="cpu")
        # Clean victims: 2 defenses, trained once for both methods; protected: 2 × 2.
        assert counts["generated"] == 2 and counts["trained"] == 6 and counts["reused"] == 0
        runs = db.runs()
        assert len(runs) == 6
        clean = [r for r in runs if r["trained_on"] == "clean"]
        assert len(clean) == 2 and all(r["method"] == "" and r["method_seed"] == -1 for r in clean)
        assert {r["method"] for r in runs if r["trained_on"] == "protected"} == {"random-classwise", "regions-4"}
        assert all(r["budget"] == "8/255" for r in runs if r["trained_on"] == "protected")
        gens = db.generations()
        assert [g["method"] for g in gens] == ["random-classwise", "regions-4"]
        assert all(g["linf_max"] <= 8 and g["n_images"] == 120 and g["seconds"] >= 0 for g in gens)
        first = _cells(db)
    assert len(list((tmp_path / "r.db.cache").glob("*.npz"))) == 2
    assert not any((tmp_path / "r.db.cache" / "work").glob("*"))  # checkpoints go once a set is cached
    # Run again: nothing is generated or trained; then a third method adds only its own runs.
    with ResultsDB(tmp_path / "r.db") as db:
        again = run_grid(grid, db, device="cpu")
        assert again["generated"] == 0 and again["cached"] == 2 and again["trained"] == 0 and again["reused"] == 6
        more = run_grid(grid_from_dict({**GRID, "methods": GRID["methods"] + ["random"]}), db, device="cpu")
        assert more["generated"] == 1 and more["trained"] == 2 and more["reused"] == 6
        assert _cells(db).items() >= first.items() and len(db.runs()) == 8


def test_interrupted_grid_continues_to_the_same_numbers(tmp_path):
    grid = grid_from_dict(GRID)
    with ResultsDB(tmp_path / "full.db") as db:
        run_grid(grid, db, device="cpu")
        full = _cells(db)

    started = []

    def stop_at_fourth(label):
        started.append(label)
        if len(started) == 4:
            raise KeyboardInterrupt
        return None

    with ResultsDB(tmp_path / "cut.db") as db:
        with pytest.raises(KeyboardInterrupt):
            run_grid(grid, db, device="cpu", progress=stop_at_fourth)
        assert len(db.runs()) == 2  # what finished is kept, each row committed on its own
    with ResultsDB(tmp_path / "cut.db") as db:
        counts = run_grid(grid, db, device="cpu")
        assert counts["reused"] == 2 and counts["trained"] == 4
        assert _cells(db) == full


def test_cached_protected_set_is_the_generated_one(tmp_path):
    from unlearnable.bench.grid import _cached, generation_key, load_dataset
    from unlearnable.methods import create_method
    from unlearnable.protect import fingerprint_set

    grid = grid_from_dict({**GRID, "methods": ["random"]})
    with ResultsDB(tmp_path / "r.db") as db:
        run_grid(grid, db, device="cpu")
    train, _ = load_dataset(grid)
    m = create_method("random")
    b = m.parse_budget(None)
    cached = _cached(tmp_path / "r.db.cache", generation_key(m, b, 0, fingerprint_set(train)))
    fresh = m.protect(train, b, seed=0, device="cpu").protected
    assert cached.ids == fresh.ids and (cached.stacked() == fresh.stacked()).all()
    assert (cached.labels == fresh.labels).all() and cached.classes == fresh.classes


# -- database ------------------------------------------------------------------------------
def test_database_errors(tmp_path):
    with pytest.raises(UnlearnableError, match="no such results database"):
        ResultsDB(tmp_path / "missing.db", create=False)
    assert not (tmp_path / "missing.db").exists()
    with pytest.raises(UnlearnableError, match="does not exist"):
        ResultsDB(tmp_path / "nowhere" / "r.db")
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(UnlearnableError, match="not a results database"):
        ResultsDB(junk)
    with pytest.raises(UnlearnableError, match="is a folder"):
        ResultsDB(tmp_path)
    with ResultsDB(tmp_path / "r.db") as db, pytest.raises(UnlearnableError, match="cannot filter runs on 'colour'"):
        db.runs(colour="red")
    con = sqlite3.connect(tmp_path / "r.db")
    con.execute("UPDATE meta SET value = '99' WHERE key = 'schema'")
    con.commit()
    con.close()
    with pytest.raises(UnlearnableError, match="newer unlearnable"):
        ResultsDB(tmp_path / "r.db")


def test_a_stored_run_is_replaced_not_duplicated(tmp_path):
    rec = {"run_key": "k", "defense": "none", "trained_on": "protected", "acc": 0.5, "final_acc": 0.5,
           "best_acc": 0.6, "seconds": 1.0, "seed": 0, "reused": True}
    with ResultsDB(tmp_path / "r.db") as db:
        db.add_run(rec, dataset="d", method="m", budget="8/255", method_seed=0)
        db.add_run({**rec, "acc": 0.25}, dataset="d", method="m", budget="8/255", method_seed=0)
        db.add_run(rec, dataset="d", method="m", budget="8/255", method_seed=1)  # another cell, same data
        runs = db.runs()
        assert [(r["method_seed"], r["acc"]) for r in runs] == [(0, 0.25), (1, 0.5)]
        assert "reused" not in runs[0]
        with pytest.raises(ValueError):
            db.add_run({**rec, "run_key": None}, dataset="d")
        # Another process holding the file's write lock past the timeout: a one-line error.
        db.conn.execute("PRAGMA busy_timeout = 50")
        other = sqlite3.connect(tmp_path / "r.db")
        other.execute("BEGIN EXCLUSIVE")
        with pytest.raises(UnlearnableError, match="cannot write to .*locked"):
            db.add_run(rec, dataset="d", method="m", budget="8/255", method_seed=2)
        other.rollback()
        other.close()
        db.add_run(rec, dataset="d", method="m", budget="8/255", method_seed=2)
        assert len(db.runs()) == 3


# -- reports -------------------------------------------------------------------------------
def _rec(defense, on, acc, method="", budget="", method_seed=-1, seed=0, key=None):
    return {"defense": defense, "trained_on": on, "acc": acc, "final_acc": acc, "best_acc": acc, "seconds": 2.0,
            "seed": seed, "method": method, "budget": budget, "method_seed": method_seed,
            "run_key": key or f"{defense}{on}{method}{budget}{method_seed}{seed}"}


def test_defense_table_columns_and_recovered_row():
    recs = [_rec("none", "clean", 0.9), _rec("jpeg10", "clean", 0.8),
            _rec("none", "protected", 0.1, "em", "8/255", 0), _rec("jpeg10", "protected", 0.7, "em", "8/255", 0),
            _rec("none", "protected", 0.2, "em", "4/255", 0), _rec("jpeg10", "protected", 0.3, "em", "4/255", 0),
            _rec("none", "clean", 0.9)]  # the same clean run seen again (shared by two columns)
    table = defense_table(recs)
    head, _, none, jpeg, rec = table.splitlines()
    assert "em @ 8/255 acc %" in head and "em @ 4/255 acc %" in head
    assert none.startswith("| none | 90.00 | 2.0 | 1.00 | 10.00 | 20.00 |")
    assert jpeg.startswith("| jpeg10 | 80.00 | 2.0 | 1.00 | 70.00 | 30.00 |")
    assert "70.00 (jpeg10)" in rec and "30.00 (jpeg10)" in rec


def test_report_and_csv_from_a_grid(tmp_path, capsys):
    grid = tmp_path / "g.json"
    grid.write_text(json.dumps({**GRID, "methods": ["random-classwise"], "seeds": [0, 1], "name": "digits-120"}))
    md = tmp_path / "report.md"
    assert main(["grid", str(grid), "--db", str(tmp_path / "r.db"), "--device", "cpu", "--quiet",
                 "--markdown", str(md)]) == 0
    out = capsys.readouterr().out
    assert "## digits-120" in out and "### recipe cpu-small:epochs=1, small-cnn" in out and " ± " in out
    assert md.read_text() + "\n" == out
    csv_path = tmp_path / "runs.csv"
    assert main(["report", str(tmp_path / "r.db"), "--csv", str(csv_path)]) == 0
    lines = csv_path.read_text().splitlines()
    assert lines[0].startswith("dataset,method,budget,method_seed,defense") and len(lines) == 1 + 8
    with ResultsDB(tmp_path / "r.db") as db:
        assert runs_csv(db) == csv_path.read_text()
        with pytest.raises(UnlearnableError, match="no data set 'other'; it holds: digits-120"):
            report_markdown(db, dataset="other")


def test_cli_errors_are_one_line(tmp_path, capsys):
    grid = tmp_path / "g.json"
    grid.write_text(json.dumps(GRID))
    assert main(["report", str(tmp_path / "none.db")]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
    # An output that cannot be written is refused before any victim is trained.
    assert main(["grid", str(grid), "--db", str(tmp_path / "r.db"), "--markdown", str(tmp_path / "no" / "r.md")]) == 2
    assert "folder" in capsys.readouterr().err and not (tmp_path / "r.db").exists()
    assert main(["grid", str(tmp_path / "g.yml"), "--db", str(tmp_path / "r.db")]) == 2
    assert "no such grid file" in capsys.readouterr().err


def test_the_readme_grid_is_a_valid_grid():
    import re
    from pathlib import Path

    yaml = pytest.importorskip("yaml")

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```yaml\n(# table.yaml.*?)```", readme, re.S).group(1)
    grid = grid_from_dict(yaml.safe_load(block), where="README")
    prepare(grid)
    assert grid.victim_runs() == 5 * 3 * (4 + 1)


def test_an_interrupted_generation_resumes_from_its_checkpoint(tmp_path):
    from unlearnable.methods import METHODS

    kw = {**METHODS.get("em").smoke_kwargs, "checkpoint_every_s": 0.0}
    spec = "em:" + ",".join(f"{k}={v}" for k, v in kw.items())
    grid = grid_from_dict({**GRID, "limit": 48, "methods": [spec], "defenses": ["none"]})
    with ResultsDB(tmp_path / "full.db") as db:
        run_grid(grid, db, device="cpu", cache=tmp_path / "full")
    ticks = []

    def stop_in_generation(label):
        def tick(done, total):
            ticks.append(done)
            if len(ticks) == 2:
                raise KeyboardInterrupt
        return tick if label.startswith("protect") else None

    with ResultsDB(tmp_path / "cut.db") as db:
        with pytest.raises(KeyboardInterrupt):
            run_grid(grid, db, device="cpu", cache=tmp_path / "cut", progress=stop_in_generation)
        assert db.generations() == [] and any((tmp_path / "cut" / "work").rglob("*.pt"))
        run_grid(grid, db, device="cpu", cache=tmp_path / "cut")
        run = db.generations()[0]["record"]["run"]
        assert run["resumed"] and run["rounds"] >= 1
        assert f"| {run['rounds']} rounds, resumed |" in report_markdown(db)
    full = {f.name: f.read_bytes() for f in (tmp_path / "full").glob("*.npz")}
    cut = {f.name: f.read_bytes() for f in (tmp_path / "cut").glob("*.npz")}
    assert len(full) == 1 and cut.keys() == full.keys()
    from unlearnable.data import load_images

    name = next(iter(full))
    assert (load_images(tmp_path / "cut" / name).stacked() == load_images(tmp_path / "full" / name).stacked()).all()
    assert not any((tmp_path / "cut" / "work").rglob("*.pt"))


def test_generation_records_keep_what_json_holds(tmp_path):
    # PIL's last_run holds its surrogate's weights: the record keeps the numbers, not tensors.
    grid = grid_from_dict({**GRID, "methods": ["pil:surrogate_epochs=1,steps=2"], "defenses": ["none"]})
    with ResultsDB(tmp_path / "r.db") as db:
        run_grid(grid, db, device="cpu")
        run = db.generations()[0]["record"]["run"]
    assert "surrogate" not in run and run["surrogate_epochs"] == 1 and run["working_size"] == [16, 16]
    assert isinstance(run["surrogate_train_acc"], float)


def test_report_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from PIL import Image

    grid = tmp_path / "g.json"
    grid.write_text(json.dumps({**GRID, "seeds": [0, 1]}))
    assert main(["grid", str(grid), "--db", str(tmp_path / "r.db"), "--device", "cpu", "--quiet"]) == 0
    png = tmp_path / "table.png"
    assert main(["report", str(tmp_path / "r.db"), "--plot", str(png)]) == 0
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 500
    ResultsDB(tmp_path / "empty.db").close()
    capsys.readouterr()
    assert main(["report", str(tmp_path / "empty.db"), "--plot", str(tmp_path / "e.png")]) == 2
    assert "nothing to plot" in capsys.readouterr().err and not (tmp_path / "e.png").exists()


def test_an_interrupted_grid_command_says_how_to_continue(tmp_path, capsys, monkeypatch):
    import unlearnable.bench as bench

    grid = tmp_path / "g.json"
    grid.write_text(json.dumps(GRID))

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(bench, "run_grid", interrupted)
    assert main(["grid", str(grid), "--db", str(tmp_path / "r.db"), "--quiet"]) == 130
    err = capsys.readouterr().err
    assert "the same command continues" in err and "error: interrupted" in err


# -- test sets, recipes and the database file ------------------------------------------------
def _single_set(tmp_path, kind, n=150):
    """A labelled data set without a test split: an NPZ with only x/y, or a class-folder tree."""
    import numpy as np
    from PIL import Image

    from unlearnable.quickstart import digits_imageset

    data = digits_imageset(0)[0].sample(n, 0)
    if kind == "npz":
        path = tmp_path / "single.npz"
        np.savez(path, x=data.stacked(), y=data.labels)
        return path, data
    path = tmp_path / "single"
    for i in range(len(data)):
        folder = path / data.classes[int(data.labels[i])]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(data.image(i)).save(folder / f"{i:04d}.png")
    return path, data


@pytest.mark.parametrize("kind", ["npz", "folder"])
def test_a_data_set_without_test_split_holds_out_a_stratified_part(kind, tmp_path):
    import numpy as np

    from unlearnable.audit import holdout_split
    from unlearnable.bench.grid import _cached
    from unlearnable.data import find_splits, load_images

    path, _ = _single_set(tmp_path, kind)
    assert find_splits(path) == []
    grid = grid_from_dict({"dataset": str(path), "methods": ["random"], "defenses": ["none"],
                           "recipes": ["cpu-small:epochs=1"]})
    lines = []
    with ResultsDB(tmp_path / "r.db") as db:
        out = run_grid(grid, db, device="cpu", log=lines.append)
        runs, gens = db.runs(), db.generations()
    full = load_images(path)
    train, _, test = holdout_split(full, full, 0.2, seed=0)
    assert {r["n_train"] for r in runs} == {len(train)} and {r["n_test"] for r in runs} == {len(test)}
    assert len(train) + len(test) == len(full) == 150
    # Stratified: every class keeps its share in the test set.
    assert np.bincount(test.labels, minlength=10).min() >= 2
    # The protected set is made from the training part only: no test image was ever seen by it.
    assert gens[0]["n_images"] == len(train)
    protected = _cached(tmp_path / "r.db.cache", gens[0]["gen_key"])
    assert set(protected.ids) == set(train.ids) and not set(protected.ids) & set(test.ids)
    label = f"{path.name} (held out 20%)"
    assert {r["dataset"] for r in runs} == {label} and gens[0]["dataset"] == label
    assert "held out 20%" in lines[0] and f"## {label}" in markdown_report(out["records"], out["generations"])


def test_holdout_key_and_a_test_split_are_not_held_out(tmp_path):
    from unlearnable.bench.grid import held_out

    path, _ = _single_set(tmp_path, "npz", n=60)
    assert held_out(grid_from_dict({"dataset": str(path), "methods": ["pil"], "holdout": 0.25})) == 0.25
    assert held_out(grid_from_dict({"dataset": "digits", "methods": ["pil"]})) is None
    assert held_out(grid_from_dict({"dataset": str(path), "methods": ["pil"], "test": str(path)})) is None
    for bad in (0, 1.5, "a", True):
        with pytest.raises(UnlearnableError, match="'holdout' takes a fraction"):
            grid_from_dict({"dataset": "digits", "methods": ["pil"], "holdout": bad})
    with pytest.raises(UnlearnableError, match="either 'test'"):
        grid_from_dict({"dataset": "x", "methods": ["pil"], "test": "y", "holdout": 0.2})
    with pytest.raises(UnlearnableError, match="no such file"):
        held_out(grid_from_dict({"dataset": str(tmp_path / "nope.npz"), "methods": ["pil"]}))


def test_the_default_recipe_is_auto_resolved_for_the_device(tmp_path, monkeypatch):
    import torch

    import unlearnable.device
    from unlearnable.train.recipes import resolve_recipe

    no_recipe = {k: v for k, v in GRID.items() if k != "recipes"}
    grid = grid_from_dict({**no_recipe, "methods": ["random"], "defenses": ["none"], "epochs": 1, "limit": 60})
    assert grid.recipes == ["auto"]
    assert [r.name for r in prepare(grid, device="cpu").recipes] == ["cpu-small"]
    assert resolve_recipe("auto:epochs=2", "cpu") == "cpu-small:epochs=2" and resolve_recipe("screen") == "screen"
    lines = []
    with ResultsDB(tmp_path / "r.db") as db:
        run_grid(grid, db, device="cpu", log=lines.append)
        assert {r["recipe"] for r in db.runs()} == {"cpu-small"}
    assert any(line.startswith("recipe auto: cpu-small") for line in lines)
    monkeypatch.setattr(unlearnable.device, "resolve_device", lambda device=None: torch.device("cuda"))
    assert resolve_recipe("auto") == "paper" and resolve_recipe("auto:epochs=3") == "paper:epochs=3"


@pytest.mark.parametrize("change", [{"methods": ["nope"]}, {"budgets": ["l2:0.5"]}, {"dataset": "missing.npz"},
                                    {"recipes": ["fastest"]}])
def test_a_failing_grid_command_leaves_no_database_behind(change, tmp_path, capsys):
    grid = tmp_path / "g.json"
    grid.write_text(json.dumps({**GRID, **change}))
    assert main(["grid", str(grid), "--db", str(tmp_path / "r.db"), "--quiet"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert not (tmp_path / "r.db").exists() and not (tmp_path / "r.db.cache").exists()


def test_a_grid_failing_after_creating_the_database_removes_it_but_keeps_an_existing_one(tmp_path, monkeypatch):
    import unlearnable.bench as bench

    grid = tmp_path / "g.json"
    grid.write_text(json.dumps(GRID))

    def fails(*a, **k):
        raise UnlearnableError("the data set is corrupt")

    monkeypatch.setattr(bench, "run_grid", fails)
    assert main(["grid", str(grid), "--db", str(tmp_path / "r.db"), "--quiet"]) == 2
    assert not (tmp_path / "r.db").exists()
    ResultsDB(tmp_path / "mine.db").close()  # the user's own (empty) database stays
    assert main(["grid", str(grid), "--db", str(tmp_path / "mine.db"), "--quiet"]) == 2
    assert (tmp_path / "mine.db").exists()
