"""Analysis tools: PSNR/SSIM, FGSM linearity proxy, gradient cosines, partial protection."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from unlearnable.analysis import (class_gradient_cosine, fgsm_success_rate, mix_protected, partial_protection, psnr,
                                  quality_report, ssim)
from unlearnable.data.imageset import ImageSet
from unlearnable.models import create_model
from unlearnable.train.recipes import get_recipe


def images(n=4, side=16, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, side, side, 3), dtype=np.uint8)


def test_psnr_identical_and_formula():
    x = images()
    assert np.isinf(psnr(x, x)).all()
    y = x.astype(np.int16)
    y[..., 0] = np.where(y[..., 0] < 128, y[..., 0] + 4, y[..., 0] - 4)  # |Δ| = 4 on one channel of three
    mse = 16 / 3
    assert psnr(x[0], y[0].astype(np.uint8)) == pytest.approx(10 * math.log10(255 ** 2 / mse))


def test_ssim_identical_and_decreasing_with_noise():
    rng = np.random.default_rng(1)
    x = np.clip(128 + 40 * np.sin(np.arange(32)[:, None, None] / 3.0) + rng.normal(0, 10, (32, 32, 3)), 0, 255)
    x = x.astype(np.uint8)
    assert ssim(x, x) == pytest.approx(1.0)
    vals = []
    for s in (4, 16, 48):
        noisy = np.clip(x + rng.normal(0, s, x.shape), 0, 255).astype(np.uint8)
        vals.append(ssim(x, noisy))
    assert 1.0 > vals[0] > vals[1] > vals[2]


def test_stacked_sets_match_image_by_image():
    """Stacked sets are measured in batches; a list one image at a time: the same numbers."""
    x = images(300, 12, seed=3)
    y = np.clip(x.astype(int) + np.random.default_rng(4).integers(-9, 10, x.shape), 0, 255).astype(np.uint8)
    y[5] = x[5]
    for fn in (psnr, ssim):
        batched, single = fn(x, y), fn(list(x), list(y))
        assert batched.shape == (300,) and np.allclose(batched, single, rtol=1e-12)
        assert fn(x[7], y[7]) == pytest.approx(batched[7], rel=1e-12)
    assert np.isinf(psnr(x, y)[5]) and ssim(x, y)[5] == pytest.approx(1.0)


def test_quality_report_lists_and_small_images():
    a = [images(1, 8)[0], images(1, 20, seed=2)[0]]
    b = [a[0].copy(), np.clip(a[1].astype(int) + 3, 0, 255).astype(np.uint8)]
    r = quality_report(a, b)
    assert r["n_identical"] == 1 and np.isfinite(r["psnr_mean"]) and r["psnr"].shape == (2,)
    assert r["ssim"][0] == pytest.approx(1.0) and r["ssim"][1] < 1.0


def _trained_linear(x, y, k=3):
    torch.manual_seed(0)
    model = create_model("linear", num_classes=k, input_size=x.shape[1])
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255
    yt = torch.from_numpy(y)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(30):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()
    return model


def test_fgsm_rate_in_unit_interval_and_grows_with_eps():
    x, y = images(60, 8), np.arange(60) % 3
    model = _trained_linear(x, y)
    rates = fgsm_success_rate(model, x, y, eps=(1 / 255, 8 / 255, 64 / 255), batch_size=16)
    assert set(rates) == {1 / 255, 8 / 255, 64 / 255}
    assert all(0.0 <= r <= 1.0 for r in rates.values())
    assert rates[1 / 255] <= rates[8 / 255] <= rates[64 / 255]
    assert model.training  # mode restored


def test_gradient_cosines_shape():
    x, y = images(30, 8), np.arange(30) % 3
    p = np.clip(x.astype(int) + 8, 0, 255).astype(np.uint8)
    model = _trained_linear(x, y)
    cos = class_gradient_cosine(model, x, p, y, num_classes=4)
    assert cos.shape == (4,) and np.isnan(cos[3]) and np.all(np.abs(cos[:3]) <= 1 + 1e-9)
    same = class_gradient_cosine(model, x, x, y, wrt="input")
    assert same.shape == (3,) and np.allclose(same, 1.0)


def test_partial_protection_one_accuracy_per_fraction():
    x, y = images(40, 16), np.arange(40) % 2
    train = ImageSet(x, y, ["a", "b"], [f"{i:02d}" for i in range(40)])
    prot = train.with_images(np.clip(x.astype(int) + np.where(y == 0, 8, -8)[:, None, None, None], 0, 255).astype(np.uint8))
    test = ImageSet(images(10, 16, seed=3), np.arange(10) % 2, ["a", "b"], [f"t{i}" for i in range(10)])
    mixed, mask = mix_protected(x, prot.stacked(), 0.5, seed=0)
    assert mask.sum() == 20 and (mixed[mask] == prot.stacked()[mask]).all() and (mixed[~mask] == x[~mask]).all()
    small_mask = mix_protected(x, prot.stacked(), 0.25, seed=0)[1]
    assert (mask[small_mask]).all()  # nested subsets
    recipe = dataclasses.replace(get_recipe("cpu-small"), epochs=1, batch_size=16)
    rows = partial_protection(train, prot, test, fractions=(0.0, 0.5, 1.0), recipe=recipe, defense=None,
                              arch="linear", device="cpu")
    assert [r["fraction"] for r in rows] == [0.0, 0.5, 1.0]
    assert [r["n_protected"] for r in rows] == [0, 20, 40]
    assert all(0.0 <= r["final_acc"] <= 1.0 for r in rows)


# -- explicit scales and arguments (QA) ----------------------------------------------------
def test_psnr_and_ssim_refuse_float_images_without_data_range():
    from unlearnable.errors import UnlearnableError

    x = images(2, 8).astype(np.float64) / 255.0
    for fn in (psnr, ssim):
        with pytest.raises(UnlearnableError, match="data_range"):
            fn(x, x + 0.01)  # [0, 1] floats: a peak of 255 would claim ~88 dB
        with pytest.raises(UnlearnableError, match="data_range must be a positive number"):
            fn(x, x, data_range=0)
    # With the peak said, [0, 1] floats give the formula's value (|Δ| = 0.01 everywhere: 40 dB).
    assert psnr(x, x + 0.01, data_range=1.0) == pytest.approx(np.full(2, 40.0))
    u = images(2, 16)
    v = np.clip(u.astype(int) + 5, 0, 255).astype(np.uint8)
    assert np.allclose(psnr(u / 255.0, v / 255.0, data_range=1.0), psnr(u, v))
    assert np.allclose(ssim(u / 255.0, v / 255.0, data_range=1.0), ssim(u, v))
    assert np.allclose(psnr(u.astype(np.int64), v.astype(np.int64)), psnr(u, v))  # integers in [0, 255]


@pytest.mark.parametrize("eps", [-1, -1 / 255, float("nan"), float("inf"), (1 / 255, -2 / 255), 8])
def test_fgsm_refuses_negative_or_non_finite_eps(eps):
    # 8 is not 8/255 here: ε is in the [0, 1] scale, and a value above 1 flips everything.
    from unlearnable.errors import UnlearnableError

    x, y = images(6, 8), np.arange(6) % 3
    model = _trained_linear(x, y)
    with pytest.raises(UnlearnableError, match=r"eps must be a number in \[0, 1\]"):
        fgsm_success_rate(model, x, y, eps=eps)


def test_quality_report_honours_size():
    from unlearnable.data.imageset import resize_image  # the Pillow bilinear resize of every view

    rng = np.random.default_rng(7)
    x = images(3, 32, seed=5)
    y = np.clip(x.astype(int) + rng.integers(-6, 7, x.shape), 0, 255).astype(np.uint8)
    native, small = quality_report(x, y), quality_report(x, y, size=16)
    assert native["size"] is None and small["size"] == 16
    xs = np.stack([resize_image(a, (16, 16)) for a in x])
    ys = np.stack([resize_image(a, (16, 16)) for a in y])
    assert np.allclose(small["psnr"], psnr(xs, ys)) and np.allclose(small["ssim"], ssim(xs, ys))
    assert not np.allclose(small["psnr"], native["psnr"])  # the size is not ignored
    assert quality_report(list(x), list(y), size=16)["psnr"] == pytest.approx(small["psnr"])
    from unlearnable.errors import UnlearnableError

    with pytest.raises(UnlearnableError, match="size must be a positive integer"):
        quality_report(x, y, size=0)
