"""protect on a folder too large for memory: the streamed path gives the in-memory path's bytes."""

import json

import numpy as np
import pytest

import unlearnable.protect as protect_mod
from helpers import random_folder
from unlearnable.cli import main
from unlearnable.methods import create_method, list_methods
from unlearnable.methods.base import PerImageMethod
from unlearnable.protect import ProtectJob, protect_folder


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


def _manifest(folder):
    m = json.loads((folder / "manifest.json").read_text())
    for k in ("wall_seconds", "created", "device"):
        m.pop(k)
    return m


def _mixed(rng):
    return rng.integers(20, 48), rng.integers(20, 48)


@pytest.fixture
def photos(tmp_path):
    return random_folder(tmp_path / "in", 6, _mixed, classes=("a", "b", "c"), seed=3)


PARAMS = {"surrogate_epochs": 2, "attack_batch": 4, "steps": 3}
#: Every method that streams photos, with small hyperparameters; the registry decides which.
STREAMING = [name for name in list_methods() if create_method(name).streams]
METHOD_PARAMS = {"pil": PARAMS, "cuda": {"mix": 0.5}}


def _protect(src, out, streamed, monkeypatch, method="pil", **kw):
    monkeypatch.setattr(protect_mod, "STREAM_MIN_SIDE", 0 if streamed else 1 << 30)
    monkeypatch.setattr(PerImageMethod, "batch_images", 4)  # several batches, as photos would be
    logs = []
    manifest = protect_folder(ProtectJob(input=str(src), out=str(out), method=method,
                                         params=METHOD_PARAMS.get(method, {}), seed=5, device="cpu", **kw),
                              log=logs.append)
    return manifest, logs


def test_the_streaming_methods():
    # PIL and the per-image methods; the others need the whole set in memory (an optimised
    # surrogate, per-class statistics of the pixels), and the memory error names these.
    assert set(STREAMING) == {"pil", "random-classwise", "regions-4", "lsp", "cuda"}
    assert all(name in protect_mod.PROTECT_MEMORY.advice for name in STREAMING)


@pytest.mark.parametrize("method", STREAMING)
def test_streamed_protect_equals_the_in_memory_one(photos, tmp_path, monkeypatch, method):
    _, logs_a = _protect(photos, tmp_path / "memory", False, monkeypatch, method)
    _, logs_b = _protect(photos, tmp_path / "stream", True, monkeypatch, method)
    assert not any("a batch at a time" in m for m in logs_a) and any("a batch at a time" in m for m in logs_b)
    assert _files(tmp_path / "memory") == _files(tmp_path / "stream")
    assert _manifest(tmp_path / "memory") == _manifest(tmp_path / "stream")
    # The same caveats reach the user on both paths (lsp's about images a trainer resizes).
    warnings = [m for m in logs_b if m.startswith("warning")]
    assert [m for m in logs_a if m.startswith("warning")] == warnings
    assert any("resizes" in m for m in warnings) == (method == "lsp")
    assert main(["verify", str(tmp_path / "stream"), "--clean", str(photos), "--quiet"]) == 0


@pytest.mark.parametrize("method", ["pil", "regions-4"])
def test_an_interrupted_stream_resumes_to_the_same_bytes(photos, tmp_path, monkeypatch, method):
    _protect(photos, tmp_path / "full", True, monkeypatch, method)
    calls = []

    def interrupt(label):
        def tick(done, total):
            calls.append(done)
            if label == "protect" and done >= 8:
                raise KeyboardInterrupt
        return tick

    monkeypatch.setattr(protect_mod, "STREAM_MIN_SIDE", 0)
    job = dict(input=str(photos), out=str(tmp_path / "cut"), method=method, params=METHOD_PARAMS.get(method, {}),
               seed=5, device="cpu")
    with pytest.raises(Exception, match="interrupted"):
        protect_folder(ProtectJob(**job), progress=interrupt)
    part = tmp_path / ".cut.partial"
    written = (part / "journal.tsv").read_text().splitlines()
    assert 8 <= len(written) < 18 and all(len(line.split("\t")) == 3 for line in written)
    spent = json.loads((part / "generation.json").read_text())["seconds"]
    assert spent > 0
    logs = []
    manifest = protect_folder(ProtectJob(**job, resume=True), log=logs.append)
    assert any(f"{len(written)} of 18 images already written" in line for line in logs)
    assert manifest["wall_seconds"] >= round(spent, 4) and any("before the resume" in line for line in logs)
    assert _files(tmp_path / "cut") == _files(tmp_path / "full")
    assert _manifest(tmp_path / "cut") == _manifest(tmp_path / "full")


