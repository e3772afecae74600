"""DSA: differentiable siamese augmentation (Zhao & Bilen, 2021), with the reference parameters.

Each group is a small function with explicit parameters (``brightness(x, r)``, ``flip(x, mask)``,
...), so it can be tested against a hand computation. :func:`dsa` draws the parameters and
applies one group (``aug_mode="S"``, what DM uses) or all groups (``"M"``).

Random numbers are drawn on the CPU from a ``torch.Generator`` (from ``seed``, a given
generator, or the global CPU RNG), then moved to the images' device, so a seed gives the same
augmentation on CPU and CUDA. ``siamese=True`` draws one parameter set for the whole batch:
the same seed applies the same transformation to a real batch and a synthetic batch of a
different size. Tensors are always built fresh: nothing is written into a view of itself (the
reference's ``theta[:] = theta[0]`` fails on torch 2.x).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "STRATEGY_DEFAULT", "DSAParams", "dsa", "DSA", "GROUPS",
    "brightness", "saturation", "contrast", "flip", "affine", "crop", "cutout",
]

STRATEGY_DEFAULT = "color_crop_cutout_flip_scale_rotate"


@dataclass(frozen=True)
class DSAParams:
    """The reference DSA parameters (DatasetCondensation's ParamDiffAug)."""

    prob_flip: float = 0.5
    ratio_scale: float = 1.2
    ratio_rotate: float = 15.0
    ratio_crop_pad: float = 0.125
    ratio_cutout: float = 0.5
    brightness: float = 1.0
    saturation: float = 2.0
    contrast: float = 0.5
    aug_mode: str = "S"


def _col(v: Tensor, x: Tensor) -> Tensor:
    return v.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)


# ---- the transformations, with explicit parameters (one value per image, or one broadcast) -----


def brightness(x: Tensor, shift: Tensor) -> Tensor:
    """``x + shift`` per image (DSA draws ``shift = (r - 0.5) * brightness``)."""
    return x + _col(shift, x)


def saturation(x: Tensor, factor: Tensor) -> Tensor:
    """``(x - m) * factor + m`` with ``m`` the per-pixel channel mean (DSA: ``factor = r * saturation``)."""
    m = x.mean(dim=1, keepdim=True)
    return (x - m) * _col(factor, x) + m


def contrast(x: Tensor, factor: Tensor) -> Tensor:
    """``(x - m) * factor + m`` with ``m`` the per-image mean (DSA: ``factor = r + contrast``)."""
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - m) * _col(factor, x) + m


def flip(x: Tensor, mask: Tensor) -> Tensor:
    """Horizontal flip of the images where ``mask`` is true."""
    return torch.where(_col(mask, x).bool(), x.flip(3), x)


def affine(x: Tensor, theta: Tensor) -> Tensor:
    """Resample with ``affine_grid(theta)`` / ``grid_sample`` (``align_corners=True``, zero padding)."""
    theta = theta.to(device=x.device, dtype=x.dtype).expand(x.shape[0], 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=True)
    return F.grid_sample(x, grid, align_corners=True)


def crop(x: Tensor, tx: Tensor, ty: Tensor) -> Tensor:
    """Integer translation with zero fill: ``out[i, j] = x[i + tx, j + ty]`` (0 outside), per image."""
    n, _, h, w = x.shape
    tx = tx.to(x.device).long().view(-1, 1, 1).expand(n, h, w)
    ty = ty.to(x.device).long().view(-1, 1, 1).expand(n, h, w)
    gi = torch.arange(h, device=x.device).view(1, h, 1) + tx
    gj = torch.arange(w, device=x.device).view(1, 1, w) + ty
    valid = (gi >= 0) & (gi < h) & (gj >= 0) & (gj < w)
    flat = (gi.clamp(0, h - 1) * w + gj.clamp(0, w - 1)).view(n, 1, h * w).expand(n, x.shape[1], h * w)
    out = torch.gather(x.reshape(n, x.shape[1], h * w), 2, flat).view_as(x)
    return out * valid.unsqueeze(1).to(x.dtype)


def cutout(x: Tensor, cx: Tensor, cy: Tensor, size: tuple[int, int]) -> Tensor:
    """Zero a ``size`` rectangle per image whose top-left corner is ``(cx - size//2, cy - size//2)``, clipped."""
    n, _, h, w = x.shape
    cx = cx.to(x.device).long().view(-1, 1, 1)
    cy = cy.to(x.device).long().view(-1, 1, 1)
    i = torch.arange(h, device=x.device).view(1, h, 1)
    j = torch.arange(w, device=x.device).view(1, 1, w)
    x0, y0 = cx - size[0] // 2, cy - size[1] // 2
    inside = (i >= x0) & (i < x0 + size[0]) & (j >= y0) & (j < y0 + size[1])
    return x * (~inside).unsqueeze(1).to(x.dtype)


# ---- drawing parameters -----------------------------------------------------------------------


def _rand(n: int, gen: Optional[torch.Generator]) -> Tensor:
    return torch.rand(n, generator=gen)


