"""Procedure- and data-level defenses: adversarial training, orthogonal projection, clean-mix, early-stop."""

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import colour_squares, tiny_factory  # noqa: E402
from unlearnable.audit import markdown_table, run_audit, summarize
from unlearnable.data.imageset import ImageSet
from unlearnable.defenses import create_defense
from unlearnable.defenses.adversarial import AdversarialTraining, AdversarialTrainingL2
from unlearnable.defenses.data_mix import CleanMix, EarlyStop
from unlearnable.defenses.projection import OrthogonalProjection
from unlearnable.errors import UnlearnableError
from unlearnable.train.engine import TrainResult, train_victim
from unlearnable.train.recipes import get_recipe

K = 4


def small(epochs=3, **kw):
    return dataclasses.replace(get_recipe("cpu-small"), epochs=epochs, batch_size=32, warmup_epochs=1,
                               channels_last=False, **kw)


@pytest.fixture(scope="module")
def data():
    xtr, ytr = make_data(192, seed=0)
    xte, yte = make_data(64, seed=1)
    return xtr, ytr, xte, yte


@pytest.fixture(scope="module")
def trained(data):
    xtr, ytr, xte, yte = data
    r = train_victim(xtr, ytr, xte, yte, recipe=small(4), model_factory=tiny_factory, device="cpu",
                     return_model=True, defense="none")
    assert r.final_acc > 0.6, r.curve
    return r.model


def batch(data, n=32):
    xtr, ytr, _, _ = data
    return torch.from_numpy(xtr[:n]).permute(0, 3, 1, 2).float() / 255, torch.from_numpy(ytr[:n]).long()


# -- adversarial training ---------------------------------------------------------------------
@pytest.mark.parametrize("spec", ["at8", "at-l2"])
def test_pgd_raises_the_loss_and_respects_the_budget(trained, data, spec):
    x, y = batch(data)
    d = create_defense(spec)
    trained.zero_grad(set_to_none=True)
    trained.train()
    with torch.no_grad():
        trained.eval()
        clean_loss = F.cross_entropy(trained(x), y).item()
        trained.train()
    adv = d.adversary(trained, x, y)
    assert trained.training  # the hook restores train mode
    assert all(p.grad is None for p in trained.parameters())  # no parameter gradients accumulated
    assert adv.shape == x.shape and adv.min() >= 0 and adv.max() <= 1
    delta = (adv - x).flatten(1)
    if d.norm == "linf":
        assert delta.abs().max().item() <= d.eps + 1e-6
    else:
        assert delta.norm(dim=1).max().item() <= d.eps + 1e-5
    with torch.no_grad():
        trained.eval()
        adv_loss = F.cross_entropy(trained(adv), y).item()
        trained.train()
    assert adv_loss > clean_loss + 0.1, (clean_loss, adv_loss)


def test_at_spec_parsing_and_defaults():
    d = create_defense("at8")
    assert isinstance(d, AdversarialTraining) and d.eps == pytest.approx(8 / 255)
    assert d.steps == 10 and d.step_size() == pytest.approx(2 / 255) and d.attack_mode == "eval"
    assert create_defense("at:eps=4").eps == pytest.approx(4 / 255)
    assert create_defense("at:eps=4/255").spec == create_defense("at4").spec == "at:eps=4/255"
    assert create_defense("at:eps=0.0314").eps == pytest.approx(0.0314)
    assert create_defense("at:eps=4,step=2").step_size() == pytest.approx(2 / 255)
    l2 = create_defense("at-l2-0.5")
    assert isinstance(l2, AdversarialTrainingL2) and l2.eps == 0.5 and l2.step_size() == pytest.approx(0.125)
    assert create_defense("at8+standard").hooks() == ["augment", "adversary"]
    for bad in ("at:eps=300", "at:steps=0", "at:attack_mode=sideways"):
        with pytest.raises(UnlearnableError):
            create_defense(bad)


def test_pgd_deterministic_given_seed_and_train_mode_keeps_bn_stats(trained, data):
    x, y = batch(data, 16)
    torch.manual_seed(3)
    a = create_defense("at8").adversary(trained, x, y)
    torch.manual_seed(3)
    b = create_defense("at8").adversary(trained, x, y)
    torch.manual_seed(4)
    c = create_defense("at8").adversary(trained, x, y)
    assert torch.equal(a, b) and not torch.equal(a, c)
    bn = trained[1]
    before = bn.running_mean.clone()
    create_defense("at:eps=8,attack_mode=train,steps=2").adversary(trained, x, y)
    assert torch.equal(bn.running_mean, before) and trained.training


