"""Readers for the real datasets used in distillation, from their usual on-disk formats.

Every dataset is read whole into memory as one float32 tensor ``[N, C, H, W]`` per split,
normalised with the per-channel mean/std the DatasetCondensation line of work uses
(``(uint8 / 255 - mean) / std``).

Where the files are looked for: ``root`` (``--data-root`` on the command line), else the
environment variable ``HYPERDM_DATA``, else ``./data``.  For each dataset a short list of
candidate directories under that root (and the root itself) is tried in order and the first one
that holds every file is used; :class:`DatasetNotFoundError` lists every directory tried and what
each one lacks.  A root that was given (``root`` or ``HYPERDM_DATA``) is the only place searched.
Without one, the search goes on to system-wide copies (Debian's Fashion-MNIST), and the directory
chosen is logged at WARNING level, so a run never trains on data from somewhere the user did
not expect without saying so.

Formats read (no torchvision needed):

* Fashion-MNIST / MNIST: the idx files (plain or ``.gz``), e.g. torchvision's ``<root>/FashionMNIST/raw``
  or Debian's ``/usr/share/datasets/fashion-mnist`` (``apt-get install dataset-fashion-mnist``).
  These two can be downloaded with ``download=True`` (``--download``); nothing else downloads.
* CIFAR-10 / CIFAR-100: the "python version" pickle batches, read by a restricted unpickler that
  builds only numpy arrays, numbers, strings, bytes, lists and dicts (a pickle that asks for
  anything else, e.g. a function to call, is refused before it runs).
* SVHN: the cropped-digit ``train_32x32.mat`` / ``test_32x32.mat`` (needs scipy).
* Tiny ImageNet: ``tiny-imagenet-200`` as distributed (the ``val`` split is the test split).
* ImageWoof / ImageNette / any ImageFolder tree: ``train/<class>/*`` and ``val/<class>/*``,
  resized (shorter side) and centre-cropped to ``image_size`` (default 128).  Needs Pillow.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
import pickle
import re
import shutil
import struct
import tempfile
import urllib.request
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

__all__ = [
    "DatasetInfo",
    "RealData",
    "DatasetNotFoundError",
    "DATASETS",
    "canonical_name",
    "load_dataset",
]

logger = logging.getLogger(__name__)

DATASETS: tuple[str, ...] = (
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

#: Where Debian/Ubuntu's ``dataset-fashion-mnist`` package puts the idx files (tried last).
SYSTEM_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)

_FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_DIGITS = tuple(str(i) for i in range(10))

_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_IMAGE_EXTS = {".jpg", ".jpeg", ".png"}

# alias key (lower case, letters and digits only) -> canonical name
_ALIASES: dict[str, str] = {
    "fashionmnist": "fashion-mnist",
    "fmnist": "fashion-mnist",
    "mnist": "mnist",
    "cifar10": "cifar10",
    "cifar100": "cifar100",
    "svhn": "svhn",
    "tinyimagenet": "tinyimagenet",
    "tinyimagenet200": "tinyimagenet",
    "imagewoof": "imagewoof",
    "imagewoof2": "imagewoof",
    "imagenette": "imagenette",
    "imagenette2": "imagenette",
    "imagefolder": "imagefolder",
}


# --------------------------------------------------------------------------------------------
# public types
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetInfo:
    """What a model and an evaluation need to know about a dataset."""

    name: str
    channels: int
    im_size: tuple[int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...]


@dataclass
class RealData:
    """A whole dataset in memory: normalised float32 images ``[N, C, H, W]``, int64 labels ``[N]``."""

    info: DatasetInfo
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    root: str

    def indices_by_class(self) -> list[torch.Tensor]:
        """Training-set indices of each class ``0 .. num_classes-1`` (int64, ascending, on the labels' device)."""
        labels = self.train_labels.reshape(-1)
        return [torch.nonzero(labels == c).reshape(-1).to(torch.int64) for c in range(self.info.num_classes)]

    def denormalise(self, x: torch.Tensor) -> torch.Tensor:
        """Undo the normalisation: back to the ``[0, 1]`` pixel scale (not clamped).

        Works on ``[N, C, H, W]`` and ``[C, H, W]`` tensors on any device.
        """
        c = self.info.channels
        if x.dim() < 3 or x.shape[-3] != c:
            raise ValueError(f"expected images with {c} channels in dim -3, got shape {tuple(x.shape)}")
        dtype = x.dtype if x.is_floating_point() else torch.float32
        mean = torch.tensor(self.info.mean, dtype=dtype, device=x.device).view(c, 1, 1)
        std = torch.tensor(self.info.std, dtype=dtype, device=x.device).view(c, 1, 1)
        return x.to(dtype) * std + mean


class DatasetNotFoundError(FileNotFoundError):
    """No candidate directory holds the dataset; the message lists every one tried and how to get it."""


def canonical_name(name: str) -> str:
    """The canonical dataset name for an alias (case and punctuation are ignored).

    >>> canonical_name("FashionMNIST"), canonical_name("CIFAR-10"), canonical_name("tiny-imagenet-200")
    ('fashion-mnist', 'cifar10', 'tinyimagenet')
    """
    key = re.sub(r"[^a-z0-9]", "", str(name).lower())
    try:
        return _ALIASES[key]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}") from None


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------


