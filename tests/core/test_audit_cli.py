"""`unlearnable audit` end to end on tiny data (CPU), and the quick start's data."""

import json

import numpy as np
import pytest
from PIL import Image

from unlearnable.audit import markdown_table, recovered_accuracy, summarize, training_size
from unlearnable.cli import main
from unlearnable.data import load_images

from helpers import protected_folder


def colour_folder(root, n_per_class=12, size=12, mixed=False, seed=0):
    """Two classes told apart by colour: learnable in one epoch."""
    rng = np.random.default_rng(seed)
    for k, c in enumerate(("red", "blue")):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            s = size + (i % 3) * 4 if mixed else size
            arr = rng.integers(0, 60, (s, s, 3), dtype=np.uint8)
            arr[..., 0 if k == 0 else 2] += 180
            Image.fromarray(arr).save(root / c / f"{i}.png")
    return root


def test_audit_protect_then_audit(tmp_path, capsys):
    train = colour_folder(tmp_path / "train", mixed=True)
    test = colour_folder(tmp_path / "test", n_per_class=6, seed=1)
    out = protected_folder(train, tmp_path / "prot", "regions-4", capsys)
    js, md = tmp_path / "audit.json", tmp_path / "audit.md"
    code = main(["audit", str(out), "--clean", str(train), "--test", str(test), "--defenses", "none,standard",
                 "--recipe", "cpu-small", "--epochs", "1", "--size", "12", "--json", str(js), "--markdown", str(md),
                 "--quiet"])
    o = capsys.readouterr()
    assert code == 0, o.err
    records = json.loads(js.read_text())
    assert {(r["defense"], r["trained_on"]) for r in records} == {
        ("none", "clean"), ("none", "protected"), ("standard", "clean"), ("standard", "protected")}
    for r in records:
        assert {"defense", "trained_on", "final_acc", "best_acc", "seconds"} <= set(r)
        assert 0 <= r["final_acc"] <= r["best_acc"] <= 1
        assert r["recipe"] == "cpu-small" and r["image_size"] == [12, 12]
    assert "recovered accuracy" in o.err.lower()
    assert "| none |" in md.read_text() and "| standard |" in o.out


def test_audit_errors(tmp_path, capsys):
    train = colour_folder(tmp_path / "train")
    code = main(["audit", str(train)])
    assert code == 2 and "no test set" in capsys.readouterr().err
    code = main(["audit", str(train), "--clean", str(train), "--test", str(train), "--holdout", "0.2"])
    assert code == 2 and "either --test TEST or --holdout" in capsys.readouterr().err
    code = main(["audit", str(train), "--clean", str(train), "--holdout", "1.5"])
    assert code == 2 and "--holdout must be a fraction between 0 and 1, got 1.5" in capsys.readouterr().err
    other = tmp_path / "other"
    for c in ("x", "y"):
        (other / c).mkdir(parents=True)
        Image.fromarray(np.zeros((12, 12, 3), np.uint8)).save(other / c / "0.png")
    code = main(["audit", str(train), "--test", str(other), "--recipe", "cpu-small", "--epochs", "1"])
    assert code == 2 and "different classes" in capsys.readouterr().err
    code = main(["audit", str(train), "--test", str(train), "--defenses", "nope"])
    assert code == 2 and "nope" in capsys.readouterr().err
    code = main(["audit", str(train), "--test", str(train), "--recipe", "nope"])
    assert code == 2 and "nope" in capsys.readouterr().err
    # Output files that cannot be written fail before any training, not after it.
    for cmd in (["audit", str(train), "--test", str(train), "--markdown", str(tmp_path / "no" / "a.md")],
                ["analyze", "quality", str(train), "--clean", str(train), "--json", str(tmp_path / "no" / "q.json")],
                ["analyze", "tsne", str(train), "--clean", str(train), "--out", str(tmp_path)]):
        code = main(cmd)
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("error: cannot write") and len(err.strip().splitlines()) == 1, err


