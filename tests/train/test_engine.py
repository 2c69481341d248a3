"""The victim-training engine, recipes and the benchmark script's smoke mode (CPU, fast)."""

import dataclasses
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from helpers import colour_squares, tiny_factory  # noqa: E402
from unlearnable.defenses import Defense
from unlearnable.errors import UnlearnableError
from unlearnable.train.engine import TrainResult, train_victim
from unlearnable.train.recipes import Recipe, get_recipe, list_recipes

REPO = Path(__file__).resolve().parents[2]
K = 4


@pytest.fixture(scope="module")
def data():
    xtr, ytr = make_data(320, seed=0)
    xte, yte = make_data(120, seed=1)
    return xtr, ytr, xte, yte


def small(epochs=4, **kw):
    return dataclasses.replace(get_recipe("cpu-small"), epochs=epochs, batch_size=32, warmup_epochs=1, **kw)


def run(data, recipe=None, **kw):
    xtr, ytr, xte, yte = data
    kw.setdefault("model_factory", tiny_factory)
    kw.setdefault("device", "cpu")
    return train_victim(xtr, ytr, xte, yte, recipe=recipe or small(), **kw)


def strip_time(curve):
    return [{k: v for k, v in e.items() if k != "epoch_seconds"} for e in curve]


# -- learning ------------------------------------------------------------------------------
def test_engine_learns_separable_data(data):
    r = run(data, defense="standard")
    assert r.final_acc >= 0.9, r.curve
    assert r.curve[-1]["train_loss"] < r.curve[0]["train_loss"]


def test_random_labels_give_chance(data):
    xtr, ytr, xte, yte = data
    rand = np.random.default_rng(5).integers(0, K, len(ytr))
    r = run((xtr, rand, xte, yte), small(epochs=3))
    assert r.final_acc < 0.5  # chance is 0.25


def test_registry_small_cnn_learns(data):
    r = run(data, small(epochs=4), defense="standard", model_factory=None)
    assert r.arch == "small-cnn" and r.final_acc >= 0.8, r.curve


# -- determinism and bookkeeping ------------------------------------------------------------
def test_same_seed_same_curve_different_seed_differs(data):
    a = run(data, small(epochs=2), defense="standard", seed=3, return_model=True)
    b = run(data, small(epochs=2), defense="standard", seed=3, return_model=True)
    c = run(data, small(epochs=2), defense="standard", seed=4)
    assert strip_time(a.curve) == strip_time(b.curve)
    for p, q in zip(a.model.state_dict().values(), b.model.state_dict().values()):
        assert torch.equal(p, q)
    assert strip_time(a.curve) != strip_time(c.curve)


def test_global_rng_untouched(data):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    run(data, small(epochs=1))
    assert torch.equal(torch.rand(3), expected)


def test_numpy_nhwc_and_torch_nchw_inputs_agree(data):
    xtr, ytr, xte, yte = data
    a = run(data, small(epochs=1), seed=1)
    t = lambda x: torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    b = run((t(xtr), torch.from_numpy(ytr), t(xte), list(yte)), small(epochs=1), seed=1)
    assert strip_time(a.curve) == strip_time(b.curve)


def test_result_round_trips_and_is_consistent(data):
    seen, ckpt = [], []
    r = run(data, small(epochs=3), defense="standard",
            progress=lambda e, n, info: seen.append((e, n, info["test_acc"])),
            checkpoint_fn=lambda e, m: ckpt.append((e, m.training)))
    d = json.loads(json.dumps(r.to_dict()))
    assert TrainResult.from_dict(d).to_dict() == r.to_dict()
    assert "model" not in d and d["recipe_params"]["epochs"] == 3
    assert len(r.curve) == 3 and [e["epoch"] for e in r.curve] == [1, 2, 3]
    assert r.final_acc == r.curve[-1]["test_acc"] and r.best_acc == max(e["test_acc"] for e in r.curve)
    assert r.curve[r.best_epoch - 1]["test_acc"] == r.best_acc
    assert 0 <= r.final_acc <= 1 and r.n_train == 320 and r.n_test == 120 and r.num_classes == K
    assert r.device.startswith("cpu") and r.torch_version == torch.__version__ and r.defense == "standard"
    assert r.seconds >= r.train_seconds > 0 and r.amp == "fp32" and not r.compiled
    assert [(e, n) for e, n, _ in seen] == [(1, 3), (2, 3), (3, 3)] and [a for *_, a in seen] == [e["test_acc"] for e in r.curve]
    assert ckpt == [(1, False), (2, False), (3, False)]
    assert r.model is None


