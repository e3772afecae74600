"""Shared fixtures: a tiny Fashion-MNIST in its real idx format, cut from the real dataset."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

# Triton kernels run on CPU tensors only under Triton's interpreter, which must be on before triton is
# first imported (torch.compile may import it): on for the whole session on machines without CUDA.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


def write_idx(path: Path, arr: np.ndarray) -> None:
    """Write a uint8 idx file (gzip when the name ends in .gz), independently of the reader."""
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    data = header + np.ascontiguousarray(arr, dtype=np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def read_idx(path: Path) -> np.ndarray:
    """Minimal independent idx reader (gzip), for building fixtures."""
    data = gzip.decompress(path.read_bytes())
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data[4 + 4 * ndim :], dtype=np.uint8).reshape(dims)


@pytest.fixture(scope="session")
def tiny_fmnist_root(tmp_path_factory) -> Path:
    """``<root>/FashionMNIST/raw`` (torchvision layout) with 30 real training images per class and 500 test images."""
    src = Path(DEBIAN_FASHION_MNIST)
    if not (src / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    xtr, ytr = read_idx(src / "train-images-idx3-ubyte.gz"), read_idx(src / "train-labels-idx1-ubyte.gz")
    xte, yte = read_idx(src / "t10k-images-idx3-ubyte.gz"), read_idx(src / "t10k-labels-idx1-ubyte.gz")
    idx = np.concatenate([np.nonzero(ytr == c)[0][:30] for c in range(10)])
    root = tmp_path_factory.mktemp("fmnist")
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    write_idx(raw / "train-images-idx3-ubyte.gz", xtr[idx])
    write_idx(raw / "train-labels-idx1-ubyte.gz", ytr[idx])
    write_idx(raw / "t10k-images-idx3-ubyte.gz", xte[:500])
    write_idx(raw / "t10k-labels-idx1-ubyte.gz", yte[:500])
    return root
