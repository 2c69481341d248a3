"""Third-party poison formats: every importer round-trips what a writer in that format wrote."""

import pickle

import numpy as np
import pytest
import torch

from unlearnable.cli import main as cli_main
from unlearnable.data.formats import detect_format, export_png_index, import_poison, import_to_folder
from unlearnable.data.imageset import ImageSet
from unlearnable.data.save import encode_png, export_npz
from unlearnable.errors import UnlearnableError

torch.set_num_threads(1)
N, K, S = 12, 3, 8


@pytest.fixture
def clean():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (N, S, S, 3), dtype=np.uint8)
    y = np.arange(N) % K
    return ImageSet(x, y, ["a", "b", "c"], [f"{['a', 'b', 'c'][c]}/{i:05d}.png" for i, c in enumerate(y)])


def noise_levels(seed=1, n=N, lo=-8, hi=8):
    return np.random.default_rng(seed).integers(lo, hi + 1, (n, 3, S, S)).astype(np.int8)


def expected(clean, levels_nchw):
    lv = levels_nchw.transpose(0, 2, 3, 1).astype(int)
    return np.clip(clean.images.astype(int) + lv, 0, 255).astype(np.uint8)


def test_png_index_roundtrip_flat_and_class_folders(clean, tmp_path):
    prot = clean.with_images(expected(clean, noise_levels()))
    folder = export_png_index(prot, tmp_path / "poison")
    assert sorted(p.name for p in folder.iterdir())[:2] == ["00000.png", "00001.png"]
    res = import_poison(folder, clean)
    assert res.method == "import:png-index" and res.budget.norm == "none"
    assert np.array_equal(res.protected.images, prot.images)
    assert res.norms["linf"]["max"] <= 8 and len(res.hyperparameters["sha256"]) == 64
    # TAP/AR-style names without padding, in per-class folders (and a labels file beside them)
    sub = tmp_path / "classes"
    for i in range(N):
        d = sub / clean.classes[clean.labels[i]]
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{i}.png").write_bytes(encode_png(prot.images[i]))
    (sub / "labels.txt").write_text("ignored\n")
    assert np.array_equal(import_poison(sub, clean, fmt="png-index").protected.images, prot.images)
    # a file in the wrong class folder
    (sub / "a" / "0.png").rename(sub / "b" / "0.png")
    with pytest.raises(UnlearnableError, match="class folder"):
        import_poison(sub, clean)


def test_png_index_errors(clean, tmp_path):
    prot = clean.with_images(clean.images.copy())
    folder = export_png_index(prot, tmp_path / "p")
    (folder / "00011.png").unlink()
    with pytest.raises(UnlearnableError, match="11 PNG files for 12"):
        import_poison(folder, clean)
    (folder / "00007.png").rename(folder / "00011.png")  # a gap inside 0..N-1 is named
    with pytest.raises(UnlearnableError, match="index 7 is missing"):
        import_poison(folder, clean)
    (folder / "00011.png").rename(folder / "00007.png")
    (folder / "00012.png").write_bytes(encode_png(prot.images[0]))
    with pytest.raises(UnlearnableError, match="index 11 is missing"):
        import_poison(folder, clean)
    (folder / "00012.png").unlink()
    (folder / "00011.png").write_bytes(encode_png(np.zeros((4, 4, 3), np.uint8)))
    with pytest.raises(UnlearnableError, match="00011.png: size"):
        import_poison(folder, clean)
    with pytest.raises(UnlearnableError, match="already exists"):
        export_png_index(prot, folder)


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.mark.parametrize("units", ["unit", "levels"])
@pytest.mark.parametrize("wise", ["sample", "class"])
def test_em_pt_roundtrip(clean, tmp_path, units, wise):
    lv = noise_levels(n=N if wise == "sample" else K)
    noise = torch.from_numpy(lv.astype(np.float32) / (255.0 if units == "unit" else 1.0))
    path = tmp_path / "perturbation.pt"
    torch.save(noise, path)
    res = import_poison(path, clean)
    full = lv if wise == "sample" else lv[clean.labels]
    assert np.array_equal(res.protected.images, expected(clean, full))
    assert res.hyperparameters["wise"] == f"{wise}-wise" and res.method == "import:em-pt"


