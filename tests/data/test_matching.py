"""Poisons released in their own order and number, paired with the clean set by content."""

import json

import numpy as np
import pytest
import torch

from unlearnable.cli import main as cli_main
from unlearnable.data.formats import import_poison
from unlearnable.data.imageset import ImageSet
from unlearnable.data.matching import match_by_content
from unlearnable.data.save import encode_png, export_npz
from unlearnable.errors import UnlearnableError

torch.set_num_threads(1)
N, K, S = 40, 4, 16
CLASSES = ["a", "b", "c", "d"]


def smooth_images(n, seed):
    """Natural-ish images: smooth colour fields (neighbours in the coarse view are close)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (n, 3, 4, 4)).astype(np.float32)
    big = torch.nn.functional.interpolate(torch.from_numpy(small), size=(S, S), mode="bilinear", align_corners=False)
    return big.permute(0, 2, 3, 1).round().clamp(0, 255).to(torch.uint8).numpy()


@pytest.fixture
def clean():
    x = smooth_images(N, 0)
    x[7] = x[3]  # an exact duplicate pair, same label, as CIFAR-10 has a few
    y = np.arange(N) % K
    y[7] = y[3]
    return ImageSet(x, y, CLASSES, [f"{CLASSES[c]}/{i:05d}.png" for i, c in enumerate(y)])


def poisoned(clean, seed=1, eps=8):
    noise = np.random.default_rng(seed).choice([-eps, eps], size=clean.images.shape)
    return np.clip(clean.images.astype(int) + noise, 0, 255).astype(np.uint8)


def test_match_recovers_a_shuffled_subset_with_duplicates(clean):
    prot = poisoned(clean)
    perm = np.random.default_rng(2).permutation(N)[:30]  # NTGA: shuffled, 40k of 50k
    if 3 not in perm:
        perm[0] = 3
    if 7 not in perm:
        perm[1] = 7
    for labels in (clean.labels[perm], None):
        index, dist = match_by_content(prot[perm], clean, labels)
        assert len(set(index)) == len(perm) and dist.max() <= 8
        # every pair is the right image; the two duplicates may swap, which is the same content
        same = index == perm
        dup = np.isin(perm, [3, 7])
        assert same[~dup].all() and np.array_equal(clean.images[index], clean.images[perm])


def test_match_refuses_other_images(clean):
    other = smooth_images(10, 99)
    with pytest.raises(UnlearnableError, match=r"the poison: \d+ of 10 images have no clean image within 32 grey levels"):
        match_by_content(other, clean)
    index, dist = match_by_content(other, clean, strict=False)
    assert len(set(index)) == 10 and dist.max() > 32
    with pytest.raises(UnlearnableError, match="more than the 40 clean ones"):
        match_by_content(np.concatenate([clean.images, clean.images[:1]]), clean)
    with pytest.raises(UnlearnableError, match="images are 8x8, the clean ones 16x16"):
        match_by_content(clean.images[:, :8, :8], clean)
    with pytest.raises(UnlearnableError, match="11 images of label 0, the clean set 10"):
        match_by_content(clean.images[:11], clean, np.zeros(11, dtype=np.int64))


def test_ntga_release_imports_by_content(clean, tmp_path, capsys):
    """NTGA: tfds order, shuffled, a subset, [0, 1] floats, one-hot labels beside the images."""
    prot = poisoned(clean)
    perm = np.random.default_rng(3).permutation(N)[:32]
    path = tmp_path / "x_train_cifar10_ntga_cnn_best.npy"
    np.save(path, prot[perm].astype(np.float32) / 255)
    np.save(tmp_path / "y_train_cifar10.npy", np.eye(K, dtype=np.float32)[clean.labels[perm]])
    with pytest.raises(UnlearnableError, match=r"32 images for 40 clean images \(--match content"):
        import_poison(path, clean)  # by index it cannot line up
    res = import_poison(path, clean, match="content")
    assert len(res.protected) == 32 and res.hyperparameters["matched"] == 32
    assert res.hyperparameters["labels"] == "y_train_cifar10.npy"
    def canon(ids):  # clean images 3 and 7 are the same picture: either pairing is right
        return sorted(i.replace("00007", "00003") for i in ids)

    assert canon(res.clean.ids) == canon(clean.ids[i] for i in perm)
    pos = [clean.ids.index(i) for i in res.clean.ids]
    assert pos == sorted(pos)  # in the clean set's order, not the poison's
    assert max(r["linf"] for r in res.per_image) <= 8

    # CLI: import → verify → the analyses line the clean set up with the part the poison covers
    clean_path = tmp_path / "clean.npz"
    export_npz(clean, clean_path)
    out = tmp_path / "imported"
    assert cli_main(["import", str(path), "--clean", str(clean_path), "--out", str(out), "--match", "content"]) == 0
    assert "matched by content to 32 of the 40 clean images" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["input"]["subset_of"] == 40 and manifest["input"]["n_images"] == 32
    assert cli_main(["verify", str(out), "--clean", str(clean_path), "--quiet"]) == 0
    other = tmp_path / "other.npz"
    export_npz(clean.subset(range(30)), other)
    assert cli_main(["verify", str(out), "--clean", str(other), "--quiet"]) == 1
    capsys.readouterr()
    js = tmp_path / "audit.json"
    test_path = tmp_path / "test.npz"  # other pictures: a test set of the training images is refused
    export_npz(ImageSet(smooth_images(N, 77), clean.labels, clean.classes, [f"t{i}" for i in range(N)]), test_path)
    assert cli_main(["audit", str(out), "--clean", str(clean_path), "--test", str(test_path), "--defenses", "none",
                     "--recipe", "cpu-small", "--epochs", "1", "--json", str(js), "--quiet"]) == 0
    assert "covers 32 of the 40 clean images; clean victims train on those" in capsys.readouterr().err
    assert {r["trained_on"]: r["n_train"] for r in json.loads(js.read_text())} == {"clean": 32, "protected": 32}


def test_png_folder_against_a_class_sorted_copy(clean, tmp_path):
    """A TAP/APBench folder in CIFAR's order imported against a class-sorted ImageFolder copy."""
    prot = poisoned(clean)
    folder = tmp_path / "poison"
    for i in range(N):
        d = folder / CLASSES[clean.labels[i]]
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{i}.png").write_bytes(encode_png(prot[i]))
    order = np.argsort(clean.labels, kind="stable")
    sorted_clean = clean.subset(order)
    with pytest.raises(UnlearnableError, match="--match content"):
        import_poison(folder, sorted_clean)
    res = import_poison(folder, sorted_clean, match="content")
    assert res.hyperparameters["layout"] == "class folders" and len(res.protected) == N
    assert np.array_equal(res.clean.images, sorted_clean.images)
    assert max(r["linf"] for r in res.per_image) <= 8


def test_noise_cannot_be_matched_by_content(clean, tmp_path):
    path = tmp_path / "noise.npz"
    np.savez(path, noise=np.zeros((N, 3, S, S), np.float32) - 0.01)
    with pytest.raises(UnlearnableError, match="holds noise, not images"):
        import_poison(path, clean, match="content")
    with pytest.raises(UnlearnableError, match="unknown match 'fuzzy'"):
        import_poison(path, clean, match="fuzzy")


def test_positions_select_by_id(clean):
    ids = [clean.ids[5], clean.ids[2]]
    assert list(clean.positions(ids)) == [5, 2]
    assert clean.subset(clean.positions(ids)).ids == ids
    with pytest.raises(UnlearnableError, match="no image with id 'z/1.png' in this set"):
        clean.positions([clean.ids[0], "z/1.png"])
