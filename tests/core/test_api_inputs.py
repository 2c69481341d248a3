"""What a Python caller can get wrong, refused by name (found by a QA pass on the library API)."""

import numpy as np
import pytest
import torch

from helpers import random_imageset
from unlearnable.analysis.quality import psnr, ssim
from unlearnable.audit import run_audit
from unlearnable.data import load_images
from unlearnable.data.imageset import ImageSet
from unlearnable.data.save import output_names
from unlearnable.errors import UnlearnableError
from unlearnable.methods import create_method
from unlearnable.protect import load_protected, save_protected
from unlearnable.train import train_victim


def _x(n=6, size=8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


@pytest.mark.parametrize("bad", ["../../evil", "/tmp/evil", "a/../../b", "a//b", "", "./a"])
def test_ids_that_would_write_outside_the_output_are_refused(bad, tmp_path):
    with pytest.raises(UnlearnableError, match="id"):
        ImageSet(_x(2), None, [], ["ok", bad])
    with pytest.raises(UnlearnableError, match="id"):
        output_names(["ok", bad])
    # The same id from a file (an NPZ's ids) stops at loading, before anything is written.
    np.savez(tmp_path / "evil.npz", x=_x(2), y=np.array([0, 1]), ids=np.array(["ok", bad or "x/"]))
    with pytest.raises(UnlearnableError, match="id"):
        load_images(str(tmp_path / "evil.npz"))
    assert not (tmp_path.parent / "evil.png").exists()


@pytest.mark.parametrize("labels, says", [(np.array([0.5, 1.0]), "whole class indices"),
                                          (np.array(["a", "b"]), "integer class indices"),
                                          (np.array([0, -1]), ">= 0"), (np.array([0, 2]), r"\[0, 2\)"),
                                          (np.array([0]), "1 labels")])
def test_labels_are_checked_and_copied(labels, says):
    with pytest.raises(UnlearnableError, match=says):
        ImageSet(_x(2), labels, ["a", "b"], ["0", "1"])
    y = np.array([0, 1])
    data = ImageSet(_x(2), y, ["a", "b"], ["0", "1"])
    y[0] = 1  # the caller's array is not the set's
    assert data.labels.tolist() == [0, 1]
    with pytest.raises(ValueError, match="unique"):
        ImageSet(_x(2), y, ["a", "a"], ["0", "1"])


def test_train_victim_refuses_bad_test_labels_an_empty_test_set_and_a_wrong_layout():
    x, y = _x(8), np.arange(8) % 2
    run = dict(recipe="cpu-small:epochs=1", defense="none", device="cpu")
    with pytest.raises(UnlearnableError, match=">= 0"):
        train_victim(x, y, x, y - 1, **run)
    with pytest.raises(UnlearnableError, match="test set is empty"):
        train_victim(x, y, x[:0], y[:0], **run)
    with pytest.raises(UnlearnableError, match="C = 1 or 3"):  # NHWC as a tensor reads as 8 channels
        train_victim(torch.from_numpy(x), y, torch.from_numpy(x), y, **run)
    with pytest.raises(UnlearnableError, match="C = 1 or 3"):  # NCHW as an array
        train_victim(x.transpose(0, 3, 1, 2).copy(), y, x.transpose(0, 3, 1, 2).copy(), y, **run)


def test_quality_refuses_grey_stacks_and_a_bad_window():
    g = np.zeros((4, 16, 16), np.uint8)
    for f in (psnr, ssim):
        with pytest.raises(UnlearnableError, match="channel axis"):
            f(g, g)
    assert psnr(g[..., None], g[..., None] + 1).shape == (4,)
    with pytest.raises(UnlearnableError, match="win must be"):
        ssim(g[..., None], g[..., None], win=0)


def test_protect_names_what_it_takes():
    m = create_method("random")
    with pytest.raises(UnlearnableError, match="takes an ImageSet"):
        m.protect(_x(2))
    with pytest.raises(UnlearnableError, match="seed must be an integer"):
        m.protect(random_imageset(4), seed=None)


def test_run_audit_reads_a_defense_string_as_the_cli_list():
    data, test = random_imageset(12, size=8, classes=2, seed=1), random_imageset(6, size=8, classes=2, seed=2)
    records = run_audit(data, test, defenses="none,standard", recipe="cpu-small:epochs=1", device="cpu")
    assert sorted({r["defense"] for r in records}) == ["none", "standard"]
    with pytest.raises(UnlearnableError, match="no defenses"):
        run_audit(data, test, defenses=[], recipe="cpu-small:epochs=1", device="cpu")


def test_a_saved_set_reloads_with_the_labels_it_was_protected_with(tmp_path):
    # Flat ids (no class folders) and ids whose folder is not the class: the manifest's labels win.
    x = _x(6)
    for ids in (["img0", "img1", "img2", "img3", "img4", "img5"], ["c1/0", "c2/1", "c0/2", "c1/3", "c2/4", "c0/5"]):
        data = ImageSet(x, np.arange(6) % 3, ["c0", "c1", "c2"], ids)
        out = tmp_path / ids[0].replace("/", "_")
        save_protected(create_method("random").protect(data, seed=0), str(out))
        back = load_protected(str(out))
        assert back.ids == ids and back.classes == ["c0", "c1", "c2"] and back.labels.tolist() == [0, 1, 2, 0, 1, 2]


def test_the_analyses_check_labels_and_layouts():
    from unlearnable.analysis.csd import csd
    from unlearnable.analysis.gradients import class_gradient_cosine
    from unlearnable.analysis.linearity import fgsm_success_rate
    from unlearnable.analysis.separability import linear_separability
    from unlearnable.models import create_model

    x, y = _x(6), np.arange(6) % 3
    model = create_model("linear", num_classes=3, input_size=8)
    with pytest.raises(UnlearnableError, match="same images"):
        class_gradient_cosine(model, x, x[:, :4], y)
    with pytest.raises(UnlearnableError, match=">= 0"):
        class_gradient_cosine(model, x, x, y - 1)
    with pytest.raises(UnlearnableError, match="5 labels"):
        fgsm_success_rate(model, x, y[:5])
    with pytest.raises(UnlearnableError, match="C = 1 or 3"):  # NHWC handed over as a tensor
        fgsm_success_rate(model, torch.from_numpy(x), y)
    with pytest.raises(UnlearnableError, match=r"\[0, 2\)"):
        linear_separability(x, y, num_classes=2, steps=2, device="cpu")
    with pytest.raises(UnlearnableError, match=r"\[0, 2\)"):  # a class would be dropped silently
        csd(x.astype(np.float64), y, num_classes=2)
