"""Defense interface, registry, spec parsing, and the crop/flip kernels (CPU, fast)."""

import json

import numpy as np

import pytest
import torch

from unlearnable.defenses import (
    DEFENSES,
    Compose,
    Defense,
    Standard,
    create_defense,
    list_defenses,
    parse_spec,
)
from unlearnable.errors import UnlearnableError
from unlearnable.train.augment import random_crop, random_crop_flip, random_flip


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def float_batch(b=16, h=32, w=32, seed=0):
    return torch.rand(b, 3, h, w, generator=gen(seed))


def prepared(name, n=20, size=16, num_classes=10):
    """The defense, prepared as the engine does: with the class count and clean counterparts."""
    d = create_defense(name)
    clean = np.random.default_rng(1).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    d.prepare({"num_classes": num_classes, "clean_x": clean, "clean_y": np.arange(n) % 4, "epochs": 2,
               "device": torch.device("cpu")})
    return d


# -- every registered defense ----------------------------------------------------------------
@pytest.mark.parametrize("name", list_defenses())
def test_augment_preserves_shape_dtype_range(name):
    d = prepared(name)
    x = float_batch()
    y = torch.arange(16) % 10
    x2, y2 = d.augment(x.clone(), y.clone(), gen())
    assert x2.shape == x.shape and x2.dtype == x.dtype
    assert x2.min() >= 0 and x2.max() <= 1
    if y2.ndim == 2:  # mixing defenses turn hard labels into (B, K) distributions
        assert y2.shape == (16, 10) and torch.allclose(y2.sum(1), torch.ones(16))
    else:
        assert y2.shape == y.shape and y2.dtype == y.dtype


@pytest.mark.parametrize("name", list_defenses())
def test_augment_accepts_soft_labels(name):
    d = create_defense(name)
    y = torch.softmax(torch.randn(16, 10, generator=gen()), 1)
    _, y2 = d.augment(float_batch(), y, gen())
    assert y2.shape == (16, 10) and torch.allclose(y2.sum(1), torch.ones(16))


@pytest.mark.parametrize("name", list_defenses())
def test_transform_dataset_keeps_uint8(name):
    d = prepared(name)
    x = torch.randint(0, 256, (20, 3, 16, 16), dtype=torch.uint8, generator=gen())
    y = torch.arange(20) % 4
    x2, y2 = d.transform_dataset(x, y, gen())
    assert x2.dtype == torch.uint8 and x2.shape[1:] == x.shape[1:] and x2.shape[0] == y2.shape[0]


@pytest.mark.parametrize("name", list_defenses())
def test_same_seed_same_output(name):
    d = prepared(name)
    x, y = float_batch(), torch.arange(16) % 10
    a, _ = d.augment(x, y, gen(7))
    b, _ = d.augment(x, y, gen(7))
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", list_defenses())
def test_describe_is_json_and_spec_round_trips(name):
    d = create_defense(name)
    json.dumps(d.describe())
    assert create_defense(d.spec).spec == d.spec
    assert d.name == name


@pytest.mark.parametrize("name", list_defenses())
def test_adversary_default_identity_or_same_shape(name):
    d = create_defense(name)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10))
    x = float_batch(4, 8, 8)
    out = d.adversary(model, x, torch.arange(4))
    assert out.shape == x.shape


