"""The audit's data-level and augmentation defenses: squeezing (ISS), Cutout/MixUp/CutMix, COIN, UEraser.

CPU, tiny tensors; the two end-to-end runs train 1 epoch on 32 images of 16 px.
"""

import io
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from unlearnable.defenses import Compose, create_defense, list_defenses
from unlearnable.defenses.coin import coin_warp
from unlearnable.defenses.squeeze import gray_luma, jpeg_roundtrip
from unlearnable.defenses.ueraser import UEraser, max_loss_copies
from unlearnable.errors import UnlearnableError

DATASET = ["gray", "jpeg", "bdr", "median", "gaussian"]  # transform_dataset hooks
BATCH = ["cutout", "mixup", "cutmix", "coin", "ueraser-lite", "ueraser", "ueraser-max", "strong-aug"]  # augment/adversary
K = 10


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def u8(n=6, h=16, w=16, seed=0):
    return torch.randint(0, 256, (n, 3, h, w), dtype=torch.uint8, generator=gen(seed))


def smooth_u8(n=4, h=16, w=16, seed=0):
    """Natural-ish images: a smooth gradient plus mild noise (JPEG and filters behave as on photos)."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    base = torch.stack([yy, xx, (yy + xx) / 2])[None] * 200 + 20
    noise = torch.randn(n, 3, h, w, generator=gen(seed)) * 8
    return (base + noise).round().clamp(0, 255).to(torch.uint8)


def fb(b=8, h=16, w=16, seed=0):
    return torch.rand(b, 3, h, w, generator=gen(seed))


class TinyNet(torch.nn.Module):
    """Conv + BatchNorm + linear: enough to test the max-loss selection and BN buffers."""

    def __init__(self, k=K):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.fc = torch.nn.Linear(4, k)

    def forward(self, x):
        return self.fc(self.bn(self.conv(x)).mean((2, 3)))


def prepared(name):
    d = create_defense(name)
    d.prepare({"num_classes": K, "epochs": 4})
    return d


# -- every defense of this zoo ----------------------------------------------------------------
def test_zoo_is_registered():
    assert set(DATASET + BATCH) <= set(list_defenses())


@pytest.mark.parametrize("name", DATASET)
def test_dataset_defense_uint8_shape_and_deterministic(name):
    d = prepared(name)
    x, y = u8(), torch.arange(6) % K
    a, ya = d.transform_dataset(x.clone(), y, gen(1))
    b, _ = d.transform_dataset(x.clone(), y, gen(2))
    assert a.dtype == torch.uint8 and a.shape == x.shape and torch.equal(ya, y)
    assert torch.equal(a, b)  # deterministic squeezing: the generator is not even used
    assert not torch.equal(a, x)
    assert d.hooks() == ["transform_dataset"]


@pytest.mark.parametrize("name", BATCH)
def test_batch_defense_shape_range_and_same_seed(name):
    d = prepared(name)
    x, y = fb(), torch.arange(8) % K
    model = TinyNet()

    def run(seed):
        x2, y2 = d.augment(x.clone(), y.clone(), gen(seed))
        return d.adversary(model, x2, y2), y2

    before = torch.get_rng_state()
    a, ya = run(5)
    assert torch.equal(torch.get_rng_state(), before)  # kornia's draws do not leak into the global stream
    b, yb = run(5)
    c, _ = run(6)
    assert a.shape == x.shape and a.dtype == x.dtype and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b) and torch.equal(ya, yb)
    assert not torch.equal(a, x) and not torch.equal(a, c)
    assert ya.shape[0] == 8
    if ya.ndim == 2:
        assert torch.allclose(ya.sum(1), torch.ones(8))


# -- ISS squeezing ----------------------------------------------------------------------------
def test_gray_matches_pillow_and_replicates():
    x = u8(4, 32, 32)
    out, _ = create_defense("gray").transform_dataset(x, None)
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])
    ref = np.stack([np.asarray(Image.fromarray(a).convert("L")) for a in x.permute(0, 2, 3, 1).numpy()])
    assert np.array_equal(out[:, 0].numpy(), ref)
    assert torch.equal(gray_luma(x)[:, 0], out[:, 0])


def _pil_jpeg(img, q):
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=q)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def test_jpeg_is_a_real_codec_and_quality_orders_error():
    x = smooth_u8(6)
    y = torch.arange(6)
    q10, _ = create_defense("jpeg10").transform_dataset(x, y)
    q95, _ = create_defense("jpeg:quality=95").transform_dataset(x, y)
    ref = np.stack([_pil_jpeg(a, 10) for a in x.permute(0, 2, 3, 1).numpy()])
    assert np.array_equal(q10.permute(0, 2, 3, 1).numpy(), ref)  # thread pool == serial Pillow
    e10 = (q10.float() - x.float()).abs().mean()
    e95 = (q95.float() - x.float()).abs().mean()
    assert 0 < e95 < e10
    assert torch.equal(jpeg_roundtrip(x, 10, workers=1), q10)


def test_bdr_keeps_top_bits():
    x = u8(4)
    out, _ = create_defense("bdr2").transform_dataset(x, None)
    for c in range(3):
        assert len(torch.unique(out[:, c])) <= 4
    assert torch.equal(out, (x // 64) * 64)  # floor to multiples of 2^(8-2): {0, 64, 128, 192}
    assert torch.equal(create_defense("bdr:bits=8").transform_dataset(x, None)[0], x)


def test_median_removes_salt_and_keeps_flat():
    x = torch.full((2, 3, 9, 9), 100, dtype=torch.uint8)
    x[0, 1, 4, 4] = 255
    x[1, :, 0, 0] = 0  # a corner outlier: reflect padding must remove it too
    out, _ = create_defense("median3").transform_dataset(x, None)
    assert (out == 100).all()
    # Against a direct per-pixel reference on random data.
    r = u8(1, 7, 8, seed=3)
    got = create_defense("median").transform_dataset(r, None)[0]
    p = np.pad(r.numpy(), ((0, 0), (0, 0), (1, 1), (1, 1)), mode="reflect")
    ref = np.stack([[[[np.median(p[0, c, i : i + 3, j : j + 3]) for j in range(8)] for i in range(7)] for c in range(3)]])
    assert np.array_equal(got.numpy(), ref.astype(np.uint8))


def test_gaussian_lowers_high_frequency_energy():
    x = u8(4, 16, 16)
    out, _ = create_defense("gaussian1").transform_dataset(x, None)

    def hf(t):
        t = t.float()
        return (t[..., 1:, :] - t[..., :-1, :]).pow(2).mean() + (t[..., 1:] - t[..., :-1]).pow(2).mean()

    assert hf(out) < 0.2 * hf(x)
    assert abs(out.float().mean() - x.float().mean()) < 2  # a low-pass filter keeps the mean
    assert create_defense("gaussian").ksize == 7 and create_defense("gaussian:sigma=0.5").ksize == 5


# -- Cutout, MixUp, CutMix --------------------------------------------------------------------
@pytest.mark.parametrize("hw,side", [((32, 32), 16), ((16, 16), 8)])
def test_cutout_zeroes_one_clipped_square(hw, side):
    x = torch.ones(64, 3, *hw)
    out, _ = create_defense("cutout").augment(x, None, gen(4))
    zero = out[:, 0] == 0
    assert torch.equal(zero[:, None].expand_as(out), out == 0)  # same patch on all channels
    full = 0
    for m in zero:
        rows, cols = m.any(1), m.any(0)
        assert torch.equal(m, rows[:, None] & cols[None, :])  # one axis-aligned rectangle
        nr, nc = int(rows.sum()), int(cols.sum())
        assert 1 <= nr <= side and 1 <= nc <= side
        full += nr == side and nc == side
    assert full > 10  # interior centres give the whole square


def test_mixup_mixes_images_and_labels_with_the_same_weight():
    d = prepared("mixup")
    x = fb(10)
    y = torch.arange(10)
    out, ys = d.augment(x, y, gen(2))
    assert ys.shape == (10, K) and torch.allclose(ys.sum(1), torch.ones(10))
    lam = ys[torch.arange(10), y]
    moved = lam < 1  # samples whose partner is another image (perm[i] != i)
    assert moved.sum() > 5 and torch.allclose(lam[moved], lam[moved][0].expand(int(moved.sum())))  # one lambda per batch
    lam = torch.where(moved, lam[moved][0], lam)
    for i in range(10):
        others = [j for j in range(10) if j != i and ys[i, j] > 0]
        j = others[0] if others else i
        assert torch.allclose(out[i], lam[i] * x[i] + (1 - lam[i]) * x[j], atol=1e-6)
    # Soft labels in, soft labels out; alpha != 1 draws from Beta(alpha, alpha) deterministically.
    soft = torch.softmax(torch.randn(10, K, generator=gen()), 1)
    a = create_defense("mixup:alpha=0.2").augment(x, soft, gen(3))
    b = create_defense("mixup:alpha=0.2").augment(x, soft, gen(3))
    assert torch.equal(a[0], b[0]) and torch.allclose(a[1].sum(1), torch.ones(10))


def test_mixup_without_prepare_guesses_classes_with_a_warning():
    with pytest.warns(RuntimeWarning, match="num_classes"):
        _, ys = create_defense("mixup").augment(fb(4), torch.tensor([0, 1, 2, 3]), gen())
    assert ys.shape == (4, 4)


def test_cutmix_label_weight_is_the_pasted_area():
    d = prepared("cutmix")
    seen = set()
    for s in range(6):
        x = torch.arange(10, dtype=torch.float32).div(10).view(10, 1, 1, 1).expand(10, 3, 16, 16).contiguous()
        y = torch.arange(10)
        out, ys = d.augment(x, y, gen(s))
        assert torch.allclose(ys.sum(1), torch.ones(10))
        for i in range(10):
            own = (out[i] == x[i]).all(0).float().mean()  # fraction of pixels kept from image i
            if ys[i, i] < 1:
                assert torch.isclose(ys[i, i], own, atol=1e-6)
                seen.add(round(float(own), 3))
    assert len(seen) > 1


@pytest.mark.parametrize("name", ["mixup", "cutmix"])
def test_mixing_probability_mixes_that_share_of_batches(name):
    x, y = fb(), torch.arange(8) % K
    plain = prepared(name).augment(x.clone(), y.clone(), gen(3))
    always = prepared(f"{name}:p=1").augment(x.clone(), y.clone(), gen(3))
    assert torch.equal(plain[0], always[0])  # p = 1 draws nothing extra: the plain defense's stream
    never = prepared(f"{name}:p=0")
    assert all(never.augment(x, y, gen(s))[0] is x for s in range(5))
    half, g = prepared(f"{name}:p=0.5"), gen(4)
    mixed = sum(half.augment(x.clone(), y.clone(), g)[1].ndim == 2 for _ in range(200))
    assert 70 < mixed < 130  # one draw per batch, as the OP paper's cutmix_prob


def test_strong_aug_rotates_and_jitters_then_crops():
    # A single bright pixel moves under the geometric part (rotation, shear, scale, shift) and a
    # flat grey image changes level under the jitter alone.
    d = prepared("strong-aug:pad=0,flip=0,jitter=0")
    dot = torch.zeros(16, 3, 32, 32)
    dot[:, :, 16, 20] = 1.0
    out, _ = d.augment(dot, torch.zeros(16, dtype=torch.long), gen(0))
    moved = (out.sum(1).flatten(1).argmax(1) != 16 * 32 + 20).float().mean()
    assert moved > 0.5
    flat = torch.full((16, 3, 8, 8), 0.5)
    j, _ = prepared("strong-aug:degrees=0,shear=0,scale=0,pad=0,flip=0").augment(flat, torch.zeros(16), gen(0))
    assert j.std() > 0.01 and j.min() >= 0 and j.max() <= 1


# -- COIN -------------------------------------------------------------------------------------
def test_coin_matches_periodic_bilinear_reference():
    x = fb(2, 5, 6, seed=1)
    out = coin_warp(x, 2.0, gen(9))
    d = (torch.rand(2, 2, 5, 6, generator=gen(9)) * 2 - 1) * 2.0  # the same draws as coin_warp
    ref = torch.zeros_like(x)
    for b in range(2):
        for i in range(5):
            for j in range(6):
                r, c = (i + float(d[b, 0, i, j])) % 5, (j + float(d[b, 1, i, j])) % 6
                r0, c0 = int(np.floor(r)), int(np.floor(c))
                fr, fc = r - r0, c - c0
                for dr, wr in ((0, 1 - fr), (1, fr)):
                    for dc, wc in ((0, 1 - fc), (1, fc)):
                        ref[b, :, i, j] += wr * wc * x[b, :, (r0 + dr) % 5, (c0 + dc) % 6]
    assert torch.allclose(out, ref, atol=1e-5)


def test_coin_moves_pixels_but_keeps_constant_images():
    x = fb(4)
    out, _ = create_defense("coin").augment(x, None, gen())
    assert (out - x).abs().mean() > 0.05
    c = torch.full((2, 3, 16, 16), 0.3)
    assert torch.allclose(create_defense("coin").augment(c, None, gen())[0], c, atol=1e-6)
    assert torch.equal(create_defense("coin:alpha=0").augment(x, None, gen())[0], x)


# -- UEraser ----------------------------------------------------------------------------------
class BrightnessLoss(torch.nn.Module):
    """A fake classifier whose loss on class 0 grows with the image's mean brightness."""

    def forward(self, x):
        m = x.mean((1, 2, 3))
        return torch.stack([-10 * m, 10 * m], 1)


