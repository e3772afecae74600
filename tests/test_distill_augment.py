"""Tests for hyperdm.distill.augment (DSA): determinism, siamese sharing, per-group semantics, gradients."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from hyperdm.distill import augment as A
from hyperdm.distill.augment import DSA, STRATEGY_DEFAULT, DSAParams, dsa

SINGLE_GROUPS = ["color", "crop", "cutout", "flip", "scale", "rotate"]


def _images(
    n: int, c: int = 3, h: int = 12, w: int = 12, seed: int = 0, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    return torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ---- determinism -------------------------------------------------------------------------------


def test_defaults_match_reference() -> None:
    p = DSAParams()
    assert (p.prob_flip, p.ratio_scale, p.ratio_rotate, p.ratio_crop_pad, p.ratio_cutout) == (
        0.5,
        1.2,
        15.0,
        0.125,
        0.5,
    )
    assert (p.brightness, p.saturation, p.contrast, p.ratio_noise, p.aug_mode) == (1.0, 2.0, 0.5, 0.05, "S")
    assert STRATEGY_DEFAULT == "color_crop_cutout_flip_scale_rotate"
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.prob_flip = 1.0  # type: ignore[misc]
    with pytest.raises(ValueError, match="aug_mode must be 'S'"):
        DSAParams(aug_mode="X")


@pytest.mark.parametrize("mode", ["S", "M"])
def test_same_seed_same_output_different_seeds_differ(mode: str) -> None:
    x = _images(4)
    p = DSAParams(aug_mode=mode)
    a = dsa(x, STRATEGY_DEFAULT, p, seed=11)
    b = dsa(x, STRATEGY_DEFAULT, p, seed=11)
    assert torch.equal(a, b)
    outs = [dsa(x, STRATEGY_DEFAULT, p, seed=s) for s in range(6)]
    assert sum(not torch.equal(outs[0], o) for o in outs[1:]) >= 4


def test_seed_ignores_and_preserves_global_rng() -> None:
    x = _images(3)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    a = dsa(x, STRATEGY_DEFAULT, DSAParams(aug_mode="M"), seed=5)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG was not consumed
    torch.manual_seed(12345)
    b = dsa(x, STRATEGY_DEFAULT, DSAParams(aug_mode="M"), seed=5)
    assert torch.equal(a, b)


def test_generator_is_used_and_advanced() -> None:
    x = _images(3)
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    first = dsa(x, "scale", generator=g1)
    assert torch.equal(first, dsa(x, "scale", generator=g2))
    assert not torch.equal(first, dsa(x, "scale", generator=g1))  # g1 moved on
    # seed == a fresh generator seeded with it
    assert torch.equal(dsa(x, "scale", seed=7), first)


def test_parameters_do_not_depend_on_dtype() -> None:
    """Draws are float32 on the CPU, so float64 images get the same transformation (as CUDA would)."""
    x = _images(3)
    for g in SINGLE_GROUPS:
        a = dsa(x, g, seed=3)
        b = dsa(x.double(), g, seed=3)
        assert b.dtype == torch.float64
        torch.testing.assert_close(b.float(), a, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_and_cuda_agree() -> None:
    x = _images(4)
    for g in SINGLE_GROUPS:
        for siamese in (False, True):
            a = dsa(x, g, seed=9, siamese=siamese)
            b = dsa(x.cuda(), g, seed=9, siamese=siamese)
            assert b.is_cuda
            torch.testing.assert_close(b.cpu(), a, rtol=1e-4, atol=1e-4)


# ---- siamese / per-image -----------------------------------------------------------------------


@pytest.mark.parametrize("group", [*SINGLE_GROUPS, STRATEGY_DEFAULT])
def test_siamese_same_transform_for_batches_of_different_size(group: str) -> None:
    a, b = _images(2, seed=1), _images(5, seed=2)
    for seed in range(4):
        whole = dsa(torch.cat([a, b]), group, seed=seed, siamese=True)
        torch.testing.assert_close(whole[:2], dsa(a, group, seed=seed, siamese=True))
        torch.testing.assert_close(whole[2:], dsa(b, group, seed=seed, siamese=True))


@pytest.mark.parametrize("group", SINGLE_GROUPS)
def test_siamese_shares_and_non_siamese_varies_per_image(group: str) -> None:
    x = _images(1).expand(16, -1, -1, -1)  # one image, 16 times
    shared = dsa(x, group, seed=4, siamese=True)
    assert all(torch.equal(shared[0], s) for s in shared[1:])
    per_image = dsa(x, group, seed=4, siamese=False)
    assert sum(not torch.equal(per_image[0], s) for s in per_image[1:]) >= 4


def test_non_siamese_flip_flips_some_images() -> None:
    x = _images(64, c=1, h=4, w=4)
    out = dsa(x, "flip", seed=0)
    flipped = torch.tensor([torch.equal(o, f) for o, f in zip(out, x.flip(3), strict=True)])
    kept = torch.tensor([torch.equal(o, i) for o, i in zip(out, x, strict=True)])
    assert bool((flipped ^ kept).all())
    assert 10 < int(flipped.sum()) < 54
    assert torch.equal(dsa(x, "flip", DSAParams(prob_flip=1.0), seed=0), x.flip(3))
    assert torch.equal(dsa(x, "flip", DSAParams(prob_flip=0.0), seed=0), x)


# ---- each group against an independent computation ---------------------------------------------


def test_flip_function() -> None:
    x = _images(3)
    out = A.flip(x, torch.tensor([True, False, True]))
    assert torch.equal(out[0], x[0].flip(-1)) and torch.equal(out[1], x[1]) and torch.equal(out[2], x[2].flip(-1))


def _shift_reference(img: torch.Tensor, tx: int, ty: int) -> torch.Tensor:
    """out[:, i, j] = img[:, i + tx, j + ty], 0 outside; by zero padding and slicing."""
    c, h, w = img.shape
    p = max(h, w)
    padded = torch.zeros(c, h + 2 * p, w + 2 * p, dtype=img.dtype)
    padded[:, p : p + h, p : p + w] = img
    return padded[:, p + tx : p + tx + h, p + ty : p + ty + w]


def test_crop_function_known_shifts() -> None:
    x = _images(4, h=7, w=9)
    tx, ty = torch.tensor([0, 2, -3, 1]), torch.tensor([0, -1, 4, -9])
    out = A.crop(x, tx, ty)
    for k in range(4):
        torch.testing.assert_close(out[k], _shift_reference(x[k], int(tx[k]), int(ty[k])), rtol=0, atol=0)
    torch.testing.assert_close(A.crop(x, 1, -2), torch.stack([_shift_reference(i, 1, -2) for i in x]), rtol=0, atol=0)


def test_crop_draws_shifts_within_ratio() -> None:
    x = _images(12, h=16, w=8)  # shift 2 along H, 1 along W
    out = dsa(x, "crop", seed=1)
    seen = set()
    for k in range(12):
        hits = [(i, j) for i in range(-2, 3) for j in range(-1, 2) if torch.equal(out[k], _shift_reference(x[k], i, j))]
        assert len(hits) == 1
        seen.add(hits[0])
    assert len(seen) > 2


def _cutout_reference(img: torch.Tensor, cx: int, cy: int, size: tuple[int, int]) -> torch.Tensor:
    out = img.clone()
    _, h, w = img.shape
    for i in range(h):
        for j in range(w):
            if (
                cx - size[0] // 2 <= i < cx - size[0] // 2 + size[0]
                and cy - size[1] // 2 <= j < cy - size[1] // 2 + size[1]
            ):
                out[:, i, j] = 0
    return out


def test_cutout_function_and_draws() -> None:
    x = _images(3, h=8, w=6) + 10.0  # no accidental zeros
    out = A.cutout(x, torch.tensor([0, 4, 8]), torch.tensor([3, 0, 6]), (4, 3))
    for k, (cx, cy) in enumerate([(0, 3), (4, 0), (8, 6)]):
        assert torch.equal(out[k], _cutout_reference(x[k], cx, cy, (4, 3)))
    # Drawn: size int(8 * 0.5 + 0.5) = 4 by int(6 * 0.5 + 0.5) = 3; centre rows 0..8 (even size), columns 0..5.
    drawn = dsa(x, "cutout", seed=2)
    for k in range(3):
        hits = [
            (i, j) for i in range(9) for j in range(6) if torch.equal(drawn[k], _cutout_reference(x[k], i, j, (4, 3)))
        ]
        assert len(hits) == 1


@pytest.mark.parametrize("align_corners", [False, True])
def test_scale_and_rotate_identity_and_exact_cases(align_corners: bool) -> None:
    x = _images(2, h=6, w=6)
    kw = {"align_corners": align_corners}
    torch.testing.assert_close(A.scale(x, 1.0, 1.0, **kw), x, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(A.rotate(x, 0.0, **kw), x, rtol=1e-5, atol=1e-5)
    # sx scales the width axis, sy the height axis: -1 mirrors exactly.
    torch.testing.assert_close(A.scale(x, -1.0, 1.0, **kw), x.flip(3), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(A.scale(x, 1.0, -1.0, **kw), x.flip(2), rtol=1e-5, atol=1e-5)
    # theta [[cos, -sin], [sin, cos]] at 90 degrees: out[i, j] = in[j, W - 1 - i], i.e. rot90 k=1.
    torch.testing.assert_close(A.rotate(x, math.pi / 2, **kw), torch.rot90(x, 1, dims=(2, 3)), rtol=1e-5, atol=1e-5)
    # Per-image parameters.
    out = A.scale(x, torch.tensor([1.0, -1.0]), torch.tensor([1.0, 1.0]), **kw)
    torch.testing.assert_close(out, torch.stack([x[0], x[1].flip(2)]), rtol=1e-5, atol=1e-5)


def test_scale_and_rotate_match_affine_grid_with_drawn_parameters() -> None:
    """Replay the documented draws (group choice, then sx, sy / angle) and resample independently."""
    x = _images(3, h=10, w=10)
    p = DSAParams()
    g = torch.Generator().manual_seed(21)
    torch.randint(0, 1, (1,), generator=g)  # the "S" group choice among one group
    lo = 1 / 1.2
    sx = torch.rand(3, generator=g) * (1.2 - lo) + lo
    sy = torch.rand(3, generator=g) * (1.2 - lo) + lo
    theta = torch.zeros(3, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = sx, sy
    ref = F.grid_sample(x, F.affine_grid(theta, list(x.shape), align_corners=False), align_corners=False)
    torch.testing.assert_close(dsa(x, "scale", p, seed=21), ref)
    assert bool(((sx >= lo) & (sx <= 1.2)).all())

    g = torch.Generator().manual_seed(22)
    torch.randint(0, 1, (1,), generator=g)
    ang = (torch.rand(3, generator=g) - 0.5) * 2 * 15.0 * math.pi / 180
    theta = torch.zeros(3, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = ang.cos(), -ang.sin(), ang.sin(), ang.cos()
    ref = F.grid_sample(x, F.affine_grid(theta, list(x.shape), align_corners=False), align_corners=False)
    torch.testing.assert_close(dsa(x, "rotate", p, seed=22), ref)


def test_color_functions_by_formula() -> None:
    x = _images(2, c=3, h=4, w=5, dtype=torch.float64)
    b, s, c = torch.tensor([0.25, -0.5]), torch.tensor([1.5, 0.0]), torch.tensor([0.75, 1.25])
    bright = A.brightness(x, b)
    torch.testing.assert_close(bright, torch.stack([x[0] + 0.25, x[1] - 0.5]))
    sat = A.saturation(x, s)
    for k in range(2):
        grey = (x[k, 0] + x[k, 1] + x[k, 2]) / 3  # per-pixel channel mean
        torch.testing.assert_close(sat[k], (x[k] - grey) * float(s[k]) + grey)
    con = A.contrast(x, c)
    for k in range(2):
        m = x[k].sum() / x[k].numel()  # per-image mean over C, H, W
        torch.testing.assert_close(con[k], (x[k] - m) * float(c[k]) + m)
    torch.testing.assert_close(A.color(x, b, s, c), A.contrast(A.saturation(A.brightness(x, b), s), c))


def test_color_draws_follow_reference_formulas() -> None:
    x = _images(3)
    g = torch.Generator().manual_seed(5)
    torch.randint(0, 1, (1,), generator=g)
    r1, r2, r3 = (torch.rand(3, generator=g) for _ in range(3))
    expected = x + ((r1 - 0.5) * 1.0).view(-1, 1, 1, 1)
    m = expected.mean(dim=1, keepdim=True)
    expected = (expected - m) * (r2 * 2.0).view(-1, 1, 1, 1) + m
    m = expected.mean(dim=(1, 2, 3), keepdim=True)
    expected = (expected - m) * (r3 + 0.5).view(-1, 1, 1, 1) + m
    torch.testing.assert_close(dsa(x, "color", seed=5), expected)


def test_mode_m_applies_all_groups_in_order() -> None:
    x = _images(3)
    # Flipping twice is the identity; "S" applies one flip only.
    always = DSAParams(prob_flip=1.0, aug_mode="M")
    assert torch.equal(dsa(x, "flip_flip", always, seed=0), x)
    assert torch.equal(dsa(x, "flip_flip", DSAParams(prob_flip=1.0), seed=0), x.flip(3))
    # Replay "M" on flip_crop: no group-choice draw, then the flip mask, then the shifts.
    g = torch.Generator().manual_seed(8)
    mask = torch.rand(3, generator=g) < 0.5
    tx, ty = torch.randint(-2, 3, (3,), generator=g), torch.randint(-2, 3, (3,), generator=g)
    expected = A.crop(A.flip(x, mask), tx, ty)
    assert torch.equal(dsa(x, "flip_crop", DSAParams(aug_mode="M"), seed=8), expected)


# ---- API edges, gradients ----------------------------------------------------------------------


def test_none_strategy_and_unknown_group() -> None:
    x = _images(2)
    assert dsa(x, "") is x
    assert dsa(x, "none") is x
    assert DSA("none")(x) is x
    with pytest.raises(ValueError, match=r"unknown DSA group\(s\) \['blur'\]") as err:
        dsa(x, "color_blur")
    for g in SINGLE_GROUPS:
        assert g in str(err.value)
    with pytest.raises(ValueError, match=r"unknown DSA group\(s\) \['zoom'\]"):
        DSA("crop_zoom")


def test_module_matches_function() -> None:
    x = _images(3)
    mod = DSA("crop_flip", DSAParams(aug_mode="M"))
    assert torch.equal(mod(x, seed=4, siamese=True), dsa(x, "crop_flip", DSAParams(aug_mode="M"), seed=4, siamese=True))
    assert "crop_flip" in repr(mod)
    assert list(mod.parameters()) == []


def test_noise_group() -> None:
    x = _images(2, c=1, h=4, w=4)
    out = dsa(x, "noise", seed=0)
    assert 0 < float((out - x).abs().max()) < 0.5
    assert STRATEGY_DEFAULT.count("noise") == 0


@pytest.mark.parametrize("siamese", [False, True])
def test_gradients_flow_without_inplace_errors(siamese: bool) -> None:
    """Every group backpropagates to the images on torch 2.x (no writes into overlapping views),
    including non-contiguous input."""
    base = _images(4, h=8, w=8).requires_grad_(True)
    x = base.transpose(2, 3)
    for g in SINGLE_GROUPS:
        base.grad = None
        out = dsa(x, g, DSAParams(aug_mode="M"), seed=1, siamese=siamese)
        assert out.shape == x.shape
        (out * torch.arange(out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        assert base.grad is not None and float(base.grad.abs().sum()) > 0


@pytest.mark.parametrize("group", ["scale", "rotate", "crop", "color", "cutout", "flip"])
def test_gradcheck(group: str) -> None:
    x = _images(2, c=2, h=5, w=5, dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: dsa(t, group, seed=6), (x,), eps=1e-6, atol=1e-5)


# ---- CutMix (Dance's expert training) ----------------------------------------------------------


def test_cutmix_box_by_hand():
    from hyperdm.distill.augment import cutmix_box

    # lam 0.75: sides int(28 * 0.5) = 14, half 7 around the centre, clipped to the image
    assert cutmix_box(28, 28, 0.75, 10, 20) == (3, 13, 17, 27)
    assert cutmix_box(28, 28, 0.75, 0, 0) == (0, 0, 7, 7)
    assert cutmix_box(28, 28, 0.75, 27, 27) == (20, 20, 28, 28)
    assert cutmix_box(32, 16, 0.0, 16, 8) == (0, 0, 32, 16)  # lam 0: the whole image
    y1, x1, y2, x2 = cutmix_box(28, 28, 1.0, 5, 9)  # lam 1: an empty box
    assert (y2 - y1) * (x2 - x1) == 0


@pytest.mark.parametrize("beta", [1.0, 0.5])
def test_cutmix_pastes_the_box_of_the_permuted_image(beta):
    from hyperdm.distill.augment import cutmix

    x = torch.randn(6, 3, 16, 16)
    before = x.clone()
    mixed, perm, ratio = cutmix(x, beta=beta, generator=torch.Generator().manual_seed(4))
    assert torch.equal(x, before)  # the input is not modified
    assert sorted(perm.tolist()) == list(range(6)) and not torch.equal(perm, torch.arange(6))
    box = (mixed != x).any(dim=0).any(dim=0)  # [H, W]: pixels changed in some image
    assert box.any()
    ys, xs = torch.nonzero(box, as_tuple=True)
    assert box[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].all()  # one rectangle
    assert torch.equal(mixed[:, :, box], x[perm][:, :, box]) and torch.equal(mixed[:, :, ~box], x[:, :, ~box])
    assert ratio == pytest.approx(1 - float(box.float().mean()))
    again = cutmix(x, beta=beta, generator=torch.Generator().manual_seed(4))
    assert torch.equal(again[0], mixed) and torch.equal(again[1], perm) and again[2] == ratio
    with pytest.raises(ValueError, match="beta must be > 0"):
        cutmix(x, beta=0.0)
    with pytest.raises(ValueError, match=r"images \[N, C, H, W\]"):
        cutmix(x[0], beta=1.0)