# -- standard: crop + flip --------------------------------------------------------------------
def planted(b=64, h=32, w=32):
    """A batch of one asymmetric image: a bright block near the top-left corner."""
    x = torch.zeros(b, 3, h, w)
    x[:, :, 5:9, 3:6] = 1.0
    x[:, 0, h - 3, w // 2] = 0.5
    return x


@pytest.mark.parametrize("hw", [(32, 32), (16, 24), (9, 9)])
def test_standard_shifts_and_flips_and_keeps_size(hw):
    x = planted(64, *hw)
    out, _ = Standard().augment(x, torch.zeros(64, dtype=torch.long), gen())
    assert out.shape == x.shape
    changed = (out != x).flatten(1).any(1)
    assert changed.sum() > 32  # 81 offsets x 2 flips: almost every sample changes
    assert torch.equal(Standard(pad=0, flip=0).augment(x, None)[0], x)
    # Zero padding: mass can only be lost at the border, never created.
    assert (out.sum((1, 2, 3)) <= x.sum((1, 2, 3)) + 1e-6).all()


def test_flip_only_is_exact_mirror_or_identity():
    x = planted(200)
    out = random_flip(x, 0.5, gen(3))
    flipped = (out == x.flip(3)).flatten(1).all(1)
    same = (out == x).flatten(1).all(1)
    assert (flipped | same).all()
    assert 60 < flipped.sum() < 140
    assert torch.equal(random_flip(x, 1.0, gen()), x.flip(3))
    assert torch.equal(random_flip(x, 0.0, gen()), x)


def _shift(img, dy, dx):
    """Reference: the window of the zero-padded image at offset (dy, dx) from the centre."""
    c, h, w = img.shape
    out = torch.zeros_like(img)
    ys, xs = slice(max(dy, 0), min(h + dy, h)), slice(max(dx, 0), min(w + dx, w))
    yd, xd = slice(max(-dy, 0), min(h - dy, h)), slice(max(-dx, 0), min(w - dx, w))
    out[:, yd, xd] = img[:, ys, xs]
    return out


def test_crop_matches_reference_shifts_and_covers_all_offsets():
    pad = 2
    img = torch.rand(3, 10, 12, generator=gen(1)) + 0.1  # no zeros: shifts are distinguishable
    x = img.expand(300, -1, -1, -1).contiguous()
    out = random_crop(x, pad, gen(2))
    seen = set()
    for i in range(out.shape[0]):
        hits = [(dy, dx) for dy in range(-pad, pad + 1) for dx in range(-pad, pad + 1) if torch.equal(out[i], _shift(img, dy, dx))]
        assert len(hits) == 1, f"sample {i} is not a padded shift"
        seen.add(hits[0])
    assert len(seen) == (2 * pad + 1) ** 2


def test_crop_works_on_uint8_and_pad_zero_is_identity():
    x = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8, generator=gen())
    out = random_crop(x, 4, gen())
    assert out.dtype == torch.uint8 and out.shape == x.shape
    assert torch.equal(random_crop(x, 0, gen()), x)
    assert torch.equal(random_crop_flip(x.float(), 0, 0.0, gen()), x.float())


def test_crop_output_is_channels_last_and_contiguous_input_agnostic():
    x = float_batch(4)
    a = random_crop(x, 4, gen(5))
    b = random_crop(x.contiguous(memory_format=torch.channels_last), 4, gen(5))
    assert torch.equal(a, b)
    assert a.is_contiguous(memory_format=torch.channels_last)


# -- specs --------------------------------------------------------------------------------
def test_spec_parsing():
    assert isinstance(create_defense("standard"), Standard)
    d = create_defense("standard:pad=2")
    assert d.pad == 2 and d.flip == 0.5 and d.spec == "standard:pad=2"
    c = create_defense("none+standard")
    assert isinstance(c, Compose) and [x.name for x in c.defenses] == ["none", "standard"]
    assert c.spec == "none+standard" and c.hooks() == ["augment"]
    assert create_defense(None).name == "none"
    assert parse_spec("a:x=1,y=0.5,z=true,w=abc+b") == [("a", {"x": 1, "y": 0.5, "z": True, "w": "abc"}), ("b", {})]
    assert create_defense(" standard : pad = 3 , flip = 0 ").spec == "standard:pad=3,flip=0.0"


@pytest.mark.parametrize(
    "spec",
    ["nope", "standard:pad", "standard:foo=1", "standard++none", "", "standard:", "standard:pad=-1",
     "standard:flip=2", "standard:pad=1,pad=2", ":pad=1"],
)
def test_bad_spec_is_one_line_error(spec):
    with pytest.raises(UnlearnableError) as e:
        create_defense(spec)
    assert "\n" not in str(e.value) and str(e.value)


def test_unknown_name_lists_available():
    with pytest.raises(UnlearnableError, match="standard"):
        create_defense("jpgg")