def test_max_loss_copies_picks_the_highest_loss_per_sample():
    copies = torch.rand(5, 6, 1, 1, 1, generator=gen()).expand(5, 6, 3, 4, 4).contiguous()
    out = max_loss_copies(BrightnessLoss(), copies, torch.zeros(6, dtype=torch.long))
    best = copies[:, :, 0, 0, 0].argmax(0)
    assert torch.equal(out, copies[best, torch.arange(6)])
    # Soft labels: for target class 1 the loss falls with brightness, so the darkest copy wins.
    soft = torch.tensor([[0.0, 1.0]]).expand(6, 2)
    out = max_loss_copies(BrightnessLoss(), copies, soft)
    assert torch.equal(out, copies[copies[:, :, 0, 0, 0].argmin(0), torch.arange(6)])


def test_ueraser_max_trains_on_the_max_loss_copy_and_leaves_bn_alone():
    d = prepared("ueraser-max")
    model = TinyNet().train()
    x, y = fb(6), torch.arange(6) % K
    state = {k: v.clone() for k, v in model.state_dict().items()}
    xa, _ = d.augment(x, y, gen(3))
    assert torch.equal(xa, x)  # the max phase makes its copies in the adversary
    seeds = list(d._seeds)
    out = d.adversary(model, xa, y)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # BN running stats untouched
    copies = torch.stack([d._augment_with_seed(x, s) for s in seeds])
    assert len(seeds) == 5
    with torch.no_grad():
        losses = torch.nn.functional.cross_entropy(model(copies.flatten(0, 1)), y.repeat(5), reduction="none").view(5, 6)
    assert torch.equal(out, copies[losses.argmax(0), torch.arange(6)])
    assert model.training