def _resolve_root(root: str | os.PathLike | None) -> tuple[Path, str | None]:
    """The data root and who chose it.

    The second item is ``"--data-root"`` (the argument), ``"HYPERDM_DATA"``, or ``None`` (the default).
    """
    given: str | None = "--data-root"
    if root is None:
        env = os.environ.get("HYPERDM_DATA")
        root, given = (env, "HYPERDM_DATA") if env else ("./data", None)
    return Path(os.path.expanduser(os.fspath(root))).absolute(), given


def _unique(paths: Sequence[Path]) -> list[Path]:
    seen: set[str] = set()
    out = []
    for p in paths:
        key = os.path.normpath(str(p))
        if key not in seen:
            seen.add(key)
            out.append(Path(key))
    return out


def _normalise(u8: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 ``[N, C, H, W]`` -> float32 ``(x / 255 - mean) / std``."""
    if u8.dtype != np.uint8 or u8.ndim != 4:
        raise ValueError(f"internal: expected uint8 [N, C, H, W], got {u8.dtype} {u8.shape}")
    u8 = np.ascontiguousarray(u8)
    if not u8.flags.writeable:  # e.g. np.frombuffer over bytes; torch.from_numpy wants a writable array
        u8 = u8.copy()
    x = torch.from_numpy(u8).to(torch.float32).div_(255.0)
    c = u8.shape[1]
    x.sub_(torch.tensor(mean, dtype=torch.float32).view(1, c, 1, 1))
    x.div_(torch.tensor(std, dtype=torch.float32).view(1, c, 1, 1))
    return x


def _labels(y: np.ndarray, num_classes: int, what: str) -> torch.Tensor:
    y = np.asarray(y).reshape(-1).astype(np.int64)
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"{what}: labels must lie in [0, {num_classes - 1}], found {int(y.min())}..{int(y.max())}")
    return torch.from_numpy(y)


def _check_native_size(name: str, image_size: int | None, native: tuple[int, ...]) -> None:
    if image_size is not None and (int(image_size), int(image_size)) != tuple(native):
        raise ValueError(
            f"{name} images are {native[0]}x{native[1]}; image_size={image_size} is only supported "
            f"for tinyimagenet, imagewoof, imagenette and imagefolder"
        )


# --------------------------------------------------------------------------------------------
# idx (MNIST family)
# --------------------------------------------------------------------------------------------


def _read_idx(path: Path, expected_magic: int) -> np.ndarray:
    """Parse one idx file (plain or gzip) strictly; any inconsistency is a ValueError naming the file."""
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":  # gzip magic (a plain idx file starts with two zero bytes)
            raw = gzip.decompress(raw)
    except FileNotFoundError:
        raise
    except (OSError, EOFError, zlib.error) as e:
        raise ValueError(f"{path}: not a readable idx file ({e})") from e
    if len(raw) < 4:
        raise ValueError(f"{path}: truncated idx file ({len(raw)} bytes, no header)")
    magic = struct.unpack(">I", raw[:4])[0]
    if magic != expected_magic:
        raise ValueError(
            f"{path}: bad idx magic number 0x{magic:08x}, expected 0x{expected_magic:08x} "
            f"(corrupt file, or not the file its name says)"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated idx header ({len(raw)} bytes, need {header})")
    dims = struct.unpack(">" + "I" * ndim, raw[4:header])
    n = int(np.prod(dims, dtype=np.int64))
    if len(raw) - header != n:
        state = "truncated" if len(raw) - header < n else "has trailing bytes"
        raise ValueError(
            f"{path}: {state}: header says {'x'.join(map(str, dims))} = {n} bytes of data, file has {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _idx_path(d: Path, base: str) -> Path | None:
    for name in (base, base + ".gz"):
        p = d / name
        if p.is_file():
            return p
    return None


def _idx_missing(d: Path) -> list[str]:
    return [f"{b}[.gz]" for b in _IDX_FILES if _idx_path(d, b) is None]


def _load_idx(d: Path, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    out = []
    for split in ("train", "t10k"):
        ip = _idx_path(d, f"{split}-images-idx3-ubyte")
        lp = _idx_path(d, f"{split}-labels-idx1-ubyte")
        if ip is None or lp is None:  # pragma: no cover - discovery checked this
            raise DatasetNotFoundError(f"{name}: idx files for {split} disappeared from {d}")
        images = _read_idx(ip, 0x00000803)
        labels = _read_idx(lp, 0x00000801)
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"{name}: {ip} holds {images.shape[0]} images but {lp} holds {labels.shape[0]} labels")
        out += [images[:, None, :, :], labels]
    if out[0].shape[2:] != out[2].shape[2:]:
        raise ValueError(f"{name}: train images are {out[0].shape[2:]} but test images are {out[2].shape[2:]} in {d}")
    return out[0], out[1], out[2], out[3]


def _download_idx(target: Path, base_url: str, name: str) -> None:
    """Fetch the ``.gz`` idx files missing from ``target`` (each to a temp file, then renamed)."""
    target.mkdir(parents=True, exist_ok=True)
    for base in _IDX_FILES:
        if _idx_path(target, base) is not None:
            continue
        url = base_url + base + ".gz"
        dest = target / (base + ".gz")
        logger.info("downloading %s -> %s", url, dest)
        fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".part", dir=target)
        try:
            with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=60) as resp:
                shutil.copyfileobj(resp, f)
            os.replace(tmp, dest)
        except BaseException as e:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            if isinstance(e, Exception):
                raise DatasetNotFoundError(
                    f"{name}: downloading {url} failed ({e}); put the idx files in {target} "
                    f"by hand, or pass --data-root DIR to point at a copy"
                ) from e
            raise


# --------------------------------------------------------------------------------------------
# CIFAR
# --------------------------------------------------------------------------------------------


#: the only globals a CIFAR batch may name: numpy's array / dtype / scalar reconstructors and bytes decoding
_PICKLE_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class UnsafePickleError(ValueError):
    """A dataset pickle asked for a global outside the allowed numpy reconstructors; nothing in it ran."""


class _DataUnpickler(pickle.Unpickler):
    """Builds numpy arrays, numbers, strings, bytes, lists and dicts; refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:  # pickle.Unpickler's hook
        if (module, name) not in _PICKLE_ALLOWED:
            raise UnsafePickleError(f"{module}.{name}")
        if module.startswith("numpy.core") and hasattr(np, "_core"):  # numpy 2 moved numpy.core to numpy._core
            module = "numpy._core" + module[len("numpy.core") :]
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _DataUnpickler(f, encoding="bytes").load()
    except UnsafePickleError as e:
        raise UnsafePickleError(
            f"refused to read {path}: the pickle asks for {e}, which is not part of a dataset "
            "batch (only numpy arrays, numbers, strings and lists/dicts load), and could run "
            "code. Replace the file with a copy from the dataset's own download."
        ) from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, MemoryError) as e:
        raise ValueError(
            f"{path}: not a readable pickle batch ({type(e).__name__}: {e}); the file is truncated or "
            "damaged. Replace it with a copy from the dataset's own download."
        ) from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return obj