def test_lr_schedule_per_iteration(data):
    r = run(data, small(epochs=4))
    lrs = [e["lr"] for e in r.curve]
    assert lrs[0] == pytest.approx(0.05) and lrs[-1] < 0.01 and lrs == sorted(lrs, reverse=True)


def test_final_batch_of_one_is_skipped(data):
    xtr, ytr, xte, yte = data
    r = run((xtr[:65], ytr[:65], xte, yte), small(epochs=1))  # 2 x 32 + 1: BatchNorm1d would fail on 1
    assert r.n_train == 65 and len(r.curve) == 1


# -- defense hooks in the engine --------------------------------------------------------------
class Probe(Defense):
    """Records what the engine hands each hook; halves the dataset; emits soft labels."""

    def __init__(self):
        self.calls = {"transform": 0, "augment": 0, "adversary": 0}
        self.modes = set()

    def transform_dataset(self, x, y, generator=None):
        self.calls["transform"] += 1
        assert x.dtype == torch.uint8 and x.ndim == 4 and generator is not None
        return x[::2].contiguous(), y[::2]

    def augment(self, x, y, generator=None):
        self.calls["augment"] += 1
        assert x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1 and y.ndim == 1
        soft = torch.nn.functional.one_hot(y, K).float() * 0.9 + 0.1 / K  # mixup-like soft labels
        return x, soft

    def adversary(self, model, x, y):
        self.calls["adversary"] += 1
        self.modes.add(model.training)
        assert y.ndim == 2
        return x


def test_engine_calls_every_hook(data):
    p = Probe()
    r = run(data, small(epochs=2), defense=p)
    assert p.calls["transform"] == 1 and p.calls["augment"] == p.calls["adversary"] == 2 * 5  # 160 / 32
    assert p.modes == {True} and r.n_train == 160 and r.defense == "Probe"


