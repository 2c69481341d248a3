"""The CUDA code paths, on a GPU; skipped where there is none (CI, the CPU machines).

The rest of the suite runs every path on the CPU. What only a GPU exercises is checked here:
device-resident uint8 data and augmentation, bf16 autocast, channels-last, CUDA-event timing,
``torch.compile`` on the network ``screen`` compiles, every method and defense with its tensors
on the device, the analyses, and the CLI with ``--device cuda``. Run it first on a lent GPU
machine (``benchmarks/README.md``): a device bug then costs a minute, not a benchmark call.
Sizes are tiny; most of the time goes to compiling.
"""

import dataclasses
import json
import math
import warnings

import numpy as np
import pytest
import torch

from helpers import colour_squares, random_folder, random_imageset, smoke_method, tiny_factory
from unlearnable.budget import measure_change
from unlearnable.defenses import list_defenses
from unlearnable.methods import METHODS, list_methods
from unlearnable.train.engine import train_victim
from unlearnable.train.recipes import get_recipe, list_recipes

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture(scope="module")
def squares():
    """Separable 32-px data: four classes, a coloured square on noise."""
    xtr, ytr = colour_squares(256, seed=0, size=32, square=12, shift=(2, 18))
    xte, yte = colour_squares(128, seed=1, size=32, square=12, shift=(2, 18))
    return xtr, ytr, xte, yte


def small(epochs=4, **kw):
    """``cpu-small``'s schedule with the GPU's precision and memory format."""
    kw = {"bf16": True, "channels_last": True, **kw}
    return dataclasses.replace(get_recipe("cpu-small"), epochs=epochs, batch_size=32, warmup_epochs=1, **kw)


def check_result(res, epochs):
    assert res.device.startswith("cuda"), res.device
    assert len(res.curve) == epochs
    assert 0 < res.train_seconds <= res.seconds
    for e in res.curve:
        assert 0.0 <= e["test_acc"] <= 1.0 and math.isfinite(e["train_loss"]), e


# -- the engine ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list_recipes())
def test_every_recipe_trains_on_cuda_with_its_precision(name, squares):
    xtr, ytr, xte, yte = squares
    r = dataclasses.replace(get_recipe(name), epochs=2, batch_size=64, eval_batch_size=128, compile=False)
    res = train_victim(xtr, ytr, xte, yte, recipe=r, defense="standard", device="cuda", seed=0)
    check_result(res, 2)
    assert res.arch == r.arch and not res.compiled
    assert res.amp == ("bf16" if r.bf16 and torch.cuda.is_bf16_supported() else "fp32")


def test_engine_learns_on_cuda_in_bf16_channels_last(squares):
    res = train_victim(*squares, recipe=small(4), defense="standard", device="cuda", seed=0,
                       model_factory=tiny_factory)
    check_result(res, 4)
    assert res.amp == "bf16"
    assert res.final_acc >= 0.9, res.curve  # what the same model reaches on the CPU in fp32


def test_screen_compiles_on_cuda(squares):
    xtr, ytr, xte, yte = squares
    r = dataclasses.replace(get_recipe("screen"), epochs=2, batch_size=64, eval_batch_size=128)
    assert r.compile
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="torch.compile failed")  # the engine's eager fallback
        res = train_victim(xtr, ytr, xte, yte, recipe=r, defense="standard", device="cuda", seed=0)
    check_result(res, 2)
    assert res.compiled


def test_cuda_event_timing_counts_training_only(squares):
    res = train_victim(*squares, recipe=small(2), device="cuda", seed=0, model_factory=tiny_factory)
    assert sum(e["epoch_seconds"] for e in res.curve) == pytest.approx(res.train_seconds, rel=1e-6)


# -- methods ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list_methods())
@pytest.mark.parametrize("mixed", [False, True], ids=["uniform", "mixed"])
def test_every_method_protects_on_cuda_within_budget(name, mixed):
    data = random_imageset(n=24, size=32 if not mixed else 20, classes=3, mixed=mixed)
    res = smoke_method(name).protect(data, seed=0, device="cuda")
    assert len(res.protected) == len(data) and res.protected.ids == data.ids
    for i in range(len(data)):
        p, c = res.protected.image(i), data.image(i)
        assert p.dtype == np.uint8 and p.shape == c.shape
        assert res.budget.allows(measure_change(c, p))
    assert res.within_budget


@pytest.mark.parametrize("name", [m for m in list_methods() if not METHODS.get(m).smoke_kwargs])
def test_methods_without_a_deep_surrogate_are_deterministic_on_cuda(name):
    # Methods that train a network inherit cuDNN's non-deterministic backward passes; the
    # others (noise, patterns, PIL's linear surrogate) must give the same bytes every time.
    data = random_imageset(n=24, size=32, classes=3)
    a = smoke_method(name).protect(data, seed=1, device="cuda").protected.stacked()
    b = smoke_method(name).protect(data, seed=1, device="cuda").protected.stacked()
    assert a.tobytes() == b.tobytes()