def _cifar_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    d = _unpickle(path)
    if b"data" not in d or label_key not in d:
        raise ValueError(f"{path}: missing key b'data' or {label_key!r} (keys: {sorted(d)})")
    data = np.asarray(d[b"data"])
    labels = np.asarray(d[label_key]).reshape(-1)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: b'data' must be uint8 [N, 3072], got {data.dtype} {data.shape}")
    if data.shape[0] != labels.shape[0]:
        raise ValueError(f"{path}: {data.shape[0]} images but {labels.shape[0]} labels")
    # each row is the R plane, then G, then B, each 32x32 row-major
    return data.reshape(-1, 3, 32, 32), labels


def _names(meta: dict, key: bytes, path: Path) -> tuple[str, ...]:
    if key not in meta:
        raise ValueError(f"{path}: missing key {key!r}")
    return tuple(n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in meta[key])


# --------------------------------------------------------------------------------------------
# images (Tiny ImageNet, ImageFolder)
# --------------------------------------------------------------------------------------------


def _pil() -> ModuleType:
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - Pillow is a declared extra
        raise ImportError('reading image files needs Pillow: pip install "hyperdm[distill]"') from e
    return Image


def _read_image(path: Path, size: int) -> np.ndarray:
    """RGB uint8 ``[3, size, size]``: shorter side resized to ``size``, then centre-cropped."""
    Image = _pil()
    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        if (w, h) != (size, size):
            if w <= h:
                nw, nh = size, max(size, int(size * h / w))
            else:
                nw, nh = max(size, int(size * w / h)), size
            if (nw, nh) != (w, h):
                resample = getattr(Image, "Resampling", Image).BILINEAR
                im = im.resize((nw, nh), resample)
            left = round((nw - size) / 2.0)
            top = round((nh - size) / 2.0)
            im = im.crop((left, top, left + size, top + size))
        arr = np.asarray(im, dtype=np.uint8)
    return arr.transpose(2, 0, 1)


