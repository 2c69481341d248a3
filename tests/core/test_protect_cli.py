"""protect → verify → reload through the CLI, atomic output, resume, and every bad input."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unlearnable.cli import main

from helpers import random_folder
from unlearnable.data import load_images


def make_folder(root: Path, n_per_class=4, classes=("cat", "dog"), mixed=True, seed=0):
    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            h, w = (20 + 3 * i, 24 + i) if mixed else (16, 16)
            arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            if mixed and i % 3 == 1:
                Image.fromarray(arr).save(root / c / f"{i}.jpg", quality=90)
            elif mixed and i % 3 == 2:
                Image.fromarray(arr[..., 0], "L").save(root / c / f"{i}.png")
            else:
                Image.fromarray(arr).save(root / c / f"{i}.png")
    return root


def run(args, capsys=None):
    code = main([str(a) for a in args])
    out = capsys.readouterr() if capsys else None
    return code, out


def assert_one_line_error(code, out, *needles):
    assert code == 2
    err = out.err.strip().splitlines()[-1]
    assert err.startswith("error: ")
    for n in needles:
        assert str(n) in err, (n, err)


def snapshot(folder: Path):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_protect_points_to_the_audit_that_runs(tmp_path, capsys, monkeypatch):
    import shlex

    src = make_folder(tmp_path / "in")
    monkeypatch.chdir(tmp_path)
    code, o = run(["protect", "in", "--out", "my out", "--method", "random-classwise"], capsys)
    assert code == 0, o.err
    hint = [line for line in o.err.splitlines() if "unlearnable audit" in line][-1]
    args = shlex.split(hint.split(": ", 1)[1])[1:]
    assert args[:3] == ["audit", "my out", "--clean"] and src.name == args[3]
    code, o = run(args + ["--recipe", "cpu-small", "--epochs", "1", "--quiet"], capsys)
    assert code == 0, o.err
    assert "| jpeg10 |" in o.out and "| standard+early-stop:source=clean † |" in o.out


def test_protect_verify_reload(tmp_path, capsys):
    src = make_folder(tmp_path / "in")
    before = snapshot(src)
    out = tmp_path / "out"
    code, o = run(["protect", src, "--out", out, "--method", "random-classwise", "--eps", "8/255", "--quiet"], capsys)
    assert code == 0, o.err
    assert snapshot(src) == before  # input untouched
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["method"] == "random-classwise" and manifest["seed"] == 0
    assert manifest["budget"]["grey_levels"] == 8
    assert manifest["norms"]["linf_grey_levels"]["max"] <= 8
    assert {"torch", "numpy", "unlearnable"} <= set(manifest["versions"])
    assert manifest["wall_seconds"] >= 0 and manifest["device"]
    names = sorted(f["output"] for f in manifest["files"])
    assert names == sorted(str(Path(p).with_suffix(".png")) for p in ["cat/0.png", "cat/1.jpg", "cat/2.png",
                                                                       "cat/3.png", "dog/0.png", "dog/1.jpg",
                                                                       "dog/2.png", "dog/3.png"])
    assert all(len(f["input_sha256"]) == 64 and len(f["output_sha256"]) == 64 for f in manifest["files"])
    assert not list(tmp_path.glob(".out*"))  # no partial left

    code, o = run(["verify", out, "--clean", src, "--quiet"], capsys)
    assert code == 0, o.err
    assert "OK" in o.out

    clean, prot = load_images(src), load_images(out)
    assert prot.classes == clean.classes and (prot.labels == clean.labels).all()
    for i in range(len(clean)):
        a, b = clean.image(i), prot.image(i)
        assert a.shape == b.shape
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 8


def test_same_seed_same_bytes(tmp_path, capsys):
    src = make_folder(tmp_path / "in")
    for name in ("a", "b"):
        assert run(["protect", src, "--out", tmp_path / name, "--method", "regions-4", "--seed", "7", "--quiet"], capsys)[0] == 0
    a, b = snapshot(tmp_path / "a"), snapshot(tmp_path / "b")
    a.pop("manifest.json"), b.pop("manifest.json")
    assert a == b


def test_verify_catches_tampering_and_budget_violation(tmp_path, capsys):
    src = make_folder(tmp_path / "in", mixed=False)
    out = tmp_path / "out"
    assert run(["protect", src, "--out", out, "--quiet"], capsys)[0] == 0
    target = out / "cat" / "0.png"
    arr = np.asarray(Image.open(target)).copy()
    arr[0, 0] = (arr[0, 0].astype(int) + 40).clip(0, 255).astype(np.uint8) if arr[0, 0, 0] < 200 else arr[0, 0] - 40
    Image.fromarray(arr).save(target)
    code, o = run(["verify", out, "--clean", src, "--quiet"], capsys)
    assert code == 1 and "sha256" in o.err
    # Make the hash match again: the budget check alone must still fail.
    import hashlib

    m = json.loads((out / "manifest.json").read_text())
    for f in m["files"]:
        if f["output"] == "cat/0.png":
            f["output_sha256"] = hashlib.sha256(target.read_bytes()).hexdigest()
    (out / "manifest.json").write_text(json.dumps(m))
    code, o = run(["verify", out, "--clean", src, "--quiet"], capsys)
    assert code == 1 and "exceeds" in o.err
    # A manifest that declares a looser budget passes on its own word, not against the user's.
    m["budget"] = {"norm": "linf", "eps": 64 / 255}
    (out / "manifest.json").write_text(json.dumps(m))
    code, o = run(["verify", out, "--clean", src, "--quiet"], capsys)
    assert code == 0 and "64/255" in o.out
    code, o = run(["verify", out, "--clean", src, "--eps", "8/255", "--quiet"], capsys)
    assert code == 1 and "exceeds" in o.err and "8/255" in o.err
    code, o = run(["verify", out, "--eps", "8/255", "--quiet"], capsys)
    assert_one_line_error(code, o, "--clean")
    (out / "extra.png").write_bytes(target.read_bytes())
    code, o = run(["verify", out, "--quiet"], capsys)
    assert code == 1 and "extra.png" in o.err


def test_verify_json_is_the_whole_stdout(tmp_path, capsys):
    src = make_folder(tmp_path / "in", mixed=False)
    out = tmp_path / "out"
    assert run(["protect", src, "--out", out, "--quiet"], capsys)[0] == 0
    code, o = run(["verify", out, "--clean", src, "--json", "--quiet"], capsys)
    report = json.loads(o.out)
    assert code == 0 and report["ok"] and report["method"] == "pil" and report["declared_budget"]["norm"] == "linf"
    assert "OK:" in o.err


def test_npz_export_matches_pngs(tmp_path, capsys):
    src = make_folder(tmp_path / "in", mixed=False)
    out, npz = tmp_path / "out", tmp_path / "prot.npz"
    assert run(["protect", src, "--out", out, "--npz", npz, "--quiet"], capsys)[0] == 0
    z = np.load(npz)
    prot = load_images(out)
    assert (z["x"] == prot.stacked()).all() and (z["y"] == prot.labels).all()
    again = load_images(npz)
    assert again.classes == prot.classes


def test_flat_folder_samplewise_and_classwise_uses_pseudo_labels(tmp_path, capsys):
    src = tmp_path / "flat"
    src.mkdir()
    for i in range(3):
        Image.fromarray(np.full((10, 12, 3), 50 * i, np.uint8)).save(src / f"p{i}.png")
    code, o = run(["protect", src, "--out", tmp_path / "o1", "--method", "random", "--quiet"], capsys)
    assert code == 0, o.err
    assert (tmp_path / "o1" / "p0.png").exists() and o.err == ""  # needs no labels: nothing to say
    code, o = run(["protect", src, "--out", tmp_path / "o2", "--method", "random-classwise", "--quiet"], capsys)
    assert code == 0, o.err
    # Even --quiet says that clusters of pixels are a weak stand-in for classes (measured).
    assert o.err.startswith("warning: no class labels: random-classwise") and "class folders" in o.err
    manifest = json.loads((tmp_path / "o2" / "manifest.json").read_text())
    assert manifest["labels_used"] == "pseudo"
    assert manifest["pseudo_labels"]["kind"] == "kmeans" and manifest["pseudo_labels"]["k"] == 3  # 3 images
    assert manifest["norms"]["linf_grey_levels"]["max"] <= 8


# -- bad input: one-line error, exit 2, nothing left behind ------------------------------------
def _no_output(tmp_path, name="out"):
    return not (tmp_path / name).exists() and not (tmp_path / f".{name}.partial").exists()


def test_corrupt_image(tmp_path, capsys):
    src = make_folder(tmp_path / "in", mixed=False)
    good = (src / "cat" / "0.png").read_bytes()
    (src / "cat" / "0.png").write_bytes(good[: len(good) // 2])
    code, o = run(["protect", src, "--out", tmp_path / "out"], capsys)
    assert_one_line_error(code, o, "0.png")
    assert _no_output(tmp_path)


@pytest.mark.parametrize("workers", ["1", "4"])
def test_a_folder_too_large_for_memory_fails_while_loading(tmp_path, capsys, monkeypatch, workers):
    # 40 images of 64 x 64 decode to 480 kB; a machine with 600 kB to spare cannot hold them
    # three times over (images, perturbation, protected copy).
    import unlearnable.data.load as load

    src = random_folder(tmp_path / "in", 20, (64, 64))
    monkeypatch.setattr(load, "available_memory", lambda: 600_000)
    monkeypatch.setattr(load, "_default_workers", lambda: int(workers))
    code, o = run(["protect", src, "--out", tmp_path / "out"], capsys)
    assert_one_line_error(code, o, "40 images decode to about 480 kB", "needs at least 3× that (1.4 MB)", "586 kB available",
                          "in parts")
    assert _no_output(tmp_path)
    monkeypatch.setattr(load, "available_memory", lambda: 2_000_000)
    code, o = run(["protect", src, "--out", tmp_path / "out", "--method", "random"], capsys)
    assert code == 0, o.err


def test_available_memory_is_read_on_linux():
    from unlearnable.data.load import available_memory

    if not os.path.exists("/proc/meminfo"):
        pytest.skip("no /proc/meminfo")
    assert 0 < available_memory() < 1 << 50


def test_non_image_file(tmp_path, capsys):
    src = make_folder(tmp_path / "in", mixed=False)
    (src / "dog" / "notes.txt").write_text("hello")
    code, o = run(["protect", src, "--out", tmp_path / "out"], capsys)
    assert_one_line_error(code, o, "notes.txt")
    assert _no_output(tmp_path)


def test_empty_class_folder(tmp_path, capsys):
    src = make_folder(tmp_path / "in", mixed=False)
    (src / "empty").mkdir()
    code, o = run(["protect", src, "--out", tmp_path / "out"], capsys)
    assert_one_line_error(code, o, "empty")
    assert _no_output(tmp_path)


def test_single_class(tmp_path, capsys):
    src = make_folder(tmp_path / "in", classes=("cat",), mixed=False)
    code, o = run(["protect", src, "--out", tmp_path / "out"], capsys)
    assert_one_line_error(code, o, "cat")
    assert _no_output(tmp_path)


def test_missing_and_unreadable_path(tmp_path, capsys):
    code, o = run(["protect", tmp_path / "nope", "--out", tmp_path / "out"], capsys)
    assert_one_line_error(code, o, "nope")
    if os.geteuid() != 0:  # root reads anything
        src = make_folder(tmp_path / "in", mixed=False)
        (src / "cat" / "0.png").chmod(0)
        code, o = run(["protect", src, "--out", tmp_path / "out"], capsys)
        assert_one_line_error(code, o, "0.png")
    assert _no_output(tmp_path)


def test_output_inside_input(tmp_path, capsys):
    src = make_folder(tmp_path / "in", mixed=False)
    code, o = run(["protect", src, "--out", src / "prot"], capsys)
    assert_one_line_error(code, o, "inside")
    assert not (src / "prot").exists()
    code, o = run(["protect", src / "cat", "--out", tmp_path], capsys)
    assert code == 2


def test_existing_output_needs_overwrite(tmp_path, capsys):
    src = make_folder(tmp_path / "in", mixed=False)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, o = run(["protect", src, "--out", out], capsys)
    assert_one_line_error(code, o, "--overwrite")
    assert (out / "keep.txt").read_text() == "mine"
    # --overwrite replaces only what this tool wrote: a user's folder is never deleted.
    code, o = run(["protect", src, "--out", out, "--overwrite", "--quiet"], capsys)
    assert_one_line_error(code, o, "did not write")
    assert (out / "keep.txt").read_text() == "mine"
    (out / "keep.txt").unlink()  # an empty folder is fair game
    code, o = run(["protect", src, "--out", out, "--overwrite", "--quiet"], capsys)
    assert code == 0 and (out / "manifest.json").exists()
    code, o = run(["protect", src, "--out", out, "--overwrite", "--quiet", "--seed", "1"], capsys)
    assert code == 0 and json.loads((out / "manifest.json").read_text())["seed"] == 1


def test_outputs_follow_the_umask(tmp_path, capsys):
    """Files of a folder meant for publishing are readable by others under the usual umask
    (mkstemp alone would make them 0600)."""
    src = make_folder(tmp_path / "in", mixed=False)
    old = os.umask(0o022)
    try:
        import unlearnable.data.save as save
        mode = save._file_mode()
    finally:
        os.umask(old)
    assert mode == 0o644
    code, _ = run(["protect", src, "--out", tmp_path / "out", "--quiet"], capsys)
    assert code == 0
    expected = save._FILE_MODE
    for f in (tmp_path / "out").rglob("*"):
        if f.is_file():
            assert f.stat().st_mode & 0o777 == expected, f


@pytest.mark.parametrize("eps", ["-1", "abc", "300", "8/0", "0"])
def test_nonsense_budget(tmp_path, capsys, eps):
    src = make_folder(tmp_path / "in", mixed=False)
    code, o = run(["protect", src, "--out", tmp_path / "out", "--eps", eps], capsys)
    assert_one_line_error(code, o, "budget")
    assert _no_output(tmp_path)


def test_unknown_method_and_param(tmp_path, capsys):
    src = make_folder(tmp_path / "in", mixed=False)
    code, o = run(["protect", src, "--out", tmp_path / "out", "--method", "nope"], capsys)
    assert_one_line_error(code, o, "nope")
    code, o = run(["protect", src, "--out", tmp_path / "out", "--param", "bogus"], capsys)
    assert_one_line_error(code, o, "bogus")
    for param, says in [("nosuch=1", "method 'pil' has no parameter 'nosuch'"),
                        ("steps=abc", "steps must be int, got 'abc'"),
                        ("steps=3.5", "steps must be int, got 3.5"),
                        ("step_size=1/0", "step_size must be Optional[float], got '1/0'")]:
        code, o = run(["protect", src, "--out", tmp_path / "out", "--method", "pil", "--param", param], capsys)
        assert_one_line_error(code, o, says)
    assert _no_output(tmp_path)


def test_float_params_take_fractions(tmp_path, capsys):
    # Step sizes are written as fractions in the papers; 2/255 reaches the method as a float.
    src = make_folder(tmp_path / "in", mixed=False)
    code, o = run(["protect", src, "--out", tmp_path / "out", "--method", "pil", "--param", "step_size=2/255",
                   "--quiet"], capsys)
    assert code == 0, o.err
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["hyperparameters"]["step_size"] == pytest.approx(2 / 255)


@pytest.mark.parametrize("args", [["audit", "P", "--size", "0"], ["audit", "P", "--epochs", "-1"],
                                  ["export", "P", "x.npz", "--size", "-3"], ["analyze", "csd", "P", "--clean", "C",
                                                                             "--n-clean", "0"]])
def test_sizes_and_counts_must_be_positive(args, capsys):
    with pytest.raises(SystemExit) as exc:  # argparse's own usage error, before anything is read
        main(args)
    assert exc.value.code == 2 and "must be a positive integer" in capsys.readouterr().err


def test_verify_errors(tmp_path, capsys):
    code, o = run(["verify", tmp_path], capsys)
    assert_one_line_error(code, o, "manifest.json")
    code, o = run(["verify", tmp_path / "nope"], capsys)
    assert code == 2


# -- interruption and resume ------------------------------------------------------------------
def test_interrupted_run_resumes_to_identical_output(tmp_path, capsys, monkeypatch):
    src = make_folder(tmp_path / "in", n_per_class=10, mixed=False)
    run(["protect", src, "--out", tmp_path / "ref", "--quiet"], capsys)

    import unlearnable.data.save as save

    real = save.encode_png
    calls = {"n": 0}

    def flaky(img):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt
        return real(img)

    monkeypatch.setattr(save, "encode_png", flaky)
    out = tmp_path / "out"
    code, o = run(["protect", src, "--out", out, "--quiet"], capsys)
    assert code == 130 and "--resume" in o.err  # as a shell reports Ctrl-C
    assert not out.exists() and (tmp_path / ".out.partial").exists()
    monkeypatch.setattr(save, "encode_png", real)

    code, o = run(["protect", src, "--out", out, "--quiet"], capsys)
    assert_one_line_error(code, o, "--resume")
    code, o = run(["protect", src, "--out", out, "--method", "random", "--resume", "--quiet"], capsys)
    assert_one_line_error(code, o, "other arguments")
    code, o = run(["protect", src, "--out", out, "--resume", "--quiet"], capsys)
    assert code == 0, o.err
    a, b = snapshot(tmp_path / "ref"), snapshot(out)
    ma, mb = json.loads(a.pop("manifest.json")), json.loads(b.pop("manifest.json"))
    assert a == b
    assert ma["files"] == mb["files"]
    assert not (tmp_path / ".out.partial").exists()
    assert run(["verify", out, "--clean", src, "--quiet"], capsys)[0] == 0


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGKILL, -signal.SIGKILL), (signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_kill_then_resume(tmp_path, sig, code):
    """A real kill mid-write, then --resume, gives the same bytes as an uninterrupted run; a
    SIGTERM or Ctrl-C exits as a shell expects (143, 130) with one line saying what was kept."""
    src = random_folder(tmp_path / "in", 600, (32, 32))
    cmd = [sys.executable, "-m", "unlearnable.cli", "protect", str(src), "--method", "random", "--quiet"]
    subprocess.run(cmd + ["--out", str(tmp_path / "ref")], check=True)
    out = tmp_path / "out"
    journal = tmp_path / ".out.partial" / "journal.tsv"
    # A job started in the background of a non-interactive shell (CI) inherits SIGINT ignored,
    # and Python then keeps it ignored: give the child the default, as a terminal would.
    proc = subprocess.Popen(cmd + ["--out", str(out)], stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if journal.exists() and journal.stat().st_size > 2000:
            proc.send_signal(sig)
            break
        time.sleep(0.005)
    proc.wait()
    assert proc.returncode == code, "the run finished before it could be stopped"
    err = proc.stderr.read().strip()
    assert sig == signal.SIGKILL or (len(err.splitlines()) == 1 and "--resume" in err), err
    assert not out.exists()
    r = subprocess.run(cmd + ["--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 2 and "--resume" in r.stderr
    subprocess.run(cmd + ["--out", str(out), "--resume"], check=True)
    a, b = snapshot(tmp_path / "ref"), snapshot(out)
    a.pop("manifest.json"), b.pop("manifest.json")
    assert a == b


def test_save_protected_writes_a_verifiable_folder(tmp_path, capsys):
    """Any ProtectedSet (an imported poison, say) is written in the same verifiable format."""
    from unlearnable.methods import create_method
    from unlearnable.protect import save_protected

    src = make_folder(tmp_path / "in", mixed=True)
    result = create_method("random").protect(load_images(src), "4/255", seed=0)
    result.method = "import:test"
    manifest = save_protected(result, tmp_path / "out", input_path=str(src), notes="made in a test")
    assert manifest["method"] == "import:test" and manifest["notes"] == "made in a test"
    assert run(["verify", tmp_path / "out", "--clean", src, "--quiet"], capsys)[0] == 0
    with pytest.raises(Exception, match="overwrite"):
        save_protected(result, tmp_path / "out", input_path=str(src))


def test_import_and_export_round_trip_through_the_cli(tmp_path, capsys):
    """Our PNG-per-index export, imported back against the clean set, verifies and reloads."""
    src = make_folder(tmp_path / "in", mixed=False)
    out = tmp_path / "out"
    assert run(["protect", src, "--out", out, "--method", "regions-4", "--quiet"], capsys)[0] == 0
    assert run(["export", out, tmp_path / "idx"], capsys)[0] == 0
    assert sorted(p.name for p in (tmp_path / "idx").glob("*.png"))[:2] == ["00000.png", "00001.png"]
    code, o = run(["import", tmp_path / "idx", "--clean", src, "--out", tmp_path / "imported"], capsys)
    assert code == 0, o.err
    assert "import:png-index" in o.out
    assert run(["verify", tmp_path / "imported", "--clean", src, "--quiet"], capsys)[0] == 0
    assert (load_images(tmp_path / "imported").stacked() == load_images(out).stacked()).all()
    code, o = run(["import", tmp_path / "nope.pt", "--clean", src, "--out", tmp_path / "x"], capsys)
    assert_one_line_error(code, o, "nope.pt")


def test_export_of_mixed_sizes_names_the_size_flag(tmp_path, capsys):
    src = make_folder(tmp_path / "in", mixed=True)
    code, o = run(["export", src, tmp_path / "x.npz"], capsys)
    assert_one_line_error(code, o, "--size")
    assert not (tmp_path / "x.npz").exists()
    assert run(["export", src, tmp_path / "x.npz", "--size", "16"], capsys)[0] == 0
    assert np.load(tmp_path / "x.npz")["x"].shape[1:] == (16, 16, 3)


def test_export_refuses_an_existing_output_unless_overwrite(tmp_path, capsys):
    src = make_folder(tmp_path / "in", mixed=False)
    for out in (tmp_path / "x.npz", tmp_path / "idx"):
        assert run(["export", src, out], capsys)[0] == 0
        before = sorted(p.stat().st_mtime_ns for p in ([out] if out.is_file() else out.iterdir()))
        code, o = run(["export", src, out], capsys)
        assert_one_line_error(code, o, "already exists; pass --overwrite")
        assert sorted(p.stat().st_mtime_ns for p in ([out] if out.is_file() else out.iterdir())) == before
        assert run(["export", src, out, "--size", "8", "--overwrite"], capsys)[0] == 0
    assert np.load(tmp_path / "x.npz")["x"].shape[1:] == (8, 8, 3)
    assert load_images(tmp_path / "idx").shape_of(0) == (8, 8)
    assert not list(tmp_path.glob(".*"))  # no temporary folder left beside the outputs
    # protect --npz checks its destination before protecting anything
    code, o = run(["protect", src, "--out", tmp_path / "p", "--npz", tmp_path / "x.npz", "--quiet"], capsys)
    assert_one_line_error(code, o, "x.npz already exists")
    assert not (tmp_path / "p").exists() and not list(tmp_path.glob(".p*"))


def test_optimising_method_checkpoints_stay_out_of_the_output(tmp_path, capsys, monkeypatch):
    """EM checkpoints into the run's work folder; an interrupted run resumes from it, and the
    finished output holds only images and the manifest."""
    src = make_folder(tmp_path / "in", n_per_class=6, mixed=False)
    smoke = ["--param", "surrogate=small-cnn", "--param", "train_steps=2", "--param", "pgd_steps=2",
             "--param", "batch_size=8", "--param", "max_rounds=2", "--param", "checkpoint_every_s=0"]
    base = ["protect", src, "--method", "em", "--quiet", *smoke]
    assert run(base + ["--out", tmp_path / "ref"], capsys)[0] == 0

    import unlearnable.methods.base as mbase

    real = mbase.Method.apply

    def interrupted(self, *a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(mbase.Method, "apply", interrupted)
    code, o = run(base + ["--out", tmp_path / "out"], capsys)
    assert code == 130 and "--resume" in o.err
    assert list((tmp_path / ".out.partial" / ".work").glob("*.ckpt.pt"))  # the checkpoint survived
    spent = json.loads((tmp_path / ".out.partial" / "spent.json").read_text())["seconds"]
    monkeypatch.setattr(mbase.Method, "apply", real)
    code, o = run(base + ["--out", tmp_path / "out", "--param", "pgd_steps=3", "--resume"], capsys)
    assert_one_line_error(code, o, "pgd_steps: 2 then, 3 now")  # a refused resume says what differs
    assert run(base + ["--out", tmp_path / "out", "--resume"], capsys)[0] == 0
    # The manifest counts the seconds of both invocations, as a streamed run's does.
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["wall_seconds"] >= spent > 0
    code, o = run(base + ["--out", tmp_path / "out", "--resume"], capsys)
    assert_one_line_error(code, o, "already complete")

    files = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*"))
    assert all(f.endswith(".png") or f in ("manifest.json", "cat", "dog") for f in files), files
    a, b = snapshot(tmp_path / "ref"), snapshot(tmp_path / "out")
    a.pop("manifest.json"), b.pop("manifest.json")
    assert a == b
    assert run(["verify", tmp_path / "out", "--clean", src, "--quiet"], capsys)[0] == 0


def test_l2_budget_too_thin_for_large_images_warns(tmp_path, capsys):
    # ℓ2 is a total over the image: on a photo it rounds away. Where some pixels still change,
    # protect succeeds and says so; where none does, it refuses, naming the budget that would.
    src = random_folder(tmp_path / "in", 3, (160, 200))
    code, o = run(["protect", src, "--out", tmp_path / "lsp", "--method", "lsp", "--eps", "l2:1"], capsys)
    assert code == 0, o.err
    line = next(ln for ln in o.err.splitlines() if ln.startswith("warning:") and "on average" in ln)
    assert "6 of 6 images" in line and "200x160 px" in line and "l2:" in line  # width x height
    src = random_folder(tmp_path / "big", 3, (320, 400))
    code, o = run(["protect", src, "--out", tmp_path / "lsp2", "--method", "lsp"], capsys)
    assert_one_line_error(code, o, "lsp with ℓ2 ≤ 1.3041 changed no pixel of any image")
    assert "at 400x320 px is l2:14.58" in o.err and not (tmp_path / "lsp2").exists()
    code, o = run(["protect", src, "--out", tmp_path / "pil", "--method", "pil"], capsys)  # full ℓ∞ use
    assert code == 0 and "warning:" not in o.err
    # ℓ0's sparsity is by design (no faintness warning), but OPS's pixel is averaged away by a
    # trainer's downsampling: its measured caveat instead.
    code, o = run(["protect", src, "--out", tmp_path / "ops", "--method", "ops"], capsys)
    assert code == 0 and "on average" not in o.err and "warning: ops lost its protection, when measured, on images a trainer resizes" in o.err


def test_upsampling_methods_warn_on_mixed_sizes(tmp_path, capsys):
    # Upsampling a working-size δ is a choice (resize=bilinear): protect says so on mixed sizes,
    # and only then.
    src = make_folder(tmp_path / "in", n_per_class=3, mixed=True)
    smoke = ["--param", "surrogate=small-cnn", "--param", "train_steps=1", "--param", "pgd_steps=1",
             "--param", "max_rounds=1"]
    code, o = run(["protect", src, "--out", tmp_path / "em", "--method", "em", *smoke, "--param", "resize=bilinear"],
                  capsys)
    assert code == 0 and "upsamples it" in o.err and "Resolution policy" in o.err and "resize=through" in o.err
    for method, params in (("em", smoke), ("em-classwise", smoke), ("pil", []), ("random-classwise", [])):
        code, o = run(["protect", src, "--out", tmp_path / f"{method}-through", "--method", method, *params], capsys)
        assert code == 0 and "upsamples" not in o.err
    code, o = run(["protect", src, "--out", tmp_path / "rcn", "--method", "random-classwise", "--param",
                   "resize=nearest"], capsys)
    assert code == 0 and "warning: random-classwise with resize=nearest" in o.err
    # Methods measured to lose their protection on resized mixed sizes say so, with the numbers.
    for method in ("ar", "lsp", "ops"):
        code, o = run(["protect", src, "--out", tmp_path / method, "--method", method], capsys)
        assert code == 0 and f"warning: {method} " in o.err and "59.40 % clean" in o.err
    same = make_folder(tmp_path / "same", n_per_class=3, mixed=False)
    code, o = run(["protect", same, "--out", tmp_path / "em2", "--method", "em", *smoke], capsys)
    assert code == 0 and "upsamples" not in o.err


def test_a_split_the_input_does_not_have_is_refused(tmp_path, capsys):
    """--split test on a folder without split folders used to protect the whole folder and
    record "test" in the manifest."""
    src = make_folder(tmp_path / "in", mixed=False)
    for cmd in (["protect", src, "--out", tmp_path / "out", "--split", "test"],
                ["export", src, tmp_path / "x.npz", "--split", "test"]):
        code, o = run(cmd, capsys)
        assert_one_line_error(code, o, "no split folders")
    assert not (tmp_path / "out").exists() and not (tmp_path / "x.npz").exists()


def test_export_of_a_protected_npz_keeps_its_index_order_and_classes(tmp_path, capsys):
    """A set protected from an NPZ is written as class folders; exported back it comes in the
    NPZ's index order with its own class numbering, so other tools pair images and labels."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (12, 8, 8, 3), dtype=np.uint8)
    y = np.array([2, 0, 1, 2, 1, 0, 0, 2, 1, 1, 0, 2])
    np.savez(tmp_path / "clean.npz", x=x, y=y, classes=np.array(["zebra", "ant", "moth"]))
    out = tmp_path / "prot"
    assert run(["protect", tmp_path / "clean.npz", "--out", out, "--method", "random", "--quiet"], capsys)[0] == 0
    assert run(["export", out, tmp_path / "prot.npz"], capsys)[0] == 0
    z = np.load(tmp_path / "prot.npz")
    assert list(z["classes"]) == ["zebra", "ant", "moth"] and (z["y"] == y).all()
    assert np.abs(z["x"].astype(int) - x).max() <= 8  # each image beside its own clean image
    assert run(["export", out, tmp_path / "idx"], capsys)[0] == 0
    code, o = run(["import", tmp_path / "idx", "--clean", tmp_path / "clean.npz", "--out", tmp_path / "back"], capsys)
    assert code == 0, o.err


def test_a_budget_far_above_the_fields_warns(tmp_path, capsys):
    src = make_folder(tmp_path / "in", mixed=False)
    code, o = run(["protect", src, "--out", tmp_path / "out", "--method", "random", "--eps", "0.5", "--quiet"], capsys)
    assert code == 0 and "warning: ε = 127/255" in o.err
    code, o = run(["protect", src, "--out", tmp_path / "out2", "--method", "random", "--eps", "16/255", "--quiet"], capsys)
    assert code == 0 and "warning" not in o.err
    # An ℓ2 method takes a bare number as its ℓ2 total: 300 is not 300 grey levels but far more.
    code, o = run(["protect", src, "--out", tmp_path / "out3", "--method", "lsp", "--eps", "300", "--quiet"], capsys)
    assert code == 0 and "grey levels on average, visibly" in o.err
    code, o = run(["protect", src, "--out", tmp_path / "out4", "--method", "lsp", "--quiet"], capsys)
    assert code == 0 and "visibly" not in o.err
