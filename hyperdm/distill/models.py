"""Networks for distillation and cross-architecture evaluation, each with ``embed()``.

``embed(x)`` returns the flattened feature before the classifier (what DM-family methods match);
``forward(x) = classifier(embed(x))``. Flattening uses ``torch.flatten`` (the reference's ``.view``
fails on non-contiguous tensors in torch 2.x). Instance norm is ``GroupNorm(c, c, affine=True)``
as in the reference, so every sample is normalised on its own.

For 1-channel 28x28 images (MNIST, Fashion-MNIST) the first convolution pads by 3 instead of 1,
turning 28x28 into 32x32 as the reference does, so the ConvNet-3 feature is 128 x 4 x 4 = 2048.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

__all__ = ["ConvNet", "AlexNet", "VGG11", "ResNet18", "ARCHITECTURES", "get_network"]

ARCHITECTURES: tuple[str, ...] = ("ConvNet", "AlexNet", "VGG11", "ResNet18")


def _norm(kind: str, c: int, hw: tuple[int, int]) -> nn.Module:
    if kind == "instancenorm":
        return nn.GroupNorm(c, c, affine=True)
    if kind == "batchnorm":
        return nn.BatchNorm2d(c)
    if kind == "layernorm":
        return nn.GroupNorm(1, c, affine=True)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; choose instancenorm, batchnorm, layernorm or none.")


def _act(kind: str) -> nn.Module:
    acts: dict[str, Callable[[], nn.Module]] = {"relu": nn.ReLU, "leakyrelu": lambda: nn.LeakyReLU(0.01), "sigmoid": nn.Sigmoid}
    if kind not in acts:
        raise ValueError(f"unknown activation {kind!r}; choose relu, leakyrelu or sigmoid.")
    return acts[kind]()


def _pool(kind: str) -> nn.Module:
    if kind == "avgpooling":
        return nn.AvgPool2d(2, 2)
    if kind == "maxpooling":
        return nn.MaxPool2d(2, 2)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown pooling {kind!r}; choose avgpooling, maxpooling or none.")


def _first_padding(channels: int, im_size: tuple[int, int]) -> int:
    return 3 if channels == 1 and tuple(im_size) == (28, 28) else 1


class _Embedder(nn.Module):
    features: nn.Module
    classifier: nn.Module
    embed_dim: int

    def embed(self, x: Tensor) -> Tensor:
        return torch.flatten(self.features(x), 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.embed(x))


class ConvNet(_Embedder):
    """ConvNet-D: ``depth`` x [conv3x3(width) -> norm -> act -> pool2x2] -> flatten -> linear.

    Defaults are the DC/DM/IDM/HDD backbone: width 128, depth 3, instance norm, ReLU, average
    pooling. Use depth 4 for 64x64 images and 5 for 128x128 (ConvNetD4 / ConvNetD5).
    """

    def __init__(
        self,
        channels: int,
        num_classes: int,
        im_size: tuple[int, int],
        *,
        width: int = 128,
        depth: int = 3,
        act: str = "relu",
        norm: str = "instancenorm",
        pool: str = "avgpooling",
    ) -> None:
        super().__init__()
        h, w = im_size
        if channels == 1 and (h, w) == (28, 28):
            h, w = 32, 32
        layers: list[nn.Module] = []
        c = channels
        for d in range(depth):
            layers.append(nn.Conv2d(c, width, 3, padding=_first_padding(channels, im_size) if d == 0 else 1))
            c = width
            layers += [_norm(norm, c, (h, w)), _act(act)]
            if pool != "none":
                layers.append(_pool(pool))
                h, w = h // 2, w // 2
        if h < 1 or w < 1:
            raise ValueError(f"depth {depth} pools {im_size} images down to nothing; use a smaller depth.")
        self.features = nn.Sequential(*layers)
        self.embed_dim = c * h * w
        self.classifier = nn.Linear(self.embed_dim, num_classes)


class AlexNet(_Embedder):
    """The reference's small-image AlexNet: 5 convolutions (128-192-256-192-192), ReLU, max pools, no norm."""

    def __init__(self, channels: int, num_classes: int, im_size: tuple[int, int]) -> None:
        super().__init__()
        pad = 4 if channels == 1 and tuple(im_size) == (28, 28) else 2
        self.features = nn.Sequential(
            nn.Conv2d(channels, 128, 5, padding=pad), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2),
            nn.Conv2d(128, 192, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2),
            nn.Conv2d(192, 256, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 192, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(192, 192, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2),
            nn.AdaptiveAvgPool2d((4, 4)),
        )
        self.embed_dim = 192 * 4 * 4
        self.classifier = nn.Linear(self.embed_dim, num_classes)