# -- composition ---------------------------------------------------------------------------
class AddOne(Defense):
    """Adds 1 to the pixels and a marker to the labels (test only)."""

    def __init__(self, amount: float = 1.0):
        self.amount = amount

    def transform_dataset(self, x, y, generator=None):
        return x + 1, y

    def augment(self, x, y, generator=None):
        return x + self.amount, y

    def adversary(self, model, x, y):
        return x + self.amount


class Double(Defense):
    def transform_dataset(self, x, y, generator=None):
        return x * 2, y

    def augment(self, x, y, generator=None):
        return x * 2, y

    def adversary(self, model, x, y):
        return x * 2


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(DEFENSES._entries, "t-add", AddOne)
    monkeypatch.setitem(DEFENSES._entries, "t-double", Double)
    monkeypatch.setattr(AddOne, "registry_name", "t-add", raising=False)
    monkeypatch.setattr(Double, "registry_name", "t-double", raising=False)


def test_composition_is_left_to_right(registered):
    x = torch.ones(1, 3, 2, 2)
    y = torch.zeros(1, dtype=torch.long)
    ab = create_defense("t-add:amount=2+t-double")  # (1 + 2) * 2 = 6
    ba = create_defense("t-double+t-add:amount=2")  # 1 * 2 + 2 = 4
    assert ab.augment(x, y)[0].flatten()[0] == 6 and ba.augment(x, y)[0].flatten()[0] == 4
    assert ab.adversary(None, x, y).flatten()[0] == 6 and ba.adversary(None, x, y).flatten()[0] == 4
    xi = torch.ones(1, 3, 2, 2, dtype=torch.uint8)
    assert ab.transform_dataset(xi, y)[0].flatten()[0] == 4 and ba.transform_dataset(xi, y)[0].flatten()[0] == 3
    assert ab.spec == "t-add:amount=2.0+t-double"  # amount is declared float: the spec value is converted


def test_compose_flattens_and_describes():
    c = Compose([Compose([AddOne(), Double()]), create_defense("standard")])
    assert [type(d) for d in c.defenses] == [AddOne, Double, Standard]
    assert c.hooks() == ["transform_dataset", "augment", "adversary"]
    json.dumps(c.describe())
    assert create_defense([AddOne(), "standard"]).defenses[1].name == "standard"


def test_unregistered_defense_names_itself_and_reports_params():
    d = AddOne(amount=3.0)
    assert d.name == "AddOne" and d.params() == {"amount": 3.0} and d.spec == "AddOne:amount=3.0"
    assert Defense().hooks() == [] and Double().hooks() == ["transform_dataset", "augment", "adversary"]


def test_subclass_of_registered_defense_does_not_inherit_its_name():
    class MyStandard(Standard):
        pass

    assert MyStandard().name == "MyStandard"


# -- lifecycle hooks and short forms ---------------------------------------------------------
def test_short_forms_expand_before_parsing():
    from unlearnable.defenses.base import SHORT_FORMS, register_short_form

    n = len(SHORT_FORMS)
    register_short_form(r"pad(\d+)", lambda m: f"standard:pad={m[1]}")
    try:
        d = create_defense("none+pad2")
        assert d.defenses[1].pad == 2
        assert create_defense("standard").pad == 4  # a registered name is never rewritten
    finally:
        del SHORT_FORMS[n:]


def test_engine_calls_prepare_and_start_epoch():
    from unlearnable.defenses import Defense
    from unlearnable.train.engine import train_victim
    from unlearnable.train.recipes import get_recipe

    class Spy(Defense):
        def __init__(self):
            self.calls = []

        def prepare(self, context):
            self.calls.append(("prepare", sorted(context)))

        def start_epoch(self, epoch, epochs):
            self.calls.append(("epoch", epoch, epochs))

    spy = Spy()
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (16, 8, 8, 3), dtype=np.uint8)
    y = np.arange(16) % 2
    rec = get_recipe("cpu-small").replace(epochs=2, batch_size=8)
    train_victim(x, y, x, y, recipe=rec, defense=create_defense(["none", spy]), seed=0, device="cpu",
                 context={"clean_x": x, "clean_y": y})
    assert spy.calls[0] == ("prepare", ["clean_x", "clean_y", "device", "epochs", "num_classes"])
    assert spy.calls[1:] == [("epoch", 1, 2), ("epoch", 2, 2)]
