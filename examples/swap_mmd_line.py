#!/usr/bin/env python
"""One distribution-matching (DM) step on Fashion-MNIST: the MMD line, then the one-line swap to HDD.

DM learns synthetic images so that, for a randomly initialised ConvNet phi, each class's mean
feature of the synthetic images matches that of the real images. HDD (hyperdm.HyperbolicMatcher)
replaces that one loss line; nothing else in the loop changes. This script takes one DM inner
step for all 10 classes with each line and prints the loss, the gradient norm on the synthetic
images, and the loss after one SGD step (lr 1, momentum 0.5, as in DM).

Data: Fashion-MNIST idx files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz), from
``/usr/share/datasets/fashion-mnist`` (Debian/Ubuntu: ``apt-get install dataset-fashion-mnist``)
or ``--data-root <root>`` (the files in <root> or in <root>/FashionMNIST/raw, torchvision's
layout). Without them it says so and runs on random tensors instead.

    python examples/swap_mmd_line.py [--data-root DIR] [--ipc 1] [--batch-real 64] [--seed 0]
"""

from __future__ import annotations

import argparse
import gzip
import struct
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hyperdm import HyperbolicMatcher, MMDMatcher

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
MEAN, STD = 0.2861, 0.3530  # Fashion-MNIST train-set pixel mean / std
NUM_CLASSES = 10


def read_idx(path: Path) -> np.ndarray:
    """Read an unsigned-byte idx file (optionally gzipped) into a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte idx file")
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def find_data(root: str | None) -> tuple[Path, Path] | None:
    dirs = [Path(root), Path(root) / "FashionMNIST" / "raw"] if root else [DEFAULT_ROOT]
    for d in dirs:
        for ext in (".gz", ""):
            paths = tuple(d / (name + ext) for name in FILES)
            if all(p.is_file() for p in paths):
                return paths  # type: ignore[return-value]
    return None


def load_images(root: str | None, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Normalised training images [60000, 1, 28, 28] and labels; falls back to random tensors."""
    paths = find_data(root)
    if paths is None:
        where = f"{root} or {Path(root) / 'FashionMNIST' / 'raw'}" if root else str(DEFAULT_ROOT)
        print("!" * 78)
        print(f"!!! Fashion-MNIST not found (looked for {FILES[0]}.gz in {where}).")
        print("!!! Install it with `apt-get install dataset-fashion-mnist`, or pass --data-root DIR")
        print("!!! (DIR holding the idx .gz files, or torchvision's DIR/FashionMNIST/raw).")
        print("!!! FALLING BACK TO RANDOM TENSORS: the numbers below only demonstrate the swap,")
        print("!!! they say nothing about Fashion-MNIST.")
        print("!" * 78)
        images = torch.randn(NUM_CLASSES * 200, 1, 28, 28, generator=gen)
        labels = torch.arange(NUM_CLASSES).repeat_interleave(200)
        return images, labels, False
    images = torch.from_numpy(read_idx(paths[0]).copy()).float().div_(255.0).sub_(MEAN).div_(STD)
    labels = torch.from_numpy(read_idx(paths[1]).astype(np.int64))
    print(f"data: {paths[0].parent} ({images.shape[0]} training images)")
    return images.unsqueeze(1), labels, True


def convnet_embed(channels: int = 1, width: int = 128, depth: int = 3) -> nn.Sequential:
    """DM's ConvNet without its classifier: depth x [conv3x3, instance norm, ReLU, avg-pool 2]."""
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [
            nn.Conv2d(channels if i == 0 else width, width, kernel_size=3, padding=1),
            nn.GroupNorm(width, width, affine=True),  # one channel per group = instance norm
            nn.ReLU(inplace=True),
            nn.AvgPool2d(kernel_size=2, stride=2),
        ]
    layers.append(nn.Flatten(1))  # 28x28 -> 128 * 3 * 3 = 1152 features
    return nn.Sequential(*layers)