def test_ueraser_schedule_max_then_lite():
    d = create_defense("ueraser")
    assert isinstance(d, UEraser) and d.repeats == 5 and d.max_fraction == 0.3
    d.start_epoch(1, 10)
    assert d.in_max_phase() and d.max_phase_epochs() == 3
    d.start_epoch(4, 10)
    assert not d.in_max_phase()
    x, y = fb(4), torch.arange(4)
    xa, _ = d.augment(x, y, gen())
    assert not torch.equal(xa, x) and d.adversary(TinyNet(), xa, y) is xa  # Lite: one copy, no max
    d.start_epoch(60, 200)
    assert d.in_max_phase() and not (d.start_epoch(61, 200) or d.in_max_phase())
    e = create_defense("ueraser:max_epochs=2")
    e.start_epoch(3, 200)
    assert not e.in_max_phase()
    lite = create_defense("ueraser-lite")
    assert lite.hooks() == ["augment"] and create_defense("ueraser-max").spec == "ueraser-max"


def test_ueraser_jpeg_variant_quantises():
    out, _ = create_defense("ueraser-lite:jpeg=10").augment(fb(4), None, gen())
    assert torch.allclose(out * 255, (out * 255).round(), atol=1e-4)


# -- specs ------------------------------------------------------------------------------------
def test_short_forms_parse():
    assert create_defense("jpeg10").quality == 10 and create_defense("jpeg10").spec == "jpeg"
    assert create_defense("jpeg75").spec == "jpeg:quality=75"
    assert create_defense("bdr2").bits == 2 and create_defense("bdr3").spec == "bdr:bits=3"
    assert create_defense("median5").size == 5 and create_defense("gaussian0.5").sigma == 0.5
    c = create_defense("jpeg10+standard")
    assert isinstance(c, Compose) and [d.name for d in c.defenses] == ["jpeg", "standard"]
    assert c.hooks() == ["transform_dataset", "augment"]


