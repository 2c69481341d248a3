"""Tests for unlearnable.data.load: decoding rules, folder layouts, NPZ, CIFAR, errors."""

from __future__ import annotations

import hashlib
import os
import pickle
import struct
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unlearnable.data import ImageSet, find_splits, load_images, read_image
from unlearnable.errors import UnlearnableError


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------
def save_rgb(path: Path, color=(10, 20, 30), size=(4, 3), fmt=None) -> Path:
    """A solid-colour RGB image of ``size`` = (W, H)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format=fmt)
    return path


def make_folder(root: Path, layout: dict, size=(4, 3)) -> Path:
    """``layout`` = {class: n_images}; colours differ per image."""
    for c, (cls, n) in enumerate(sorted(layout.items())):
        for i in range(n):
            save_rgb(root / cls / f"{i:03d}.png", (c * 40, i * 10, 7), size)
    return root


def assert_one_line_error(excinfo, *needles: str) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and msg.strip() == msg
    for needle in needles:
        assert needle in msg, (needle, msg)
    return msg


# ---------------------------------------------------------------------------------------
# read_image: conversion rules
# ---------------------------------------------------------------------------------------
def test_read_image_rgb_and_hash(tmp_path):
    p = save_rgb(tmp_path / "a.png", (1, 2, 3), (5, 4))
    arr, digest = read_image(p)
    assert arr.shape == (4, 5, 3) and arr.dtype == np.uint8
    assert arr.flags.c_contiguous and arr.flags.writeable
    assert (arr == [1, 2, 3]).all()
    assert digest == hashlib.sha256(p.read_bytes()).hexdigest()
    arr2, _ = read_image(str(p))  # str paths too
    assert np.array_equal(arr, arr2)


def test_grayscale_L_and_1(tmp_path):
    Image.new("L", (3, 2), 100).save(tmp_path / "g.png")
    arr, _ = read_image(tmp_path / "g.png")
    assert arr.shape == (2, 3, 3) and (arr == 100).all()
    im = Image.new("1", (3, 2), 0)
    im.putpixel((1, 1), 1)
    im.save(tmp_path / "b.png")
    arr, _ = read_image(tmp_path / "b.png")
    assert arr[1, 1].tolist() == [255, 255, 255] and arr[0, 0].tolist() == [0, 0, 0]


def test_LA_composited_over_white(tmp_path):
    im = Image.new("LA", (2, 1), (50, 255))
    im.putpixel((1, 0), (50, 0))
    im.save(tmp_path / "la.png")
    arr, _ = read_image(tmp_path / "la.png")
    assert arr[0, 0].tolist() == [50, 50, 50]
    assert arr[0, 1].tolist() == [255, 255, 255]


def test_palette_without_and_with_transparency(tmp_path):
    im = Image.new("P", (2, 1))
    im.putpalette([255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 6))
    im.putpixel((0, 0), 0)
    im.putpixel((1, 0), 1)
    im.save(tmp_path / "p.png")
    arr, _ = read_image(tmp_path / "p.png")
    assert arr[0, 0].tolist() == [255, 0, 0] and arr[0, 1].tolist() == [0, 0, 255]

    im.save(tmp_path / "pt.png", transparency=1)
    with Image.open(tmp_path / "pt.png") as check:
        assert check.mode == "P" and "transparency" in check.info
    arr, _ = read_image(tmp_path / "pt.png")
    assert arr[0, 0].tolist() == [255, 0, 0]
    assert arr[0, 1].tolist() == [255, 255, 255]  # transparent index -> white


def test_rgba_composited_over_white(tmp_path):
    im = Image.new("RGBA", (3, 1))
    im.putpixel((0, 0), (255, 0, 0, 0))  # fully transparent
    im.putpixel((1, 0), (0, 0, 255, 255))  # opaque
    im.putpixel((2, 0), (0, 0, 0, 128))  # half
    im.save(tmp_path / "rgba.png")
    arr, _ = read_image(tmp_path / "rgba.png")
    assert arr[0, 0].tolist() == [255, 255, 255]
    assert arr[0, 1].tolist() == [0, 0, 255]
    assert arr[0, 2].tolist() == [127, 127, 127]  # round(255 * 127 / 255)


def test_16bit_png_scaled(tmp_path):
    values = np.array([[0, 65535, 32768, 257, 1000]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "d16.png")
    with Image.open(tmp_path / "d16.png") as check:
        assert check.mode.startswith("I")
    arr, _ = read_image(tmp_path / "d16.png")
    assert arr.shape == (1, 5, 3)
    assert arr[0, :, 0].tolist() == [0, 255, 128, 1, 4]  # round(v * 255 / 65535)
    assert (arr[..., 0] == arr[..., 2]).all()


def test_32bit_int_clipped_then_scaled(tmp_path):
    values = np.array([[-5, 70000, 65535, 0]], dtype=np.int32)
    Image.fromarray(values, mode="I").save(tmp_path / "i32.tif")
    arr, _ = read_image(tmp_path / "i32.tif")
    assert arr[0, :, 0].tolist() == [0, 255, 255, 0]


def test_float_images(tmp_path):
    unit = np.array([[0.0, 0.25, 1.0, -0.5]], dtype=np.float32)
    Image.fromarray(unit, mode="F").save(tmp_path / "unit.tif")
    arr, _ = read_image(tmp_path / "unit.tif")
    assert arr[0, :, 0].tolist() == [0, 64, 255, 0]
    wide = np.array([[10.4, 300.0, 2.0]], dtype=np.float32)
    Image.fromarray(wide, mode="F").save(tmp_path / "wide.tif")
    arr, _ = read_image(tmp_path / "wide.tif")
    assert arr[0, :, 0].tolist() == [10, 255, 2]


def test_cmyk_jpeg(tmp_path):
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=95)
    with Image.open(tmp_path / "cmyk.jpg") as check:
        assert check.mode == "CMYK"
    arr, _ = read_image(tmp_path / "cmyk.jpg")
    assert arr.shape == (8, 8, 3)
    r, g, b = arr[4, 4].astype(int)
    assert r > 240 and g < 15 and b < 15


def test_exif_orientation_applied(tmp_path):
    im = Image.new("RGB", (6, 2), (200, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    im.save(tmp_path / "rot.jpg", exif=exif)
    arr, _ = read_image(tmp_path / "rot.jpg")
    assert arr.shape == (6, 2, 3)  # width and height swapped
    im.save(tmp_path / "plain.jpg")
    assert read_image(tmp_path / "plain.jpg")[0].shape == (2, 6, 3)


def test_multiframe_gif_first_frame(tmp_path):
    frames = [Image.new("RGB", (4, 4), c) for c in [(255, 0, 0), (0, 0, 255), (0, 255, 0)]]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=50)
    with Image.open(tmp_path / "anim.gif") as check:
        assert check.n_frames == 3
    arr, _ = read_image(tmp_path / "anim.gif")
    assert arr.shape == (4, 4, 3)
    assert (arr == [255, 0, 0]).all()


def test_misnamed_but_valid_image_is_decoded(tmp_path):
    save_rgb(tmp_path / "really_png.jpg", (9, 8, 7), fmt="PNG")
    arr, _ = read_image(tmp_path / "really_png.jpg")
    assert (arr == [9, 8, 7]).all()


# ---------------------------------------------------------------------------------------
# read_image: errors
# ---------------------------------------------------------------------------------------
def test_read_image_missing(tmp_path):
    with pytest.raises(UnlearnableError) as e:
        read_image(tmp_path / "nope.png")
    assert_one_line_error(e, "nope.png")


def test_text_named_jpg(tmp_path):
    p = tmp_path / "fake.jpg"
    p.write_text("hello\nworld\n")
    with pytest.raises(UnlearnableError) as e:
        read_image(p)
    assert_one_line_error(e, str(p), "not an image")


@pytest.mark.parametrize("fmt,ext", [("PNG", "png"), ("JPEG", "jpg")])
def test_truncated_image(tmp_path, fmt, ext):
    rng = np.random.default_rng(0)
    good = tmp_path / f"good.{ext}"
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(good, format=fmt)
    data = good.read_bytes()
    bad = tmp_path / f"truncated.{ext}"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(UnlearnableError) as e:
        read_image(bad)
    assert_one_line_error(e, str(bad))


@pytest.mark.parametrize("fmt,ext", [("PNG", "png"), ("JPEG", "jpg")])
def test_corrupt_image(tmp_path, fmt, ext):
    rng = np.random.default_rng(1)
    good = tmp_path / f"good.{ext}"
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(good, format=fmt)
    data = bytearray(good.read_bytes())
    # keep the signature, destroy the structure after it
    data[4:200] = bytes(196)
    bad = tmp_path / f"corrupt.{ext}"
    bad.write_bytes(bytes(data))
    with pytest.raises(UnlearnableError) as e:
        read_image(bad)
    assert_one_line_error(e, str(bad))


def test_corrupt_png_bad_crc(tmp_path):
    good = save_rgb(tmp_path / "good.png", size=(16, 16))
    data = bytearray(good.read_bytes())
    idat = data.index(b"IDAT")
    data[idat + 6] ^= 0xFF  # flip a byte inside the compressed data
    bad = tmp_path / "crc.png"
    bad.write_bytes(bytes(data))
    with pytest.raises(UnlearnableError) as e:
        read_image(bad)
    assert_one_line_error(e, str(bad), "corrupt")


def test_decompression_bomb(tmp_path, monkeypatch):
    p = save_rgb(tmp_path / "big.png", size=(100, 100))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(UnlearnableError) as e:
        read_image(p)
    assert_one_line_error(e, str(p), "decompression bomb")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads everything")
def test_unreadable_file(tmp_path):
    p = save_rgb(tmp_path / "secret.png")
    p.chmod(0)
    try:
        with pytest.raises(UnlearnableError) as e:
            read_image(p)
        assert_one_line_error(e, str(p), "permission")
    finally:
        p.chmod(0o644)


# ---------------------------------------------------------------------------------------
# image folders
# ---------------------------------------------------------------------------------------
def test_imagefolder_uniform_stacked(tmp_path):
    make_folder(tmp_path / "ds", {"cat": 3, "dog": 2})
    s = load_images(tmp_path / "ds")
    assert isinstance(s, ImageSet)
    assert isinstance(s.images, np.ndarray) and s.images.shape == (5, 3, 4, 3)
    assert s.images.flags.writeable and s.images.flags.c_contiguous
    assert s.classes == ["cat", "dog"]
    assert s.labels.tolist() == [0, 0, 0, 1, 1] and s.labels.dtype == np.int64
    assert s.ids == ["cat/000.png", "cat/001.png", "cat/002.png", "dog/000.png", "dog/001.png"]
    assert s.source == "imagefolder"
    assert s.root == (tmp_path / "ds").resolve()
    for i, rel in enumerate(s.ids):
        assert s.sha256[i] == hashlib.sha256((tmp_path / "ds" / rel).read_bytes()).hexdigest()
        assert np.array_equal(s.images[i], read_image(tmp_path / "ds" / rel)[0])
    assert s.images[4].tolist()[0][0] == [40, 10, 7]


def test_imagefolder_mixed_sizes_list(tmp_path):
    save_rgb(tmp_path / "a" / "1.png", size=(4, 3))
    save_rgb(tmp_path / "a" / "2.png", size=(5, 5))
    save_rgb(tmp_path / "b" / "1.png", size=(4, 3))
    s = load_images(tmp_path)
    assert isinstance(s.images, list) and len(s.images) == 3
    assert [im.shape for im in s.images] == [(3, 4, 3), (5, 5, 3), (3, 4, 3)]
    assert all(im.flags.writeable and im.dtype == np.uint8 for im in s.images)
    assert not s.uniform


def test_order_independent_of_creation_order(tmp_path):
    names = ["b.png", "a.png", "c10.png", "c2.png", "A.png"]
    for root, order in ((tmp_path / "one", names), (tmp_path / "two", list(reversed(names)))):
        for cls in (["zeta", "alpha"] if root.name == "one" else ["alpha", "zeta"]):
            for n in order:
                save_rgb(root / cls / n)
    a, b = load_images(tmp_path / "one"), load_images(tmp_path / "two")
    assert a.ids == b.ids
    assert a.ids[:5] == ["alpha/A.png", "alpha/a.png", "alpha/b.png", "alpha/c10.png", "alpha/c2.png"]
    assert a.classes == ["alpha", "zeta"]
    assert a.sha256 == b.sha256


def test_nested_class_subfolders(tmp_path):
    save_rgb(tmp_path / "cat" / "b.png")
    save_rgb(tmp_path / "cat" / "a" / "x.png")
    save_rgb(tmp_path / "cat" / "a" / "deep" / "y.png")
    save_rgb(tmp_path / "dog" / "sub" / "z.png")
    s = load_images(tmp_path)
    assert s.ids == ["cat/a/deep/y.png", "cat/a/x.png", "cat/b.png", "dog/sub/z.png"]
    assert s.labels.tolist() == [0, 0, 0, 1]


def test_symlinked_class_folder_is_followed(tmp_path):
    make_folder(tmp_path / "elsewhere", {"cat": 2})
    make_folder(tmp_path / "ds", {"dog": 1})
    (tmp_path / "ds" / "cat").symlink_to(tmp_path / "elsewhere" / "cat", target_is_directory=True)
    s = load_images(tmp_path / "ds")
    assert s.ids == ["cat/000.png", "cat/001.png", "dog/000.png"]


def test_hidden_files_and_folders_skipped(tmp_path):
    make_folder(tmp_path, {"cat": 1, "dog": 1})
    (tmp_path / "cat" / ".DS_Store").write_bytes(b"\x00junk")
    save_rgb(tmp_path / "cat" / ".hidden.png")
    save_rgb(tmp_path / "cat" / ".cache" / "thumb.png")
    save_rgb(tmp_path / ".ipynb_checkpoints" / "x.png")
    (tmp_path / ".gitignore").write_text("*\n")
    (tmp_path / "dog" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")  # what Windows leaves in photo folders
    (tmp_path / "dog" / "desktop.ini").write_text("[.ShellClassInfo]\n")
    save_rgb(tmp_path / "__MACOSX" / "cat" / "._000.png")  # a folder unzipped from a Mac
    s = load_images(tmp_path)
    assert s.classes == ["cat", "dog"]
    assert s.ids == ["cat/000.png", "dog/000.png"]


def test_root_manifest_and_readme_ignored(tmp_path):
    make_folder(tmp_path, {"cat": 1, "dog": 1})
    (tmp_path / "manifest.json").write_text('{"a": 1}')
    (tmp_path / "README").write_text("hi")
    (tmp_path / "LICENSE.txt").write_text("MIT")
    s = load_images(tmp_path)
    assert len(s) == 2 and s.classes == ["cat", "dog"]


def test_flat_folder_unlabelled(tmp_path):
    save_rgb(tmp_path / "b.jpg")
    save_rgb(tmp_path / "a.png")
    (tmp_path / "manifest.json").write_text("{}")
    s = load_images(tmp_path)
    assert s.labels is None and s.classes == [] and s.source == "flat"
    assert s.ids == ["a.png", "b.jpg"]
    assert find_splits(tmp_path) == []
    with pytest.raises(UnlearnableError) as e:
        load_images(tmp_path, labels="folders")
    assert_one_line_error(e, str(tmp_path), "class folders")


def test_labels_none_keeps_ids_and_order(tmp_path):
    make_folder(tmp_path, {"cat": 2, "dog": 2})
    auto = load_images(tmp_path)
    none = load_images(tmp_path, labels="none")
    assert none.labels is None and none.classes == []
    assert none.ids == auto.ids
    assert np.array_equal(none.images, auto.images)
    # a single class is fine when labels are not wanted
    make_folder(tmp_path / "single", {"only": 2})
    assert len(load_images(tmp_path / "single", labels="none")) == 2


def test_workers_and_progress(tmp_path):
    make_folder(tmp_path, {"a": 40, "b": 30})
    calls = []
    s1 = load_images(tmp_path, workers=1)
    s4 = load_images(tmp_path, workers=4, progress=lambda d, t: calls.append((d, t)))
    assert np.array_equal(s1.images, s4.images) and s1.ids == s4.ids
    assert calls[-1] == (70, 70)
    assert all(t == 70 for _, t in calls)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_split_directory(tmp_path):
    make_folder(tmp_path / "train", {"cat": 3, "dog": 3})
    make_folder(tmp_path / "test", {"cat": 1, "dog": 1})
    (tmp_path / "README.md").write_text("splits")
    assert find_splits(tmp_path) == ["test", "train"]
    tr = load_images(tmp_path)
    te = load_images(tmp_path, split="test")
    assert len(tr) == 6 and len(te) == 2
    assert tr.root == (tmp_path / "train").resolve()
    assert te.ids == ["cat/000.png", "dog/000.png"]
    with pytest.raises(UnlearnableError) as e:
        load_images(tmp_path, split="val")
    assert_one_line_error(e, str(tmp_path), "val", "test, train")
    # the folder an archive was unpacked into (one folder holding the split folders) also works
    outer = tmp_path.parent / (tmp_path.name + "_outer")
    outer.mkdir()
    (outer / "data").symlink_to(tmp_path, target_is_directory=True)
    assert find_splits(outer) == ["test", "train"]
    assert load_images(outer, split="test").ids == te.ids


def test_class_named_train_is_not_a_split(tmp_path):
    make_folder(tmp_path, {"bus": 1, "car": 1, "train": 1})
    s = load_images(tmp_path)
    assert s.classes == ["bus", "car", "train"]
    assert find_splits(tmp_path) == []


# ---------------------------------------------------------------------------------------
# folder errors
# ---------------------------------------------------------------------------------------
def test_missing_path(tmp_path):
    with pytest.raises(UnlearnableError) as e:
        load_images(tmp_path / "missing")
    assert_one_line_error(e, str(tmp_path / "missing"))
    with pytest.raises(UnlearnableError):
        find_splits(tmp_path / "missing")


def test_non_image_file_in_class_folder(tmp_path):
    make_folder(tmp_path, {"cat": 2, "dog": 2})
    (tmp_path / "dog" / "notes.txt").write_text("not a picture\n")
    with pytest.raises(UnlearnableError) as e:
        load_images(tmp_path)
    assert_one_line_error(e, str(tmp_path / "dog" / "notes.txt"))


def test_text_named_jpg_in_class_folder(tmp_path):
    make_folder(tmp_path, {"cat": 2, "dog": 2})
    (tmp_path / "cat" / "001.jpg").write_text("<html>oops</html>")
    with pytest.raises(UnlearnableError) as e:
        load_images(tmp_path, workers=2)
    assert_one_line_error(e, str(tmp_path / "cat" / "001.jpg"), "not an image")


def test_truncated_image_in_folder(tmp_path):
    make_folder(tmp_path, {"cat": 2, "dog": 2}, size=(32, 32))
    p = tmp_path / "dog" / "001.png"
    p.write_bytes(p.read_bytes()[:60])
    with pytest.raises(UnlearnableError) as e:
        load_images(tmp_path)
    assert_one_line_error(e, str(p))


def test_empty_class_folder(tmp_path):
    make_folder(tmp_path, {"cat": 1, "dog": 1})
    (tmp_path / "bird").mkdir()
    (tmp_path / "bird" / ".keep").write_text("")
    with pytest.raises(UnlearnableError) as e:
        load_images(tmp_path)
    assert_one_line_error(e, "class folder", str(tmp_path / "bird"), "no images")


def test_single_class(tmp_path):
    make_folder(tmp_path, {"cat": 3})
    with pytest.raises(UnlearnableError) as e:
        load_images(tmp_path)
    assert_one_line_error(e, "only one class (cat)", str(tmp_path), "at least two")


def test_images_at_root_next_to_class_folders(tmp_path):
    make_folder(tmp_path, {"cat": 1, "dog": 1})
    save_rgb(tmp_path / "stray.jpg")
    with pytest.raises(UnlearnableError) as e:
        load_images(tmp_path)
    assert_one_line_error(e, str(tmp_path), "class folder", "stray.jpg")


def test_no_images_at_all(tmp_path):
    (tmp_path / "README.md").write_text("empty")
    with pytest.raises(UnlearnableError) as e:
        load_images(tmp_path)
    assert_one_line_error(e, "no images", str(tmp_path))


def test_broken_symlink_in_class_folder(tmp_path):
    make_folder(tmp_path, {"cat": 1, "dog": 1})
    (tmp_path / "cat" / "gone.png").symlink_to(tmp_path / "does-not-exist.png")
    with pytest.raises(UnlearnableError) as e:
        load_images(tmp_path)
    assert_one_line_error(e, str(tmp_path / "cat" / "gone.png"), "broken")


def test_bad_labels_argument(tmp_path):
    make_folder(tmp_path, {"cat": 1, "dog": 1})
    with pytest.raises(UnlearnableError) as e:
        load_images(tmp_path, labels="yes")
    assert_one_line_error(e, "labels")


def test_plain_file_that_is_not_npz(tmp_path):
    p = save_rgb(tmp_path / "one.png")
    with pytest.raises(UnlearnableError) as e:
        load_images(p)
    assert_one_line_error(e, str(p))


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads everything")
def test_unreadable_folder(tmp_path):
    make_folder(tmp_path / "ds", {"cat": 1, "dog": 1})
    (tmp_path / "ds" / "dog").chmod(0)
    try:
        with pytest.raises(UnlearnableError) as e:
            load_images(tmp_path / "ds")
        assert_one_line_error(e, "permission")
    finally:
        (tmp_path / "ds" / "dog").chmod(0o755)


# ---------------------------------------------------------------------------------------
# NPZ
# ---------------------------------------------------------------------------------------
def test_npz_round_trip_with_classes_and_ids(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (5, 6, 7, 3), dtype=np.uint8)
    y = np.array([1, 0, 2, 1, 0])
    ids = np.array([f"img{i}.png" for i in range(5)])
    p = tmp_path / "d.npz"
    np.savez(p, x=x, y=y, classes=np.array(["a", "b", "c"]), ids=ids)
    s = load_images(p)
    assert np.array_equal(s.images, x)
    assert s.labels.tolist() == y.tolist() and s.classes == ["a", "b", "c"]
    assert s.ids == ids.tolist()
    assert s.source == "npz"
    assert s.source_files == {"d.npz": hashlib.sha256(p.read_bytes()).hexdigest()}
    assert find_splits(p) == []


def test_npz_defaults(tmp_path):
    x = np.zeros((3, 2, 2, 3), np.uint8)
    np.savez(tmp_path / "d.npz", x=x, y=np.array([1, 0, 1], dtype=np.uint8))
    s = load_images(tmp_path / "d.npz")
    assert s.classes == ["0", "1"]
    assert s.ids == ["1/00000.png", "0/00001.png", "1/00002.png"]
    none = load_images(tmp_path / "d.npz", labels="none")
    assert none.labels is None and none.classes == [] and none.ids == s.ids


def test_npz_split_keys(tmp_path):
    p = tmp_path / "s.npz"
    np.savez_compressed(
        p,
        x_train=np.full((4, 2, 2, 3), 1, np.uint8), y_train=np.array([0, 1, 0, 1]),
        x_test=np.full((2, 2, 2, 3), 2, np.uint8), y_test=np.array([1, 0]),
        classes=np.array(["cat", "dog"]),
    )
    assert find_splits(p) == ["test", "train"]
    tr, te = load_images(p), load_images(p, split="test")
    assert len(tr) == 4 and (tr.images == 1).all()
    assert len(te) == 2 and (te.images == 2).all()
    assert te.ids == ["dog/00000.png", "cat/00001.png"]
    with pytest.raises(UnlearnableError) as e:
        load_images(p, split="val")
    assert_one_line_error(e, "val", str(p), "test, train")


@pytest.mark.parametrize("shape", [(3, 4, 5), (3, 4, 5, 1)])
def test_npz_grayscale_replicated(tmp_path, shape):
    x = np.arange(np.prod(shape), dtype=np.uint8).reshape(shape)
    np.savez(tmp_path / "g.npz", x=x, y=np.array([0, 1, 1]))
    s = load_images(tmp_path / "g.npz")
    assert s.images.shape == (3, 4, 5, 3)
    gray = x.reshape(3, 4, 5)
    for c in range(3):
        assert np.array_equal(s.images[..., c], gray)


def test_npz_that_is_not_numpy_or_holds_objects(tmp_path):
    # NumPy takes both for pickles and advises loading "unsafely"; the error says what is wrong.
    p = tmp_path / "f.npz"
    p.write_bytes(b"not an archive")
    with pytest.raises(UnlearnableError) as e:
        load_images(p)
    assert_one_line_error(e, str(p), "not a NumPy file")
    assert "unsafely" not in str(e.value)
    np.savez(p, x=np.zeros((2, 2, 2, 3), np.uint8), y=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(UnlearnableError) as e:
        load_images(p)
    assert_one_line_error(e, str(p), "pickled objects")


def test_npz_errors(tmp_path):
    p = tmp_path / "f.npz"
    np.savez(p, x=np.zeros((2, 2, 2, 3), np.float32), y=np.array([0, 1]))
    with pytest.raises(UnlearnableError) as e:
        load_images(p)
    assert_one_line_error(e, str(p), "uint8", "float32")

    np.savez(p, x=np.zeros((2, 2, 2, 3), np.uint8), y=np.array([0, 5]), classes=np.array(["a", "b"]))
    with pytest.raises(UnlearnableError) as e:
        load_images(p)
    assert_one_line_error(e, str(p), "label")

    np.savez(p, x=np.zeros((2, 2, 2, 4), np.uint8), y=np.array([0, 1]))
    with pytest.raises(UnlearnableError) as e:
        load_images(p)
    assert_one_line_error(e, str(p), "shape")

    np.savez(p, x=np.zeros((2, 2, 2, 3), np.uint8), y=np.array([0, 1, 1]))
    with pytest.raises(UnlearnableError) as e:
        load_images(p)
    assert_one_line_error(e, str(p))

    np.savez(p, images=np.zeros((2, 2, 2, 3), np.uint8))
    with pytest.raises(UnlearnableError) as e:
        load_images(p)
    assert_one_line_error(e, str(p), "'x'")

    np.savez(p, x=np.array([object(), object()], dtype=object), y=np.array([0, 1]))
    with pytest.raises(UnlearnableError) as e:
        load_images(p)
    assert_one_line_error(e, str(p))

    p.write_text("not a zip")
    with pytest.raises(UnlearnableError) as e:
        load_images(p)
    assert_one_line_error(e, str(p))


# ---------------------------------------------------------------------------------------
# CIFAR python batches
# ---------------------------------------------------------------------------------------
def _dump(path: Path, obj) -> None:
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=2)


def _cifar_data(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3072), dtype=np.uint8)


def make_cifar10(folder: Path, per_batch=2, n_test=3) -> Path:
    folder.mkdir(parents=True)
    names = [f"class{i}".encode() for i in range(10)]
    _dump(folder / "batches.meta", {b"label_names": names, b"num_cases_per_batch": per_batch, b"num_vis": 3072})
    for b in range(1, 6):
        data = _cifar_data(per_batch, b)
        _dump(folder / f"data_batch_{b}", {
            b"batch_label": f"training batch {b} of 5".encode(),
            b"labels": [(b + i) % 10 for i in range(per_batch)],
            b"data": data,
            b"filenames": [f"f{b}_{i}.png".encode() for i in range(per_batch)],
        })
    _dump(folder / "test_batch", {
        b"batch_label": b"testing batch 1 of 1",
        b"labels": [i % 10 for i in range(n_test)],
        b"data": _cifar_data(n_test, 99),
        b"filenames": [f"t{i}.png".encode() for i in range(n_test)],
    })
    return folder


def test_cifar10_layout_and_pixels(tmp_path):
    folder = make_cifar10(tmp_path / "cifar-10-batches-py")
    # a known pixel: first image of batch 1, row 1, column 2
    batch = pickle.loads((folder / "data_batch_1").read_bytes(), encoding="bytes")
    batch[b"data"][0, 0 * 1024 + 1 * 32 + 2] = 201  # R plane
    batch[b"data"][0, 1 * 1024 + 1 * 32 + 2] = 102  # G plane
    batch[b"data"][0, 2 * 1024 + 1 * 32 + 2] = 53  # B plane
    _dump(folder / "data_batch_1", batch)

    s = load_images(folder)
    assert s.source == "cifar"
    assert s.images.shape == (10, 32, 32, 3) and s.images.dtype == np.uint8
    assert s.images[0, 1, 2].tolist() == [201, 102, 53]
    expected = np.concatenate([pickle.loads((folder / f"data_batch_{b}").read_bytes(), encoding="bytes")[b"data"]
                               for b in range(1, 6)])
    assert np.array_equal(s.images, expected.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    assert s.classes == [f"class{i}" for i in range(10)]
    assert s.labels.tolist()[:4] == [1, 2, 2, 3]
    assert s.ids[:2] == ["class1/00000.png", "class2/00001.png"]
    assert len(set(s.ids)) == 10
    assert set(s.source_files) == {"batches.meta"} | {f"data_batch_{b}" for b in range(1, 6)}
    assert s.source_files["data_batch_3"] == hashlib.sha256((folder / "data_batch_3").read_bytes()).hexdigest()

    te = load_images(folder, split="test")
    assert len(te) == 3 and te.ids[2] == "class2/00002.png"
    assert set(te.source_files) == {"batches.meta", "test_batch"}
    assert find_splits(folder) == ["test", "train"]
    # the folder containing cifar-10-batches-py works too
    assert load_images(tmp_path).ids == s.ids
    assert find_splits(tmp_path) == ["test", "train"]
    none = load_images(folder, labels="none")
    assert none.labels is None and none.classes == [] and none.ids == s.ids
    with pytest.raises(UnlearnableError) as e:
        load_images(folder, split="val")
    assert_one_line_error(e, "val", "test, train")


def test_cifar10_missing_batch(tmp_path):
    folder = make_cifar10(tmp_path / "c")
    (folder / "data_batch_4").unlink()
    with pytest.raises(UnlearnableError) as e:
        load_images(folder)
    assert_one_line_error(e, str(folder / "data_batch_4"))


def test_cifar100(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    fine = [f"fine{i:02d}".encode() for i in range(100)]
    _dump(folder / "meta", {b"fine_label_names": fine, b"coarse_label_names": [b"c"] * 20})
    train = _cifar_data(4, 1)
    train[3, 2 * 1024 + 31 * 32 + 31] = 77  # B of the bottom-right pixel of image 3
    _dump(folder / "train", {b"data": train, b"fine_labels": [5, 99, 0, 5], b"coarse_labels": [1, 2, 3, 4],
                             b"filenames": [b"a", b"b", b"c", b"d"], b"batch_label": b"training batch 1 of 1"})
    _dump(folder / "test", {b"data": _cifar_data(2, 2), b"fine_labels": [1, 2], b"coarse_labels": [0, 0],
                            b"filenames": [b"e", b"f"], b"batch_label": b"testing batch 1 of 1"})
    s = load_images(tmp_path)
    assert s.num_classes == 100 and s.classes[99] == "fine99"
    assert s.labels.tolist() == [5, 99, 0, 5]
    assert s.ids == ["fine05/00000.png", "fine99/00001.png", "fine00/00002.png", "fine05/00003.png"]
    assert s.images[3, 31, 31, 2] == 77
    assert set(s.source_files) == {"meta", "train"}
    assert len(load_images(folder, split="test")) == 2
    assert find_splits(folder) == ["test", "train"]


def _py2_array(a: np.ndarray) -> bytes:
    """A uint8 2-D array pickled the way Python 2 + numpy 1 wrote the original CIFAR files
    (``numpy.core.multiarray._reconstruct``, byte strings as BINSTRING)."""
    n, m = a.shape
    raw = a.tobytes()
    return (b"cnumpy.core.multiarray\n_reconstruct\n" b"cnumpy\nndarray\n" b"K\x00\x85" b"U\x01b" b"\x87R"
            b"(K\x01" b"J" + struct.pack("<i", n) + b"J" + struct.pack("<i", m) + b"\x86"
            b"cnumpy\ndtype\n" b"U\x02u1K\x00K\x01\x87R"
            b"(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
            b"I00\n" b"T" + struct.pack("<i", len(raw)) + raw + b"tb")


def test_cifar10_python2_pickles(tmp_path):
    folder = make_cifar10(tmp_path / "c", n_test=2)
    data = _cifar_data(2, 5)
    data[1, 1024 + 31] = 222  # G of row 0, column 31 of image 1
    labels = [3, 4]
    (folder / "test_batch").write_bytes(
        b"\x80\x02}(" b"U\x04data" + _py2_array(data)
        + b"U\x06labels](" + b"".join(b"K" + bytes([v]) for v in labels) + b"eu."
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy.core deprecation noise either
        s = load_images(folder, split="test")
    assert s.labels.tolist() == labels
    assert s.images[1, 0, 31, 1] == 222
    assert np.array_equal(s.images, data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


class _Evil:
    def __init__(self, cmd: str):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


def test_restricted_unpickler_refuses_code(tmp_path, capfd):
    folder = make_cifar10(tmp_path / "c")
    marker = tmp_path / "pwned"
    _dump(folder / "data_batch_1", {b"data": _Evil(f"echo pwned > {marker}"), b"labels": [0]})
    with pytest.raises(UnlearnableError) as e:
        load_images(folder)
    msg = assert_one_line_error(e, "refusing to unpickle", "system", str(folder / "data_batch_1"))
    assert "pwned" not in msg
    assert not marker.exists()
    assert "pwned" not in capfd.readouterr().out

    # also in the metadata file, and for a plain builtin
    _dump(folder / "batches.meta", {b"label_names": _Evil("echo pwned")})
    with pytest.raises(UnlearnableError) as e:
        load_images(folder, split="test")
    assert_one_line_error(e, "refusing to unpickle", str(folder / "batches.meta"))
    _dump(folder / "batches.meta", {b"label_names": [b"a", b"b"], b"x": set([1])})
    with pytest.raises(UnlearnableError) as e:
        load_images(folder, split="test")
    assert_one_line_error(e, "refusing to unpickle", ".set ")


def test_cifar_bad_contents(tmp_path):
    folder = make_cifar10(tmp_path / "c")
    _dump(folder / "test_batch", {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]})
    with pytest.raises(UnlearnableError) as e:
        load_images(folder, split="test")
    assert_one_line_error(e, str(folder / "test_batch"), "3072")
    (folder / "test_batch").write_bytes(b"\x80\x02garbage")
    with pytest.raises(UnlearnableError) as e:
        load_images(folder, split="test")
    assert_one_line_error(e, str(folder / "test_batch"))


# ---------------------------------------------------------------------------------------
# the real CIFAR-10 JPEG copy
# ---------------------------------------------------------------------------------------
@pytest.mark.integration
@pytest.mark.slow
def test_cifar10_jpeg_copy(cifar_root):
    t0 = time.perf_counter()
    train = load_images(cifar_root, split="train")
    test = load_images(cifar_root, split="test")
    elapsed = time.perf_counter() - t0
    print(f"\nloaded CIFAR-10 JPEG train+test in {elapsed:.1f} s")
    assert find_splits(cifar_root) == ["test", "train"]
    for s, n in ((train, 50_000), (test, 10_000)):
        assert isinstance(s.images, np.ndarray)
        assert s.images.shape == (n, 32, 32, 3) and s.images.dtype == np.uint8
        assert s.classes == ["airplane", "automobile", "bird", "cat", "deer",
                             "dog", "frog", "horse", "ship", "truck"]
        assert np.bincount(s.labels, minlength=10).tolist() == [n // 10] * 10
        assert len(s.sha256) == n and len(set(s.ids)) == n
        assert s.source == "imagefolder"
    assert train.ids[0] == "airplane/0000.jpg"
    assert train.root == (cifar_root / "train").resolve()
    # decoded pixels agree with a direct decode
    assert np.array_equal(train.images[12345], read_image(cifar_root / "train" / train.ids[12345])[0])
    # the folder the tarball was unpacked into loads as-is too
    assert load_images(cifar_root.parent, split="test").ids == test.ids


def test_restricted_unpickler_reads_protocol_5_arrays(tmp_path):
    import pickle

    from unlearnable.data.load import _unpickle

    path = tmp_path / "noise.pkl"
    arr = np.arange(24, dtype=np.int8).reshape(2, 3, 4)
    path.write_bytes(pickle.dumps({"noise": arr}, protocol=5))
    obj, _ = _unpickle(str(path))
    got = obj.get("noise", obj.get(b"noise"))
    assert np.array_equal(got, arr)


@pytest.mark.parametrize("shape, size", [((12, 12), None), ((40, 40), None), ((80, 70), None),
                                         (lambda rng: (rng.integers(20, 90), rng.integers(20, 90)), None),
                                         (lambda rng: (rng.integers(20, 90), rng.integers(20, 90)), 24)])
def test_load_for_training_equals_loading_whole_then_resizing(tmp_path, shape, size):
    from helpers import random_folder
    from unlearnable.audit import training_size
    from unlearnable.data import load_for_training

    src = random_folder(tmp_path / "in", 5, shape, classes=("a", "b", "c"))
    whole = load_images(src)
    hw = (size, size) if size else training_size(whole)
    small = load_for_training(src, size=size, chunk_bytes=4000)  # chunks of a few images
    assert small.ids == whole.ids and small.sha256 == whole.sha256 and small.classes == whole.classes
    assert (small.labels == whole.labels).all()
    assert small.uniform and small.shape_of(0) == hw and (small.stacked() == whole.stacked_at(hw)).all()


def test_decode_in_chunks_sizes_chunks_by_decoded_bytes(tmp_path):
    from helpers import random_folder
    from unlearnable.data.load import decode_in_chunks, index_images

    src = random_folder(tmp_path / "in", 20, (16, 16), classes=("a", "b"))
    paths = index_images(src).paths
    got = list(decode_in_chunks(paths, first=3, target=16 * 16 * 3 * 5))  # five images a chunk after the first
    assert [len(sha) for _, _, sha in got] == [3, 5, 5, 5, 5, 5, 5, 5, 2]
    assert [s for s, _, _ in got] == [0, 3, 8, 13, 18, 23, 28, 33, 38]
    whole = load_images(src)
    assert (np.concatenate([imgs for _, imgs, _ in got]) == whole.stacked()).all()
    assert sum((sha for _, _, sha in got), []) == whole.sha256
