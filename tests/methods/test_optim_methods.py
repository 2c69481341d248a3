"""The optimisation engine (methods/optim.py) and the optimising baselines: EM, EM-classwise,
REM, SEM, TAP, TAP-untargeted, SEP. CPU, tiny sets, small-cnn surrogates, a few steps."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from unlearnable.budget import Budget, measure_change

from helpers import random_imageset, smoke_method as small, trainer_view
from unlearnable.methods.optim import Ticker, project_, signed_step_

torch.set_num_threads(1)

OPTIM = ["em", "em-classwise", "rem", "sem", "tap", "tap-untargeted", "sep"]
REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", OPTIM)
def test_budget_after_quantisation_and_determinism(name):
    data = tiny()
    res = small(name).protect(data, "6/255", seed=1)
    assert res.budget.norm == "linf" and res.budget.levels == 6
    for i in range(len(data)):
        assert res.budget.allows(measure_change(data.image(i), res.protected.image(i)))
    assert res.within_budget and res.norms["linf"]["max"] >= 1  # it did something
    again = small(name).protect(data, "6/255", seed=1).protected.stacked()
    assert again.tobytes() == res.protected.stacked().tobytes()


def test_mixed_sizes_and_order_independence():
    data = tiny(n=12, mixed=True)
    res = small("em", working_size=8).protect(data, seed=0)
    assert res.within_budget and all(res.protected.image(i).shape == data.image(i).shape for i in range(12))
    d2 = tiny(n=12)
    perm = np.random.default_rng(5).permutation(12)
    a = small("tap").protect(d2, seed=0).protected.stacked()
    b = small("tap").protect(d2.subset(perm), seed=0).protected.stacked()
    assert (a[perm] == b).all()


# What each sample-wise method's δ is for: the class its surrogate should read from the protected
# image (the label for error-minimising noise, the target class for targeted poisons), and the
# steps that make the final δ-phase long enough to matter on a 3-class toy.
THROUGH = {"em": (0, dict(pgd_steps=10)), "rem": (0, dict(pgd_steps=10)), "sem": (0, dict(pgd_steps=10)),
           "tap": (1, dict(steps=10)), "sep": (5, dict(steps=10))}


@pytest.mark.parametrize("name", sorted(THROUGH))
def test_through_resize_delta_survives_the_trainers_resize(name):
    # Photos worked at 12²: the δ a trainer sees after resizing the protected image to 12² is
    # R(x') − R(x). Made through the resize, it does the method's job for its surrogate better
    # than the working-size δ upsampled (which R blurs).
    from unlearnable.methods.optim import forward

    shift, kw = THROUGH[name]
    rng = np.random.default_rng(3)
    imgs = [rng.integers(40, 216, (int(a), int(b), 3), dtype=np.uint8) for a, b in rng.integers(20, 37, (24, 2))]
    data = random_imageset(len(imgs), classes=3, images=imgs)

    def loss(resize):
        method = small(name, working_size=12, resize=resize, **kw)
        res = method.protect(data, seed=0)
        assert res.within_budget
        sur = method.last_run["surrogate"].eval()
        seen = torch.stack([trainer_view(res.protected.image(i), 12) for i in range(len(imgs))])
        target = (torch.from_numpy(data.labels) + shift) % 3
        clean = torch.stack([trainer_view(im, 12) for im in imgs])
        with torch.no_grad():  # how far δ moved the surrogate's loss, as the trainer sees it
            return float(F.cross_entropy(forward(sur, clean), target) - F.cross_entropy(forward(sur, seen), target))

    # Smoke surrogates are weak, so the drops are small; through keeps 1.5-1.8x more of it.
    through, bilinear = loss("through"), loss("bilinear")
    assert bilinear > 0 and through > 1.3 * bilinear


def _linear_problem(eps="4/255", n=30, seed=4):
    # Photos of 24-48 px worked at 12², and a fixed bias-free linear model whose class weights
    # sum to zero (so the δ, not the mean grey, decides): the engine's test bench.
    from unlearnable.budget import Budget
    from unlearnable.methods.optim import prepare

    rng = np.random.default_rng(seed)
    imgs = [rng.integers(40, 216, (int(a), int(b), 3), dtype=np.uint8) for a, b in rng.integers(24, 49, (n, 2))]
    data = random_imageset(len(imgs), classes=3, images=imgs)
    budget = Budget.parse(eps)
    prob = prepare(data, "cpu", 12, resize="through")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 12 * 12, 3, bias=False)).eval()
    with torch.no_grad():
        model[1].weight.sub_(model[1].weight.mean(1, keepdim=True))
    for p in model.parameters():
        p.requires_grad_(False)
    return imgs, data, budget, prob, model


def test_through_resize_step_is_the_autograd_step_through_the_resize():
    from unlearnable.methods.base import grey_levels
    from unlearnable.methods.optim import input_grad, through_resize

    imgs, data, budget, prob, model = _linear_problem(n=9)
    target = (prob.y + 1) % 3
    alpha = 2 / 255  # on the grey-level grid, where through_resize's output lies
    out = through_resize(prob, lambda a, idx: input_grad(model, a, target[idx]), steps=1, alpha=alpha,
                         budget=budget, start=lambda d0, idx: d0, batch_size=4)  # 3 padded batches
    for i, im in enumerate(imgs):
        x = torch.from_numpy(im).permute(2, 0, 1).float().div(255)[None]
        d = torch.zeros_like(x, requires_grad=True)
        seen = F.interpolate(x + d, size=(12, 12), mode="bilinear", antialias=True, align_corners=False)
        loss = F.cross_entropy(model(seen), torch.tensor([(int(data.labels[i]) + 1) % 3]))
        (g,) = torch.autograd.grad(loss, d)
        ref = torch.minimum(torch.maximum(-alpha * g.sign(), (-x).clamp(min=-budget.eps)),
                            (1 - x).clamp(max=budget.eps))[0].permute(1, 2, 0).numpy()
        assert out[i].shape == im.shape and out[i].dtype == np.int8  # whole grey levels
        assert (out[i] != grey_levels(ref)).mean() < 0.01  # sign flips where a gradient entry is ~0


def test_through_resize_moves_what_the_trainer_sees_more_than_an_upsampled_delta():
    from unlearnable.methods.base import float_delta
    from unlearnable.methods.optim import input_grad, through_resize

    imgs, data, budget, prob, model = _linear_problem()
    target = (prob.y + 1) % 3

    def grad_fn(a, idx):
        return input_grad(model, a, target[idx])

    native = [float_delta(d) for d in
              through_resize(prob, grad_fn, steps=20, alpha=budget.eps / 10, budget=budget, start=lambda d0, idx: d0)]
    x01 = prob.images()
    d = torch.zeros_like(x01)
    for _ in range(20):
        signed_step_(d, grad_fn(x01 + d, torch.arange(prob.n)), budget.eps / 10, x01, budget)
    upsampled = prob.deltas_out(d)

    def margin(deltas):  # mean logit margin of the target class in what a trainer at 12² sees
        out = []
        for i, im in enumerate(imgs):
            x = im / np.float32(255)
            if deltas is not None:
                assert deltas[i].shape == im.shape and np.abs(deltas[i]).max() <= budget.eps + 1e-6
                x = x + deltas[i]
            logits = model(trainer_view(x, 12)[None])[0]
            t = (int(data.labels[i]) + 1) % 3
            out.append(float(logits[t] - logits[[c for c in range(3) if c != t]].max()))
        return np.mean(out)

    clean = margin(None)
    # Measured 1.42x at 4/255: the antialiased downsampling blurs the upsampled δ's high frequencies.
    assert margin(native) - clean > 1.3 * (margin(upsampled) - clean) > 0


@pytest.mark.parametrize("name,resize", [("tap", "lift"), ("em-classwise", "nearest"), ("pil", "nearest"),
                                         ("random-classwise", "bilinear")])
def test_unknown_resize_fails_at_creation(name, resize):
    from unlearnable.errors import UnlearnableError
    from unlearnable.methods import create_method

    with pytest.raises(UnlearnableError, match="resize must be one of"):
        create_method(name, resize=resize)


def test_through_resize_is_order_independent_on_mixed_sizes():
    data = tiny(n=12, mixed=True)
    perm = np.random.default_rng(5).permutation(12)
    for name in ("tap", "rem"):
        a = small(name, working_size=8).protect(data, seed=0).protected
        b = small(name, working_size=8).protect(data.subset(perm), seed=0).protected
        assert all((a.image(int(p)) == b.image(i)).all() for i, p in enumerate(perm))


@pytest.mark.parametrize("name,k", [("em", 3), ("em-classwise", 2), ("rem", 2), ("sem", 3), ("tap", 2), ("sep", 2)])
def test_resume_equals_uninterrupted(name, k, tmp_path):
    data = tiny()
    kw = dict(checkpoint_every_s=0.0)
    if name in ("tap", "sep"):
        kw["batch_size"] = 8  # 3 batches: interrupt after the first
    full = small(name, **kw).protect(data, seed=2).protected.stacked()
    calls = []

    def interrupt(done, total):
        calls.append(done)
        if len(calls) == k:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        small(name, **kw).protect(data, seed=2, workdir=str(tmp_path), progress=interrupt)
    m = small(name, **kw)
    resumed = m.protect(data, seed=2, workdir=str(tmp_path)).protected.stacked()
    assert m.last_run["resumed"]
    assert resumed.tobytes() == full.tobytes()
    # A different run (another seed) must not pick up this checkpoint.
    other = small(name, **kw)
    other.protect(data, seed=3, workdir=str(tmp_path))
    assert not other.last_run["resumed"]


@pytest.mark.parametrize("name", ["em", "rem", "tap", "sep"])
def test_resume_during_the_native_pass_continues_where_it_stopped(name, tmp_path):
    # On mixed sizes the last phase (TAP's and SEP's whole attack) runs batch by batch on each
    # image's own pixels: an interruption there keeps the finished batches, and the resumed
    # run neither redoes them nor changes a byte.
    data = tiny(n=12, mixed=True)
    kw = dict(checkpoint_every_s=0.0, working_size=8, batch_size=4)

    def images(res):
        return [res.protected.image(i) for i in range(len(data))]

    full = images(small(name, **kw).protect(data, seed=2))
    stopped = []

    def interrupt(done, total):
        if done == total - 1:  # inside the native pass (its batches are the last ticks), one left
            stopped.append(done)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        small(name, **kw).protect(data, seed=2, workdir=str(tmp_path), progress=interrupt)
    m, ticks = small(name, **kw), []
    resumed = images(m.protect(data, seed=2, workdir=str(tmp_path), progress=lambda d, t: ticks.append(d)))
    assert m.last_run["resumed"]
    assert ticks[0] == stopped[0] + 1  # the next batch, not a replay
    assert all((a == b).all() for a, b in zip(full, resumed))


def test_engine_projection_keeps_budget_and_image_range():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 3, 8, 8, generator=g)
    x[:, :, :2] = 0.0
    x[:, :, -2:] = 1.0
    b = Budget.parse("8/255")
    d = torch.zeros_like(x)
    for _ in range(20):
        signed_step_(d, torch.randn(x.shape, generator=g), 3 / 255, x, b, descend=bool(_ % 2))
        assert d.abs().max() <= b.eps + 1e-7
        assert (x + d).min() >= -1e-7 and (x + d).max() <= 1 + 1e-7
    d = torch.randn(x.shape, generator=g)
    project_(d, x, b)
    assert d.abs().max() <= b.eps + 1e-7 and (x + d).min() >= -1e-7 and (x + d).max() <= 1 + 1e-7
    seen = []
    t = Ticker(lambda a, tot: seen.append((a, tot)), 3)
    t(), t(), t.finish()
    assert seen == [(1, 3), (2, 3), (3, 3)]


def _loss(model, images, labels):
    with torch.no_grad():
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
        return F.cross_entropy(model(x), torch.from_numpy(labels)).item()


def test_em_min_min_lowers_training_loss():
    data = tiny(n=32, size=12)
    m = small("em", max_rounds=3, pgd_steps=20, train_steps=10, batch_size=32)  # the paper's loop, tiny
    res = m.protect(data, seed=0)
    model = m.last_run["surrogate"].eval()
    on_poison, on_clean = _loss(model, res.protected.stacked(), data.labels), _loss(model, data.stacked(), data.labels)
    assert on_poison < 0.5 * on_clean, (on_poison, on_clean)


def test_tap_targeted_raises_target_probability():
    data = tiny(n=32, size=12)
    shifted = data.stacked().astype(int) // 2 + data.labels[:, None, None, None] * 50 + np.array([0, 40, 80])
    data = data.with_images(np.clip(shifted, 0, 255).astype(np.uint8))  # learnable: a class colour
    m = small("tap", surrogate_epochs=15, steps=8, step_size=2 / 255, augment=False)
    res = m.protect(data, seed=0)
    model = m.last_run["surrogate"].eval()
    target = torch.from_numpy((data.labels + 1) % 3)

    def p_target(images):
        with torch.no_grad():
            x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
            return torch.softmax(model(x), 1).gather(1, target[:, None]).mean().item()

    assert p_target(res.protected.stacked()) > p_target(data.stacked()) + 0.05


def test_faithful_em_keeps_positive_half_truncated():
    data = tiny()
    m = small("em", faithful=True)
    res = m.protect(data, seed=0)
    diff = res.protected.stacked().astype(int) - data.stacked().astype(int)
    assert diff.min() == 0 and diff.max() >= 1  # no negative change survives
    assert res.within_budget and "application" in res.hyperparameters
    rounded = small("em").protect(data, seed=0).protected.stacked().astype(int) - data.stacked().astype(int)
    assert (rounded < 0).any()  # the shared step keeps both signs
    assert (diff <= np.maximum(rounded, 0)).all()  # truncation never rounds up


def test_faithful_sep_truncation_declares_its_budget():
    data = tiny()
    res = small("sep", faithful=True, steps=8).protect(data, seed=0)
    assert res.within_budget  # against the declared (nominal + 1 level) budget
    assert res.budget.levels == 9 and res.hyperparameters["nominal_budget"]["grey_levels"] == 8
    assert res.norms["linf"]["max"] <= 9


def _write_folder(root: Path, n: int, size: int = 16, classes: int = 2):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, m in (("train", n), ("test", n // 2)):
        for i in range(m):
            c = i % classes
            d = root / split / f"class{c}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(d / f"{i:04d}.png")


def test_bench_baselines_cpu_smoke(tmp_path):
    _write_folder(tmp_path / "data", 24)
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\n## PIL\n\nold\n")
    cmd = [sys.executable, str(REPO / "benchmarks" / "bench_baselines.py"), "--data", str(tmp_path / "data"),
           "--limit", "20", "--surrogate", "small-cnn", "--steps-scale", "0.01", "--methods", "em,rem,tap,sep",
           "--surrogate-recipe", "cpu-small", "--victim", "cpu-small", "--victim-epochs", "1", "--device", "cpu",
           "--threads", "1", "--record", "--results", str(results)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "| em |" in out.stdout and "| sep |" in out.stdout
    text = results.read_text()
    assert text.startswith("# Benchmark results\n\n## PIL\n\nold\n") and "## Baselines" in text and "| tap |" in text


def tiny(n=24, size=12, classes=3, seed=0, mixed=False):
    return random_imageset(n, size, classes, seed, mixed)


def test_recalibrate_bn_sets_exact_statistics_and_keeps_momentum():
    from unlearnable.methods.optim import recalibrate_bn

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    model[1].running_mean.fill_(5.0)  # stale statistics, as a few SGD steps leave them
    x = torch.rand(10, 3, 8, 8)
    recalibrate_bn(model, [x[:5], x[5:]])  # equal batches: the cumulative mean is the exact one
    with torch.no_grad():
        feats = model[0](x)
    assert torch.allclose(model[1].running_mean, feats.mean((0, 2, 3)), atol=1e-5)
    assert model[1].momentum == 0.1 and not model.training


@pytest.mark.parametrize("name", ["em", "em-classwise"])
def test_em_with_recalibrated_bn_keeps_budget_and_determinism(name):
    data = random_imageset(16, size=8, classes=2, seed=3)
    a = small(name, recalibrate_bn=True).protect(data, "8/255", seed=1)
    b = small(name, recalibrate_bn=True).protect(data, "8/255", seed=1)
    assert a.norms["linf"]["max"] <= 8 and np.array_equal(a.protected.images, b.protected.images)
    # The δ-phase sees other statistics than the paper's loop, so other noise.
    c = small(name).protect(data, "8/255", seed=1)
    assert not np.array_equal(a.protected.images, c.protected.images)
