"""Tests for hyperdm.distill.data: tiny files in each real on-disk format, written here independently."""

from __future__ import annotations

import gzip
import io
import logging
import os
import pickle
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hyperdm.distill import data as D
from hyperdm.distill.data import (
    DATASETS,
    DatasetInfo,
    DatasetNotFoundError,
    RealData,
    canonical_name,
    load_dataset,
)

FMNIST_MEAN, FMNIST_STD = 0.2861, 0.3530
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762)
SVHN_MEAN, SVHN_STD = (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)
IMNET_MEAN, IMNET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DEBIAN_FMNIST = Path("/usr/share/datasets/fashion-mnist")


# ---------------------------------------------------------------------------------------------
# independent writers / expectations
# ---------------------------------------------------------------------------------------------


def expected_norm(u8_nchw: np.ndarray, mean, std) -> np.ndarray:
    """(u8 / 255 - mean) / std in float64, per channel."""
    m = np.asarray(mean, dtype=np.float64).reshape(1, -1, 1, 1)
    s = np.asarray(std, dtype=np.float64).reshape(1, -1, 1, 1)
    return (u8_nchw.astype(np.float64) / 255.0 - m) / s


def assert_norm(t: torch.Tensor, u8_nchw: np.ndarray, mean, std, atol: float = 1e-5) -> None:
    assert t.dtype == torch.float32
    assert tuple(t.shape) == u8_nchw.shape
    np.testing.assert_allclose(t.numpy().astype(np.float64), expected_norm(u8_nchw, mean, std), rtol=0, atol=atol)


def idx_bytes(arr: np.ndarray) -> bytes:
    """An idx file: 0x00 0x00 0x08 ndim, big-endian uint32 dims, then the uint8 data."""
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
    return header + arr.tobytes()


def write_idx_set(
    d: Path, rng: np.random.Generator, *, n_train=12, n_test=7, size=28, gz=True, classes=10
) -> dict[str, np.ndarray]:
    d.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, size, size), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, classes, (n_train,), dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, size, size), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, classes, (n_test,), dtype=np.uint8),
    }
    for name, arr in arrays.items():
        raw = idx_bytes(arr)
        if gz:
            with gzip.open(d / (name + ".gz"), "wb") as f:
                f.write(raw)
        else:
            (d / name).write_bytes(raw)
    return arrays


def cifar_rows(img_nhwc: np.ndarray) -> np.ndarray:
    """CIFAR's row layout: 1024 red values, then 1024 green, then 1024 blue, each plane row-major."""
    n = img_nhwc.shape[0]
    return np.concatenate([img_nhwc[..., c].reshape(n, 1024) for c in range(3)], axis=1)


def dump(obj, path: Path) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def save_png(path: Path, arr_hwc: np.ndarray, *, fmt: str = "PNG") -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "L" if arr_hwc.ndim == 2 else "RGB"
    Image.fromarray(arr_hwc.astype(np.uint8), mode).save(path, format=fmt)


def solid(colour, size=(64, 64)) -> np.ndarray:
    return np.broadcast_to(np.asarray(colour, np.uint8), (*size, 3)).copy()


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def no_system_fmnist(monkeypatch, tmp_path):
    """Hide /usr/share/datasets/fashion-mnist so 'not found' paths can be exercised."""
    monkeypatch.setattr(D, "SYSTEM_FASHION_MNIST_DIR", str(tmp_path / "no-system-copy"))


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError(f"network access attempted: {a}")

    monkeypatch.setattr(D.urllib.request, "urlopen", refuse)


# ---------------------------------------------------------------------------------------------
# names
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "alias,canon",
    [
        ("FashionMNIST", "fashion-mnist"),
        ("fashion_mnist", "fashion-mnist"),
        ("fmnist", "fashion-mnist"),
        ("Fashion-MNIST", "fashion-mnist"),
        ("fashion-mnist", "fashion-mnist"),
        ("MNIST", "mnist"),
        ("CIFAR10", "cifar10"),
        ("cifar-10", "cifar10"),
        ("CIFAR100", "cifar100"),
        ("Cifar-100", "cifar100"),
        ("SVHN", "svhn"),
        ("TinyImageNet", "tinyimagenet"),
        ("tiny-imagenet", "tinyimagenet"),
        ("tiny-imagenet-200", "tinyimagenet"),
        ("ImageWoof", "imagewoof"),
        ("ImageNette", "imagenette"),
        ("ImageFolder", "imagefolder"),
    ],
)
def test_canonical_name_aliases(alias, canon):
    assert canonical_name(alias) == canon


