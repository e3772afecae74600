"""Networks for distillation and cross-architecture evaluation, each with ``embed()``.

``embed(x)`` returns the flattened feature before the classifier (what DM-family methods match);
``forward(x) = classifier(embed(x))`` and ``embed_dim`` is the feature length. Flattening uses
``torch.flatten`` (the reference's ``.view`` fails on non-contiguous tensors in torch 2.x).
Instance norm is ``GroupNorm(c, c, affine=True)`` as in the reference, so every sample is
normalised on its own and a batch embeds exactly like its pieces.

For 1-channel 28x28 images (MNIST, Fashion-MNIST) the first convolution of ConvNet, AlexNet and
VGG11 pads by 3 (AlexNet's 5x5 by 4) instead of 1 (2), turning 28x28 into 32x32 as the reference
does, so the ConvNet-3 feature is 128 x 4 x 4 = 2048. ResNet18 keeps its padding-1 stem for every
input, as the reference does; its global pooling handles the 4x4 map that 28x28 inputs leave.

Architectures for the cross-architecture table (``ARCHITECTURES``) accept 28x28 (1 channel),
32x32 and 64x64 (3 channels) inputs; where the reference hard-wires a 32x32 feature map
(AlexNet's 4x4 head, VGG11's and ResNet18's 1x1 head) an adaptive average pool makes other
sizes work and is an identity at 32x32.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "Embedder",
    "ConvNet",
    "AlexNet",
    "VGG11",
    "ResNet18",
    "ARCHITECTURES",
    "get_network",
    "seeded_network",
    "check_architecture",
]

logger = logging.getLogger(__name__)

ARCHITECTURES: tuple[str, ...] = ("ConvNet", "AlexNet", "VGG11", "ResNet18")

NORMS: tuple[str, ...] = ("instancenorm", "batchnorm", "layernorm", "none")


def _norm(kind: str, c: int) -> nn.Module:
    """Normalisation over ``c`` channels; "layernorm" is ``GroupNorm(1, c)`` (per sample over C, H, W)."""
    if kind == "instancenorm":
        return nn.GroupNorm(c, c, affine=True)
    if kind == "batchnorm":
        return nn.BatchNorm2d(c)
    if kind == "layernorm":
        return nn.GroupNorm(1, c, affine=True)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; choose one of {', '.join(NORMS)}.")


_ACTS: dict[str, Callable[[], nn.Module]] = {
    "relu": lambda: nn.ReLU(inplace=True),
    "leakyrelu": lambda: nn.LeakyReLU(0.01, inplace=True),
    "sigmoid": nn.Sigmoid,
}


def _act(kind: str) -> nn.Module:
    if kind not in _ACTS:
        raise ValueError(f"unknown activation {kind!r}; choose one of {', '.join(_ACTS)}.")
    return _ACTS[kind]()


def _pool(kind: str) -> nn.Module | None:
    if kind == "avgpooling":
        return nn.AvgPool2d(2, 2)
    if kind == "maxpooling":
        return nn.MaxPool2d(2, 2)
    if kind == "none":
        return None
    raise ValueError(f"unknown pooling {kind!r}; choose avgpooling, maxpooling or none.")


def _is_mnist_like(channels: int, im_size: tuple[int, int]) -> bool:
    """1-channel 28x28 input: the reference pads the first convolution so the map becomes 32x32."""
    return channels == 1 and tuple(im_size) == (28, 28)


class Embedder(nn.Module):
    """Base of the bundled networks: ``embed(x)`` is ``features(x)`` flattened (what the matchers compare,
    ``embed_dim`` wide) and ``forward(x)`` is ``classifier(embed(x))``."""

    features: nn.Module
    classifier: nn.Module
    embed_dim: int

    def embed(self, x: Tensor) -> Tensor:
        return torch.flatten(self.features(x), 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.embed(x))


class ConvNet(Embedder):
    """ConvNet-D, the DC/DM/IDM backbone.

    Layout: ``depth`` x [conv3x3(width, padding 1) -> norm -> act -> pool 2x2 stride 2]
    -> flatten (``embed``, ``embed_dim = width * H/2^depth * W/2^depth``) -> linear(num_classes).
    Defaults: width 128, depth 3, instance norm (``GroupNorm(width, width)``), ReLU, average
    pooling. For 1-channel 28x28 input the first convolution pads by 3 (28x28 -> 32x32), so
    ``embed_dim`` is 2048 there as for 32x32 input. The reference uses depth 4 for 64x64 and
    depth 5 for 128x128 images (``get_network("ConvNetD4", ...)``).
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
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}.")
        h, w = (int(s) for s in im_size)
        first_pad = 1
        if _is_mnist_like(channels, (h, w)):
            h, w, first_pad = 32, 32, 3
        layers: list[nn.Module] = []
        c = channels
        for d in range(depth):
            layers.append(nn.Conv2d(c, width, kernel_size=3, padding=first_pad if d == 0 else 1))
            c = width
            if norm != "none":
                layers.append(_norm(norm, c))
            layers.append(_act(act))
            p = _pool(pool)
            if p is not None:
                layers.append(p)
                h, w = h // 2, w // 2
        if h < 1 or w < 1:
            raise ValueError(f"depth {depth} pools {tuple(im_size)} images down to nothing; use a smaller depth.")
        self.features = nn.Sequential(*layers)
        self.embed_dim = c * h * w
        self.classifier = nn.Linear(self.embed_dim, num_classes)