def test_audit_refuses_a_clean_set_of_other_images_in_every_mode(tmp_path, capsys):
    """The clean victims must train on the clean versions of the protected images, whichever
    way the test set is chosen; and a test set that is the training folder again is refused."""
    train = colour_folder(tmp_path / "train")
    out = protected_folder(train, tmp_path / "prot", "random", capsys)
    other = colour_folder(tmp_path / "split" / "train", n_per_class=3, seed=2)
    colour_folder(tmp_path / "split" / "test", n_per_class=3, seed=3)
    test = colour_folder(tmp_path / "test", n_per_class=3, seed=4)
    fast = ["--recipe", "cpu-small", "--epochs", "1", "--quiet"]
    for extra in ([], ["--test", str(test)]):  # the folder's test split; a test folder
        code = main(["audit", str(out), "--clean", str(other.parent), *extra, *fast])
        err = capsys.readouterr().err
        assert code == 2 and "no clean counterpart" in err and len(err.strip().splitlines()) == 1, err
    code = main(["audit", str(out), "--clean", str(train), "--test", str(train), *fast])
    err = capsys.readouterr().err
    assert code == 2 and "also clean training images" in err, err


def test_audit_holds_out_a_test_set_from_the_owners_folder(tmp_path, capsys):
    # A data owner has only their photos: audit tests on clean images neither victim trained on.
    train = colour_folder(tmp_path / "photos", n_per_class=10)
    out = protected_folder(train, tmp_path / "prot", "regions-4", capsys)
    js = tmp_path / "a.json"
    code = main(["audit", str(out), "--clean", str(train), "--defenses", "none", "--recipe", "cpu-small",
                 "--epochs", "1", "--json", str(js), "--quiet"])
    o = capsys.readouterr()
    assert code == 0, o.err
    assert "test: 4 images" in o.err and "20% of the clean images per class, held out" in o.err
    assert "16 images" in o.err and {r["trained_on"] for r in json.loads(js.read_text())} == {"clean", "protected"}


def test_holdout_split_is_stratified_disjoint_and_order_free(tmp_path):
    from unlearnable.audit import holdout_split
    from unlearnable.errors import UnlearnableError

    clean = load_images(colour_folder(tmp_path / "c", n_per_class=10))
    prot = clean.with_images(255 - clean.stacked())
    p_tr, c_tr, test = holdout_split(prot, clean, 0.3, seed=1)
    assert len(test) == 6 and np.bincount(test.labels).tolist() == [3, 3]
    assert set(test.ids).isdisjoint(p_tr.ids) and set(test.ids).isdisjoint(c_tr.ids)
    assert sorted(p_tr.ids) == sorted(c_tr.ids) and len(p_tr) == 14
    assert (test.stacked() == clean.subset([clean.ids.index(i) for i in test.ids]).stacked()).all()  # clean pixels
    perm = np.random.default_rng(0).permutation(len(clean))
    assert holdout_split(prot.subset(perm), clean.subset(perm[::-1]), 0.3, seed=1)[2].ids == test.ids
    assert holdout_split(prot, clean, 0.3, seed=2)[2].ids != test.ids
    two = clean.subset([0, 1, 10, 11])  # every class keeps a training image
    assert len(holdout_split(two.with_images(two.stacked()), two, 0.9)[0]) == 2
    with pytest.raises(UnlearnableError, match="no clean counterpart"):
        holdout_split(prot, clean.subset(range(5)), 0.2)


def test_a_best_epoch_far_above_the_final_one_is_flagged():
    from unlearnable.audit import best_epoch_warnings

    def rec(on, accs, **kw):
        return {"defense": "standard", "trained_on": on, "final_acc": accs[-1], "best_acc": max(accs),
                "best_epoch": 1 + accs.index(max(accs)), **kw}

    pil_victim = rec("protected", [0.114, 0.463, 0.221, 0.176])  # measured shape: features first, shortcut late
    (w,) = best_epoch_warnings([rec("clean", [0.9, 0.5]), pil_victim, rec("protected", [0.2, 0.25, 0.21])])
    assert "reached 46.3% at epoch 2 and ended at 17.6%" in w
    # early-stop is credited with its selected epoch, which is what the gap is measured from
    assert best_epoch_warnings([rec("protected", [0.1, 0.46, 0.2], selected_epoch=2, selected_acc=0.46)]) == []