def test_datasets_tuple_and_unknown_name():
    assert DATASETS == (
        "fashion-mnist",
        "mnist",
        "cifar10",
        "cifar100",
        "svhn",
        "tinyimagenet",
        "imagewoof",
        "imagenette",
        "imagefolder",
    )
    for n in DATASETS:
        assert canonical_name(n) == n
    with pytest.raises(ValueError, match="unknown dataset 'cifar-11'") as ei:
        canonical_name("cifar-11")
    for n in DATASETS:
        assert n in str(ei.value)
    with pytest.raises(ValueError, match="unknown dataset 'imagenet-1k'"):
        load_dataset("imagenet-1k", "/nonexistent")


# ---------------------------------------------------------------------------------------------
# idx: Fashion-MNIST / MNIST
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sub,gz", [("FashionMNIST/raw", True), ("fashion-mnist", False), ("FashionMNIST", True), ("", False)]
)
def test_fashion_mnist_layouts(tmp_path, rng, sub, gz, no_network):
    d = tmp_path / sub if sub else tmp_path
    arr = write_idx_set(d, rng, gz=gz)
    real = load_dataset("Fashion-MNIST", tmp_path)
    assert Path(real.root) == d
    info = real.info
    assert info == DatasetInfo(
        "fashion-mnist",
        1,
        (28, 28),
        10,
        (0.2861,),
        (0.3530,),
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    )
    assert_norm(real.train_images, arr["train-images-idx3-ubyte"][:, None], (FMNIST_MEAN,), (FMNIST_STD,))
    assert_norm(real.test_images, arr["t10k-images-idx3-ubyte"][:, None], (FMNIST_MEAN,), (FMNIST_STD,))
    assert real.train_labels.dtype == torch.int64 and real.test_labels.dtype == torch.int64
    assert real.train_labels.tolist() == arr["train-labels-idx1-ubyte"].tolist()
    assert real.test_labels.tolist() == arr["t10k-labels-idx1-ubyte"].tolist()


def test_idx_mixed_plain_and_gz_and_candidate_order(tmp_path, rng):
    # torchvision's raw/ dir wins over the root; files may be a mix of plain and .gz
    raw = tmp_path / "FashionMNIST" / "raw"
    arr = write_idx_set(raw, rng, gz=True, n_train=5)
    (raw / "train-images-idx3-ubyte.gz").unlink()
    (raw / "train-images-idx3-ubyte").write_bytes(idx_bytes(arr["train-images-idx3-ubyte"]))
    write_idx_set(tmp_path, rng, gz=False, n_train=9)  # a different set in the root itself
    real = load_dataset("fmnist", tmp_path)
    assert Path(real.root) == raw
    assert real.train_labels.numel() == 5
    assert_norm(real.train_images, arr["train-images-idx3-ubyte"][:, None], (FMNIST_MEAN,), (FMNIST_STD,))


def test_incomplete_candidate_is_skipped(tmp_path, rng):
    raw = tmp_path / "FashionMNIST" / "raw"
    write_idx_set(raw, rng)
    (raw / "t10k-labels-idx1-ubyte.gz").unlink()  # raw/ incomplete -> next candidate
    good = tmp_path / "fashion-mnist"
    arr = write_idx_set(good, rng, n_train=3)
    real = load_dataset("fashion-mnist", tmp_path)
    assert Path(real.root) == good
    assert real.train_labels.tolist() == arr["train-labels-idx1-ubyte"].tolist()


def test_mnist(tmp_path, rng):
    d = tmp_path / "MNIST" / "raw"
    arr = write_idx_set(d, rng, gz=False)
    real = load_dataset("MNIST", tmp_path)
    assert Path(real.root) == d
    assert real.info.name == "mnist"
    assert real.info.class_names == tuple("0123456789")
    assert real.info.mean == (0.1307,) and real.info.std == (0.3081,)
    assert_norm(real.train_images, arr["train-images-idx3-ubyte"][:, None], (MNIST_MEAN,), (MNIST_STD,))
    assert real.test_labels.tolist() == arr["t10k-labels-idx1-ubyte"].tolist()


def _corrupt_case(d: Path, rng, kind: str) -> str:
    arr = write_idx_set(d, rng, gz=False)
    victim = "train-images-idx3-ubyte"
    raw = idx_bytes(arr[victim])
    if kind == "magic":
        raw = b"\x00\x00\x08\x01" + raw[4:]  # a labels magic on an images file
    elif kind == "bad-type":
        raw = b"\x00\x00\x0d\x03" + raw[4:]  # float data type
    elif kind == "truncated":
        raw = raw[:-5]
    elif kind == "trailing":
        raw = raw + b"\x00"
    elif kind == "header":
        raw = raw[:9]
    elif kind == "gzip":
        (d / victim).unlink()
        (d / (victim + ".gz")).write_bytes(gzip.compress(raw)[:40])  # cut-off gzip stream
        return victim + ".gz"
    elif kind == "count":
        victim = "t10k-labels-idx1-ubyte"
        raw = idx_bytes(arr[victim][:-1])  # one label short
    (d / victim).write_bytes(raw)
    return victim


