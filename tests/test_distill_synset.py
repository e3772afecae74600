"""Partitioned synthetic sets: expansion against a hand computation, pack/expand round trip."""

import pytest
import torch
import torch.nn.functional as F

from hyperdm.distill.synset import expand, pack


def test_expand_cells_by_hand():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    y = torch.tensor([3, 5])
    out, lab = expand(x, y, 2)
    assert out.shape == (8, 1, 4, 4) and lab.tolist() == [3, 5] * 4
    # cell (0, 1) of image 1 is x[1, :, :2, 2:], up-sampled bilinearly to 4x4
    ref = F.interpolate(x[1:2, :, :2, 2:], size=(4, 4), mode="bilinear", align_corners=False)
    assert torch.allclose(out[1 * 2 + 1 : 1 * 2 + 2], ref)
    # a constant cell stays constant
    z = torch.zeros(1, 3, 6, 6)
    z[:, :, 3:, :3] = 2.0
    e, _ = expand(z, torch.tensor([0]), 2)
    assert torch.all(e[2] == 2.0) and torch.all(e[0] == 0.0)


def test_partition_one_is_identity_and_bad_sizes():
    x, y = torch.randn(3, 1, 5, 5), torch.tensor([0, 1, 2])
    out, lab = expand(x, y, 1)
    assert out is x and lab is y
    with pytest.raises(ValueError, match="divides"):
        expand(x, y, 2)
    with pytest.raises(ValueError, match="positive"):
        expand(x, y, 0)


def test_pack_then_expand_recovers_smooth_images():
    """Down-sampling then up-sampling a smooth image loses little: pack is expand's inverse initialisation."""
    t = torch.linspace(0, 1, 16)
    smooth = (t.view(1, 1, 16, 1) + t.view(1, 1, 1, 16)).expand(8, 1, 16, 16).contiguous()
    smooth = smooth * torch.arange(1, 9).view(8, 1, 1, 1)
    stored = pack(smooth, 2)
    assert stored.shape == (2, 1, 16, 16)
    back, _ = expand(stored, torch.zeros(2, dtype=torch.long), 2)
    assert (back - smooth).abs().max() < 0.08 * smooth.abs().max()