def test_composition_is_left_to_right():
    x, y = u8(3, 16, 16), torch.arange(3)
    gray, jpeg = create_defense("gray"), create_defense("jpeg10")
    gj, _ = create_defense("gray+jpeg10").transform_dataset(x, y)
    jg, _ = create_defense("jpeg10+gray").transform_dataset(x, y)
    assert torch.equal(gj, jpeg.transform_dataset(gray.transform_dataset(x, y)[0], y)[0])
    assert torch.equal(jg, gray.transform_dataset(jpeg.transform_dataset(x, y)[0], y)[0])
    assert not torch.equal(gj, jg)
    assert torch.equal(jg[:, 0], jg[:, 1])  # gray last: channels equal


@pytest.mark.parametrize(
    "spec",
    ["jpeg:quality=0", "jpeg:quality=101", "jpeg0", "bdr:bits=0", "bdr:bits=9", "bdr9", "median:size=2",
     "gaussian:sigma=0", "gaussian:kernel_size=4", "cutout:length=0", "mixup:alpha=0", "cutmix:alpha=-1",
     "coin:alpha=-1", "ueraser:repeats=0", "ueraser:max_fraction=2", "ueraser-lite:plasma_p=1.5",
     "ueraser-lite:jpeg=101", "jpeg:quality=ten", "cutmix:p=1.5", "mixup:p=true", "strong-aug:degrees=-1",
     "strong-aug:scale=1", "strong-aug:pad=-2", "strong-aug:flip=2"],
)
def test_bad_parameter_is_one_line_error(spec):
    with pytest.raises(UnlearnableError) as e:
        create_defense(spec)
    assert str(e.value) and "\n" not in str(e.value)