def test_at_trains_through_the_engine(data):
    xtr, ytr, xte, yte = data
    r = train_victim(xtr[:96], ytr[:96], xte, yte, recipe=small(1), defense="at:eps=4,steps=2",
                     model_factory=tiny_factory, device="cpu")
    assert r.defense == "at:eps=4/255,steps=2" and 0 <= r.final_acc <= 1


# -- orthogonal projection ---------------------------------------------------------------------
def _probe(x, y):
    from sklearn.linear_model import LogisticRegression

    f = x.reshape(len(x), -1) / 255.0
    tr = np.arange(len(x)) < 3 * len(x) // 4
    return LogisticRegression(max_iter=2000).fit(f[tr], y[tr]).score(f[~tr], y[~tr])


def test_op_removes_a_planted_classwise_linear_pattern():
    rng = np.random.default_rng(0)
    n, s = 400, 8
    y = rng.integers(0, K, n)
    pattern = rng.choice([-16, 16], (K, s, s, 3))
    x = np.clip(rng.integers(40, 216, (n, s, s, 3)) + pattern[y], 0, 255).astype(np.uint8)
    assert _probe(x, y) > 0.95
    op = OrthogonalProjection(batch_size=32)
    op.prepare({"num_classes": K})
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    xr, yr = op.transform_dataset(xt, torch.from_numpy(y), torch.Generator().manual_seed(0))
    assert xr.dtype == torch.uint8 and xr.shape == xt.shape and torch.equal(yr, torch.from_numpy(y))
    assert op.last_stats["linear_train_acc"] == 1.0 and op.last_stats["clipped_fraction"] < 0.01
    assert _probe(xr.permute(0, 2, 3, 1).numpy(), y) < 0.4  # chance is 0.25


# -- clean-mix ---------------------------------------------------------------------------------
def test_clean_mix_replaces_the_right_fraction_and_needs_clean_data():
    rng = np.random.default_rng(0)
    clean = rng.integers(0, 200, (50, 6, 6, 3)).astype(np.uint8)
    prot = clean + 10  # every protected image differs from its clean version
    d = create_defense("clean-mix:eta=0.3")
    assert isinstance(d, CleanMix)
    d.prepare({"clean_x": clean})
    xt = torch.from_numpy(prot).permute(0, 3, 1, 2)
    out, _ = d.transform_dataset(xt, torch.zeros(50, dtype=torch.long), torch.Generator().manual_seed(0))
    same = (out.permute(0, 2, 3, 1).numpy() == clean).reshape(50, -1).all(1)
    assert same.sum() == 15 and torch.equal(torch.from_numpy(np.flatnonzero(same)), d.last_replaced.sort().values)
    assert (out.permute(0, 2, 3, 1).numpy()[~same] == prot[~same]).all()
    with pytest.raises(UnlearnableError, match="--clean"):
        create_defense("clean-mix").prepare({})


# -- early stopping ------------------------------------------------------------------------------
def test_early_stop_selects_the_best_validation_epoch(data):
    xtr, ytr, xte, yte = data
    r = train_victim(xtr, ytr, xte, yte, recipe=small(3), defense="early-stop:val_fraction=0.25",
                     model_factory=tiny_factory, device="cpu")
    assert r.n_val == 48 and r.n_train == 144
    vals = [e["val_acc"] for e in r.curve]
    assert r.selected_epoch == 1 + int(np.argmax(vals))
    assert r.selected_acc == r.curve[r.selected_epoch - 1]["test_acc"]
    d = r.to_dict()
    assert d["selected_epoch"] == r.selected_epoch and d["selected_acc"] == r.selected_acc
    assert TrainResult.from_dict(d).selected_acc == r.selected_acc
    plain = train_victim(xtr, ytr, xte, yte, recipe=small(1), model_factory=tiny_factory, device="cpu")
    assert plain.selected_epoch is None and plain.n_val == 0 and "val_acc" not in plain.curve[0]