@pytest.mark.parametrize("kind", ["magic", "bad-type", "truncated", "trailing", "header", "gzip", "count"])
def test_corrupt_idx_raises_valueerror_naming_file(tmp_path, rng, kind):
    victim = _corrupt_case(tmp_path / "mnist", rng, kind)
    with pytest.raises(ValueError, match=victim):
        load_dataset("mnist", tmp_path)


def test_idx_label_out_of_range(tmp_path, rng):
    d = tmp_path / "mnist"
    write_idx_set(d, rng)
    with gzip.open(d / "train-labels-idx1-ubyte.gz", "wb") as f:
        f.write(idx_bytes(np.array([0, 1, 10] + [0] * 9, np.uint8)))
    with pytest.raises(ValueError, match="labels"):
        load_dataset("mnist", tmp_path)


def test_image_size_rejected_for_fixed_size_dataset(tmp_path, rng):
    write_idx_set(tmp_path / "mnist", rng)
    assert load_dataset("mnist", tmp_path, image_size=28).info.im_size == (28, 28)
    with pytest.raises(ValueError, match="image_size"):
        load_dataset("mnist", tmp_path, image_size=32)


# ---------------------------------------------------------------------------------------------
# CIFAR
# ---------------------------------------------------------------------------------------------


def write_cifar10(root: Path, rng, per_batch=3, n_test=4):
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    imgs, labels = [], []
    for i in range(1, 6):
        img = rng.integers(0, 256, (per_batch, 32, 32, 3), dtype=np.uint8)
        lab = [int(v) for v in rng.integers(0, 10, per_batch)]
        dump(
            {
                b"batch_label": f"training batch {i} of 5".encode(),
                b"labels": lab,
                b"data": cifar_rows(img),
                b"filenames": [b"x.png"] * per_batch,
            },
            d / f"data_batch_{i}",
        )
        imgs.append(img)
        labels += lab
    timg = rng.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8)
    tlab = [int(v) for v in rng.integers(0, 10, n_test)]
    dump({b"labels": tlab, b"data": cifar_rows(timg)}, d / "test_batch")
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    dump({b"label_names": names, b"num_cases_per_batch": per_batch, b"num_vis": 3072}, d / "batches.meta")
    return d, np.concatenate(imgs), labels, timg, tlab


def test_cifar10(tmp_path, rng):
    d, img, lab, timg, tlab = write_cifar10(tmp_path, rng)
    real = load_dataset("CIFAR-10", tmp_path)
    assert Path(real.root) == d
    assert real.info.name == "cifar10" and real.info.channels == 3 and real.info.im_size == (32, 32)
    assert real.info.num_classes == 10
    assert real.info.class_names[:3] == ("airplane", "automobile", "bird") and real.info.class_names[-1] == "truck"
    assert real.train_images.shape == (15, 3, 32, 32)
    assert real.train_labels.tolist() == lab  # batches 1..5 in order
    assert real.test_labels.tolist() == tlab
    assert_norm(real.train_images, img.transpose(0, 3, 1, 2), CIFAR10_MEAN, CIFAR10_STD)
    assert_norm(real.test_images, timg.transpose(0, 3, 1, 2), CIFAR10_MEAN, CIFAR10_STD)
    # spot check one pixel by hand: image 4, green channel, row 5, column 7
    v = (img[4, 5, 7, 1] / 255 - CIFAR10_MEAN[1]) / CIFAR10_STD[1]
    assert real.train_images[4, 1, 5, 7].item() == pytest.approx(v, abs=1e-5)


def test_cifar10_download_not_supported(tmp_path, rng, no_network):
    write_cifar10(tmp_path, rng)
    with pytest.raises(ValueError, match="not supported") as ei:
        load_dataset("cifar10", tmp_path, download=True)
    msg = str(ei.value)
    assert "not supported" in msg and "cifar-10-batches-py" in msg


def test_cifar100(tmp_path, rng):
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    img = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    fine = [0, 99, 5, 42, 99, 1]
    coarse = [19, 0, 3, 3, 2, 1]  # a distractor: must not be used
    dump({b"data": cifar_rows(img), b"fine_labels": fine, b"coarse_labels": coarse}, d / "train")
    timg = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    dump({b"data": cifar_rows(timg), b"fine_labels": [7, 8], b"coarse_labels": [0, 0]}, d / "test")
    names = [f"class{i:02d}".encode() for i in range(100)]
    dump({b"fine_label_names": names, b"coarse_label_names": [b"c"] * 20}, d / "meta")
    real = load_dataset("CIFAR100", tmp_path)
    assert Path(real.root) == d
    assert real.info.num_classes == 100 and real.info.class_names[42] == "class42"
    assert real.info.mean == CIFAR100_MEAN and real.info.std == CIFAR100_STD
    assert real.train_labels.tolist() == fine and real.test_labels.tolist() == [7, 8]
    assert_norm(real.train_images, img.transpose(0, 3, 1, 2), CIFAR100_MEAN, CIFAR100_STD)
    assert_norm(real.test_images, timg.transpose(0, 3, 1, 2), CIFAR100_MEAN, CIFAR100_STD)