class Whitened(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.net = tiny_factory("x", num_classes)
        self.whitened = None

    def init_whitening(self, x):
        self.whitened = (tuple(x.shape), x.dtype, float(x.max()))

    def forward(self, x):
        return self.net(x)


def test_init_whitening_is_called_once_with_float_images(data):
    made = []

    def factory(name, num_classes=10, input_size=32, in_channels=3):
        made.append(Whitened(num_classes))
        return made[-1]

    run(data, small(epochs=1, whiten_images=100), model_factory=factory)
    shape, dtype, mx = made[0].whitened
    assert shape == (100, 3, 16, 16) and dtype == torch.float32 and mx <= 1.0


def test_bad_inputs_are_user_errors(data):
    xtr, ytr, xte, yte = data
    with pytest.raises(UnlearnableError):
        run((xtr.astype(np.float32), ytr, xte, yte))
    with pytest.raises(UnlearnableError):
        run((xtr, ytr[:-1], xte, yte))
    with pytest.raises(UnlearnableError):
        run((xtr, ytr, xte[:, :8], yte))
    with pytest.raises(UnlearnableError):
        run(data, "no-such-recipe")


# -- recipes --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list_recipes())
def test_recipe_constructs_and_names_an_existing_arch(name):
    r = get_recipe(name)
    assert r.name == name and r.description and r.epochs > 0
    json.dumps(r.to_dict())
    assert dataclasses.replace(r, epochs=1).epochs == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.epochs = 3
    from unlearnable.models import list_models

    assert r.arch in list_models()


@pytest.mark.parametrize("name", list_recipes())
def test_every_recipe_runs_an_epoch_on_cpu(name, data):
    xtr, ytr, xte, yte = data
    r = dataclasses.replace(get_recipe(name), epochs=1, batch_size=24, eval_batch_size=50)
    res = train_victim(xtr[:48], ytr[:48], xte[:20], yte[:20], recipe=r, defense="standard", device="cpu", seed=0)
    assert res.arch == r.arch and len(res.curve) == 1 and not res.compiled and res.amp == "fp32"


def test_named_recipes_pin_the_protocols():
    assert set(list_recipes()) >= {"paper", "fast", "screen", "cpu-small"}
    p = get_recipe("paper")
    assert (p.arch, p.epochs, p.batch_size, p.lr, p.momentum, p.weight_decay, p.schedule) == (
        "resnet18", 60, 128, 0.1, 0.9, 5e-4, "cosine")
    s = get_recipe("screen")
    assert s.arch == "airbench" and s.tta_flip and s.tta_translate == 1 and s.label_smoothing == 0.2 and s.nesterov
    assert get_recipe("cpu-small").arch == "small-cnn" and not get_recipe("cpu-small").bf16_cpu


def test_schedules():
    base = dict(name="t", arch="linear", epochs=10, batch_size=1, lr=1.0)
    cos = Recipe(**base, schedule="cosine")
    assert cos.lr_at(0, 100, 10) == 1.0 and cos.lr_at(50, 100, 10) == pytest.approx(0.5) and cos.lr_at(99, 100, 10) < 0.01
    one = Recipe(**base, schedule="onecycle", warmup_epochs=2)
    lrs = [one.lr_at(s, 100, 10) for s in range(100)]
    assert max(lrs) == lrs[19] == 1.0 and lrs[0] == pytest.approx(0.05) and lrs[-1] < 0.02
    step = Recipe(**base, schedule="step", step_milestones=[0.5, 0.75])
    assert [step.lr_at(s, 100, 10) for s in (0, 49, 50, 75)] == pytest.approx([1, 1, 0.1, 0.01])
    assert Recipe(**base, schedule="constant").lr_at(77, 100, 10) == 1.0
    with pytest.raises(UnlearnableError):
        Recipe(**base, schedule="linear")
    assert hash(step)  # frozen and hashable even when milestones were given as a list


# -- benchmark script smoke ------------------------------------------------------------------
def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_train", REPO / "benchmarks" / "bench_train.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_classwise_noise_is_bounded_and_classwise():
    bench = _load_bench()
    x = np.full((20, 8, 8, 3), 128, np.uint8)
    y = np.arange(20) % 4
    xn = bench.classwise_noise(x, y)
    d = xn.astype(int) - 128
    assert np.abs(d).max() <= 8 and np.abs(d).max() > 0
    assert (d[y == 1] == d[1]).all() and not (d[0] == d[1]).all()


def test_bench_smoke_on_cpu(tmp_path, capsys):
    bench = _load_bench()
    out = tmp_path / "RESULTS.md"
    rc = bench.main(["--synthetic", "96", "--recipes", "cpu-small", "--epochs", "1", "--data", "clean,classwise",
                     "--device", "cpu", "--out", str(out)])
    assert rc == 0
    table = capsys.readouterr().out
    assert "| cpu-small | small-cnn | clean | 1 |" in table and "classwise" in table
    text = out.read_text()
    assert "torch " + torch.__version__ in text and "--synthetic 96" in text and text.count("| cpu-small |") == 2


def test_norm_lr_scale_makes_a_norm_group():
    from unlearnable.train.engine import _make_optimizer

    model = tiny_factory("x", 4)
    r = dataclasses.replace(small(), norm_lr_scale=8.0, weight_decay=1e-3)
    groups = _make_optimizer(model, r, torch.device("cpu")).param_groups
    assert [g["lr_scale"] for g in groups] == [1.0, 8.0]
    assert groups[1]["weight_decay"] == pytest.approx(1e-3 / 8) and len(groups[1]["params"]) == 4  # 2 BN x (w, b)
    assert len(_make_optimizer(model, small(), torch.device("cpu")).param_groups) == 1


def make_data(n, seed=0):
    return colour_squares(n, seed=seed, size=16, square=8, shift=(2, 5))


def test_recipe_specs_change_fields_and_are_named_by_the_spec():
    from unlearnable.train.recipes import get_recipe

    r = get_recipe(" paper:compile=true,epochs=3,lr=1,grad_clip=none ")
    assert (r.name, r.compile, r.epochs, r.lr, r.grad_clip) == ("paper:compile=true,epochs=3,lr=1,grad_clip=none", True, 3, 1.0, None)
    assert isinstance(r.lr, float) and r.batch_size == get_recipe("paper").batch_size
    assert get_recipe("paper").name == "paper"  # the registered protocol is untouched


@pytest.mark.parametrize("spec, says", [
    ("paper:foo=1", "no field 'foo'"),
    ("paper:name=x", "no field 'name'"),
    ("paper:epochs=2.5", "epochs must be int"),
    ("paper:compile=2", "compile must be bool"),
    ("paper:lr=fast", "lr must be float"),
    ("paper:epochs=0", "must be positive"),
    ("paper:", "nothing after"),
    ("paper:epochs", "expected key=value"),
    ("nope:epochs=1", "unknown recipe 'nope'"),
])
def test_bad_recipe_specs_fail_in_one_line(spec, says):
    from unlearnable.train.recipes import get_recipe

    with pytest.raises(UnlearnableError, match=says):
        get_recipe(spec)


def test_spec_lists_keep_commas_inside_specs():
    from unlearnable.registry import split_spec_list

    assert split_spec_list("none, early-stop:source=clean,val_fraction=0.2 ,jpeg10,at:eps=8,steps=5+gray") == [
        "none", "early-stop:source=clean,val_fraction=0.2", "jpeg10", "at:eps=8,steps=5+gray"]
    assert split_spec_list("paper,paper:compile=true,epochs=3") == ["paper", "paper:compile=true,epochs=3"]
    with pytest.raises(UnlearnableError, match="no spec before it"):
        split_spec_list("epochs=3,paper")


def test_lookahead_sync_is_an_ema_the_fast_weights_land_on():
    from unlearnable.train.engine import _Lookahead

    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    w0 = model[0].weight.detach().clone()
    la = _Lookahead(model, every=2, peak=0.5, total_steps=4)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    la.after_step(1)  # not a sync step
    assert torch.equal(model[0].weight, w0 + 1)
    la.after_step(4)  # decay 0.5 * (4/4)^3: halfway from the slow copy to the fast weights
    assert torch.allclose(model[0].weight, w0 + 0.5) and torch.allclose(la.slow[0], w0 + 0.5)
    with torch.no_grad():
        model[0].weight.add_(3.0)
    la.finish()  # decay 1: the model is put back on the slow weights
    assert torch.allclose(model[0].weight, w0 + 0.5)
    assert model[1].num_batches_tracked.dtype == torch.int64  # integer buffers are left alone


def test_lookahead_recipe_trains_deterministically(data):
    r = small(epochs=4, lookahead_every=2)
    a = run(data, r, defense="standard", return_model=True)
    b = run(data, r, defense="standard", return_model=True)
    plain = run(data, small(epochs=4), defense="standard")
    assert strip_time(a.curve) == strip_time(b.curve) and a.final_acc >= 0.8, a.curve
    assert strip_time(a.curve) != strip_time(plain.curve)
    assert a.recipe_params["lookahead_every"] == 2


def test_translate_tta_sees_the_image_shifted_both_ways():
    import torch.nn.functional as F

    from unlearnable.train.engine import evaluate

    torch.manual_seed(0)
    lin = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5))
    seen = []

    class Recorder(nn.Module):
        def forward(self, x):
            seen.append(x.clone())
            return lin(x)

    x = torch.randint(0, 256, (64, 3, 4, 4), dtype=torch.uint8)
    xf = x.float() / 255
    padded = F.pad(xf, (1, 1, 1, 1), mode="reflect")
    views = [xf, padded[:, :, :4, :4], padded[:, :, 2:, 2:]]  # as is, shifted up-left, down-right
    with torch.no_grad():
        mirrored = [0.5 * (lin(v) + lin(v.flip(3))) for v in views]
        expected = 0.5 * mirrored[0] + 0.25 * (mirrored[1] + mirrored[2])
    y = expected.argmax(1)
    assert evaluate(Recorder(), x, y, tta_flip=True, tta_translate=1) == 1.0
    assert len(seen) == 6 and torch.equal(seen[2], views[1]) and torch.equal(seen[4], views[2])
    assert evaluate(Recorder(), x, y) < 1.0  # the views change some decisions


