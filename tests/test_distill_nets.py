"""Models: shapes, the reference's 28x28 padding, embed() on non-contiguous input, per-sample features."""

import pytest
import torch
from torch import nn

from hyperdm.distill.models import ARCHITECTURES, ConvNet, get_network

SHAPES = [(1, 28, 28), (3, 32, 32), (3, 64, 64)]


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("shape", SHAPES)
def test_shapes(arch, shape):
    torch.manual_seed(0)
    net = get_network(arch, shape[0], 7, shape[1:])
    x = torch.randn(2, *shape)
    e = net.embed(x)
    assert e.shape == (2, net.embed_dim)
    assert torch.allclose(net(x), net.classifier(e))


def test_convnet_reference_layout_and_parameter_count():
    net = ConvNet(3, 10, (32, 32))
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    norms = [m for m in net.modules() if isinstance(m, nn.GroupNorm)]
    assert [c.out_channels for c in convs] == [128] * 3 and all(n.num_groups == 128 for n in norms)
    # by hand: conv1 3*128*9+128, conv2/3 128*128*9+128, 3 instance norms 2*128, linear 2048*10+10
    expected = (3 * 128 * 9 + 128) + 2 * (128 * 128 * 9 + 128) + 3 * 2 * 128 + (128 * 4 * 4 * 10 + 10)
    assert sum(p.numel() for p in net.parameters()) == expected == 320010


def test_fashion_mnist_28x28_padding_3():
    net = ConvNet(1, 10, (28, 28))
    first = next(m for m in net.modules() if isinstance(m, nn.Conv2d))
    assert first.padding == (3, 3) and net.embed_dim == 2048
    assert ConvNet(3, 10, (32, 32)).features[0].padding == (1, 1)


def test_embed_accepts_non_contiguous_input():
    net = ConvNet(3, 10, (32, 32))
    x = torch.randn(2, 3, 32, 32)
    xt = x.transpose(2, 3)
    assert not xt.is_contiguous()
    assert torch.allclose(net.embed(xt), net.embed(xt.contiguous()), atol=1e-6)


@pytest.mark.parametrize("arch", ["ConvNet", "VGG11", "ResNet18", "AlexNet"])
def test_features_are_per_sample_in_train_mode(arch):
    """Instance norm: a sample's feature does not depend on its batch (what the batched DM forward relies on)."""
    torch.manual_seed(1)
    net = get_network(arch, 3, 10, (32, 32)).train()
    x = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(net.embed(x), torch.cat([net.embed(x[:2]), net.embed(x[2:])]), atol=1e-5)


def test_batchnorm_variant_is_not_per_sample():
    torch.manual_seed(1)
    net = get_network("ConvNetBN", 3, 10, (32, 32)).train()
    x = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(net.embed(x), torch.cat([net.embed(x[:2]), net.embed(x[2:])]), atol=1e-3)


def test_get_network_names():
    assert isinstance(get_network("convnet", 3, 10, (32, 32)), ConvNet)
    d4 = get_network("ConvNetD4", 3, 10, (64, 64))
    assert sum(isinstance(m, nn.Conv2d) for m in d4.modules()) == 4 and d4.embed_dim == 128 * 4 * 4
    with pytest.raises(ValueError, match="ConvNet, AlexNet, VGG11, ResNet18"):
        get_network("ViT", 3, 10, (32, 32))
    with pytest.raises(ValueError, match="depth"):
        ConvNet(3, 10, (8, 8), depth=4)