def test_summary_helpers():
    recs = [{"defense": "none", "trained_on": "clean", "final_acc": 0.9, "best_acc": 0.92},
            {"defense": "none", "trained_on": "protected", "final_acc": 0.1, "best_acc": 0.2},
            {"defense": "standard", "trained_on": "protected", "final_acc": 0.3, "best_acc": 0.3}]
    rows = summarize(recs)
    assert rows[0]["drop"] == pytest.approx(0.8)
    assert recovered_accuracy(recs) == {"defense": "standard", "final_acc": 0.3, "max_acc": 0.3, "n": 1}
    assert "30.00" in markdown_table(recs)


def test_several_seeds_are_summarised_by_mean_and_worst_case():
    def rec(d, on, acc, seed):
        return {"defense": d, "trained_on": on, "final_acc": acc, "best_acc": acc + 0.1, "seed": seed}

    recs = [rec("none", "clean", 0.9, 0), rec("none", "clean", 0.8, 1),
            rec("none", "protected", 0.1, 0), rec("none", "protected", 0.5, 1),
            rec("standard", "protected", 0.25, 0), rec("standard", "protected", 0.27, 1)]
    row = summarize(recs)[0]
    assert row["protected_final"] == pytest.approx(0.3) and row["protected_max"] == 0.5 and row["protected_n"] == 2
    assert row["drop"] == pytest.approx(0.55) and row["protected_sd"] == pytest.approx(0.2828, abs=1e-4)
    # the defense with the best mean, not the luckiest single run
    assert recovered_accuracy(recs) == {"defense": "none", "final_acc": pytest.approx(0.3), "max_acc": 0.5, "n": 2}
    table = markdown_table(recs)
    assert "| none | 85.00 ± 7.07 (95.00) | 30.00 ± 28.28 (40.00) | 55.00 |" in table
    assert "over 2 seeds (0, 1); the best single run with `none` reached 50.00%" in table


def test_audit_cli_with_seeds(tmp_path, capsys):
    train = colour_folder(tmp_path / "train", n_per_class=10)
    out = protected_folder(train, tmp_path / "prot", "regions-4", capsys)
    js = tmp_path / "a.json"
    args = ["audit", str(out), "--clean", str(train), "--defenses", "none", "--recipe", "cpu-small", "--epochs", "1",
            "--json", str(js), "--quiet"]
    assert main(args + ["--seeds", "3,4"]) == 0
    o = capsys.readouterr()
    recs = json.loads(js.read_text())
    assert sorted((r["trained_on"], r["seed"]) for r in recs) == [("clean", 3), ("clean", 4),
                                                                  ("protected", 3), ("protected", 4)]
    assert "over 2 seeds (3, 4)" in o.out
    assert main(args + ["--seeds", "3,4,5", "--resume"]) == 0  # one more seed: only its runs train
    recs = json.loads(js.read_text())
    assert sorted(r["seed"] for r in recs if not r.get("reused")) == [5, 5] and len(recs) == 6
    assert "over 3 seeds (3, 4, 5)" in capsys.readouterr().out
    assert main(args + ["--seeds", "3,3", "--overwrite"]) == 2
    assert "distinct" in capsys.readouterr().err
    assert main(args + ["--seeds", "3,x", "--overwrite"]) == 2
    assert "--seeds" in capsys.readouterr().err


def test_training_size_policy(tmp_path):
    a = load_images(colour_folder(tmp_path / "a", mixed=True))
    b = load_images(colour_folder(tmp_path / "b"))
    assert training_size(b) == (12, 12)
    assert training_size(a, b) == (32, 32)
    # Photos from one camera share a size: victims still train at 32², not at 3000 x 4000.
    from unlearnable.data.imageset import ImageSet

    photos = ImageSet([np.zeros((300, 400, 3), np.uint8)] * 2, np.array([0, 1]), ["x", "y"], ["x/0", "y/1"])
    assert training_size(photos) == (32, 32) and training_size(photos, default=48) == (48, 48)


