"""Every registered method: budget after quantisation, shapes, dtype, determinism, mixed sizes."""

import numpy as np
import pytest

from unlearnable.budget import measure_change
from unlearnable.data.imageset import ImageSet
from unlearnable.errors import UnlearnableError
from unlearnable.methods import create_method as _create_method
from unlearnable.methods import list_methods

from helpers import random_imageset, smoke_method as create_method


@pytest.mark.parametrize("name", list_methods())
@pytest.mark.parametrize("layout", ["uniform", "mixed", "uniform-large"])
def test_budget_shape_dtype(name, layout):
    # uniform-large: one size above the native-working limit (64 px), so methods work at 32²
    # and resize δ back (a folder of 224-px photos).
    data = tiny_set(mixed=layout == "mixed", size=72 if layout == "uniform-large" else 8)
    method = create_method(name)
    res = method.protect(data, seed=3)
    budget = res.budget
    assert budget.norm == method.budget_norm
    assert len(res.protected) == len(data)
    assert res.protected.ids == data.ids and res.protected.classes == data.classes
    for i in range(len(data)):
        p, c = res.protected.image(i), data.image(i)
        assert p.dtype == np.uint8 and p.shape == c.shape
        assert budget.allows(measure_change(c, p))
    assert res.within_budget
    assert res.norms["linf"]["max"] <= 255


@pytest.mark.parametrize("name", list_methods())
def test_same_seed_same_bytes_other_seed_differs(name):
    data = tiny_set()
    m = create_method(name)
    a = m.protect(data, seed=1).protected.stacked()
    b = m.protect(data, seed=1).protected.stacked()
    c = m.protect(data, seed=2).protected.stacked()
    assert a.tobytes() == b.tobytes()
    if m.seeded:
        assert a.tobytes() != c.tobytes()
    else:
        assert a.tobytes() == c.tobytes()


@pytest.mark.parametrize("name", list_methods())
def test_input_not_modified(name):
    data = tiny_set()
    before = data.stacked().copy()
    create_method(name).protect(data, seed=0)
    assert (data.stacked() == before).all()


@pytest.mark.parametrize("name", list_methods())
def test_does_not_depend_on_file_order(name):
    """A method must not depend on the order files were read: permuting the set permutes the output."""
    data = tiny_set()
    perm = np.random.default_rng(5).permutation(len(data))
    a = create_method(name).protect(data, seed=0).protected
    b = create_method(name).protect(data.subset(perm), seed=0).protected
    if create_method(name).needs_labels:  # class-wise: the same pattern per class whatever the order
        assert (a.stacked()[perm] == b.stacked()).all()


def test_classwise_is_classwise_and_samplewise_is_not():
    data = tiny_set(n=30, classes=3)
    zero = data.with_images(np.full_like(data.stacked(), 128))
    cw = create_method("random-classwise").protect(zero, seed=0).protected.stacked().astype(int) - 128
    for k in range(3):
        group = cw[zero.labels == k]
        assert (group == group[0]).all()
    assert not (cw[0] == cw[1]).all()
    sw = create_method("random").protect(zero, seed=0).protected.stacked().astype(int) - 128
    assert not (sw[0] == sw[3]).all()
    assert set(np.unique(sw)) <= {-8, 8}


def test_regions_blocks():
    data = tiny_set(n=6, size=32, classes=2)
    zero = data.with_images(np.full_like(data.stacked(), 128))
    out = create_method("regions-4").protect(zero, seed=0).protected.stacked().astype(int) - 128
    quad = out[0, :16, :16]
    assert (quad == quad[0, 0]).all()
    assert set(np.unique(out)) <= {-8, 8}


def test_uniform_dist_within_budget():
    data = tiny_set()
    res = _create_method("random", dist="uniform").protect(data, "4/255", seed=0)
    assert res.norms["linf"]["max"] <= 4
    assert res.hyperparameters == {"dist": "uniform"}


def test_errors():
    data = tiny_set()
    with pytest.raises(UnlearnableError):
        create_method("nope")
    with pytest.raises(UnlearnableError):
        create_method("random", nope=1)
    with pytest.raises(UnlearnableError):
        create_method("random", dist="gauss").protect(data)
    with pytest.raises(UnlearnableError):
        create_method("regions-4", k=3).protect(data)
    unlabelled = ImageSet(data.stacked(), None, [], data.ids)
    # A method that needs labels protects unlabelled input against k-means pseudo-labels.
    res = create_method("random-classwise").protect(unlabelled)
    assert res.within_budget and res.protected.labels is None and res.pseudo_labels["k"] == 10
    assert create_method("random").protect(unlabelled).within_budget
    with pytest.raises(UnlearnableError):
        create_method("random").protect(data, "l2:1.0")


def _out_of_range(rule):
    """Values the rule refuses, from a few candidates on either side of every range in use."""
    _, ok = rule
    return [v for v in (-1, 0, 0.5, 1, 1.5) if not ok(v)]


@pytest.mark.parametrize("name", list_methods())
def test_every_ranged_hyperparameter_is_checked_at_creation(name):
    import dataclasses

    from unlearnable.methods.base import FIELD_RANGES

    ranged = [f.name for f in dataclasses.fields(create_method(name)) if f.name in FIELD_RANGES]
    for field in ranged:
        for bad in _out_of_range(FIELD_RANGES[field]):
            with pytest.raises(UnlearnableError, match=f"{field} must be"):
                create_method(name, **{field: bad})
    # Set after creation, a bad value is still refused before any work.
    if ranged:
        m = create_method(name)
        setattr(m, ranged[0], _out_of_range(FIELD_RANGES[ranged[0]])[0])
        with pytest.raises(UnlearnableError, match=f"{ranged[0]} must be"):
            m.protect(tiny_set())


def test_an_unbounded_method_refuses_a_budget():
    with pytest.raises(UnlearnableError, match="no ℓp bound"):
        create_method("cuda").parse_budget("8/255")
    assert create_method("cuda").parse_budget("none").norm == "none"
    with pytest.raises(UnlearnableError, match=r"give a budget like l2:1\.3041$"):
        create_method("lsp").parse_budget("linf:8/255")


def test_rng_streams_use_the_whole_name():
    from unlearnable.methods.base import rng_for

    a = rng_for(0, "airplane/00001.png").integers(0, 2**31)
    b = rng_for(0, "airplane/00002.png").integers(0, 2**31)
    assert a != b and rng_for(0, "airplane/00001.png").integers(0, 2**31) == a


def tiny_set(n=24, size=8, classes=3, seed=0, mixed=False):
    return random_imageset(n, size, classes, seed, mixed)
