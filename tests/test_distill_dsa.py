"""DSA: each group against a hand computation, siamese sharing, seeding, gradients, torch 2.x safety."""

import math

import pytest
import torch

from hyperdm.distill import augment as A
from hyperdm.distill.augment import DSA, DSAParams, dsa


def imgs(n=4, c=3, h=8, w=8, seed=0, dtype=torch.float32):
    return torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_brightness_saturation_contrast_formulas():
    x = imgs(2)
    r = torch.tensor([0.2, -0.1])
    assert torch.allclose(A.brightness(x, r), x + r.view(-1, 1, 1, 1))
    f = torch.tensor([0.5, 2.0])
    m = x.mean(1, keepdim=True)
    assert torch.allclose(A.saturation(x, f), (x - m) * f.view(-1, 1, 1, 1) + m)
    m = x.mean((1, 2, 3), keepdim=True)
    assert torch.allclose(A.contrast(x, f), (x - m) * f.view(-1, 1, 1, 1) + m)


def test_flip_crop_cutout_by_hand():
    x = imgs(2, 1, 5, 6)
    out = A.flip(x, torch.tensor([True, False]))
    assert torch.equal(out[0], x[0].flip(-1)) and torch.equal(out[1], x[1])
    out = A.crop(x, torch.tensor([1, -2]), torch.tensor([0, 3]))
    ref = torch.zeros_like(x)
    ref[0, :, :4, :] = x[0, :, 1:, :]          # out[i, j] = x[i + 1, j]
    ref[1, :, 2:, :3] = x[1, :, :3, 3:]        # out[i, j] = x[i - 2, j + 3]
    assert torch.equal(out, ref)
    out = A.cutout(x, torch.tensor([0, 3]), torch.tensor([2, 5]), (2, 3))
    ref = x.clone()
    ref[0, :, 0:1, 1:4] = 0   # rows -1..0 clipped, cols 1..3
    ref[1, :, 2:4, 4:6] = 0   # rows 2..3, cols 4..6 clipped
    assert torch.equal(out, ref)


def test_affine_identity_and_rotation_by_90():
    x = imgs(2, 2, 7, 7)
    eye = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).expand(2, 2, 3)
    assert torch.allclose(A.affine(x, eye), x, atol=1e-5)
    # rotation theta [[cos, sin], [-sin, cos]] at 90 degrees on a square grid with align_corners=True
    a = math.pi / 2
    theta = torch.tensor([[math.cos(a), math.sin(a), 0], [-math.sin(a), math.cos(a), 0]]).expand(2, 2, 3)
    out = A.affine(x, theta)
    # sample grid (gx, gy) = (y, -x): output (i, j) reads input row (H-1-j), column i
    assert torch.allclose(out, x.transpose(-1, -2).flip(-1), atol=1e-5)


@pytest.mark.parametrize("group", ["color", "crop", "cutout", "flip", "scale", "rotate"])
def test_siamese_same_transform_for_batches_of_different_size(group):
    a, b = imgs(3, seed=1), imgs(5, seed=2)
    both = dsa(torch.cat([a, b]), group, seed=123, siamese=True)
    assert torch.allclose(dsa(a, group, seed=123, siamese=True), both[:3], atol=1e-6)
    assert torch.allclose(dsa(b, group, seed=123, siamese=True), both[3:], atol=1e-6)


def test_seed_reproducible_and_independent_of_global_rng():
    x = imgs(6)
    torch.manual_seed(0)
    y1 = dsa(x, seed=7)
    torch.manual_seed(999)
    y2 = dsa(x, seed=7)
    assert torch.equal(y1, y2)
    outs = {dsa(x, "scale_rotate", seed=s).sum().item() for s in range(5)}
    assert len(outs) == 5


def test_non_siamese_draws_per_image():
    x = imgs(64, 1, 4, 4)
    y = dsa(x, "flip", seed=0, siamese=False)
    flipped = [torch.equal(y[i], x[i].flip(-1)) for i in range(64)]
    assert 10 < sum(flipped) < 54  # prob_flip 0.5
    y = dsa(x, "flip", seed=0, siamese=True)
    flipped = {torch.equal(y[i], x[i].flip(-1)) for i in range(64)}
    assert len(flipped) == 1


def test_mode_s_picks_one_group_and_m_applies_all():
    x = imgs(2)
    y = dsa(x, "flip_crop", DSAParams(prob_flip=1.0, ratio_crop_pad=0.0), seed=3)
    assert torch.equal(y, x.flip(-1))  # crop with pad 0 is the identity, flip always flips
    m = DSAParams(aug_mode="M", prob_flip=1.0, ratio_crop_pad=0.0)
    assert torch.equal(dsa(x, "crop_flip", m, seed=3), x.flip(-1))
    with pytest.raises(ValueError, match="aug_mode"):
        dsa(x, "flip", DSAParams(aug_mode="X"))


def test_parameter_ranges_follow_the_reference():
    # scale in [1/1.2, 1.2], rotation within +-15 degrees, crop shift within +-int(H*0.125+0.5)
    gen = torch.Generator().manual_seed(0)
    x = torch.zeros(1, 1, 16, 16)
    x[0, 0, 8, 8] = 1.0
    for _ in range(50):
        y = A._crop(x, DSAParams(), 1, gen)
        i, j = (y[0, 0] == 1).nonzero()[0].tolist()
        assert abs(i - 8) <= 2 and abs(j - 8) <= 2


def test_gradcheck_through_groups():
    x = imgs(2, 2, 5, 5, dtype=torch.float64).requires_grad_(True)
    for group in ("color", "crop", "cutout", "flip", "scale", "rotate"):
        assert torch.autograd.gradcheck(lambda t: dsa(t, group, seed=5, siamese=True), (x,)), group


def test_none_and_unknown():
    x = imgs(2)
    assert dsa(x, "none") is x and dsa(x, "") is x
    with pytest.raises(ValueError, match="valid groups"):
        dsa(x, "color_jitter")
    with pytest.raises(ValueError):
        DSA("blur")
    assert torch.equal(DSA("flip")(x, seed=1), dsa(x, "flip", seed=1))
