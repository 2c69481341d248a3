"""Reports of a results database: imported poisons and data sets of one name kept apart, a
report that never writes to the file it reads, and plots in the format their name asks for."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from unlearnable.bench import ResultsDB
from unlearnable.cli import main


def _rec(defense, on, acc, key, seed=0):
    return {"defense": defense, "trained_on": on, "acc": acc, "final_acc": acc, "best_acc": acc, "seconds": 2.0,
            "seed": seed, "run_key": key, "recipe": "cpu-small", "arch": "small-cnn", "curve": [acc]}


def _fake_db(path, methods=("em", "pil"), datasets=("d1",)):
    """A results database of made-up runs (no training): a clean run and one per method."""
    with ResultsDB(path) as db:
        for ds in datasets:
            db.add_run(_rec("none", "clean", 0.9, f"{ds}-clean"), dataset=ds)
            for i, m in enumerate(methods):
                db.add_run(_rec("none", "protected", 0.1 + 0.05 * i, f"{ds}-{m}"), dataset=ds, method=m,
                           budget="8/255", method_seed=0)
    return path


# -- imported poisons and data sets of one name ------------------------------------------------
def _poison(folder, clean, seed):
    """A PNG-per-index poison of ``clean`` (±4 grey levels of seeded noise)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    x = clean.stacked().astype(np.int16) + rng.choice([-4, 4], size=clean.stacked().shape)
    for i, im in enumerate(np.clip(x, 0, 255).astype(np.uint8)):
        Image.fromarray(im).save(folder / f"{i:05d}.png")
    return folder


