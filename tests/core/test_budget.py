import math

import numpy as np
import pytest
import torch

from unlearnable.budget import Budget, measure_change
from unlearnable.errors import UnlearnableError


@pytest.mark.parametrize("spec,eps,levels", [
    ("8/255", 8 / 255, 8), ("8", 8 / 255, 8), ("0.0314", 0.0314, 8), (8, 8 / 255, 8),
    ("linf:16/255", 16 / 255, 16), ("4", 4 / 255, 4), ("1", 1 / 255, 1),
])
def test_parse_linf_one_rule(spec, eps, levels):
    b = Budget.parse(spec)
    assert b.norm == "linf"
    assert b.eps == pytest.approx(eps)
    assert b.levels == levels


def test_parse_other_norms():
    assert Budget.parse("l2:1.0").eps == 1.0
    assert Budget.parse("1.0", default_norm="l2").eps == 1.0  # ℓ2 bare numbers are [0,1]-scale
    assert Budget.parse("l0:1").eps == 1
    assert Budget.parse("none").norm == "none"


@pytest.mark.parametrize("bad", ["-8/255", "0", "abc", "8/0", "nan", "inf", "300", "0.001", "l0:1.5", "1/0"])
def test_nonsense_budgets_are_one_line_errors(bad):
    with pytest.raises(UnlearnableError) as e:
        Budget.parse(bad)
    assert "\n" not in str(e.value)
    assert str(bad.split(":")[-1]) in str(e.value) or "budget" in str(e.value).lower()


@pytest.mark.parametrize("eps", ["8/255", "0.0314", "4/255", "1/255"])
def test_quantize_exact_linf(eps):
    b = Budget.parse(eps)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (16, 12, 3), dtype=np.uint8)
    # Deliberately overshoot: values just above the budget must not round up past it.
    d = rng.choice([-1.0, 1.0], size=x.shape).astype(np.float32) * (b.eps + 0.49 / 255)
    out = b.quantize(x, d)
    m = measure_change(x, out)
    assert out.dtype == np.uint8 and out.shape == x.shape
    assert m["linf"] <= b.levels
    assert b.allows(m)


def test_quantize_rounds_not_truncates():
    b = Budget.parse("8/255")
    x = np.full((2, 2, 3), 100, np.uint8)
    d = np.full(x.shape, 7.6 / 255, np.float32)
    assert (b.quantize(x, d) == 108).all()
    assert (b.quantize(x, -d) == 92).all()


def test_quantize_clips_to_image_range():
    b = Budget.parse("8/255")
    x = np.array([[[0, 255, 3]]], np.uint8)
    out = b.quantize(x, np.array([[[-8 / 255, 8 / 255, -8 / 255]]], np.float32))
    assert out.tolist() == [[[0, 255, 0]]]


def test_quantize_l2_and_l0_exact():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    b2 = Budget.parse("l2:0.5")
    d = rng.normal(size=x.shape).astype(np.float32)
    d = b2.project(d[None])[0]
    assert b2.allows(measure_change(x, b2.quantize(x, d)))
    b0 = Budget.parse("l0:3")
    out = b0.quantize(x, rng.uniform(-0.5, 0.5, x.shape).astype(np.float32))
    assert measure_change(x, out)["l0"] <= 3


def test_project_torch_and_numpy_agree():
    rng = np.random.default_rng(2)
    d = rng.normal(size=(4, 3, 5, 5)).astype(np.float32)
    for spec in ["8/255", "l2:0.3"]:
        b = Budget.parse(spec)
        np.testing.assert_allclose(b.project(torch.from_numpy(d)).numpy(), b.project(d), rtol=1e-5, atol=1e-7)
    x = torch.rand(4, 3, 5, 5)
    p = Budget.parse("8/255").project(torch.from_numpy(d), x)
    assert float((x + p).min()) >= 0 and float((x + p).max()) <= 1


def test_describe_and_dict():
    b = Budget.parse("0.0314")
    assert b.describe() == "ℓ∞ ≤ 8/255"
    assert b.to_dict()["grey_levels"] == 8
    assert Budget.parse("none").to_dict()["eps"] is None
    assert math.isinf(Budget.parse("none").eps)


@pytest.mark.parametrize("spec", ["8/255", "0.03", "none"])
def test_grey_level_deltas_quantise_to_the_same_bytes_as_float(spec):
    # Methods may hand over δ rounded to whole grey levels (1 byte a pixel); the shared
    # application step must then publish exactly what the float δ gives.
    from unlearnable.methods import create_method
    from unlearnable.data.imageset import ImageSet
    from unlearnable.methods.base import float_delta, grey_levels

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (6, 9, 7, 3), dtype=np.uint8)
    scale = 0.6 if spec == "none" else 12 / 255  # beyond the budget too: projection and clipping
    d = (rng.uniform(-1, 1, x.shape) * scale).astype(np.float32)
    d[0, 0, 0] = [0.5 / 255, -2.5 / 255, 8 / 255]  # ties and the budget's edge
    method = create_method("random")
    budget = Budget.parse(spec)
    data = ImageSet(x, None, [], [f"{i}.png" for i in range(len(x))])
    as_float = method.apply(data, d, budget)
    q = grey_levels(d)
    assert q.dtype == (np.int16 if spec == "none" else np.int8)
    assert np.array_equal(method.apply(data, q, budget), as_float)
    assert np.array_equal(float_delta(q) * 255, np.rint(d * 255))
    mixed = ImageSet(list(x), None, [], data.ids)  # the per-image path of mixed-size sets
    assert all(np.array_equal(a, b) for a, b in zip(method.apply(mixed, list(q), budget), as_float))