def test_em_pt_errors(clean, tmp_path):
    path = tmp_path / "bad.pt"
    torch.save(torch.zeros(5, 3, S, S), path)
    with pytest.raises(UnlearnableError, match=r"bad.pt: 5 noise rows for 12 clean images"):
        import_poison(path, clean)
    torch.save(torch.zeros(N, 3, S + 1, S + 1), path)
    with pytest.raises(UnlearnableError, match="bad.pt"):
        import_poison(path, clean)
    torch.save({"noise": torch.zeros(1)}, path)
    with pytest.raises(UnlearnableError, match="expected one tensor"):
        import_poison(path, clean)
    torch.save(_Evil(), path)  # weights_only=True refuses arbitrary callables
    with pytest.raises(UnlearnableError, match="bad.pt"):
        import_poison(path, clean)
    np.save(tmp_path / "x.npy", np.zeros((N, 3, S, S), np.float32))  # another format, forced
    with pytest.raises(UnlearnableError, match="is not a torch file"):
        import_poison(tmp_path / "x.npy", clean, fmt="em-pt")
    path.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(UnlearnableError, match="damaged or truncated"):
        import_poison(path, clean)


def test_rem_pkl_roundtrip_and_malicious_pickle(clean, tmp_path, capsys):
    lv = noise_levels()
    path = tmp_path / "rem-fin-def-noise.pkl"
    path.write_bytes(pickle.dumps(lv))
    res = import_poison(path, clean)
    assert np.array_equal(res.protected.images, expected(clean, lv)) and res.method == "import:rem-pkl"
    path.write_bytes(pickle.dumps(lv.transpose(0, 2, 3, 1).copy()))  # NHWC accepted too
    assert np.array_equal(import_poison(path, clean).protected.images, expected(clean, lv))
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps(_Evil()))
    with pytest.raises(UnlearnableError, match=r"refusing to unpickle builtins.print from .*evil.pkl"):
        import_poison(evil, clean)
    assert "pwned" not in capsys.readouterr().out
    path.write_bytes(pickle.dumps(lv[:5]))
    with pytest.raises(UnlearnableError, match="5 noise rows for 12"):
        import_poison(path, clean)
    path.write_bytes(pickle.dumps(lv.astype(np.float32)))
    with pytest.raises(UnlearnableError, match="integer grey levels"):
        import_poison(path, clean)


@pytest.mark.parametrize("layout", ["nhwc-float01", "nchw-uint8", "nhwc-float255"])
def test_ntga_npy_roundtrip(clean, tmp_path, layout):
    prot = expected(clean, noise_levels())
    arr = {"nhwc-float01": prot.astype(np.float32) / 255, "nchw-uint8": prot.transpose(0, 3, 1, 2),
           "nhwc-float255": prot.astype(np.float64)}[layout]
    path = tmp_path / "x_train_ntga.npy"
    np.save(path, arr)
    res = import_poison(path, clean)
    assert np.array_equal(res.protected.images, prot) and res.method == "import:ntga-npy"
    np.save(path, np.zeros((N, S, S), np.uint8))
    with pytest.raises(UnlearnableError, match=r"x_train_ntga.npy: the images must have shape"):
        import_poison(path, clean)
    np.save(path, np.array([object()], dtype=object), allow_pickle=True)
    with pytest.raises(UnlearnableError, match="x_train_ntga.npy"):
        import_poison(path, clean)


def test_ntga_labels_beside_the_images_are_checked(clean, tmp_path):
    """NTGA releases ``x_train_cifar10_ntga_cnn_best.npy`` with one-hot ``y_train_cifar10.npy``."""
    prot = expected(clean, noise_levels())
    path = tmp_path / "x_train_cifar10_ntga_cnn_best.npy"
    np.save(path, prot.astype(np.float32) / 255)
    np.save(tmp_path / "y_train_cifar10.npy", np.eye(K, dtype=np.float32)[clean.labels])
    np.save(tmp_path / "y_test_cifar10.npy", np.zeros((3, K), np.float32))  # not this file's
    res = import_poison(path, clean)
    assert np.array_equal(res.protected.images, prot)
    assert res.hyperparameters["labels"] == "'y_train_cifar10.npy' match the clean labels"
    order = np.argsort(clean.labels, kind="stable")  # tfds's order is not the pickles'
    shuffled = np.eye(K, dtype=np.float32)[clean.labels[order]]
    np.save(tmp_path / "y_train_cifar10.npy", shuffled)
    with pytest.raises(UnlearnableError, match=r"x_train_cifar10_ntga_cnn_best.npy: its labels \('y_train_cifar10.npy'\) disagree"):
        import_poison(path, clean)
    (tmp_path / "y_train_cifar10.npy").unlink()
    assert "labels" not in import_poison(path, clean).hyperparameters  # nothing beside it: nothing to check