class AlexNet(Embedder):
    """The reference's small-image AlexNet (no normalisation).

    Layout: conv5x5(128, padding 2; 4 for 1-channel 28x28) -> ReLU -> maxpool2
    -> conv5x5(192) -> ReLU -> maxpool2 -> conv3x3(256) -> ReLU -> conv3x3(192) -> ReLU
    -> conv3x3(192) -> ReLU -> maxpool2 -> adaptive avgpool 4x4 (identity at 32x32)
    -> flatten (``embed_dim = 192*4*4 = 3072``) -> linear(num_classes).
    """

    def __init__(self, channels: int, num_classes: int, im_size: tuple[int, int]) -> None:
        super().__init__()
        pad = 4 if _is_mnist_like(channels, im_size) else 2
        self.features = nn.Sequential(
            nn.Conv2d(channels, 128, kernel_size=5, padding=pad),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2, 2),
            nn.Conv2d(128, 192, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2, 2),
            nn.Conv2d(192, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 192, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(192, 192, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2, 2),
            nn.AdaptiveAvgPool2d((4, 4)),
        )
        self.embed_dim = 192 * 4 * 4
        self.classifier = nn.Linear(self.embed_dim, num_classes)


class VGG11(Embedder):
    """VGG11 for small images.

    Layout: cfg ``64,M,128,M,256,256,M,512,512,M,512,512,M`` where a number is
    conv3x3(padding 1; 3 for the first conv on 1-channel 28x28) -> norm -> ReLU and ``M`` is
    maxpool2; then adaptive avgpool 1x1 (identity at 32x32) -> flatten (``embed_dim = 512``)
    -> linear(num_classes). Norm is instance norm (``GroupNorm(c, c)``) by default, or
    "batchnorm" (VGG11BN), "layernorm", "none".
    """

    cfg: tuple[int | str, ...] = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")

    def __init__(
        self, channels: int, num_classes: int, im_size: tuple[int, int], *, norm: str = "instancenorm"
    ) -> None:
        super().__init__()
        first_pad = 3 if _is_mnist_like(channels, im_size) else 1
        layers: list[nn.Module] = []
        c, first = channels, True
        for v in self.cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
                continue
            layers += [
                nn.Conv2d(c, int(v), kernel_size=3, padding=first_pad if first else 1),
                _norm(norm, int(v)),
                nn.ReLU(inplace=True),
            ]
            c, first = int(v), False
        layers.append(nn.AdaptiveAvgPool2d((1, 1)))
        self.features = nn.Sequential(*layers)
        self.embed_dim = c
        self.classifier = nn.Linear(self.embed_dim, num_classes)