def test_imported_poisons_and_same_named_data_sets_do_not_merge(tmp_path, capsys):
    from unlearnable.bench.store import manifest_fingerprint, set_fingerprint
    from unlearnable.cli import _audit_cell
    from unlearnable.data import load_images
    from unlearnable.data.formats import import_to_folder
    from unlearnable.data.save import export_npz
    from unlearnable.protect import read_manifest
    from unlearnable.quickstart import digits_imageset

    digits = digits_imageset(0)[0]
    cleans = {}
    for name, seed in (("a", 0), ("b", 1)):  # two different data sets, both files named clean.npz
        (tmp_path / name).mkdir()
        cleans[name] = export_npz(digits.sample(60, seed), tmp_path / name / "clean.npz")
    outs = []
    for where, data, seed in (("a1", "a", 1), ("a2", "a", 2), ("b1", "b", 3)):  # every poison is p_em_class
        poison = _poison(tmp_path / where / "p_em_class", load_images(cleans[data]), seed)
        out = tmp_path / f"imported-{where}"
        import_to_folder(poison, cleans[data], out, fmt="png-index")
        outs.append(out)
    cells = [_audit_cell(str(o)) for o in outs]
    assert {c["method"] for c in cells} == {"import:png-index:p_em_class"}
    assert len({c["protected_id"] for c in cells}) == 3
    assert cells[0]["protected_id"] == read_manifest(outs[0])["hyperparameters"]["sha256"]
    # The audit's fingerprint of the data set is the grid's, for the same file.
    assert cells[0]["dataset_fingerprint"] == cells[1]["dataset_fingerprint"] != cells[2]["dataset_fingerprint"]
    assert manifest_fingerprint(read_manifest(outs[0])) == set_fingerprint(load_images(cleans["a"]))

    db = tmp_path / "r.db"
    for out, data in zip(outs, "aab"):
        assert main(["audit", str(out), "--clean", str(cleans[data]), "--db", str(db), "--defenses", "none",
                     "--recipe", "cpu-small:epochs=1", "--device", "cpu", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["report", str(db)]) == 0
    text = capsys.readouterr().out
    with ResultsDB(db) as rdb:
        fps = {r["dataset_fingerprint"][:8] for r in rdb.runs()}
        assert {r["method"] for r in rdb.runs() if r["trained_on"] == "protected"} == {"import:png-index:p_em_class"}
    heads = [line for line in text.splitlines() if line.startswith("## ")]
    # No test split: audit held 20 % out, and names the set as a grid does.
    assert sorted(heads) == sorted(f"## clean.npz (held out 20%) [data {fp}]" for fp in fps)
    tables = text.split("## clean.npz")[1:]
    columns = [[c for c in t.splitlines() if c.startswith("| defense")][0].count("p_em_class") for t in tables]
    assert sorted(columns) == [1, 2]  # two poisons on data set a, one on b
    a_table = tables[columns.index(2)]
    assert a_table.count("import:png-index:p_em_class #") >= 2  # a short hash where the names collide
    # --dataset takes the report's name of one of them, or the stored label for both.
    name = heads[0][3:]
    assert main(["report", str(db), "--dataset", name]) == 0
    assert [line for line in capsys.readouterr().out.splitlines() if line.startswith("## ")] == [heads[0]]
    assert main(["report", str(db), "--dataset", "clean.npz (held out 20%)"]) == 0
    assert capsys.readouterr().out.count("\n## ") + 1 == 2


# -- reading without writing -----------------------------------------------------------------
def _other_sqlite(path):
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE t (a)")
    con.commit()
    con.close()
    return path


@pytest.mark.parametrize("make", [lambda p: p.write_bytes(b""), lambda p: p.write_bytes(b"not sqlite" * 100),
                                  _other_sqlite], ids=["empty", "junk", "other-sqlite"])
def test_report_refuses_a_file_without_results_and_leaves_it_as_it_was(make, tmp_path, capsys):
    path = tmp_path / "EMPTY.db"
    make(path)
    before = path.read_bytes()
    assert main(["report", str(path)]) == 2
    assert capsys.readouterr().err == f"error: {path} holds no unlearnable results\n"
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["EMPTY.db"]


def test_report_of_an_empty_results_database_and_of_an_unknown_data_set(tmp_path, capsys):
    ResultsDB(tmp_path / "r.db").close()
    before = (tmp_path / "r.db").read_bytes()
    assert main(["report", str(tmp_path / "r.db")]) == 0
    assert capsys.readouterr().out.startswith("no runs stored") and (tmp_path / "r.db").read_bytes() == before
    assert main(["report", str(tmp_path / "r.db"), "--dataset", "nope"]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'r.db'} has no data set 'nope'; it holds no runs\n"
    db = _fake_db(tmp_path / "f.db", datasets=("cifar10", "digits"))
    assert main(["report", str(db), "--dataset", "nope"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {db} has no data set 'nope'; it holds: cifar10, digits\n"
    assert main(["report", str(db), "--dataset", "digits"]) == 0
    assert "## digits" in capsys.readouterr().out


# -- plots -------------------------------------------------------------------------------------
@pytest.mark.parametrize("ext, magic", [("svg", b"<?xml"), ("pdf", b"%PDF"), ("png", b"\x89PNG"), ("SVG", b"<?xml")])
def test_plot_format_follows_the_extension(ext, magic, tmp_path):
    pytest.importorskip("matplotlib")
    db = _fake_db(tmp_path / "r.db")
    out = tmp_path / f"table.{ext}"
    assert main(["report", str(db), "--plot", str(out)]) == 0
    assert out.read_bytes().startswith(magic)


@pytest.mark.parametrize("name", ["table.jpg", "table", "table.png.txt"])
def test_an_unknown_plot_extension_is_refused_up_front(name, tmp_path, capsys):
    db = _fake_db(tmp_path / "r.db")
    assert main(["report", str(db), "--plot", str(tmp_path / name), "--csv", str(tmp_path / "runs.csv")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and ".png, .svg or .pdf" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.db"]  # nothing written, not even the CSV


def test_the_clean_bars_look_like_no_method(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from matplotlib.colors import to_rgb
    from matplotlib.figure import Figure

    figs = []
    save = Figure.savefig

    def keep(self, *a, **k):
        figs.append(self)
        return save(self, *a, **k)

    monkeypatch.setattr(Figure, "savefig", keep)
    db = _fake_db(tmp_path / "r.db", methods=[f"m{i}" for i in range(12)])
    assert main(["report", str(db), "--plot", str(tmp_path / "t.png")]) == 0
    bars = {c.get_label(): c.patches[0] for c in figs[0].axes[0].containers if hasattr(c, "patches")}
    clean = bars.pop("clean")
    assert clean.get_hatch() and len(bars) == 12
    colours = [to_rgb(p.get_facecolor()) for p in bars.values()]
    assert all(len(set(np.round(c, 3))) > 1 for c in colours)  # no method is grey
    assert to_rgb(clean.get_facecolor()) not in colours and len(set(colours)) == 12