def test_early_stop_patience_stops_training(data):
    xtr, ytr, xte, yte = data

    class Flat(EarlyStop):  # validation never improves after epoch 1 -> stop after `patience` more
        def validation_split(self, n, generator=None):
            return torch.arange(2, n), torch.tensor([0, 1])

    r = train_victim(xtr[:64], ytr[:64] * 0, xte, yte * 0, recipe=small(6), defense=Flat(patience=2),
                     model_factory=tiny_factory, device="cpu", num_classes=K)
    assert len(r.curve) == 3 and r.selected_epoch == 1


def test_early_stop_can_validate_on_the_clean_versions(data):
    # Protected images carry a perfect class shortcut and nothing else; the clean versions are
    # noise with no relation to the labels. Validating on protected data rewards the shortcut,
    # on clean data it does not: the validation images are the clean ones.
    xtr, ytr, xte, yte = data
    n = 96
    prot = np.zeros((n,) + xtr.shape[1:], np.uint8)
    prot[np.arange(n), :, :, ytr[:n] % 3] = 255 * (1 + ytr[:n] // 3)[:, None, None] // 2  # colour per class
    noise = np.random.default_rng(0).integers(0, 256, prot.shape, dtype=np.uint8)
    kw = dict(recipe=small(4), model_factory=tiny_factory, device="cpu", context={"clean_x": noise})
    on_prot = train_victim(prot, ytr[:n], xte, yte, defense="early-stop:val_fraction=0.25", **kw)
    on_clean = train_victim(prot, ytr[:n], xte, yte, defense="early-stop:val_fraction=0.25,source=clean", **kw)
    # measured: shortcut validation 0.67-0.79, noise validation 0.29-0.38 (4 classes, 24 images)
    assert min(e["val_acc"] for e in on_prot.curve) > max(e["val_acc"] for e in on_clean.curve) + 0.2
    assert on_prot.n_val == on_clean.n_val == 24
    with pytest.raises(UnlearnableError, match="source must be one of protected, clean"):
        create_defense("early-stop:source=test")
    with pytest.raises(UnlearnableError, match="source=clean needs the clean training images"):
        train_victim(prot, ytr[:n], xte, yte, defense="early-stop:source=clean", recipe=small(1),
                     model_factory=tiny_factory, device="cpu")
    assert create_defense("early-stop:source=clean").requires_clean


def test_audit_table_credits_early_stop_with_selected_acc():
    recs = [{"defense": "standard", "trained_on": "protected", "final_acc": 0.2, "best_acc": 0.5},
            {"defense": "early-stop", "trained_on": "protected", "final_acc": 0.2, "best_acc": 0.5,
             "selected_epoch": 2, "selected_acc": 0.4}]
    rows = {r["defense"]: r for r in summarize(recs)}
    assert rows["early-stop"]["protected_final"] == 0.4 and rows["standard"]["protected_final"] == 0.2
    table = markdown_table(recs)
    assert "early-stop †" in table and "40.00" in table and "validation" in table


def test_audit_runs_clean_mix_and_early_stop(data):
    xtr, ytr, xte, yte = data
    classes = [str(i) for i in range(K)]
    ids = [f"{i:04d}" for i in range(96)]
    clean = ImageSet(xtr[:96], ytr[:96], classes, ids)
    prot = clean.with_images(np.clip(xtr[:96].astype(int) + 8, 0, 255).astype(np.uint8))
    test = ImageSet(xte, yte, classes, [f"t{i}" for i in range(len(xte))])
    kw = dict(recipe="cpu-small", epochs=1, device="cpu", arch="small-cnn")
    with pytest.raises(UnlearnableError, match="--clean"):
        run_audit(prot, test, defenses=["clean-mix"], **kw)
    with pytest.raises(UnlearnableError, match="--clean"):
        run_audit(prot, test, defenses=["early-stop:source=clean"], **kw)
    recs = run_audit(prot, test, clean=clean, defenses=["clean-mix:eta=0.5", "early-stop",
                                                        "early-stop:source=clean"], **kw)
    es = [r for r in recs if r["defense"] == "early-stop"]
    assert all(r["acc"] == r["selected_acc"] and r["selected_epoch"] == 1 for r in es)


def make_data(n, seed=0):
    return colour_squares(n, seed=seed, size=12, square=6, shift=(1, 4))
