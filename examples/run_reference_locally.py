"""Run a patched reference script (DM, IDM, Dance) without CIFAR-10 on disk and, if need be, without a GPU.

    cd <reference checkout>
    python /path/to/hyperdm/examples/run_reference_locally.py [--cuda-to-cpu] [--per-class N] SCRIPT.py [its args ...]

What it changes, in this process only (the checkout is not touched):

* ``torchvision.datasets.CIFAR10`` becomes :class:`FashionAsCIFAR10`: real Fashion-MNIST images
  (idx ``.gz`` files, by default Debian's ``/usr/share/datasets/fashion-mnist``), padded from 28x28
  to 32x32 and repeated over 3 channels, ``--per-class`` training images per class and
  ``--test-size`` test images. It is a smoke test of the code path, not of CIFAR-10 accuracy.
* ``--cuda-to-cpu`` runs code written for CUDA only on the CPU: a torch function mode turns every
  ``device="cuda"`` and ``.to("cuda")`` into the CPU, and ``Tensor.cuda`` / ``Module.cuda`` return
  their argument unchanged.

Then ``SCRIPT.py`` runs as ``__main__`` with the remaining arguments.
"""

from __future__ import annotations

import argparse
import gzip
import os
import runpy
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.overrides import TorchFunctionMode

FASHION_CLASSES = [
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
]


def read_idx(path: Path) -> np.ndarray:
    """A gzip-compressed idx file (Fashion-MNIST's format) as a uint8 array."""
    data = gzip.decompress(path.read_bytes())
    ndim = data[3]
    dims = np.frombuffer(data[4 : 4 + 4 * ndim], dtype=">u4").astype(int)
    return np.frombuffer(data[4 + 4 * ndim :], dtype=np.uint8).reshape(dims)


class FashionAsCIFAR10(torch.utils.data.Dataset):
    """Stands in for ``torchvision.datasets.CIFAR10(root, train, transform, target_transform, download)``.

    ``data`` is ``[N, 32, 32, 3]`` uint8 and ``targets`` a list of ints, as in torchvision's class;
    items are ``(PIL image, label)`` passed through ``transform`` / ``target_transform``.
    """

    source = Path("/usr/share/datasets/fashion-mnist")
    per_class = 40
    test_size = 200

    def __init__(
        self,
        root: Any = None,
        train: bool = True,
        transform: Callable | None = None,
        target_transform: Callable | None = None,
        download: bool = False,
    ) -> None:
        part = "train" if train else "t10k"
        x = read_idx(self.source / f"{part}-images-idx3-ubyte.gz")
        y = read_idx(self.source / f"{part}-labels-idx1-ubyte.gz")
        if train:
            keep = np.concatenate([np.nonzero(y == c)[0][: self.per_class] for c in range(10)])
        else:
            keep = np.arange(min(self.test_size, len(y)))
        self.data = np.repeat(np.pad(x[keep], ((0, 0), (2, 2), (2, 2)))[..., None], 3, axis=-1)
        self.targets = [int(t) for t in y[keep]]
        self.classes = list(FASHION_CLASSES)
        self.transform, self.target_transform = transform, target_transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        from PIL import Image

        img, target = Image.fromarray(self.data[i]), self.targets[i]
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target


def _cpu(device: Any) -> Any:
    if isinstance(device, str) and device.startswith("cuda"):
        return "cpu"
    if isinstance(device, torch.device) and device.type == "cuda":
        return torch.device("cpu")
    return device


class CudaToCpu(TorchFunctionMode):
    """Every ``device=`` argument and ``Tensor.to`` target that names CUDA names the CPU instead."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if "device" in kwargs:
            kwargs["device"] = _cpu(kwargs["device"])
        if func is torch.Tensor.to:
            args = tuple(_cpu(a) for a in args)
        return func(*args, **kwargs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cuda-to-cpu", action="store_true", help="run CUDA-only code on the CPU")
    ap.add_argument(
        "--fmnist", type=Path, default=FashionAsCIFAR10.source, help="directory of Fashion-MNIST's idx .gz files"
    )
    ap.add_argument("--per-class", type=int, default=FashionAsCIFAR10.per_class, help="training images per class")
    ap.add_argument("--test-size", type=int, default=FashionAsCIFAR10.test_size, help="test images")
    ap.add_argument("script", help="the reference script, run as __main__")
    ap.add_argument("args", nargs=argparse.REMAINDER, help="the script's own arguments")
    a = ap.parse_args()
    if not (a.fmnist / "train-images-idx3-ubyte.gz").exists():
        ap.error(
            f"no Fashion-MNIST idx files in {a.fmnist}: pass --fmnist DIR (or apt-get install dataset-fashion-mnist)"
        )
    FashionAsCIFAR10.source, FashionAsCIFAR10.per_class, FashionAsCIFAR10.test_size = a.fmnist, a.per_class, a.test_size

    import torchvision

    torchvision.datasets.CIFAR10 = FashionAsCIFAR10
    if a.cuda_to_cpu:
        # the reference scripts call .cuda() everywhere: patched into a no-op on purpose
        torch.Tensor.cuda = lambda self, *args, **kwargs: self  # type: ignore[method-assign]
        torch.nn.Module.cuda = lambda self, *args, **kwargs: self  # type: ignore[method-assign]
        CudaToCpu().__enter__()
    sys.argv = [a.script, *a.args]
    sys.path.insert(0, os.path.dirname(os.path.abspath(a.script)))
    runpy.run_path(a.script, run_name="__main__")


if __name__ == "__main__":
    main()