def _randint(lo: int, hi: int, n: int, gen: Optional[torch.Generator]) -> Tensor:
    return torch.randint(lo, hi, (n,), generator=gen)


def _color(x: Tensor, p: DSAParams, n: int, gen: Optional[torch.Generator]) -> Tensor:
    x = brightness(x, (_rand(n, gen) - 0.5) * p.brightness)
    x = saturation(x, _rand(n, gen) * p.saturation)
    return contrast(x, _rand(n, gen) + p.contrast)


def _crop(x: Tensor, p: DSAParams, n: int, gen: Optional[torch.Generator]) -> Tensor:
    sx, sy = int(x.shape[2] * p.ratio_crop_pad + 0.5), int(x.shape[3] * p.ratio_crop_pad + 0.5)
    return crop(x, _randint(-sx, sx + 1, n, gen), _randint(-sy, sy + 1, n, gen))


def _cutout(x: Tensor, p: DSAParams, n: int, gen: Optional[torch.Generator]) -> Tensor:
    size = (int(x.shape[2] * p.ratio_cutout + 0.5), int(x.shape[3] * p.ratio_cutout + 0.5))
    cx = _randint(0, x.shape[2] + (1 - size[0] % 2), n, gen)
    cy = _randint(0, x.shape[3] + (1 - size[1] % 2), n, gen)
    return cutout(x, cx, cy, size)


def _flip(x: Tensor, p: DSAParams, n: int, gen: Optional[torch.Generator]) -> Tensor:
    return flip(x, _rand(n, gen) < p.prob_flip)


def _scale(x: Tensor, p: DSAParams, n: int, gen: Optional[torch.Generator]) -> Tensor:
    lo = 1.0 / p.ratio_scale
    sx = _rand(n, gen) * (p.ratio_scale - lo) + lo
    sy = _rand(n, gen) * (p.ratio_scale - lo) + lo
    z = torch.zeros(n)
    theta = torch.stack([torch.stack([sx, z, z], 1), torch.stack([z, sy, z], 1)], 1)
    return affine(x, theta)


def _rotate(x: Tensor, p: DSAParams, n: int, gen: Optional[torch.Generator]) -> Tensor:
    a = (_rand(n, gen) - 0.5) * 2 * p.ratio_rotate / 180 * math.pi
    c, s, z = torch.cos(a), torch.sin(a), torch.zeros(n)
    theta = torch.stack([torch.stack([c, s, z], 1), torch.stack([-s, c, z], 1)], 1)
    return affine(x, theta)


GROUPS: dict[str, Callable[[Tensor, DSAParams, int, Optional[torch.Generator]], Tensor]] = {
    "color": _color, "crop": _crop, "cutout": _cutout, "flip": _flip, "scale": _scale, "rotate": _rotate,
}


def _parse(strategy: str) -> list[str]:
    if strategy in ("", "none", "None"):
        return []
    groups = [g for g in strategy.split("_") if g]
    bad = [g for g in groups if g not in GROUPS]
    if bad:
        raise ValueError(f"unknown DSA group(s) {bad} in {strategy!r}; valid groups: {', '.join(GROUPS)} (joined by '_').")
    return groups


def dsa(
    x: Tensor,
    strategy: str = STRATEGY_DEFAULT,
    params: DSAParams = DSAParams(),
    *,
    seed: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    siamese: bool = False,
) -> Tensor:
    """Apply DSA to a batch ``[N, C, H, W]``; differentiable in ``x``.

    ``seed`` (or ``generator``) fixes every random draw; ``siamese=True`` shares one draw over
    the batch. ``aug_mode="S"`` applies one group chosen at random, ``"M"`` all in order.
    """
    groups = _parse(strategy)
    if not groups:
        return x
    if seed is not None:
        generator = torch.Generator().manual_seed(int(seed))
    if params.aug_mode == "S":
        groups = [groups[int(torch.randint(0, len(groups), (1,), generator=generator))]]
    elif params.aug_mode != "M":
        raise ValueError(f"aug_mode must be 'S' (one group per call) or 'M' (all); got {params.aug_mode!r}.")
    n = 1 if siamese else x.shape[0]
    for g in groups:
        x = GROUPS[g](x, params, n, generator)
    return x


class DSA(nn.Module):
    """Module form of :func:`dsa` holding ``strategy`` and ``params``."""

    def __init__(self, strategy: str = STRATEGY_DEFAULT, params: DSAParams = DSAParams()) -> None:
        super().__init__()
        _parse(strategy)
        self.strategy, self.params = strategy, params

    def forward(self, x: Tensor, *, seed: Optional[int] = None, generator: Optional[torch.Generator] = None, siamese: bool = False) -> Tensor:
        return dsa(x, self.strategy, self.params, seed=seed, generator=generator, siamese=siamese)

    def extra_repr(self) -> str:
        return f"strategy={self.strategy!r}, aug_mode={self.params.aug_mode!r}"