def test_list_commands(capsys):
    for kind in ("methods", "defenses", "models", "recipes"):
        assert main([kind]) == 0
    out = capsys.readouterr().out
    for name in ("random-classwise", "regions-4", "standard", "resnet18", "paper", "cpu-small"):
        assert name in out
    assert "read a batch at a time by cuda, lsp, pil, random-classwise, regions-4;" in out
    for kind in ("methods", "defenses", "models", "recipes"):  # a pattern matching nothing says so
        assert main([kind, "zzz*"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: no {kind} match 'zzz*'; available: ") and err.count("\n") == 1


def test_listings_show_settable_parameters(capsys):
    """A user finds what ``--param`` and ``name:key=value`` can set without reading the source."""
    from unlearnable.defenses import DEFENSES, create_defense
    from unlearnable.methods import METHODS

    assert main(["methods", "pil"]) == 0 and main(["defenses", "jpeg"]) == 0
    out = capsys.readouterr().out
    assert "--param defaults: lam=0.9 steps=30" in out and "defaults: quality=10" in out
    for name in DEFENSES.list():
        # What is listed is what runs (``none`` and ``gray`` have no knobs).
        assert create_defense(name).params() == DEFENSES.defaults(name), name
    assert "last_run" not in METHODS.defaults("pil") and METHODS.defaults("pil")["lam"] == 0.9


def test_listing_into_a_closed_pipe_is_quiet():
    import subprocess
    import sys

    code = "import sys; from unlearnable.cli import main; sys.exit(main(['methods']))"
    proc = subprocess.run(f'"{sys.executable}" -c "{code}" | head -1', shell=True, capture_output=True, text=True)
    assert proc.stdout.count("\n") == 1 and "Traceback" not in proc.stderr and "Broken" not in proc.stderr


def test_quickstart_runs_and_reports(capsys):
    from unlearnable.quickstart import digits_imageset, run_quickstart

    train, test = digits_imageset(0)
    assert train.stacked().shape[1:] == (16, 16, 3) and len(train) + len(test) == 1797
    assert set(train.ids).isdisjoint(test.ids)
    rows = run_quickstart(["random", "regions-4"], epochs=2, quiet=True)
    assert [r["data"] for r in rows] == ["clean", "random", "regions-4"]
    assert all(0 <= r["final_acc"] <= 1 for r in rows)
    assert rows[1]["linf"] <= 8
    out = capsys.readouterr().out
    assert "regions-4" in out and "drop" in out


def real_photo_folder(root, n_per_class=8, seed=0):
    """Crops of scikit-learn's two bundled photos, in mixed sizes, modes and formats."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    for k, name in enumerate(("china", "flower")):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            h, w = (int(v) for v in rng.integers(24, 90, 2))
            y0, x0 = rng.integers(0, photos[k].shape[0] - h), rng.integers(0, photos[k].shape[1] - w)
            im = Image.fromarray(photos[k][y0:y0 + h, x0:x0 + w])
            kind = i % 4
            if kind == 0:
                im.save(root / name / f"{i}.jpg", quality=85)
            elif kind == 1:
                im.convert("L").save(root / name / f"{i}.png")
            elif kind == 2:
                im.convert("RGBA").save(root / name / f"{i}.png")
            else:
                im.convert("P").save(root / name / f"{i}.gif")
    return root


def test_mixed_real_photos_protect_verify_audit(tmp_path, capsys):
    """The data owner's path on real photos of mixed sizes, modes and formats."""
    photos = real_photo_folder(tmp_path / "photos")
    test = real_photo_folder(tmp_path / "test", n_per_class=4, seed=1)
    out = tmp_path / "protected"
    for method in ("pil", "random-classwise"):
        target = out if method == "pil" else tmp_path / method
        assert main(["protect", str(photos), "--out", str(target), "--method", method, "--quiet"]) == 0
        assert main(["verify", str(target), "--clean", str(photos), "--quiet"]) == 0
    clean, prot = load_images(photos), load_images(out)
    assert not clean.uniform and [im.shape for im in clean.images] == [im.shape for im in prot.images]
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert "china/3.png" in names and "flower/0.png" in names  # gif and jpg inputs became png
    from unlearnable.protect import load_protected

    assert sorted(load_protected(out).ids) == sorted(clean.ids)  # "china/0.jpg", not "china/0.png"
    # clean-mix needs each protected image's clean counterpart: found by id through the manifest.
    assert main(["audit", str(out), "--clean", str(photos), "--test", str(test), "--recipe", "cpu-small",
                 "--epochs", "1", "--defenses", "standard,clean-mix", "--quiet"]) == 0
    assert "| clean-mix |" in capsys.readouterr().out


def test_auto_recipe_picks_by_device(capsys):
    import torch

    from unlearnable.cli import auto_recipe

    assert auto_recipe("fast", None) == "fast"
    expected = "paper" if torch.cuda.is_available() else "cpu-small"
    assert auto_recipe("auto", None) == expected
    assert auto_recipe("auto", "cpu") == "cpu-small" and "cpu-small" in capsys.readouterr().err


def test_audit_resume_and_reuse(tmp_path, capsys, monkeypatch):
    import unlearnable.audit as audit_mod
    from unlearnable.train import engine

    train = colour_folder(tmp_path / "train")
    test = colour_folder(tmp_path / "test", n_per_class=6, seed=1)
    prot_a, prot_b = tmp_path / "pa", tmp_path / "pb"
    assert main(["protect", str(train), "--out", str(prot_a), "--method", "regions-4", "--quiet"]) == 0
    assert main(["protect", str(train), "--out", str(prot_b), "--method", "random-classwise", "--quiet"]) == 0
    js = tmp_path / "a.json"
    common = ["--clean", str(train), "--test", str(test), "--defenses", "none,standard", "--recipe", "cpu-small",
              "--epochs", "1", "--quiet"]
    # Interrupt the third run: the first two are already on disk.
    real, calls = engine.train_victim, []

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(engine, "train_victim", flaky)
    assert main(["audit", str(prot_a), *common, "--json", str(js)]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "2 finished runs" in err and "--resume" in err
    assert len(json.loads(js.read_text())) == 2
    monkeypatch.setattr(engine, "train_victim", real)
    capsys.readouterr()
    # Same command without --resume refuses to clobber the partial results.
    assert main(["audit", str(prot_a), *common, "--json", str(js)]) == 2
    assert "--resume" in capsys.readouterr().err
    trained = []
    monkeypatch.setattr(engine, "train_victim", lambda *a, **k: trained.append(1) or real(*a, **k))
    assert main(["audit", str(prot_a), *common, "--json", str(js), "--resume"]) == 0
    recs = json.loads(js.read_text())
    assert len(trained) == 2 and len(recs) == 4
    assert [r.get("reused", False) for r in recs] == [True, True, False, False]
    assert "reused 2 of 4" in capsys.readouterr().err
    # Another poison of the same clean data: the clean baselines are reused, the protected runs are not.
    trained.clear()
    jb = tmp_path / "b.json"
    assert main(["audit", str(prot_b), *common, "--json", str(jb), "--reuse", str(js)]) == 0
    recs_b = json.loads(jb.read_text())
    assert len(trained) == 2
    assert {(r["defense"], r["trained_on"]) for r in recs_b if r.get("reused")} == {("none", "clean"), ("standard", "clean")}
    # A different seed changes every key.
    trained.clear()
    assert main(["audit", str(prot_b), *common, "--seed", "1", "--json", str(jb), "--overwrite", "--reuse", str(js)]) == 0
    assert len(trained) == 4
    # Bad reuse files are one-line errors.
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main(["audit", str(prot_b), *common, "--reuse", str(bad)]) == 2
    assert "not an audit JSON" in capsys.readouterr().err
    assert main(["audit", str(prot_b), *common, "--resume"]) == 2
    assert "--json" in capsys.readouterr().err
    assert audit_mod.fingerprint(np.zeros(3)) != audit_mod.fingerprint(np.zeros(4))


def test_audit_into_a_results_database(tmp_path, capsys, monkeypatch):
    from unlearnable.bench import ResultsDB
    from unlearnable.train import engine

    train = colour_folder(tmp_path / "train")
    test = colour_folder(tmp_path / "test", n_per_class=6, seed=1)
    prot_a, prot_b = tmp_path / "pa", tmp_path / "pb"
    assert main(["protect", str(train), "--out", str(prot_a), "--method", "regions-4", "--quiet"]) == 0
    assert main(["protect", str(train), "--out", str(prot_b), "--method", "random-classwise", "--eps", "4/255",
                 "--seed", "3", "--quiet"]) == 0
    db = tmp_path / "r.db"
    common = ["--clean", str(train), "--test", str(test), "--defenses", "none,standard", "--recipe", "cpu-small",
              "--epochs", "1", "--quiet", "--db", str(db)]
    real, trained = engine.train_victim, []
    monkeypatch.setattr(engine, "train_victim", lambda *a, **k: trained.append(1) or real(*a, **k))
    assert main(["audit", str(prot_a), *common]) == 0
    assert main(["audit", str(prot_b), *common]) == 0
    assert len(trained) == 6  # the second poison's clean baselines come from the database
    assert main(["audit", str(prot_b), *common]) == 0
    assert len(trained) == 6
    capsys.readouterr()
    with ResultsDB(db) as d:
        cells = {(r["method"], r["budget"], r["method_seed"], r["trained_on"]) for r in d.runs()}
        assert cells == {("", "", -1, "clean"), ("regions-4", "8/255", 0, "protected"),
                         ("random-classwise", "4/255", 3, "protected")}
        assert {r["dataset"] for r in d.runs()} == {"train"}
    assert main(["report", str(db)]) == 0
    out = capsys.readouterr().out
    assert "regions-4 acc %" in out and "random-classwise acc %" in out


def test_a_test_set_that_is_the_training_npz_is_refused(tmp_path, capsys):
    """An NPZ carries no file hashes: the overlap is found by pixels."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "clean.npz", x=x, y=np.arange(20) % 2)
    out = protected_folder(tmp_path / "clean.npz", tmp_path / "prot", "random", capsys)
    code = main(["audit", str(out), "--clean", str(tmp_path / "clean.npz"), "--test", str(tmp_path / "clean.npz"),
                 "--recipe", "cpu-small", "--epochs", "1", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "20 of the 20 test images are also clean training images" in err, err


@pytest.mark.parametrize("bad, needle", [(["--arch", "nope"], "unknown architecture"),
                                         (["--recipe", "paper:bogus=1"], "bogus"),
                                         (["--defenses", "jpeg200"], "jpeg200"),
                                         (["--defenses", "jpeg10,jpeg:quality=10"], "are the same")])
def test_audit_options_are_checked_before_any_data_is_read(tmp_path, capsys, bad, needle):
    """The input does not even exist: the option's error must come first, not after loading."""
    code = main(["audit", str(tmp_path / "missing"), "--clean", str(tmp_path / "missing"), *bad])
    err = capsys.readouterr().err.strip()
    assert code == 2 and needle in err and len(err.splitlines()) <= 2, err  # (+ the auto-recipe note)


def test_argument_errors_are_one_line(capsys):
    for argv in (["protect", "x", "--eps", "-8/255"], ["audit", "x", "--size", "abc"], ["nope"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        err = capsys.readouterr().err.strip()
        assert exc.value.code == 2 and err.startswith("error: ") and len(err.splitlines()) == 1, err


def test_defenses_listing_explains_a_spec(capsys):
    assert main(["defenses", "jpeg10+at8"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "jpeg10+at8 = jpeg:quality=10 + at:eps=8" and "quality=10" in out
    assert main(["defenses"]) == 0
    assert "jpeg10 = jpeg:quality=10" in capsys.readouterr().out
    assert main(["defenses", "nope"]) == 2


def test_a_diverged_victim_is_flagged_and_its_json_stays_strict(tmp_path, capsys):
    train = colour_folder(tmp_path / "train")
    test = colour_folder(tmp_path / "test", n_per_class=4, seed=1)
    out = protected_folder(train, tmp_path / "prot", "random", capsys)
    js = tmp_path / "a.json"
    code = main(["audit", str(out), "--clean", str(train), "--test", str(test), "--defenses", "none",
                 "--recipe", "cpu-small:lr=1e6", "--epochs", "2", "--size", "12", "--json", str(js), "--quiet"])
    err = capsys.readouterr().err
    assert code == 0 and "diverged at epoch" in err, err

    def refuse(name):
        raise AssertionError(f"{name} in the JSON")

    records = json.loads(js.read_text(), parse_constant=refuse)
    assert all(r["diverged"] for r in records)
