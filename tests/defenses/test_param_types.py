"""Spec and --param values are converted to the declared type of their field, in one place
(registry.typed_value): integral finite ints, finite floats, true/false/yes/no/1/0 bools."""

import pytest

from unlearnable.defenses import create_defense
from unlearnable.errors import UnlearnableError
from unlearnable.registry import typed_value


def one_line_error(spec):
    with pytest.raises(UnlearnableError) as e:
        create_defense(spec)
    msg = str(e.value)
    assert "\n" not in msg and msg
    return msg


@pytest.mark.parametrize("spec, key, value", [
    ("jpeg:quality=inf", "quality", "inf"),
    ("bdr:bits=inf", "bits", "inf"),
    ("median:size=inf", "size", "inf"),
    ("at:steps=inf", "steps", "inf"),
    ("standard:pad=nan", "pad", "nan"),
    ("at:seed=-inf", "seed", "-inf"),
    ("jpeg:quality=10.5", "quality", "10.5"),
])
def test_int_parameters_refuse_non_integral_values_by_name(spec, key, value):
    msg = one_line_error(spec)
    assert f"defense {spec!r}" in msg and f"{key} must be" in msg and "int" in msg and value in msg


def test_float_and_bool_parameters_are_checked():
    msg = one_line_error("gaussian:sigma=inf")
    assert "sigma must be float" in msg and "not a finite number" in msg
    msg = one_line_error("at:random_start=maybe")
    assert "random_start must be bool" in msg and "'maybe'" in msg and "defense 'at:random_start=maybe'" in msg
    assert create_defense("at:random_start=no").random_start is False
    assert create_defense("at:random_start=1").random_start is True
    assert create_defense("jpeg:quality=10.0").quality == 10 and create_defense("jpeg:quality=10.0").spec == "jpeg"
    assert create_defense("early-stop:patience=none").patience is None


@pytest.mark.parametrize("spec", ["at:eps=-1", "at:step=-1", "at:eps=inf", "at-l2:eps=nan"])
def test_at_size_errors_name_the_defense(spec):
    msg = one_line_error(spec)
    assert msg.startswith(f"defense {spec!r}: ") and spec.split(":")[1].split("=")[0] in msg
    assert "budget" not in msg  # not the protection budget's wording


def test_at_accepts_an_eps_below_one_grey_level():
    d = create_defense("at:eps=1e-30")
    assert d.eps == pytest.approx(1e-30)
    assert create_defense(d.spec).eps == pytest.approx(1e-30)  # the spec reads back (not "0/255")
    assert create_defense("at:eps=0.001,step=0.0005").step_size() == pytest.approx(0.0005)


@pytest.mark.parametrize("spec, fixed", [("at8:eps=2", "at:eps=2"), ("at8:steps=5", "at:eps=8,steps=5"),
                                         ("jpeg10:quality=20", "jpeg:quality=20")])
def test_short_form_with_parameters_says_to_use_the_long_form(spec, fixed):
    msg = one_line_error(spec)
    assert "takes no parameters" in msg and repr(fixed) in msg and "unknown defense" not in msg
    assert create_defense(fixed)  # the suggestion is a valid spec


def test_typed_value_shared_by_methods():
    from unlearnable.methods import create_method

    with pytest.raises(UnlearnableError, match="method 'em': pgd_steps must be int, got inf"):
        create_method("em", pgd_steps=float("inf"))
    with pytest.raises(UnlearnableError, match="step_size must be Optional\\[float\\], got nan"):
        create_method("em", step_size=float("nan"))
    with pytest.raises(UnlearnableError, match="faithful must be bool"):
        create_method("em", faithful="maybe")
    assert create_method("em", pgd_steps=4.0).pgd_steps == 4
    assert typed_value("x", "k", "bool", "Yes") is True and typed_value("x", "k", "bool", 0) is False
    assert typed_value("x", "k", "float", "2/255") == pytest.approx(2 / 255)
    assert typed_value("x", "k", "Optional[int]", "none") is None and typed_value("x", "k", int, "7") == 7
    assert typed_value("x", "k", "str", "abc") == "abc"
    for ann, bad in [("int", True), ("int", "3.5"), ("float", "inf"), ("bool", 2), ("bool", "maybe"), ("int", None)]:
        with pytest.raises(UnlearnableError, match="x: k must be"):
            typed_value("x", "k", ann, bad)
