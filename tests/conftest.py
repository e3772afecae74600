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

try:  # the Triton kernels' tests need triton (its interpreter on a CPU): the [triton] extra, which CI installs
    import triton  # noqa: F401

    HAVE_TRITON = True
except ImportError:
    HAVE_TRITON = False
_TRITON_TESTS: list[str] = []
#: whole modules of Triton tests, not collected without triton
_TRITON_MODULES = ("test_triton_kernels.py", "test_kernel_check.py")
collect_ignore = [] if HAVE_TRITON else list(_TRITON_MODULES)


def pytest_collection_modifyitems(config, items):
    """Without triton, the tests marked ``triton`` are left out, and one line at the end says how to run them."""
    if HAVE_TRITON:
        return
    out = [item for item in items if item.get_closest_marker("triton")]
    if out:
        _TRITON_TESTS.extend(item.nodeid for item in out)
        config.hook.pytest_deselected(items=out)
        items[:] = [item for item in items if not item.get_closest_marker("triton")]


def pytest_terminal_summary(terminalreporter):
    if not HAVE_TRITON:
        terminalreporter.write_line(
            f"the Triton kernels' tests were left out ({', '.join(_TRITON_MODULES)} and {len(_TRITON_TESTS)} more): "
            "triton is not installed; pip install '.[triton]' runs them (on a CPU, under Triton's interpreter)"
        )


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
