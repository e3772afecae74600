"""Your own minimal DM loop, with DM's MMD line swapped for HDD's HyperbolicMatcher.

Only the marked line differs between DM and HDD. The rest is the plainest DM there is (no DSA,
no checkpoints): a fresh random ConvNet per iteration, per-class feature statistics, SGD on
the images. It borrows the dataset reader and the ConvNet from ``hyperdm.distill`` so it
stays short; swap in your own.

    python examples/own_loop.py --matcher hyperbolic --iterations 50
    python examples/own_loop.py --matcher mmd --iterations 50
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from hyperdm import HyperbolicMatcher, MMDMatcher
from hyperdm.distill.data import load_dataset
from hyperdm.distill.models import ConvNet


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--matcher", choices=["mmd", "hyperbolic"], default="hyperbolic")
    ap.add_argument("--iterations", type=int, default=50)
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--batch-real", type=int, default=64)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--check-steps", type=int, default=100, help="training steps of the quick accuracy check")
    a = ap.parse_args()
    torch.manual_seed(a.seed)

    data = load_dataset("fashion-mnist", a.data_root)
    info, by_class = data.info, data.indices_by_class()
    C = info.num_classes
    pick = lambda c, n: data.train_images[by_class[c][torch.randperm(len(by_class[c]))[:n]]]  # noqa: E731
    syn = torch.cat([pick(c, a.ipc) for c in range(C)]).requires_grad_(True)
    syn_labels = torch.arange(C).repeat_interleave(a.ipc)
    opt = torch.optim.SGD([syn], lr=1.0, momentum=0.5)

    # k is geoopt's curvature parameter (<x,x>_L = -k); scale is the paper's lambda (Table 5: 40 for FMNIST IPC 10).
    matcher = HyperbolicMatcher(k=1.0, scale=40.0) if a.matcher == "hyperbolic" else MMDMatcher()

    for it in range(a.iterations):
        net = ConvNet(info.channels, C, info.im_size).train().requires_grad_(False)
        real = torch.stack([net.embed(pick(c, a.batch_real)) for c in range(C)])  # [C, B, D]
        fake = net.embed(syn).reshape(C, a.ipc, -1)  # [C, ipc, D]
        # DM:  loss = ((real.mean(1) - fake.mean(1)) ** 2).sum()
        loss = matcher(real.double(), fake.double())  # <- the one-line swap
        opt.zero_grad()
        loss.backward()
        opt.step()
        if it % 10 == 0 or it == a.iterations - 1:
            print(f"iteration {it:4d}  {a.matcher} loss per class {loss.item() / C:.4f}")

    # a quick check: train a fresh ConvNet on the synthetic set (no augmentation)
    net = ConvNet(info.channels, C, info.im_size)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x, y = syn.detach(), syn_labels
    for _ in range(a.check_steps):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        acc = sum(
            (net(data.test_images[i : i + 1000]).argmax(1) == data.test_labels[i : i + 1000]).sum().item()
            for i in range(0, len(data.test_labels), 1000)
        ) / len(data.test_labels)
    print(
        f"test accuracy after a {a.check_steps}-step check: {100 * acc:.2f}% "
        "(not the paper protocol; use `hyperdm evaluate`)"
    )


if __name__ == "__main__":
    main()