def _read_images(paths: Sequence[Path], size: int) -> np.ndarray:
    out = np.empty((len(paths), 3, size, size), dtype=np.uint8)
    for i, p in enumerate(paths):
        try:
            out[i] = _read_image(p, size)
        except (OSError, ValueError, SyntaxError) as e:  # PIL: UnidentifiedImageError (an OSError), truncated data
            raise ValueError(f"{p}: not a readable image ({e}); remove or replace the file.") from None
    return out


def _image_files(d: Path) -> list[Path]:
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in _IMAGE_EXTS)


# --------------------------------------------------------------------------------------------
# per-dataset specifications
# --------------------------------------------------------------------------------------------

# a loader returns (train uint8 NCHW, train labels, test uint8 NCHW, test labels, class names)
_Loaded = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]


@dataclass(frozen=True)
class _Spec:
    name: str
    title: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    candidates: Callable[[Path], list[Path]]
    missing: Callable[[Path], list[str]]  # what a candidate directory lacks ([] = usable)
    load: Callable[[Path, int | None], _Loaded]
    how_to_get: Callable[[Path], str]
    download_url: str | None = None
    download_dir: Callable[[Path], Path] | None = None
    #: system-wide copies, searched only when no root was given
    fallbacks: tuple[str, ...] = ()


def _missing_files(d: Path, names: Sequence[str], dirs: Sequence[str] = ()) -> list[str]:
    return [n for n in names if not (d / n).is_file()] + [n + "/" for n in dirs if not (d / n).is_dir()]


# ---- MNIST family


def _fmnist_candidates(root: Path) -> list[Path]:
    return [root / "FashionMNIST" / "raw", root / "fashion-mnist", root / "FashionMNIST", root]


def _mnist_candidates(root: Path) -> list[Path]:
    return [root / "MNIST" / "raw", root / "mnist", root]