# ---------------------------------------------------------------------------------------------
# SVHN
# ---------------------------------------------------------------------------------------------


def write_svhn(d: Path, rng, y_train, y_test):
    import scipy.io

    d.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, y in (("train", y_train), ("test", y_test)):
        x = rng.integers(0, 256, (32, 32, 3, len(y)), dtype=np.uint8)
        scipy.io.savemat(str(d / f"{split}_32x32.mat"), {"X": x, "y": np.asarray(y, np.uint8).reshape(-1, 1)})
        out[split] = x
    return out


def test_svhn_maps_10_to_0(tmp_path, rng):
    x = write_svhn(tmp_path / "SVHN", rng, [10, 1, 9, 10, 5], [3, 10])
    real = load_dataset("SVHN", tmp_path)
    assert Path(real.root) == tmp_path / "SVHN"
    assert real.info.class_names == tuple("0123456789") and real.info.channels == 3
    assert real.train_labels.tolist() == [0, 1, 9, 0, 5]
    assert real.test_labels.tolist() == [0 + 3, 0]
    # X is [H, W, C, N]: image n channel c pixel (h, w) is X[h, w, c, n]
    n, c, h, w = 2, 2, 30, 1
    assert real.train_images[n, c, h, w].item() == pytest.approx(
        (x["train"][h, w, c, n] / 255 - SVHN_MEAN[c]) / SVHN_STD[c], abs=1e-5
    )
    assert_norm(real.train_images, x["train"].transpose(3, 2, 0, 1), SVHN_MEAN, SVHN_STD)
    assert_norm(real.test_images, x["test"].transpose(3, 2, 0, 1), SVHN_MEAN, SVHN_STD)


def test_svhn_without_scipy_says_how_to_install(tmp_path, rng, monkeypatch):
    write_svhn(tmp_path / "svhn", rng, [1], [2])
    monkeypatch.setitem(sys.modules, "scipy", None)
    monkeypatch.setitem(sys.modules, "scipy.io", None)
    with pytest.raises(ImportError) as ei:
        load_dataset("svhn", tmp_path)
    assert 'pip install "hyperdm[distill]"' in str(ei.value)


# ---------------------------------------------------------------------------------------------
# Tiny ImageNet
# ---------------------------------------------------------------------------------------------


def test_tiny_imagenet(tmp_path):
    d = tmp_path / "tiny-imagenet-200"
    wnids = ["n09999999", "n01443537", "n05555555"]  # deliberately not sorted: file order is the class order
    (d).mkdir()
    (d / "wnids.txt").write_text("\n".join(wnids) + "\n")
    train_colours = {
        "n09999999": [(250, 10, 10), (10, 250, 10)],
        "n01443537": [(10, 10, 250)],
        "n05555555": [(200, 200, 20), (20, 200, 200)],
    }
    for w, colours in train_colours.items():
        for i, col in enumerate(colours):
            save_png(d / "train" / w / "images" / f"{w}_{i}.JPEG", solid(col), fmt="JPEG")
        (d / "train" / w / f"{w}_boxes.txt").parent.mkdir(parents=True, exist_ok=True)
        (d / "train" / w / f"{w}_boxes.txt").write_text("ignored\n")
    # a grayscale training image must come out as RGB with equal channels
    gray = np.full((64, 64), 77, np.uint8)
    save_png(d / "train" / "n01443537" / "images" / "n01443537_9.JPEG", gray, fmt="JPEG")
    val = [
        ("val_0.JPEG", "n05555555", (30, 60, 90)),
        ("val_1.JPEG", "n09999999", (220, 120, 20)),
        ("val_2.JPEG", "n01443537", (90, 30, 160)),
    ]
    for fname, _, col in val:
        save_png(d / "val" / "images" / fname, solid(col), fmt="JPEG")
    (d / "val" / "val_annotations.txt").write_text("".join(f"{f}\t{w}\t0\t0\t63\t63\n" for f, w, _ in val))

    real = load_dataset("tiny-imagenet", tmp_path)
    assert Path(real.root) == d
    info = real.info
    assert info.name == "tinyimagenet" and info.im_size == (64, 64) and info.channels == 3
    assert info.class_names == tuple(wnids) and info.num_classes == 3
    assert info.mean == IMNET_MEAN and info.std == IMNET_STD
    assert real.train_labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert real.test_labels.tolist() == [2, 0, 1]

    pix = real.denormalise(real.train_images) * 255
    expect_train = [(250, 10, 10), (10, 250, 10), (10, 10, 250), (77, 77, 77), (200, 200, 20), (20, 200, 200)]
    for i, col in enumerate(expect_train):
        mean_col = pix[i].mean(dim=(1, 2)).tolist()
        assert mean_col == pytest.approx(list(col), abs=4), i  # JPEG is lossy: tolerance
    tpix = real.denormalise(real.test_images) * 255
    for i, (_, _, col) in enumerate(val):
        assert tpix[i].mean(dim=(1, 2)).tolist() == pytest.approx(list(col), abs=4)
    # the normalisation itself, exactly, on the decoded pixels
    from PIL import Image

    with Image.open(d / "val" / "images" / "val_1.JPEG") as im:
        u8 = np.asarray(im.convert("RGB")).transpose(2, 0, 1)[None]
    assert_norm(real.test_images[1:2], u8, IMNET_MEAN, IMNET_STD)