# -- defenses --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list_defenses())
def test_every_defense_trains_on_cuda(name, squares):
    xtr, ytr, xte, yte = squares
    res = train_victim(xtr, ytr, xte, yte, recipe=small(2), defense=name, device="cuda", seed=0,
                       model_factory=tiny_factory, context={"clean_x": xtr, "clean_y": ytr})
    check_result(res, 2)


def test_composed_squeeze_and_adversarial_training_on_cuda(squares):
    res = train_victim(*squares, recipe=small(2), defense="jpeg10+standard+at:eps=4/255,steps=2", device="cuda",
                       seed=0, model_factory=tiny_factory)
    check_result(res, 2)


# -- analyses --------------------------------------------------------------------------------
def test_analyses_on_cuda(squares):
    from unlearnable.analysis.dfr import dfr
    from unlearnable.analysis.gradients import class_gradient_cosine
    from unlearnable.analysis.linearity import fgsm_success_rate
    from unlearnable.analysis.separability import separability_report

    xtr, ytr, xte, yte = squares
    rng = np.random.default_rng(0)
    delta = rng.choice(np.array([-8, 8]), size=(4, 32, 32, 3))[ytr]  # class-wise ±8 noise
    prot = np.clip(xtr.astype(int) + delta, 0, 255).astype(np.uint8)

    sep = separability_report(prot, xtr, ytr, steps=50, device="cuda")
    assert sep["perturbation"] == pytest.approx(1.0)

    out = dfr(prot, ytr, xtr, ytr, xte, yte, recipe=small(2), defense="standard", n_clean=64, device="cuda",
              model_factory=tiny_factory, max_iter=200)
    assert len(out.accs) == 2 and 0.0 <= out.max_acc <= 1.0 and out.baseline_acc is not None

    res = train_victim(xtr, ytr, xte, yte, recipe=small(3), device="cuda", seed=0, model_factory=tiny_factory,
                       return_model=True)
    model = res.model
    assert next(model.parameters()).is_cuda
    rates = fgsm_success_rate(model, xte, yte)
    assert all(0.0 <= v <= 1.0 for v in rates.values())
    cos = class_gradient_cosine(model, xtr[:64], prot[:64], ytr[:64], num_classes=4)
    assert np.all(np.abs(cos[np.isfinite(cos)]) <= 1.0 + 1e-5)


# -- the CLI ---------------------------------------------------------------------------------
def test_cli_protect_verify_audit_on_cuda(tmp_path, capsys):
    from unlearnable.cli import main

    src = random_folder(tmp_path / "in", 12, lambda rng: rng.integers(24, 48, 2), classes=("a", "b", "c"))
    test = random_folder(tmp_path / "test", 4, (32, 32), classes=("a", "b", "c"), seed=1)
    out = tmp_path / "out"
    assert main(["protect", str(src), "--out", str(out), "--method", "pil", "--device", "cuda", "--quiet"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["device"].startswith("cuda")
    assert main(["verify", str(out), "--clean", str(src), "--quiet"]) == 0
    js = tmp_path / "audit.json"
    assert main(["audit", str(out), "--clean", str(src), "--test", str(test), "--defenses", "standard,jpeg10",
                 "--recipe", "cpu-small", "--epochs", "1", "--size", "32", "--device", "cuda", "--json", str(js),
                 "--quiet"]) == 0, capsys.readouterr().err
    assert {r["device"].split(" ")[0].split(":")[0] for r in json.loads(js.read_text())} == {"cuda"}


def test_grid_runs_into_the_database_on_cuda(tmp_path):
    from unlearnable.bench import ResultsDB, grid_from_dict, report_markdown, run_grid

    grid = grid_from_dict({"dataset": "digits", "limit": 200, "test_limit": 100, "methods": ["pil", "regions-4"],
                           "defenses": ["none", "jpeg10"], "recipes": ["cpu-small:epochs=2,bf16=true"]})
    with ResultsDB(tmp_path / "r.db") as db:
        counts = run_grid(grid, db, device="cuda")
        assert counts["trained"] == 6
        assert all(r["device"].startswith("cuda") for r in db.runs())
        assert all(g["device"].startswith("cuda") and g["linf_max"] <= 8 for g in db.generations())
        assert "regions-4 acc %" in report_markdown(db)


def test_streamed_photos_protect_on_cuda(tmp_path):
    # Photos larger than 64 px stream (a batch at a time); the attack runs on the device. Float
    # order of operations differs from the CPU, so only the budget and a close change are compared.
    from unlearnable.cli import main

    src = random_folder(tmp_path / "in", 4, lambda rng: rng.integers(70, 140, 2), classes=("a", "b", "c"))
    for dev in ("cuda", "cpu"):
        assert main(["protect", str(src), "--out", str(tmp_path / dev), "--device", dev, "--quiet"]) == 0
        assert main(["verify", str(tmp_path / dev), "--clean", str(src), "--quiet"]) == 0
    m = {dev: json.loads((tmp_path / dev / "manifest.json").read_text()) for dev in ("cuda", "cpu")}
    assert m["cuda"]["device"].startswith("cuda")
    a, b = m["cuda"]["norms"]["mean_abs_grey_levels"]["mean"], m["cpu"]["norms"]["mean_abs_grey_levels"]["mean"]
    assert abs(a - b) < 0.5