def test_what_does_not_stream(tmp_path, monkeypatch):
    # One small size (worked at its own size) or an NPZ export: loaded whole.
    small = random_folder(tmp_path / "small", 4, (16, 16), classes=("a", "b"))
    _, logs = _protect(small, tmp_path / "o1", True, monkeypatch)
    assert not any("a batch at a time" in m for m in logs)
    _, logs = _protect(random_folder(tmp_path / "m", 3, (70, 80)), tmp_path / "o2", True, monkeypatch,
                       npz=str(tmp_path / "o2.npz"))
    assert not any("a batch at a time" in m for m in logs) and (tmp_path / "o2.npz").exists()
    # Images of several sizes cannot go into one NPZ: refused before any work, nothing written.
    with pytest.raises(Exception, match="--npz needs images of one size"):
        _protect(random_folder(tmp_path / "x", 3, _mixed), tmp_path / "o3", True, monkeypatch,
                 npz=str(tmp_path / "o3.npz"))
    assert not (tmp_path / "o3").exists() and not (tmp_path / ".o3.partial").exists()


@pytest.mark.parametrize("method", ["pil", "regions-4"])
def test_an_unlabelled_stream_clusters_as_the_in_memory_path(tmp_path, monkeypatch, method):
    flat = tmp_path / "flat"
    flat.mkdir()
    for p in random_folder(tmp_path / "f", 8, _mixed, classes=("a", "b", "c")).rglob("*.png"):
        p.rename(flat / f"{p.parent.name}-{p.name}")
    ma, logs_a = _protect(flat, tmp_path / "memory", False, monkeypatch, method)
    mb, logs_b = _protect(flat, tmp_path / "stream", True, monkeypatch, method)
    assert any("a batch at a time" in m for m in logs_b) and any("pseudo" in m or "cluster" in m for m in logs_b)
    assert ma["pseudo_labels"] and ma["pseudo_labels"] == mb["pseudo_labels"]
    assert _files(tmp_path / "memory") == _files(tmp_path / "stream")
    assert _manifest(tmp_path / "memory") == _manifest(tmp_path / "stream")


def test_a_file_changed_during_the_stream_is_an_error(photos, tmp_path, monkeypatch):
    from PIL import Image

    from unlearnable.data import load as load_mod

    real = load_mod.decode_files
    seen = []

    def tamper(paths, workers=None):
        seen.append(len(paths))
        if len(seen) == 4 and workers == 1:  # a file the attack reads again
            Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(paths[0])
        return real(paths, workers)

    monkeypatch.setattr(protect_mod, "decode_files", tamper)
    with pytest.raises(Exception, match="changed while it was being protected"):
        _protect(photos, tmp_path / "out", True, monkeypatch)
    assert not (tmp_path / "out").exists()


def test_photos_larger_than_the_working_size_stream_by_default(tmp_path):
    src = random_folder(tmp_path / "in", 2, lambda rng: (rng.integers(65, 90), rng.integers(65, 90)), seed=1)
    logs = []
    protect_folder(ProtectJob(input=str(src), out=str(tmp_path / "out"), method="pil", params=PARAMS, device="cpu"),
                   log=logs.append)
    assert any("a batch at a time" in m for m in logs)
    assert main(["verify", str(tmp_path / "out"), "--clean", str(src), "--quiet"]) == 0