def test_tiny_imagenet_bad_annotation(tmp_path):
    d = tmp_path / "tiny-imagenet-200"
    (d / "train" / "n1" / "images").mkdir(parents=True)
    save_png(d / "train" / "n1" / "images" / "a.png", solid((1, 2, 3)))
    (d / "wnids.txt").write_text("n1\n")
    (d / "val" / "images").mkdir(parents=True)
    save_png(d / "val" / "images" / "val_0.JPEG", solid((1, 2, 3)), fmt="JPEG")
    (d / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn404\t0\t0\t1\t1\n")
    with pytest.raises(ValueError, match="n404"):
        load_dataset("tinyimagenet", tmp_path)


# ---------------------------------------------------------------------------------------------
# ImageFolder family
# ---------------------------------------------------------------------------------------------


def banded(h=30, w=90) -> np.ndarray:
    """Red left, green middle (columns 25..64), blue right."""
    a = np.zeros((h, w, 3), np.uint8)
    a[:, :25] = (255, 0, 0)
    a[:, 25:65] = (0, 255, 0)
    a[:, 65:] = (0, 0, 255)
    return a


def test_imagewoof_resize_center_crop_and_classes(tmp_path, rng):
    d = tmp_path / "imagewoof2-160"
    # classes come out sorted by folder name regardless of creation order
    save_png(d / "train" / "n02115641" / "b.png", banded())
    save_png(d / "train" / "n02115641" / "a.png", solid((12, 34, 56), (20, 20)))
    save_png(d / "train" / "n02086240" / "x.png", banded().transpose(1, 0, 2).copy())  # tall image
    (d / "train" / "n02086240" / "notes.txt").write_text("not an image")
    save_png(d / "val" / "n02115641" / "v.png", solid((200, 100, 0), (15, 15)))
    save_png(d / "val" / "n02086240" / "w.png", solid((0, 100, 200), (15, 15)))
    # the noise image is exactly image_size: no resampling, exact values
    noise = rng.integers(0, 256, (15, 15, 3), dtype=np.uint8)
    save_png(d / "val" / "n02086240" / "z.png", noise)

    real = load_dataset("ImageWoof", tmp_path, image_size=15)
    assert Path(real.root) == d
    assert real.info.name == "imagewoof" and real.info.im_size == (15, 15)
    assert real.info.class_names == ("n02086240", "n02115641")
    # train: class 0 = [x.png], class 1 = [a.png, b.png] (files sorted)
    assert real.train_labels.tolist() == [0, 1, 1]
    assert real.test_labels.tolist() == [0, 0, 1]
    pix = real.denormalise(real.train_images) * 255
    # 90x30 -> shorter side 15 -> 45x15 -> centre 15 columns = original columns 30..60: all green
    green = torch.tensor([0.0, 255.0, 0.0]).view(3, 1, 1).expand(3, 15, 15)
    torch.testing.assert_close(pix[2], green, atol=1e-3, rtol=0)
    torch.testing.assert_close(pix[0], green, atol=1e-3, rtol=0)  # the tall one, rows cropped
    assert pix[1].mean(dim=(1, 2)).tolist() == pytest.approx([12, 34, 56], abs=1e-3)
    assert_norm(real.test_images[1:2], noise.transpose(2, 0, 1)[None], IMNET_MEAN, IMNET_STD)
    tpix = real.denormalise(real.test_images) * 255
    assert tpix[0].mean(dim=(1, 2)).tolist() == pytest.approx([0, 100, 200], abs=1e-3)
    assert tpix[2].mean(dim=(1, 2)).tolist() == pytest.approx([200, 100, 0], abs=1e-3)


def test_imagenette_default_size_128_and_jpeg(tmp_path):
    d = tmp_path / "imagenette2"
    save_png(d / "train" / "b" / "1.JPEG", solid((100, 150, 200), (20, 30)), fmt="JPEG")
    save_png(d / "train" / "a" / "1.jpg", solid((50, 60, 70), (20, 30)), fmt="JPEG")
    save_png(d / "val" / "a" / "1.jpeg", solid((50, 60, 70), (20, 30)), fmt="JPEG")
    real = load_dataset("imagenette", tmp_path)
    assert real.info.im_size == (128, 128) and real.info.name == "imagenette"
    assert real.train_images.shape == (2, 3, 128, 128) and real.test_images.shape == (1, 3, 128, 128)
    assert real.info.class_names == ("a", "b") and real.train_labels.tolist() == [0, 1]
    pix = real.denormalise(real.train_images) * 255
    assert pix[1].mean(dim=(1, 2)).tolist() == pytest.approx([100, 150, 200], abs=4)


def test_imagefolder_uses_root_only(tmp_path):
    save_png(tmp_path / "train" / "cat" / "0.png", solid((1, 2, 3), (8, 8)))
    save_png(tmp_path / "train" / "dog" / "0.png", solid((4, 5, 6), (8, 8)))
    save_png(tmp_path / "val" / "dog" / "0.png", solid((7, 8, 9), (8, 8)))
    real = load_dataset("ImageFolder", tmp_path, image_size=8)
    assert Path(real.root) == tmp_path
    assert real.info.class_names == ("cat", "dog") and real.test_labels.tolist() == [1]
    assert_norm(
        real.test_images,
        np.array([7, 8, 9], np.uint8).reshape(1, 3, 1, 1).repeat(8, 2).repeat(8, 3),
        IMNET_MEAN,
        IMNET_STD,
    )
    with pytest.raises(DatasetNotFoundError):
        load_dataset("imagefolder", tmp_path / "train")  # no train/ and val/ inside


# ---------------------------------------------------------------------------------------------
# discovery, errors, download, env var
# ---------------------------------------------------------------------------------------------


def test_missing_dataset_lists_every_path(tmp_path, no_network):
    root = tmp_path / "empty"
    with pytest.raises(DatasetNotFoundError) as ei:
        load_dataset("cifar10", root)
    assert isinstance(ei.value, FileNotFoundError)
    msg = str(ei.value)
    for p in (root / "cifar-10-batches-py", root):
        assert str(p) in msg
    assert "--data-root" in msg and "cifar-10-python.tar.gz" in msg
    assert "--download" not in msg  # not offered where unsupported


@pytest.mark.parametrize(
    "name,subdirs,extra",
    [
        ("mnist", ["MNIST/raw", "mnist", ""], []),
        ("fashion-mnist", ["FashionMNIST/raw", "fashion-mnist", "FashionMNIST", ""], ["SYSTEM"]),
        ("svhn", ["svhn", "SVHN", ""], []),
        ("cifar100", ["cifar-100-python", ""], []),
        ("tinyimagenet", ["tiny-imagenet-200", ""], []),
        ("imagewoof", ["imagewoof2", "imagewoof2-160", "imagewoof2-320", "imagewoof", ""], []),
        ("imagenette", ["imagenette2", "imagenette2-160", "imagenette2-320", "imagenette", ""], []),
    ],
)
def test_missing_message_paths(tmp_path, no_system_fmnist, no_network, name, subdirs, extra):
    with pytest.raises(DatasetNotFoundError) as ei:
        load_dataset(name, tmp_path)
    msg = str(ei.value)
    for s in subdirs:
        assert f"{tmp_path / s if s else tmp_path}  -" in msg
    if extra:
        assert str(tmp_path / "no-system-copy") in msg
    assert "--data-root" in msg
    assert ("--download" in msg) == (name in ("mnist", "fashion-mnist"))


def test_partial_directory_reports_missing_files(tmp_path, rng):
    d = tmp_path / "mnist"
    write_idx_set(d, rng)
    (d / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"t10k-images-idx3-ubyte\[\.gz\]"):
        load_dataset("mnist", tmp_path)


def test_no_download_without_flag(tmp_path, no_system_fmnist, no_network):
    with pytest.raises(DatasetNotFoundError):
        load_dataset("fashion-mnist", tmp_path)
    assert not (tmp_path / "FashionMNIST").exists()


class _FakeResponse(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@pytest.mark.parametrize(
    "name,sub,url",
    [
        ("mnist", "MNIST/raw", "https://ossci-datasets.s3.amazonaws.com/mnist/"),
        ("fashion-mnist", "FashionMNIST/raw", "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"),
    ],
)
def test_download_with_fake_server(tmp_path, rng, monkeypatch, no_system_fmnist, name, sub, url):
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (4, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.array([3, 1, 4, 1], np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (2, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.array([5, 9], np.uint8),
    }
    served = {url + k + ".gz": gzip.compress(idx_bytes(v)) for k, v in arrays.items()}
    requested = []

    def fake_urlopen(u, *a, **k):
        requested.append(u)
        return _FakeResponse(served[u])

    monkeypatch.setattr(D.urllib.request, "urlopen", fake_urlopen)
    real = load_dataset(name, tmp_path, download=True)
    assert sorted(requested) == sorted(served)
    target = tmp_path / sub
    assert Path(real.root) == target
    assert sorted(os.listdir(target)) == sorted(k + ".gz" for k in arrays)  # no temp files left behind
    assert real.train_labels.tolist() == [3, 1, 4, 1] and real.test_labels.tolist() == [5, 9]
    mean, std = ((MNIST_MEAN,), (MNIST_STD,)) if name == "mnist" else ((FMNIST_MEAN,), (FMNIST_STD,))
    assert_norm(real.train_images, arrays["train-images-idx3-ubyte"][:, None], mean, std)
    # present now: download=True does not fetch again
    requested.clear()
    load_dataset(name, tmp_path, download=True)
    assert requested == []


def test_failed_download_leaves_no_partial_file(tmp_path, monkeypatch):
    def broken(u, *a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(D.urllib.request, "urlopen", broken)
    with pytest.raises(DatasetNotFoundError, match="network unreachable"):
        load_dataset("mnist", tmp_path, download=True)
    assert os.listdir(tmp_path / "MNIST" / "raw") == []


def test_env_var_and_default_root(tmp_path, rng, monkeypatch):
    env_root = tmp_path / "env"
    write_idx_set(env_root / "mnist", rng, n_train=2)
    monkeypatch.setenv("HYPERDM_DATA", str(env_root))
    real = load_dataset("mnist")
    assert Path(real.root) == env_root / "mnist"
    # an explicit root beats the env var
    write_idx_set(tmp_path / "explicit" / "MNIST" / "raw", rng, n_train=3)
    assert load_dataset("mnist", tmp_path / "explicit").train_labels.numel() == 3
    # without the env var: ./data
    monkeypatch.delenv("HYPERDM_DATA")
    cwd = tmp_path / "cwd"
    write_idx_set(cwd / "data" / "MNIST" / "raw", rng, n_train=4)
    monkeypatch.chdir(cwd)
    real = load_dataset("mnist")
    assert real.train_labels.numel() == 4
    assert Path(real.root).resolve() == (cwd / "data" / "MNIST" / "raw").resolve()


def test_logs_directory_used(tmp_path, rng, caplog):
    write_idx_set(tmp_path / "mnist", rng)
    with caplog.at_level(logging.INFO, logger="hyperdm.distill.data"):
        load_dataset("mnist", tmp_path)
    assert any(str(tmp_path / "mnist") in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------------------------------
# RealData helpers
# ---------------------------------------------------------------------------------------------


def test_denormalise_round_trip(tmp_path, rng):
    _, img, _, _, _ = write_cifar10(tmp_path, rng)
    real = load_dataset("cifar10", tmp_path)
    back = real.denormalise(real.train_images)
    np.testing.assert_allclose(back.numpy(), img.transpose(0, 3, 1, 2) / 255.0, atol=1e-6, rtol=0)
    # single image [C, H, W], and no clamping outside [0, 1]
    x = torch.full((3, 2, 2), 10.0)
    out = real.denormalise(x)
    assert out.shape == (3, 2, 2)
    assert out[0, 0, 0].item() == pytest.approx(10 * CIFAR10_STD[0] + CIFAR10_MEAN[0], abs=1e-6)
    assert out.max().item() > 1.0
    with pytest.raises(ValueError, match="expected images with 3 channels"):
        real.denormalise(torch.zeros(2, 1, 4, 4))


def test_indices_by_class():
    info = DatasetInfo("mnist", 1, (2, 2), 4, (0.5,), (0.5,), ("a", "b", "c", "d"))
    labels = torch.tensor([2, 0, 2, 1, 0, 2], dtype=torch.int64)
    real = RealData(
        info, torch.zeros(6, 1, 2, 2), labels, torch.zeros(0, 1, 2, 2), torch.zeros(0, dtype=torch.int64), "/x"
    )
    idx = real.indices_by_class()
    assert len(idx) == 4
    assert [t.tolist() for t in idx] == [[1, 4], [3], [0, 2, 5], []]
    assert all(t.dtype == torch.int64 for t in idx)


# ---------------------------------------------------------------------------------------------
# the real Fashion-MNIST (Debian's dataset-fashion-mnist), when installed
# ---------------------------------------------------------------------------------------------


def _debian_fmnist_installed() -> bool:
    return all(
        (DEBIAN_FMNIST / f).is_file()
        for f in (
            "train-images-idx3-ubyte.gz",
            "train-labels-idx1-ubyte.gz",
            "t10k-images-idx3-ubyte.gz",
            "t10k-labels-idx1-ubyte.gz",
        )
    )


def test_real_fashion_mnist_from_system_path(tmp_path, monkeypatch, caplog):
    if not _debian_fmnist_installed():
        pytest.skip(f"{DEBIAN_FMNIST} not installed (apt-get install dataset-fashion-mnist)")
    monkeypatch.delenv("HYPERDM_DATA", raising=False)
    monkeypatch.chdir(tmp_path)  # no ./data here: the default search goes on to the system copy, and says so
    with caplog.at_level(logging.WARNING, logger="hyperdm.distill.data"):
        real = load_dataset("fashion-mnist")
    assert Path(real.root) == DEBIAN_FMNIST
    said = [r for r in caplog.records if r.levelno == logging.WARNING and str(DEBIAN_FMNIST) in r.getMessage()]
    assert said and "--data-root" in said[0].getMessage()
    assert real.train_images.shape == (60000, 1, 28, 28) and real.test_images.shape == (10000, 1, 28, 28)
    assert real.info.num_classes == 10 and real.info.im_size == (28, 28)
    assert torch.bincount(real.train_labels, minlength=10).tolist() == [6000] * 10
    assert torch.bincount(real.test_labels, minlength=10).tolist() == [1000] * 10
    assert [len(i) for i in real.indices_by_class()] == [6000] * 10
    # the reference constants are the training set's own statistics
    assert abs(real.train_images.mean().item()) < 0.01
    assert abs(real.train_images.std().item() - 1.0) < 0.01
    px = real.denormalise(real.train_images[:100])
    assert px.min().item() == pytest.approx(0.0, abs=1e-6) and px.max().item() == pytest.approx(1.0, abs=1e-6)


# ---------------------------------------------------------------------------------------------
# an explicit root is the only place searched; the restricted unpickler
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["missing root", "empty root", "one file missing"])
def test_explicit_root_never_falls_back_to_the_system_copy(tmp_path, rng, monkeypatch, how):
    monkeypatch.delenv("HYPERDM_DATA", raising=False)
    root = tmp_path / "root"
    if how == "empty root":
        root.mkdir()
    if how == "one file missing":
        write_idx_set(root / "FashionMNIST" / "raw", rng)
        (root / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetNotFoundError) as e:
        load_dataset("fashion-mnist", root)
    msg = str(e.value)
    assert f"not found under --data-root {root}" in msg
    if how == "missing root":
        assert "does not exist" in msg
    if how == "one file missing":
        assert f"{root / 'FashionMNIST' / 'raw'}  - lacks t10k-labels-idx1-ubyte[.gz]" in msg
    assert f"  {DEBIAN_FMNIST}  -" not in msg  # the system copy was not searched


def test_env_root_is_explicit_too(tmp_path, monkeypatch):
    monkeypatch.setenv("HYPERDM_DATA", str(tmp_path / "nothing-here"))
    with pytest.raises(DatasetNotFoundError, match="not found under HYPERDM_DATA"):
        load_dataset("fashion-mnist")


class _Payload:
    """Unpickling this calls ``pathlib.Path.touch`` on a marker file: code a data file must never run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_cifar_pickle_that_would_run_code_is_refused(tmp_path, rng):
    d, *_ = write_cifar10(tmp_path, rng)
    marker = tmp_path / "ran"
    dump({b"labels": [0], b"data": np.zeros((1, 3072), np.uint8), b"x": _Payload(marker)}, d / "test_batch")
    with pytest.raises(D.UnsafePickleError, match=r"refused to read .*test_batch: the pickle asks for "):
        load_dataset("cifar10", tmp_path)
    assert not marker.exists()
    # the same pickle, unrestricted, does run it: the test would notice a loader that lets it through
    with open(d / "test_batch", "rb") as f:
        pickle.load(f, encoding="bytes")
    assert marker.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_batches_of_every_pickle_protocol_load(tmp_path, rng, protocol, monkeypatch):
    monkeypatch.setattr(
        sys.modules[__name__], "dump", lambda obj, path: path.write_bytes(pickle.dumps(obj, protocol=protocol))
    )
    _d, img, lab, _, _ = write_cifar10(tmp_path, rng)
    real = load_dataset("cifar10", tmp_path)
    assert real.train_labels.tolist() == lab
    np.testing.assert_allclose(
        real.denormalise(real.train_images).numpy(), img.transpose(0, 3, 1, 2) / 255.0, atol=1e-6
    )


def test_truncated_cifar_batch_names_the_file(tmp_path, rng):
    d, *_ = write_cifar10(tmp_path, rng)
    raw = (d / "data_batch_3").read_bytes()
    (d / "data_batch_3").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match=r"data_batch_3: not a readable pickle batch"):
        load_dataset("cifar10", tmp_path)