# -- end to end through the engine -----------------------------------------------------------
@pytest.mark.parametrize("spec", ["ueraser", "jpeg10+standard"])
def test_plugs_into_train_victim(spec):
    from unlearnable.train.engine import train_victim
    from unlearnable.train.recipes import get_recipe

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (32, 16, 16, 3), dtype=np.uint8)
    y = np.arange(32) % 4
    rec = get_recipe("cpu-small").replace(epochs=1, batch_size=16)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # e.g. mixing without num_classes
        r1 = train_victim(x, y, x[:8], y[:8], recipe=rec, defense=spec, seed=0, device="cpu")
    r2 = train_victim(x, y, x[:8], y[:8], recipe=rec, defense=spec, seed=0, device="cpu")
    assert r1.defense == create_defense(spec).spec and r1.n_train == 32
    assert np.isfinite(r1.curve[0]["train_loss"])
    assert r1.curve[0]["train_loss"] == r2.curve[0]["train_loss"]  # same seed, same training on CPU


@pytest.mark.parametrize("spec", ["ueraser-lite", "gaussian", "strong-aug"])
def test_missing_kornia_is_a_one_line_error(spec, monkeypatch):
    import sys

    for mod in [m for m in sys.modules if m == "kornia" or m.startswith("kornia.")]:
        monkeypatch.setitem(sys.modules, mod, None)
    monkeypatch.setitem(sys.modules, "kornia", None)  # "import kornia" now raises ImportError
    d = create_defense(spec)
    with pytest.raises(UnlearnableError, match="pip install kornia"):
        if d.hooks() == ["augment"]:
            d.augment(fb(2), None, gen())
        else:
            d.transform_dataset(u8(2), None)
