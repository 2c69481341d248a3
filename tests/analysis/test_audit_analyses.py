"""Audit analyses: linear separability, CSD, DFR, t-SNE and `unlearnable analyze` (CPU, tiny)."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import protected_folder, random_folder, tiny_factory  # noqa: E402
from unlearnable.analysis import (DFRResult, csd, dfr, linear_separability, penultimate_features, perturbations,
                                  separability_report, tsne_plot)
from unlearnable.cli import main
from unlearnable.errors import UnlearnableError
from unlearnable.train.recipes import get_recipe

K = 4


@pytest.fixture(scope="module")
def pairs():
    """Clean images, a class-wise ±8 pattern version and a per-sample ±8 noise version."""
    rng = np.random.default_rng(0)
    n, s = 160, 8
    y = rng.integers(0, K, n)
    clean = rng.integers(20, 236, (n, s, s, 3)).astype(np.uint8)  # no clipping at ±8
    classwise = (clean + rng.choice([-8, 8], (K, s, s, 3))[y]).astype(np.uint8)
    samplewise = (clean + rng.choice([-8, 8], (n, s, s, 3))).astype(np.uint8)
    return clean, classwise, samplewise, y


def test_perturbations_shape_and_errors(pairs):
    clean, classwise, _, _ = pairs
    d = perturbations(classwise, clean)
    assert d.dtype == np.float32 and d.shape == clean.shape and np.abs(d).max() == pytest.approx(8 / 255)
    with pytest.raises(UnlearnableError):
        perturbations(classwise[:3], clean)


def test_linear_separability_of_classwise_patterns(pairs):
    clean, classwise, samplewise, y = pairs
    rep = separability_report(classwise, clean, y, steps=100, device="cpu")
    assert rep["perturbation"] == 1.0
    assert all(0.0 <= v <= 1.0 for v in rep.values())
    # Random labels on few samples in many dimensions are separable too: use a 2-pixel feature instead.
    flat = perturbations(samplewise, clean).reshape(len(y), -1)[:, :2]
    assert linear_separability(flat, y, steps=100, device="cpu") < 0.6


def test_csd_lower_for_classwise_than_samplewise(pairs):
    clean, classwise, samplewise, y = pairs
    c_cls = csd(perturbations(classwise, clean), y)
    c_smp = csd(perturbations(samplewise, clean), y)
    assert c_cls == pytest.approx(0.0, abs=1e-9) and c_smp > 1.0
    with pytest.raises(UnlearnableError):
        csd(np.zeros((4, 3)), np.zeros(4))


def test_dfr_numbers_in_range(pairs):
    clean, classwise, _, y = pairs
    rec = dataclasses.replace(get_recipe("cpu-small"), epochs=2, batch_size=32, warmup_epochs=1, channels_last=False)
    for bn_mode in ("eval", "train"):
        r = dfr(classwise, y, clean, y, clean[:64], y[:64], recipe=rec, n_clean=96, bn_mode=bn_mode,
                model_factory=tiny_factory, device="cpu", num_classes=K)
        assert isinstance(r, DFRResult) and r.epochs == [1, 2] and r.n_clean == 96 and r.bn_mode == bn_mode
        assert all(0.0 <= a <= 1.0 for a in r.accs) and r.max_acc == max(r.accs)
        assert 0.0 <= r.baseline_acc <= 1.0 and len(r.victim_accs) == 2
        assert json.dumps(r.to_dict())


def test_penultimate_features_hook_and_bn_copy_leaves_model_alone(pairs):
    clean, _, _, _ = pairs
    m = tiny_factory("x", num_classes=K)
    f = penultimate_features(m.eval(), clean[:10])
    assert f.shape == (10, 16)
    from unlearnable.analysis.dfr import dfr_refit

    before = m[1].running_mean.clone()
    y = np.arange(20) % K
    acc = dfr_refit(m, clean[:20], y, clean[:20], y, bn_mode="train")
    assert 0 <= acc <= 1 and torch.equal(m[1].running_mean, before)


def test_tsne_writes_a_png(pairs, tmp_path):
    pytest.importorskip("matplotlib")
    clean, classwise, _, y = pairs
    out = tmp_path / "t.png"
    emb = tsne_plot(perturbations(classwise, clean), y, out, n=40, seed=0)
    assert emb.shape == (40, 2) and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- CLI -------------------------------------------------------------------------------------
def make_folder(root: Path, n_per_class=6, classes=("a", "b", "c")):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n_per_class):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def test_cli_analyze_separability_csd_quality_end_to_end(tmp_path, capsys):
    src = make_folder(tmp_path / "in")
    prot = protected_folder(src, tmp_path / "prot", "random-classwise", capsys)
    js = tmp_path / "sep.json"
    assert main(["analyze", "separability", str(prot), "--clean", str(src), "--steps", "50", "--device", "cpu",
                 "--json", str(js)]) == 0
    out = json.loads(js.read_text())
    assert out["train_accuracy"]["perturbation"] == 1.0 and out["n_images"] == 18
    assert "perturbations 100.00%" in capsys.readouterr().out
    assert main(["analyze", "csd", str(prot), "--clean", str(src)]) == 0
    assert "CSD" in capsys.readouterr().out
    js = tmp_path / "q.json"
    assert main(["analyze", "quality", str(prot), "--clean", str(src), "--json", str(js)]) == 0
    assert json.loads(js.read_text())["psnr_mean"] > 30
    # ids must match
    other = make_folder(tmp_path / "other", n_per_class=5)
    assert main(["analyze", "csd", str(prot), "--clean", str(other)]) == 2
    assert "same ids" in capsys.readouterr().err


def test_cli_analyze_dfr_on_an_owners_folder_holds_out_its_test_set(tmp_path, capsys):
    src = make_folder(tmp_path / "in", n_per_class=10)
    prot = protected_folder(src, tmp_path / "prot", "random-classwise", capsys)
    js = tmp_path / "dfr.json"
    assert main(["analyze", "dfr", str(prot), "--clean", str(src), "--recipe", "cpu-small", "--epochs", "1",
                 "--n-clean", "10", "--device", "cpu", "--quiet", "--json", str(js)]) == 0
    o = capsys.readouterr()
    assert "test: 6 images" in o.err and "held out" in o.err and "DFR (10 clean images" in o.out
    assert 0 <= json.loads(js.read_text())["max_acc"] <= 1
    assert main(["analyze", "dfr", str(prot), "--clean", str(src), "--test", str(src), "--holdout", "0.3"]) == 2


def test_cli_analyze_mixed_sizes_work_at_one_size(tmp_path, capsys):
    # Photos come in many sizes: the perturbation analyses resize x' and x alike (audit's rule,
    # or --size) instead of refusing.
    src = random_folder(tmp_path / "in", 6, lambda rng: rng.integers(10, 40, 2), seed=1)
    prot = protected_folder(src, tmp_path / "prot", "random-classwise", capsys)
    js = tmp_path / "sep.json"
    assert main(["analyze", "separability", str(prot), "--clean", str(src), "--steps", "50", "--device", "cpu",
                 "--json", str(js)]) == 0
    assert "12 images, 32x32" in capsys.readouterr().err  # loaded at that size, never whole at their own
    assert json.loads(js.read_text())["train_accuracy"]["perturbation"] == 1.0
    assert main(["analyze", "csd", str(prot), "--clean", str(src), "--size", "12"]) == 0
    assert "12 images, 12x12" in capsys.readouterr().err


def test_separability_report_flags_few_samples_in_many_dimensions(pairs):
    clean, classwise, _, y = pairs
    rep = separability_report(classwise[:40], clean[:40], y[:40], steps=20, device="cpu")  # 40 <= 192 + 1
    assert rep["trivially_separable"] is True
    rng = np.random.default_rng(3)
    tiny = rng.integers(20, 236, (60, 1, 1, 3)).astype(np.uint8)  # 60 samples in 3 dimensions
    rep = separability_report(tiny, tiny, rng.integers(0, 2, 60), steps=20, device="cpu")
    assert rep["trivially_separable"] is False


def test_cli_analyze_quality_of_photos_is_read_in_chunks_and_matches_in_memory(tmp_path, capsys, monkeypatch):
    """PSNR/SSIM at each photo's own size, a chunk of pairs at a time: the numbers of the whole
    sets in memory, and never all the photos decoded at once."""
    from unlearnable.analysis.quality import quality_report
    from unlearnable.data import load_images
    import unlearnable.data.load as load

    src = random_folder(tmp_path / "in", 6, lambda rng: rng.integers(70, 120, 2), seed=2)
    prot = protected_folder(src, tmp_path / "prot", "random", capsys)
    ref = quality_report(load_images(src).images, [load_images(prot).image(i) for i in range(12)])
    most = []
    real = load.decode_files
    monkeypatch.setattr(load, "decode_files", lambda paths, workers=None: (most.append(len(paths)), real(paths))[1])
    monkeypatch.setattr(load, "CHUNK_BYTES", 40_000)  # a few of these images per chunk
    monkeypatch.setattr(load, "chunk_length", lambda b, target=40_000, most=4096: max(1, int(target // b)))
    js = tmp_path / "q.json"
    assert main(["analyze", "quality", str(prot), "--clean", str(src), "--json", str(js), "--quiet"]) == 0
    got = json.loads(js.read_text())
    assert got["n_images"] == 12 and abs(got["psnr_mean"] - ref["psnr_mean"]) < 1e-9
    assert abs(got["ssim_min"] - ref["ssim_min"]) < 1e-9 and max(most) < 12