def test_avatar_npz_images_and_noise(clean, tmp_path):
    lv = noise_levels()
    prot = expected(clean, lv)
    path = tmp_path / "avatar.npz"
    export_npz(clean.with_images(prot), path)  # our own NPZ export: images under "x"
    res = import_poison(path, clean)
    assert np.array_equal(res.protected.images, prot) and res.hyperparameters["content"] == "images"
    np.savez(path, noise=lv.astype(np.float32) / 255)
    assert np.array_equal(import_poison(path, clean).protected.images, prot)
    np.savez(path, something=lv)  # one unnamed array with negative values: noise
    assert np.array_equal(import_poison(path, clean, fmt="avatar-npz").protected.images, prot)
    np.savez(path, a=lv, b=lv)
    with pytest.raises(UnlearnableError, match="avatar.npz: no poison array"):
        import_poison(path, clean)


def test_avatar_npz_own_layout_checks_labels(clean, tmp_path):
    """AVATAR_sanitization.py saves ``np.savez(data=uint8 NHWC, targets=list)`` (SVHN: NCHW)."""
    prot = expected(clean, noise_levels())
    path = tmp_path / "UNL_CIFAR10_Sanitized_100_cifar10.npz"
    np.savez(path, data=prot, targets=list(clean.labels))
    res = import_poison(path, clean)
    assert np.array_equal(res.protected.images, prot)
    assert res.hyperparameters["key"] == "data" and "match" in res.hyperparameters["labels"]
    np.savez(path, data=prot.transpose(0, 3, 1, 2), targets=np.eye(K)[clean.labels])  # NCHW, one-hot
    assert np.array_equal(import_poison(path, clean).protected.images, prot)
    # the clean set in another order (a class-sorted folder against CIFAR's order)
    order = np.argsort(clean.labels, kind="stable")
    sorted_clean = ImageSet(clean.images[order], clean.labels[order], clean.classes,
                            [clean.ids[i] for i in order])
    np.savez(path, data=prot, targets=clean.labels)
    with pytest.raises(UnlearnableError, match=r"Sanitized_100_cifar10.npz: its labels \('targets'\) disagree .*index order"):
        import_poison(path, sorted_clean)
    np.savez(path, data=prot, targets=clean.labels[:-1])
    with pytest.raises(UnlearnableError, match="11 int64 labels for 12 clean images"):
        import_poison(path, clean)
    unlabelled = ImageSet(clean.images, None, [], clean.ids)
    np.savez(path, data=prot, targets=clean.labels)
    assert "not checked" in import_poison(path, unlabelled).hyperparameters["labels"]


def test_detect_and_unknown(clean, tmp_path):
    assert detect_format(tmp_path) == "png-index"
    f = tmp_path / "x.bin"
    f.write_bytes(b"0")
    with pytest.raises(UnlearnableError, match="x.bin"):
        import_poison(f, clean)
    with pytest.raises(UnlearnableError, match="unknown poison format"):
        import_poison(f, clean, fmt="nope")


def test_a_clean_set_in_another_order_is_refused(clean, tmp_path, capsys):
    # An APBench/TAP folder made in CIFAR's order, imported against the same images in another
    # order: every "poisoned" image is a different image, and its label would be wrong.
    prot = clean.with_images(expected(clean, noise_levels()))
    folder = export_png_index(prot, tmp_path / "poison")
    perm = np.roll(np.arange(N), 1)
    shuffled = ImageSet(clean.images[perm], clean.labels[perm], clean.classes, [clean.ids[i] for i in perm])
    with pytest.raises(UnlearnableError, match=r"poison: its images differ from the clean ones by a median \d+ grey "
                                               r"levels per pixel \(12 of 12 above 32\).*index order"):
        import_poison(folder, shuffled)
    assert import_poison(folder, shuffled, check_order=False).method == "import:png-index"
    export_npz(shuffled, tmp_path / "shuffled.npz")
    args = ["import", str(folder), "--clean", str(tmp_path / "shuffled.npz"), "--out", str(tmp_path / "o")]
    assert cli_main(args) == 2 and "--no-alignment-check" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    assert cli_main(args + ["--no-alignment-check"]) == 0


def test_import_to_folder_verifies(clean, tmp_path):
    clean_path = tmp_path / "clean.npz"
    export_npz(clean, clean_path)
    lv = noise_levels()
    pkl = tmp_path / "noise.pkl"
    pkl.write_bytes(pickle.dumps(lv))
    out = tmp_path / "imported"
    manifest = import_to_folder(pkl, clean_path, out)
    assert manifest["method"] == "import:rem-pkl" and manifest["norms"]["linf_grey_levels"]["max"] <= 8
    assert manifest["budget"]["norm"] == "none" and "sha256" in manifest["notes"]
    assert cli_main(["verify", str(out), "--clean", str(clean_path), "--quiet"]) == 0
    with pytest.raises(UnlearnableError, match="already exists"):
        import_to_folder(pkl, clean_path, out)
    import_to_folder(pkl, clean_path, out, overwrite=True)
