"""Small builders shared by the tests (tiny models and separable data)."""

from __future__ import annotations

import numpy as np
import torch.nn as nn

K = 4
_COLOURS = np.array([[230, 30, 30], [30, 230, 30], [30, 30, 230], [230, 230, 30]])


def tiny_factory(name, num_classes=10, input_size=32, in_channels=3):
    """A model factory for ``train_victim(model_factory=...)``: two convs, BN, linear (ignores ``name``)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes),
    )


def colour_squares(n, seed=0, size=16, square=8, shift=(2, 5)):
    """Separable data: the class (of K = 4) sets the colour of a square on noise; the square moves a little."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, K, n)
    x = rng.normal(128, 30, (n, size, size, 3))
    for i in range(n):
        o = rng.integers(*shift)
        x[i, o:o + square, o:o + square] = _COLOURS[y[i]]
    return np.clip(x, 0, 255).astype(np.uint8), y


def random_imageset(n=24, size=8, classes=3, seed=0, mixed=False, images=None):
    """A labelled ImageSet of random pixels; ``mixed`` gives every image its own size."""
    from unlearnable.data.imageset import ImageSet

    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    if images is None:
        if mixed:
            images = [rng.integers(0, 256, (size + i % 5, size + (2 * i) % 7, 3), dtype=np.uint8) for i in range(n)]
        else:
            images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    return ImageSet(images, labels, [f"c{k}" for k in range(classes)], [f"c{labels[i]}/{i:03d}.png" for i in range(n)])


def smoke_method(name, **kwargs):
    """The registered method with its CPU smoke settings (tiny surrogates, few steps)."""
    from unlearnable.methods import METHODS, create_method

    return create_method(name, **{**METHODS.get(name).smoke_kwargs, **kwargs})


def random_folder(root, n_per_class, shape, classes=("a", "b"), seed=0):
    """An ImageFolder of random-pixel PNGs; ``shape`` is ``(h, w)`` or ``shape(rng) -> (h, w)``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            h, w = shape(rng) if callable(shape) else shape
            Image.fromarray(rng.integers(0, 256, (int(h), int(w), 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def trainer_view(hwc: np.ndarray, side: int):
    """What a trainer who resizes to ``side``² sees of an HWC image or change (uint8 grey levels
    are scaled to [0, 1]; floats are taken as they are): CHW float, antialiased bilinear."""
    import torch

    from unlearnable.methods.resolution import resize_matrix

    x = torch.from_numpy(np.ascontiguousarray(hwc)).permute(2, 0, 1).float()
    if hwc.dtype == np.uint8:
        x = x / 255
    return resize_matrix(hwc.shape[0], side) @ x @ resize_matrix(hwc.shape[1], side).T


def protected_folder(src, out, method: str, capsys=None):
    """``unlearnable protect SRC --out OUT --method METHOD --quiet``, checked; returns OUT."""
    from unlearnable.cli import main

    assert main(["protect", str(src), "--out", str(out), "--method", method, "--quiet"]) == 0
    if capsys is not None:
        capsys.readouterr()
    return out