def _idx_loader(name: str, classes: tuple[str, ...]) -> Callable[[Path, int | None], _Loaded]:
    def load(d: Path, image_size: int | None) -> _Loaded:
        xtr, ytr, xte, yte = _load_idx(d, name)
        _check_native_size(name, image_size, tuple(xtr.shape[2:]))
        return xtr, ytr, xte, yte, classes

    return load


def _fmnist_how(root: Path) -> str:
    return (
        "Get it with --download (download=True), which fetches the four .gz files from "
        f"{FASHION_MNIST_URL} into {root / 'FashionMNIST' / 'raw'}; or on Debian/Ubuntu "
        f"`apt-get install dataset-fashion-mnist` (installs {SYSTEM_FASHION_MNIST_DIR}); or copy the four idx files "
        f"(plain or .gz: train-images-idx3-ubyte, ...) into {root / 'FashionMNIST' / 'raw'}."
    )


def _mnist_how(root: Path) -> str:
    return (
        "Get it with --download (download=True), which fetches the four .gz files from "
        f"{MNIST_URL} into {root / 'MNIST' / 'raw'}; or copy the four idx files (plain or .gz) into "
        f"{root / 'MNIST' / 'raw'}."
    )


# ---- CIFAR


def _cifar10_load(d: Path, image_size: int | None) -> _Loaded:
    _check_native_size("cifar10", image_size, (32, 32))
    parts = [_cifar_batch(d / f"data_batch_{i}", b"labels") for i in range(1, 6)]
    xte, yte = _cifar_batch(d / "test_batch", b"labels")
    names = _names(_unpickle(d / "batches.meta"), b"label_names", d / "batches.meta")
    xtr = np.concatenate([p[0] for p in parts])
    ytr = np.concatenate([p[1] for p in parts])
    return xtr, ytr, xte, yte, names


def _cifar100_load(d: Path, image_size: int | None) -> _Loaded:
    _check_native_size("cifar100", image_size, (32, 32))
    xtr, ytr = _cifar_batch(d / "train", b"fine_labels")
    xte, yte = _cifar_batch(d / "test", b"fine_labels")
    names = _names(_unpickle(d / "meta"), b"fine_label_names", d / "meta")
    return xtr, ytr, xte, yte, names


_CIFAR10_FILES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")
_CIFAR100_FILES = ("train", "test", "meta")


# ---- SVHN


def _svhn_load(d: Path, image_size: int | None) -> _Loaded:
    try:
        import scipy.io as sio
    except ImportError as e:
        raise ImportError('reading SVHN (.mat files) needs scipy: pip install "hyperdm[distill]"') from e
    out: list[np.ndarray] = []
    for split in ("train", "test"):
        path = d / f"{split}_32x32.mat"
        try:
            m = sio.loadmat(str(path))
        except (ValueError, TypeError, OSError, EOFError, NotImplementedError) as e:
            raise ValueError(
                f"{path}: not a readable .mat file ({e}); the file is truncated or damaged. Replace it "
                "with a copy from the dataset's own download."
            ) from None
        if "X" not in m or "y" not in m:
            raise ValueError(f"{path}: expected variables 'X' and 'y'")
        x, y = np.asarray(m["X"]), np.asarray(m["y"]).reshape(-1).astype(np.int64)
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[2] != 3:
            raise ValueError(f"{path}: 'X' must be uint8 [H, W, 3, N], got {x.dtype} {x.shape}")
        if x.shape[3] != y.shape[0]:
            raise ValueError(f"{path}: {x.shape[3]} images but {y.shape[0]} labels")
        y = np.where(y == 10, 0, y)  # SVHN stores digit 0 as label 10
        out += [x.transpose(3, 2, 0, 1), y]
    _check_native_size("svhn", image_size, tuple(out[0].shape[2:]))
    return out[0], out[1], out[2], out[3], _DIGITS


# ---- Tiny ImageNet


def _tiny_missing(d: Path) -> list[str]:
    return _missing_files(d, ["wnids.txt", "val/val_annotations.txt"], ["train", "val/images"])