# -- recipe field ranges and diverged training (QA) ----------------------------------------
@pytest.mark.parametrize("spec, says", [
    ("cpu-small:lr=nan", "lr must be float, got nan"),
    ("cpu-small:lr=inf", "lr must be float, got inf"),
    ("cpu-small:lr=0", "lr must be > 0"),
    ("cpu-small:momentum=5", "momentum must be in \\[0, 1\\)"),
    ("cpu-small:weight_decay=-1", "weight_decay must be >= 0"),
    ("cpu-small:epochs=0", "epochs must be positive"),
    ("cpu-small:epochs=-3", "epochs must be positive"),
    ("cpu-small:batch_size=-1", "batch_size must be positive"),
    ("cpu-small:eval_batch_size=0", "eval_batch_size must be positive"),
    ("cpu-small:label_smoothing=1", "label_smoothing must be in"),
    ("cpu-small:grad_clip=0", "grad_clip must be > 0"),
    ("cpu-small:step_gamma=nan", "step_gamma must be float"),
    ("cpu-small:warmup_epochs=-1", "warmup_epochs must be >= 0"),
    ("cpu-small:momentum=0", "nesterov needs momentum > 0"),
])
def test_recipe_fields_out_of_range_fail_by_name(spec, says):
    with pytest.raises(UnlearnableError, match=says) as e:
        get_recipe(spec)
    assert "\n" not in str(e.value)