def _stream_job(src, out, method="regions-4", **kw):
    return ProtectJob(input=str(src), out=str(out), method=method, params=kw.pop("params", {}), seed=5,
                      device="cpu", **kw)


@pytest.mark.parametrize("streamed", [True, False])
def test_a_run_that_fails_before_writing_leaves_nothing(photos, tmp_path, monkeypatch, streamed):
    monkeypatch.setattr(protect_mod, "STREAM_MIN_SIDE", 0 if streamed else 1 << 30)
    with pytest.raises(Exception, match="perfect square"):  # found by the plan, after the partial folder
        protect_folder(_stream_job(photos, tmp_path / "out", params={"k": 3}))
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.partial").exists()
    # A budget that rounds away entirely (lsp's ℓ2 total read from "8/255") protects nothing: refused.
    with pytest.raises(Exception, match="changed no pixel of any image"):
        protect_folder(_stream_job(photos, tmp_path / "out", method="lsp", budget="8/255"))
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.partial").exists()


def test_a_file_gone_bad_mid_stream_keeps_the_work_and_says_how_to_resume(photos, tmp_path, monkeypatch):
    from unlearnable.data import load as load_mod
    from unlearnable.errors import UnlearnableError

    monkeypatch.setattr(PerImageMethod, "batch_images", 4)
    monkeypatch.setattr(protect_mod, "STREAM_MIN_SIDE", 0)
    protect_folder(_stream_job(photos, tmp_path / "full"))
    real, calls = load_mod.decode_files, []

    def corrupt(paths, workers=None):
        if workers == 1:  # the stream's own reads, after the whole folder was checked once
            calls.append(paths[0])
            if len(calls) == 9:
                raise UnlearnableError(f"{paths[0]} is corrupt or truncated")
        return real(paths, workers)

    monkeypatch.setattr(protect_mod, "decode_files", corrupt)
    with pytest.raises(UnlearnableError, match=r"corrupt.*kept in .*\.cut\.partial: rerun with --resume"):
        protect_folder(_stream_job(photos, tmp_path / "cut"))
    assert (tmp_path / ".cut.partial" / "journal.tsv").stat().st_size > 0
    monkeypatch.setattr(protect_mod, "decode_files", real)
    protect_folder(_stream_job(photos, tmp_path / "cut", resume=True))
    assert _files(tmp_path / "cut") == _files(tmp_path / "full")


def test_resume_writes_again_a_file_changed_since_and_names_both_flags_after_overwrite(photos, tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.setattr(PerImageMethod, "batch_images", 4)
    monkeypatch.setattr(protect_mod, "STREAM_MIN_SIDE", 0)
    protect_folder(_stream_job(photos, tmp_path / "full"))
    out = tmp_path / "out"
    protect_folder(_stream_job(photos, out, method="random-classwise"))  # an earlier output, to be replaced

    def interrupt(label):
        def tick(done, total):
            if label == "protect" and done >= 8:
                raise KeyboardInterrupt
        return tick

    with pytest.raises(Exception, match=r"rerun with --resume --overwrite to continue"):
        protect_folder(_stream_job(photos, out, overwrite=True), progress=interrupt)
    part = tmp_path / ".out.partial"
    first = part / (open(part / "journal.tsv").readline().split("\t")[0])
    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(first)  # a valid PNG, not the one the journal names
    protect_folder(_stream_job(photos, out, overwrite=True, resume=True))
    assert _files(out) == _files(tmp_path / "full")


def test_a_refused_resume_names_the_method_first():
    before = {"method": "regions-4", "budget": {"norm": "linf", "eps": 0.03, "spec": "8/255"},
              "hyperparameters": {"k": 4}, "seed": 0}
    now = {"method": "cuda", "budget": {"norm": "none", "eps": None, "spec": "none"},
           "hyperparameters": {"kernel_size": 3, "blur_parameter": 0.3, "mix": 1.0}, "seed": 0}
    assert protect_mod._what_differs(before, now).startswith("method: regions-4 then, cuda now")