def _tiny_load(d: Path, image_size: int | None) -> _Loaded:
    size = int(image_size or 64)
    if size <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")
    wnids = [w.strip() for w in (d / "wnids.txt").read_text().splitlines() if w.strip()]
    if len(set(wnids)) != len(wnids):
        raise ValueError(f"{d / 'wnids.txt'}: duplicate class ids")
    index = {w: i for i, w in enumerate(wnids)}
    train_files: list[Path] = []
    train_labels: list[int] = []
    for i, w in enumerate(wnids):
        files = _image_files(d / "train" / w / "images")
        if not files:
            logger.warning("tinyimagenet: no training images in %s", d / "train" / w / "images")
        train_files += files
        train_labels += [i] * len(files)
    val_files: list[Path] = []
    val_labels: list[int] = []
    ann = d / "val" / "val_annotations.txt"
    for lineno, line in enumerate(ann.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1].strip() not in index:
            raise ValueError(
                f"{ann}:{lineno}: expected 'filename<TAB>wnid...' with a wnid from wnids.txt, got {line!r}"
            )
        val_files.append(d / "val" / "images" / fields[0].strip())
        val_labels.append(index[fields[1].strip()])
    xtr = _read_images(train_files, size)
    xte = _read_images(val_files, size)
    return xtr, np.asarray(train_labels, np.int64), xte, np.asarray(val_labels, np.int64), tuple(wnids)


# ---- ImageFolder


def _folder_missing(d: Path) -> list[str]:
    return _missing_files(d, [], ["train", "val"])


def _folder_load(d: Path, image_size: int | None) -> _Loaded:
    size = int(image_size or 128)
    if size <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")
    classes = sorted(p.name for p in (d / "train").iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"{d / 'train'}: no class folders")
    index = {c: i for i, c in enumerate(classes)}
    splits = []
    for split in ("train", "val"):
        files: list[Path] = []
        labels: list[int] = []
        for c in sorted(p.name for p in (d / split).iterdir() if p.is_dir()):
            if c not in index:
                raise ValueError(f"{d / split / c}: class {c!r} has no folder under {d / 'train'}")
            found = _image_files(d / split / c)
            files += found
            labels += [index[c]] * len(found)
        if not files:
            raise ValueError(f"{d / split}: no .jpg/.jpeg/.png images in its class folders")
        splits += [_read_images(files, size), np.asarray(labels, np.int64)]
    return splits[0], splits[1], splits[2], splits[3], tuple(classes)


def _folder_candidates(stem: str, versions: Sequence[str]) -> Callable[[Path], list[Path]]:
    def cands(root: Path) -> list[Path]:
        return [root / f"{stem}2{v}" for v in versions] + [root / stem, root]

    return cands


def _folder_how(url: str, stem: str) -> Callable[[Path], str]:
    def how(root: Path) -> str:
        return (
            f"Download {url} (or the full-size / -320 variant) and extract it into {root}, "
            f"giving {root / (stem + '2-160')}/train/<class>/*.JPEG and .../val/<class>/*.JPEG."
        )

    return how