def test_recipe_checks_apply_to_replace_and_overrides():
    r = get_recipe("cpu-small")
    with pytest.raises(UnlearnableError, match="momentum must be in"):
        r.replace(momentum=1.0)
    with pytest.raises(UnlearnableError, match="lr must be float"):
        dataclasses.replace(r, lr=float("nan"))
    with pytest.raises(UnlearnableError, match="epochs must be int"):
        get_recipe("cpu-small", epochs=float("inf"))
    assert get_recipe("cpu-small:compile=1,epochs=3.0").compile is True
    assert get_recipe("cpu-small", epochs=np.int64(2)).epochs == 2


class NaNImages(Defense):
    """Turns every batch into NaNs from epoch 2 on (test only): the loss becomes non-finite."""

    def start_epoch(self, epoch, epochs):
        self.poison = epoch >= 2

    def augment(self, x, y, generator=None):
        return (x * float("nan") if self.poison else x), y


def test_diverged_training_stops_and_is_marked(data):
    ok = run(data, small(epochs=2))
    assert ok.diverged is False and ok.diverged_epoch is None and ok.to_dict()["diverged"] is False
    blown = run(data, small(epochs=4, lr=1000.0))  # finite but exploding loss
    assert blown.diverged and blown.diverged_epoch == 1 and len(blown.curve) == 1, blown.curve
    nan = run(data, small(epochs=4), defense=NaNImages())  # non-finite loss
    assert nan.diverged and nan.diverged_epoch == 2 and len(nan.curve) == 2
    d = nan.to_dict()
    assert d["diverged"] is True and d["diverged_epoch"] == 2
    assert TrainResult.from_dict(d).diverged is True
    assert TrainResult.from_dict({k: v for k, v in d.items() if not k.startswith("diverged")}).diverged is False