class _BasicBlock(nn.Module):
    """conv3x3(stride) -> norm -> ReLU -> conv3x3 -> norm, plus shortcut, ReLU.

    The shortcut is a 1x1 conv + norm when the shape changes, the identity otherwise.
    """

    def __init__(self, cin: int, cout: int, stride: int, norm: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.n1 = _norm(norm, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.n2 = _norm(norm, cout)
        self.shortcut: nn.Module = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), _norm(norm, cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.n1(self.conv1(x)))
        return torch.relu(self.n2(self.conv2(out)) + self.shortcut(x))


class ResNet18(Embedder):
    """ResNet-18 for small images.

    Layout: stem conv3x3(64, stride 1, padding 1, no bias) -> norm -> ReLU (no stem pooling);
    BasicBlock stages of 2 blocks each with widths 64, 128, 256, 512 and strides 1, 2, 2, 2;
    adaptive avgpool 1x1 (the reference's 4x4 average pool at 32x32 and 28x28) -> flatten
    (``embed_dim = 512``) -> linear(num_classes). Norm is instance norm by default, or
    "batchnorm" (ResNet18BN), "layernorm", "none". 1-channel input goes through the same stem as
    the reference (28x28 -> 4x4 after stage 4).
    """

    def __init__(
        self, channels: int, num_classes: int, im_size: tuple[int, int], *, norm: str = "instancenorm"
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(channels, 64, 3, stride=1, padding=1, bias=False),
            _norm(norm, 64),
            nn.ReLU(inplace=True),
        ]
        cin = 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [_BasicBlock(cin, cout, stride, norm), _BasicBlock(cout, cout, 1, norm)]
            cin = cout
        layers.append(nn.AdaptiveAvgPool2d((1, 1)))
        self.features = nn.Sequential(*layers)
        self.embed_dim = cin
        self.classifier = nn.Linear(self.embed_dim, num_classes)


_ALIASES = "ConvNetD<depth> (e.g. ConvNetD4, ConvNetD5), ConvNetBN, ConvNetLN, ConvNetNN, VGG11BN, ResNet18BN"


def get_network(name: str, channels: int, num_classes: int, im_size: tuple[int, int], **kwargs: Any) -> Embedder:
    """Build architecture ``name`` (case-insensitive; '-' and '_' ignored).

    Names: ConvNet, AlexNet, VGG11, ResNet18 (``ARCHITECTURES``) and the aliases ConvNetD<depth>
    (depth 4 for 64x64, 5 for 128x128 as in the reference), ConvNetBN / ConvNetLN / ConvNetNN
    (batch / layer / no norm), VGG11BN, ResNet18BN. ``kwargs`` go to the constructor; an alias's
    own setting (depth, norm) may not be contradicted by them.
    """
    cls, forced = _parse(name)
    im_size = (int(im_size[0]), int(im_size[1]))
    for k, v in forced.items():
        if k in kwargs and kwargs[k] != v:
            raise ValueError(f"{name!r} sets {k}={v!r} but {k}={kwargs[k]!r} was passed.")
    net = cls(channels, num_classes, im_size, **{**kwargs, **forced})
    logger.debug(
        "built %s for %dx%dx%d, %d classes (embed_dim %d)", name, channels, *im_size, num_classes, net.embed_dim
    )
    return net


def check_architecture(name: str) -> None:
    """Raise the ValueError :func:`get_network` would raise for an unknown ``name``, without building anything."""
    _parse(name)


def _parse(name: str) -> tuple[type[Embedder], dict[str, Any]]:
    """The class and the settings an architecture name stands for."""
    key = str(name).lower().replace("-", "").replace("_", "")
    forced: dict[str, Any] = {}
    cls: type[Embedder]
    if key == "convnet":
        cls = ConvNet
    elif (m := re.fullmatch(r"convnetd(\d+)", key)) is not None:
        cls, forced = ConvNet, {"depth": int(m.group(1))}
    elif key in ("convnetbn", "convnetln", "convnetnn", "convnetin"):
        cls = ConvNet
        forced = {"norm": {"bn": "batchnorm", "ln": "layernorm", "nn": "none", "in": "instancenorm"}[key[-2:]]}
    elif key == "alexnet":
        cls = AlexNet
    elif key in ("vgg11", "vgg11bn"):
        cls = VGG11
        forced = {"norm": "batchnorm"} if key.endswith("bn") else {}
    elif key in ("resnet18", "resnet18bn"):
        cls = ResNet18
        forced = {"norm": "batchnorm"} if key.endswith("bn") else {}
    else:
        raise ValueError(
            f"unknown architecture {name!r}; valid names: {', '.join(ARCHITECTURES)} (aliases: {_ALIASES})."
        )
    return cls, forced


def seeded_network(
    name: str, channels: int, num_classes: int, im_size: tuple[int, int], *, seed: int, **kwargs: Any
) -> Embedder:
    """:func:`get_network` initialised from ``torch.manual_seed(seed)`` on the CPU, without touching the
    caller's global RNG state; the same seed gives the same weights on every device."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_network(name, channels, num_classes, im_size, **kwargs)