_SPECS: dict[str, _Spec] = {
    "fashion-mnist": _Spec(
        "fashion-mnist",
        "Fashion-MNIST",
        (0.2861,),
        (0.3530,),
        _fmnist_candidates,
        _idx_missing,
        _idx_loader("fashion-mnist", _FASHION_CLASSES),
        _fmnist_how,
        FASHION_MNIST_URL,
        lambda r: r / "FashionMNIST" / "raw",
        (SYSTEM_FASHION_MNIST_DIR,),
    ),
    "mnist": _Spec(
        "mnist",
        "MNIST",
        (0.1307,),
        (0.3081,),
        _mnist_candidates,
        _idx_missing,
        _idx_loader("mnist", _DIGITS),
        _mnist_how,
        MNIST_URL,
        lambda r: r / "MNIST" / "raw",
    ),
    "cifar10": _Spec(
        "cifar10",
        "CIFAR-10",
        (0.4914, 0.4822, 0.4465),
        (0.2023, 0.1994, 0.2010),
        lambda r: [r / "cifar-10-batches-py", r],
        lambda d: _missing_files(d, _CIFAR10_FILES),
        _cifar10_load,
        lambda r: (
            "Download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz and extract it into "
            f"{r} (giving {r / 'cifar-10-batches-py'})."
        ),
    ),
    "cifar100": _Spec(
        "cifar100",
        "CIFAR-100",
        (0.5071, 0.4866, 0.4409),
        (0.2673, 0.2564, 0.2762),
        lambda r: [r / "cifar-100-python", r],
        lambda d: _missing_files(d, _CIFAR100_FILES),
        _cifar100_load,
        lambda r: (
            "Download https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz and extract it into "
            f"{r} (giving {r / 'cifar-100-python'})."
        ),
    ),
    "svhn": _Spec(
        "svhn",
        "SVHN",
        (0.4377, 0.4438, 0.4728),
        (0.1980, 0.2010, 0.1970),
        lambda r: [r / "svhn", r / "SVHN", r],
        lambda d: _missing_files(d, ["train_32x32.mat", "test_32x32.mat"]),
        _svhn_load,
        lambda r: (
            f"Download http://ufldl.stanford.edu/housenumbers/train_32x32.mat and test_32x32.mat into {r / 'svhn'}."
        ),
    ),
    "tinyimagenet": _Spec(
        "tinyimagenet",
        "Tiny ImageNet",
        _IMAGENET_MEAN,
        _IMAGENET_STD,
        lambda r: [r / "tiny-imagenet-200", r],
        _tiny_missing,
        _tiny_load,
        lambda r: (
            "Download http://cs231n.stanford.edu/tiny-imagenet-200.zip and unzip it into "
            f"{r} (giving {r / 'tiny-imagenet-200'})."
        ),
    ),
    "imagewoof": _Spec(
        "imagewoof",
        "ImageWoof",
        _IMAGENET_MEAN,
        _IMAGENET_STD,
        _folder_candidates("imagewoof", ("", "-160", "-320")),
        _folder_missing,
        _folder_load,
        _folder_how("https://s3.amazonaws.com/fast-ai-imageclas/imagewoof2-160.tgz", "imagewoof"),
    ),
    "imagenette": _Spec(
        "imagenette",
        "ImageNette",
        _IMAGENET_MEAN,
        _IMAGENET_STD,
        _folder_candidates("imagenette", ("", "-160", "-320")),
        _folder_missing,
        _folder_load,
        _folder_how("https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-160.tgz", "imagenette"),
    ),
    "imagefolder": _Spec(
        "imagefolder",
        "ImageFolder",
        _IMAGENET_MEAN,
        _IMAGENET_STD,
        lambda r: [r],
        _folder_missing,
        _folder_load,
        lambda r: (
            f"Point --data-root at a directory with train/<class>/*.jpg|png and val/<class>/*.jpg|png (currently {r})."
        ),
    ),
}


# --------------------------------------------------------------------------------------------
# discovery and loading
# --------------------------------------------------------------------------------------------


def _candidates(spec: _Spec, root: Path, given: str | None) -> list[Path]:
    """Directories to search: under ``root`` only when a root was given, then the system-wide copies otherwise."""
    return _unique(spec.candidates(root) + ([] if given else [Path(f) for f in spec.fallbacks]))


def _find(spec: _Spec, root: Path, given: str | None = None) -> tuple[Path | None, list[tuple[Path, list[str]]]]:
    """The first usable candidate directory, and what every tried one lacked."""
    tried: list[tuple[Path, list[str]]] = []
    for d in _candidates(spec, root, given):
        missing = spec.missing(d) if d.is_dir() else ["(directory does not exist)"]
        if not missing:
            return d, tried
        tried.append((d, missing))
    return None, tried


