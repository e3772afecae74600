"""Tests for hyperdm.distill.models: shapes, the 28x28 padding quirk, embed/forward, per-sample norm, factory."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hyperdm.distill.models import ARCHITECTURES, VGG11, AlexNet, ConvNet, ResNet18, get_network

SIZES = [(1, (28, 28)), (3, (32, 32)), (3, (64, 64))]
EXPECTED_EMBED = {
    # ConvNet depth 3: width 128 x (H / 8) x (W / 8), with 28x28 padded to 32x32.
    ("ConvNet", 28): 128 * 4 * 4,
    ("ConvNet", 32): 128 * 4 * 4,
    ("ConvNet", 64): 128 * 8 * 8,
    ("AlexNet", 28): 192 * 4 * 4,
    ("AlexNet", 32): 192 * 4 * 4,
    ("AlexNet", 64): 192 * 4 * 4,
    ("VGG11", 28): 512,
    ("VGG11", 32): 512,
    ("VGG11", 64): 512,
    ("ResNet18", 28): 512,
    ("ResNet18", 32): 512,
    ("ResNet18", 64): 512,
}


def _first_conv(net: nn.Module) -> nn.Conv2d:
    return next(m for m in net.modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("channels,im_size", SIZES, ids=["1x28", "3x32", "3x64"])
def test_shapes_and_embed_dim(arch: str, channels: int, im_size: tuple[int, int]) -> None:
    # Shapes only: the meta device runs the graph without arithmetic (this CPU is slow for VGG/ResNet).
    with torch.device("meta"):
        net = get_network(arch, channels, 7, im_size)
        x = torch.empty(2, channels, *im_size)
    e = net.embed(x)
    y = net(x)
    assert net.embed_dim == EXPECTED_EMBED[(arch, im_size[0])]
    assert e.shape == (2, net.embed_dim)
    assert y.shape == (2, 7)


def test_convnet_28x28_padding_quirk() -> None:
    net = ConvNet(1, 10, (28, 28))
    assert net.embed_dim == 2048
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 3
    assert convs[0].padding == (3, 3)
    assert all(c.padding == (1, 1) for c in convs[1:])
    # 3-channel 32x32 keeps padding 1 everywhere.
    assert _first_conv(ConvNet(3, 10, (32, 32))).padding == (1, 1)
    # The padded 28x28 map equals 32x32: the first conv's output is 32x32.
    assert _first_conv(net)(torch.zeros(1, 1, 28, 28)).shape[-2:] == (32, 32)


def test_first_conv_padding_other_archs() -> None:
    assert _first_conv(VGG11(1, 10, (28, 28))).padding == (3, 3)
    assert _first_conv(VGG11(3, 10, (32, 32))).padding == (1, 1)
    assert _first_conv(AlexNet(1, 10, (28, 28))).padding == (4, 4)
    assert _first_conv(AlexNet(3, 10, (32, 32))).padding == (2, 2)
    assert _first_conv(ResNet18(1, 10, (28, 28))).padding == (1, 1)  # the reference keeps padding 1 here


def test_convnet_layout() -> None:
    net = ConvNet(3, 10, (32, 32))
    kinds = [type(m) for m in net.features]
    assert kinds == [nn.Conv2d, nn.GroupNorm, nn.ReLU, nn.AvgPool2d] * 3
    gn = net.features[1]
    assert gn.num_groups == gn.num_channels == 128 and gn.affine
    ln = ConvNet(3, 10, (32, 32), norm="layernorm").features[1]
    assert isinstance(ln, nn.GroupNorm) and ln.num_groups == 1
    assert isinstance(ConvNet(3, 10, (32, 32), norm="batchnorm").features[1], nn.BatchNorm2d)
    assert [type(m) for m in ConvNet(3, 10, (32, 32), norm="none", pool="maxpooling", act="sigmoid").features] == [
        nn.Conv2d,
        nn.Sigmoid,
        nn.MaxPool2d,
    ] * 3
    flat = ConvNet(3, 10, (8, 8), depth=2, pool="none", width=4)
    assert flat.embed_dim == 4 * 8 * 8
    assert isinstance(ConvNet(3, 10, (32, 32), act="leakyrelu").features[2], nn.LeakyReLU)
    for bad, match in (
        ({"norm": "foo"}, "unknown norm 'foo'"),
        ({"act": "foo"}, "unknown activation 'foo'"),
        ({"pool": "foo"}, "unknown pooling 'foo'"),
        ({"depth": 6}, "depth 6 pools"),
    ):
        with pytest.raises(ValueError, match=match):
            ConvNet(3, 10, (32, 32), **bad)


def test_convnet_parameter_count_by_hand() -> None:
    net = ConvNet(3, 10, (32, 32), width=128, depth=3)
    conv1 = 3 * 128 * 3 * 3 + 128
    conv23 = 2 * (128 * 128 * 3 * 3 + 128)
    norms = 3 * (128 + 128)  # GroupNorm affine weight + bias
    fc = (128 * 4 * 4) * 10 + 10
    expected = conv1 + conv23 + norms + fc
    assert expected == 320010
    assert sum(p.numel() for p in net.parameters()) == expected


# Small inputs keep the real arithmetic cheap; VGG11 needs 32x32 for its five poolings.
NUMERIC_SIZE = {"ConvNet": 16, "AlexNet": 16, "VGG11": 32, "ResNet18": 16}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_embed_forward_noncontiguous_and_per_sample_norm(arch: str) -> None:
    """In train mode, with three passes only (VGG11/ResNet18 are slow on a small CPU):
    forward(x) feeds the classifier exactly embed(x); embed accepts non-contiguous input; the
    features of a batch equal the concatenated embeddings of its halves (instance norm is per sample)."""
    torch.manual_seed(1)
    s = NUMERIC_SIZE[arch]
    net = get_network(arch, 3, 5, (s, s)).train()
    x_nc = torch.randn(2, 3, s, s).transpose(2, 3)  # a square batch, transposed: non-contiguous
    assert not x_nc[:1].is_contiguous()
    x = x_nc.contiguous()
    seen: list[torch.Tensor] = []
    handle = net.classifier.register_forward_hook(lambda mod, inp, out: seen.append(inp[0]))
    with torch.no_grad():
        y = net(x)
        handle.remove()
        halves = torch.cat([net.embed(x_nc[:1]), net.embed(x_nc[1:])])
    assert len(seen) == 1
    assert halves.shape == (2, net.embed_dim) and torch.isfinite(halves).all() and halves.std() > 0
    torch.testing.assert_close(seen[0], halves, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(y, net.classifier(halves), rtol=1e-4, atol=1e-5)


def test_batchnorm_variant_mixes_samples() -> None:
    torch.manual_seed(3)
    net = get_network("ConvNetBN", 3, 4, (16, 16), width=8, depth=2).train()
    assert any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert not torch.allclose(net.embed(x)[:2], net.embed(x[:2]), atol=1e-4)


def test_get_network_names_and_aliases() -> None:
    assert ARCHITECTURES == ("ConvNet", "AlexNet", "VGG11", "ResNet18")
    assert type(get_network("convnet", 3, 10, (32, 32))) is ConvNet
    assert type(get_network("ALEXNET", 3, 10, (32, 32))) is AlexNet
    assert type(get_network("vgg11", 3, 10, (32, 32))) is VGG11
    assert type(get_network("resnet18", 3, 10, (32, 32))) is ResNet18

    d4 = get_network("ConvNetD4", 3, 10, (64, 64), width=8)
    assert isinstance(d4, ConvNet) and d4.embed_dim == 8 * 4 * 4
    assert sum(isinstance(m, nn.Conv2d) for m in d4.modules()) == 4
    d5 = get_network("convnetd5", 3, 10, (128, 128), width=8)
    assert d5.embed_dim == 8 * 4 * 4
    assert sum(isinstance(m, nn.Conv2d) for m in d5.modules()) == 5

    assert get_network("ConvNet", 3, 10, (32, 32), width=16).embed_dim == 16 * 16
    assert any(isinstance(m, nn.BatchNorm2d) for m in get_network("VGG11BN", 3, 10, (32, 32)).modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in get_network("ResNet18BN", 3, 10, (32, 32)).modules())
    assert any(
        isinstance(m, nn.BatchNorm2d) for m in get_network("ResNet18", 3, 10, (32, 32), norm="batchnorm").modules()
    )
    assert not any(isinstance(m, nn.BatchNorm2d) for m in get_network("ResNet18", 3, 10, (32, 32)).modules())

    with pytest.raises(ValueError, match="unknown architecture 'LeNet5'") as err:
        get_network("LeNet5", 3, 10, (32, 32))
    for name in ARCHITECTURES:
        assert name in str(err.value)
    with pytest.raises(ValueError, match="'ConvNetD4' sets depth=4 but depth=3 was passed"):
        get_network("ConvNetD4", 3, 10, (64, 64), depth=3)