def sample_per_class(labels: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """Indices [C, n]: n random training images of each class."""
    rows = []
    for c in range(NUM_CLASSES):
        idx = torch.nonzero(labels == c).squeeze(1)
        rows.append(idx[torch.randperm(idx.numel(), generator=gen)[:n]])
    return torch.stack(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="One DM step with the MMD line, then with HyperbolicMatcher.")
    p.add_argument(
        "--data-root", default=None, help="folder with Fashion-MNIST idx .gz files (or <root>/FashionMNIST/raw)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--ipc", type=int, default=1, help="synthetic images per class (default 1)")
    p.add_argument("--batch-real", type=int, default=64, help="real images per class (default 64)")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    images, labels, real_data = load_images(args.data_root, gen)
    C, N, M = NUM_CLASSES, args.batch_real, args.ipc
    net = convnet_embed().to(device)  # randomly initialised, as DM samples a fresh net per step
    for param in net.parameters():
        param.requires_grad_(False)

    # Synthetic images initialised from real images of each class; one real batch per class.
    syn_init = images[sample_per_class(labels, M, gen)].to(device)  # [C, M, 1, 28, 28]
    img_real = images[sample_per_class(labels, N, gen)].to(device)  # [C, N, 1, 28, 28]
    with torch.no_grad():
        real_feat = net(img_real.flatten(0, 1)).reshape(C, N, -1)  # one forward, all classes

    def embed_syn(syn: torch.Tensor) -> torch.Tensor:
        return net(syn.flatten(0, 1)).reshape(C, M, -1)  # [C, M, D]

    print(
        f"device {device}; C={C} classes, N={N} real and M={M} synthetic images per class, "
        f"D={real_feat.shape[-1]} features"
    )
    with torch.no_grad():
        rn = torch.linalg.vector_norm(real_feat, dim=-1)
        sn = torch.linalg.vector_norm(embed_syn(syn_init), dim=-1)
    max_norm = HyperbolicMatcher().max_norm
    print(
        f"feature norms |phi(x)|: real mean {rn.mean():.2f} (min {rn.min():.2f}, max {rn.max():.2f}), "
        f"synthetic mean {sn.mean():.2f}"
    )
    print(
        f"HyperbolicMatcher (k=1) clamps |v|/sqrt(k) at max_norm={max_norm:g}: "
        f"{(rn > max_norm).float().mean() * 100:.0f}% of real and {(sn > max_norm).float().mean() * 100:.0f}% "
        f"of synthetic points sit at radius {max_norm:g}, so only feature directions carry gradient"
    )

    def step(name: str, loss: torch.Tensor, syn: torch.Tensor) -> None:
        """Backward, report, one SGD step on the synthetic images (DM: lr 1, momentum 0.5)."""
        opt = torch.optim.SGD([syn], lr=1.0, momentum=0.5)
        opt.zero_grad()
        loss.backward()
        assert syn.grad is not None
        print(f"{name}: loss {loss.item():.6g}, |grad wrt synthetic images| {syn.grad.norm().item():.6g}")
        opt.step()

    # ---------------------------------------------------------------- DM with the MMD line
    syn = syn_init.clone().requires_grad_(True)
    syn_feat = embed_syn(syn)
    # --- the MMD line ---
    loss = MMDMatcher()(real_feat, syn_feat)
    step("MMD", loss, syn)
    with torch.no_grad():
        after = MMDMatcher()(real_feat, embed_syn(syn))
    print(f"MMD: loss after one SGD step {after.item():.6g}")

    # ---------------------------------------------------------------- DM with HDD: one line changed
    syn = syn_init.clone().requires_grad_(True)
    syn_feat = embed_syn(syn)
    # --- the one-line swap ---
    loss = HyperbolicMatcher()(real_feat, syn_feat)
    step("HDD", loss, syn)
    with torch.no_grad():
        after = HyperbolicMatcher()(real_feat, embed_syn(syn))
    print(f"HDD: loss after one SGD step {after.item():.6g}")

    # For comparison only (not part of the swap): the exact exp-map, without the clamp.
    syn = syn_init.clone().requires_grad_(True)
    loss = HyperbolicMatcher(max_norm=None)(real_feat, embed_syn(syn))
    loss.backward()
    assert syn.grad is not None
    print(
        f"(for comparison, HyperbolicMatcher(max_norm=None), no clamp: loss {loss.item():.6g}, "
        f"|grad wrt synthetic images| {syn.grad.norm().item():.6g})"
    )

    if not real_data:
        print("!!! NOTE: these numbers come from RANDOM TENSORS, not Fashion-MNIST (see the message above).")
    print(f"done in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