class VGG11(_Embedder):
    """VGG11 (cfg 64,M,128,M,256,256,M,512,512,M,512,512,M) with instance norm by default, linear head."""

    cfg = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")

    def __init__(self, channels: int, num_classes: int, im_size: tuple[int, int], *, norm: str = "instancenorm") -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c, first = channels, True
        for v in self.cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
                continue
            layers += [nn.Conv2d(c, int(v), 3, padding=_first_padding(channels, im_size) if first else 1),
                       _norm(norm, int(v), im_size), nn.ReLU(inplace=True)]
            c, first = int(v), False
        layers.append(nn.AdaptiveAvgPool2d((1, 1)))
        self.features = nn.Sequential(*layers)
        self.embed_dim = 512
        self.classifier = nn.Linear(512, num_classes)


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, norm: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.n1 = _norm(norm, cout, (0, 0))
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.n2 = _norm(norm, cout, (0, 0))
        self.short = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _norm(norm, cout, (0, 0)))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.n1(self.conv1(x)))
        return torch.relu(self.n2(self.conv2(out)) + self.short(x))


class ResNet18(_Embedder):
    """ResNet-18 for small images (3x3 stem, no stem pooling), BasicBlocks [2, 2, 2, 2], instance norm by default."""

    def __init__(self, channels: int, num_classes: int, im_size: tuple[int, int], *, norm: str = "instancenorm") -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(channels, 64, 3, 1, _first_padding(channels, im_size), bias=False), _norm(norm, 64, im_size), nn.ReLU(inplace=True)
        ]
        cin = 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [_BasicBlock(cin, cout, stride, norm), _BasicBlock(cout, cout, 1, norm)]
            cin = cout
        layers.append(nn.AdaptiveAvgPool2d((1, 1)))
        self.features = nn.Sequential(*layers)
        self.embed_dim = 512
        self.classifier = nn.Linear(512, num_classes)


def get_network(name: str, channels: int, num_classes: int, im_size: tuple[int, int], **kwargs) -> nn.Module:
    """Build ``name`` (case-insensitive): ConvNet, ConvNetD<depth> (e.g. ConvNetD4), ConvNetBN, AlexNet,
    VGG11, VGG11BN, ResNet18, ResNet18BN."""
    key = name.lower().replace("-", "").replace("_", "")
    im_size = tuple(im_size)  # type: ignore[assignment]
    if key == "convnet":
        return ConvNet(channels, num_classes, im_size, **kwargs)
    if key.startswith("convnetd") and key[8:].isdigit():
        return ConvNet(channels, num_classes, im_size, depth=int(key[8:]), **kwargs)
    if key == "convnetbn":
        return ConvNet(channels, num_classes, im_size, norm="batchnorm", **kwargs)
    if key == "alexnet":
        return AlexNet(channels, num_classes, im_size, **kwargs)
    if key in ("vgg11", "vgg11bn"):
        return VGG11(channels, num_classes, im_size, norm="batchnorm" if key.endswith("bn") else "instancenorm", **kwargs)
    if key in ("resnet18", "resnet18bn"):
        return ResNet18(channels, num_classes, im_size, norm="batchnorm" if key.endswith("bn") else "instancenorm", **kwargs)
    raise ValueError(f"unknown architecture {name!r}; choose one of {', '.join(ARCHITECTURES)} "
                     "(or ConvNetD4/ConvNetD5, ConvNetBN, VGG11BN, ResNet18BN).")