def _not_found(spec: _Spec, root: Path, tried: list[tuple[Path, list[str]]], given: str | None) -> DatasetNotFoundError:
    if given:
        head = (
            f"{spec.title} ({spec.name}) not found under {given} {root}"
            + (" (the directory does not exist)" if not root.exists() else "")
            + ". Looked in:"
        )
    else:
        head = f"{spec.title} ({spec.name}) not found. Looked in:"
    if given and not root.exists():
        tried = []  # every candidate lies under the missing root
    lines = [head[: -len(" Looked in:")] if not tried else head]
    for d, missing in tried:
        why = missing[0] if missing == ["(directory does not exist)"] else "lacks " + ", ".join(missing)
        lines.append(f"  {d}  - {why}")
    lines.append(spec.how_to_get(root))
    if given and spec.fallbacks:
        lines.append(
            f"A given root is the only place searched (system copies such as {', '.join(spec.fallbacks)} are "
            "used only without --data-root / HYPERDM_DATA): fix the root, or leave it out."
        )
    elif not given:
        lines.append(
            f"Use --data-root DIR (or the environment variable HYPERDM_DATA; default ./data) to say where "
            f"the data lives; the root searched was {root}."
        )
    return DatasetNotFoundError("\n".join(lines))


def load_dataset(
    name: str,
    root: str | os.PathLike | None = None,
    *,
    download: bool = False,
    image_size: int | None = None,
) -> RealData:
    """Read a whole dataset (train and test splits) from disk, normalised.

    ``root``: the data directory (``None``: ``$HYPERDM_DATA``, else ``./data``).  ``download``:
    fetch Fashion-MNIST / MNIST if they are not found anywhere (other datasets: ValueError).
    ``image_size``: side of the square images for Tiny ImageNet (default 64) and the ImageFolder
    datasets (default 128); the fixed-size datasets only accept their native size.
    """
    spec = _SPECS[canonical_name(name)]
    root_path, given = _resolve_root(root)
    if download and spec.download_url is None:
        where = ", ".join(str(d) for d in _candidates(spec, root_path, given))
        raise ValueError(
            f"download=True (--download) is not supported for {spec.title}; only fashion-mnist and "
            f"mnist can be downloaded. {spec.how_to_get(root_path)} Directories searched: {where}."
        )
    found, tried = _find(spec, root_path, given)
    if found is None and download:
        assert spec.download_dir is not None and spec.download_url is not None
        _download_idx(spec.download_dir(root_path), spec.download_url, spec.name)
        found, tried = _find(spec, root_path, given)
    if found is None:
        raise _not_found(spec, root_path, tried, given)
    if given:
        logger.info("loading %s from %s (%s %s)", spec.name, found, given, root_path)
    else:
        logger.warning(
            "loading %s from %s: no --data-root given (nor HYPERDM_DATA), so the default search chose "
            "it; pass --data-root to choose",
            spec.name,
            found,
        )
    xtr, ytr, xte, yte, class_names = spec.load(found, image_size)
    num_classes = len(class_names)
    if xtr.shape[1:] != xte.shape[1:]:
        raise ValueError(f"{spec.name}: train images are {xtr.shape[1:]} but test images are {xte.shape[1:]} ({found})")
    info = DatasetInfo(
        name=spec.name,
        channels=int(xtr.shape[1]),
        im_size=(int(xtr.shape[2]), int(xtr.shape[3])),
        num_classes=num_classes,
        mean=spec.mean,
        std=spec.std,
        class_names=class_names,
    )
    if len(info.mean) != info.channels:
        raise ValueError(f"{spec.name}: {info.channels}-channel images but {len(info.mean)} normalisation channels")
    real = RealData(
        info=info,
        train_images=_normalise(xtr, info.mean, info.std),
        train_labels=_labels(ytr, num_classes, f"{spec.name} train labels in {found}"),
        test_images=_normalise(xte, info.mean, info.std),
        test_labels=_labels(yte, num_classes, f"{spec.name} test labels in {found}"),
        root=str(found),
    )
    logger.info(
        "%s: %d train / %d test images, %d classes, %dx%dx%d",
        spec.name,
        real.train_labels.numel(),
        real.test_labels.numel(),
        num_classes,
        info.channels,
        *info.im_size,
    )
    return real
