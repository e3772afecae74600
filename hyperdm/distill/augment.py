"""DSA: differentiable siamese augmentation (Zhao & Bilen, 2021), with the reference parameters.

Each transformation is a small function with explicit parameters (``brightness(x, shift)``,
``flip(x, mask)``, ``scale(x, sx, sy)``, ``rotate(x, angle)``, ``crop(x, tx, ty)``, ...), so it
can be checked against a hand computation; :func:`dsa` draws the parameters and applies one
group chosen at random (``aug_mode="S"``, what DC/DM/IDM use) or every group in order (``"M"``).

Random numbers are drawn in float32 on the CPU from a ``torch.Generator`` (a fresh one seeded
with ``seed``, else ``generator``, else the global CPU RNG), then moved to the images' device and
dtype, so a seed gives the same augmentation on CPU and CUDA and does not touch or depend on the
global RNG. ``siamese=True`` draws one parameter set for the whole batch: with the same seed a
real batch and a synthetic batch of different sizes get the same transformation.
``siamese=False`` draws independent parameters per image. Tensors are always built fresh:
nothing is written into a view of itself (the reference's ``theta[:] = theta[0]`` fails on
torch 2.x). Everything is differentiable in the images.

Semantics follow the reference's ``DiffAugment`` (DatasetCondensation ``utils.py``):

* color: brightness ``x + (r - 0.5) * brightness``, then saturation ``(x - m) * r * saturation + m``
  (``m`` the per-pixel channel mean), then contrast ``(x - m) * (r + contrast) + m`` (``m`` the
  per-image mean), a fresh ``r ~ U(0, 1)`` for each;
* crop: integer shifts ``tx, ty ~ U{-s, s}``, ``s = int(size * ratio_crop_pad + 0.5)``,
  ``out[i, j] = x[i + tx, j + ty]`` or 0 outside the image;
* cutout: a ``int(size * ratio_cutout + 0.5)`` square zeroed around a random centre (clipped);
* flip: horizontal flip (dim 3) where ``r < prob_flip``;
* scale: ``sx, sy ~ U(1/ratio_scale, ratio_scale)``, ``theta = [[sx, 0, 0], [0, sy, 0]]``;
* rotate: angle ``(r - 0.5) * 2 * ratio_rotate`` degrees, ``theta = [[cos, -sin, 0], [sin, cos, 0]]``;
  scale and rotate resample with ``affine_grid`` / ``grid_sample`` (bilinear, zero padding).
* noise (an extension, not among the reference's groups and not in the default strategy):
  ``x + ratio_noise * N(0, 1)`` per pixel.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "STRATEGY_DEFAULT",
    "DSAParams",
    "dsa",
    "DSA",
    "GROUPS",
    "parse_strategy",
    "brightness",
    "saturation",
    "contrast",
    "color",
    "flip",
    "affine",
    "scale",
    "rotate",
    "crop",
    "cutout",
    "noise",
    "cutmix",
    "cutmix_box",
]

logger = logging.getLogger(__name__)

STRATEGY_DEFAULT = "color_crop_cutout_flip_scale_rotate"


@dataclass(frozen=True)
class DSAParams:
    """The reference DSA parameters (DatasetCondensation's ``ParamDiffAug``).

    ``ratio_rotate`` is in degrees. ``aug_mode`` "S" applies one group per call, chosen uniformly
    at random from the strategy; "M" applies all groups in order. ``align_corners`` is passed to
    ``affine_grid`` / ``grid_sample``: the reference calls them without it, which means ``False``
    on every torch since 1.3. ``ratio_noise`` only serves the optional "noise" group.
    """

    prob_flip: float = 0.5
    ratio_scale: float = 1.2
    ratio_rotate: float = 15.0
    ratio_crop_pad: float = 0.125
    ratio_cutout: float = 0.5
    ratio_noise: float = 0.05
    brightness: float = 1.0
    saturation: float = 2.0
    contrast: float = 0.5
    aug_mode: str = "S"
    align_corners: bool = False

    def __post_init__(self) -> None:
        if self.aug_mode not in ("S", "M"):
            raise ValueError(f"aug_mode must be 'S' (one group per call) or 'M' (all groups); got {self.aug_mode!r}.")
        if self.ratio_scale < 1.0:
            raise ValueError(f"ratio_scale must be >= 1, got {self.ratio_scale}.")


def _per_image(v: Tensor | float, x: Tensor) -> Tensor:
    """A scalar, ``[1]`` or ``[N]`` parameter as a ``[N or 1, 1, 1, 1]`` tensor on x's device/dtype."""
    return torch.as_tensor(v).to(device=x.device, dtype=x.dtype).reshape(-1, 1, 1, 1)


def _per_image_long(v: Tensor | int, x: Tensor) -> Tensor:
    return torch.as_tensor(v).to(device=x.device, dtype=torch.long).reshape(-1, 1, 1)


# ---- the transformations, with explicit parameters (one value per image, or one for all) --------


def brightness(x: Tensor, shift: Tensor | float) -> Tensor:
    """``x + shift`` per image (DSA draws ``shift = (r - 0.5) * brightness``)."""
    return x + _per_image(shift, x)


def saturation(x: Tensor, factor: Tensor | float) -> Tensor:
    """``(x - m) * factor + m`` with ``m`` the per-pixel mean over channels (DSA: ``factor = r * saturation``)."""
    m = x.mean(dim=1, keepdim=True)
    return (x - m) * _per_image(factor, x) + m


def contrast(x: Tensor, factor: Tensor | float) -> Tensor:
    """``(x - m) * factor + m`` with ``m`` the per-image mean over C, H, W (DSA: ``factor = r + contrast``)."""
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - m) * _per_image(factor, x) + m


def color(x: Tensor, shift: Tensor | float, sat: Tensor | float, con: Tensor | float) -> Tensor:
    """brightness, then saturation, then contrast, with explicit parameters."""
    return contrast(saturation(brightness(x, shift), sat), con)


def flip(x: Tensor, mask: Tensor | bool) -> Tensor:
    """Horizontal flip (along width, dim 3) of the images where ``mask`` is true."""
    m = torch.as_tensor(mask).to(device=x.device, dtype=torch.bool).reshape(-1, 1, 1, 1)
    return torch.where(m, x.flip(3), x)


def affine(x: Tensor, theta: Tensor, *, align_corners: bool = False) -> Tensor:
    """Resample through ``affine_grid(theta)`` / ``grid_sample`` (bilinear, zero padding).

    ``theta`` is ``[2, 3]`` or ``[1, 2, 3]`` (one for all images) or ``[N, 2, 3]``.
    """
    theta = theta.to(device=x.device, dtype=x.dtype).reshape(-1, 2, 3)
    if theta.shape[0] != x.shape[0]:
        theta = theta.expand(x.shape[0], 2, 3).contiguous()
    grid = F.affine_grid(theta, list(x.shape), align_corners=align_corners)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=align_corners)


def scale_theta(sx: Tensor | float, sy: Tensor | float) -> Tensor:
    """``[[sx, 0, 0], [0, sy, 0]]`` per image, ``[N, 2, 3]``."""
    sx = torch.as_tensor(sx, dtype=torch.float32).reshape(-1)
    sy = torch.as_tensor(sy, dtype=torch.float32).reshape(-1)
    z = torch.zeros_like(sx)
    return torch.stack([torch.stack([sx, z, z], 1), torch.stack([z, sy, z], 1)], 1)


def rotate_theta(angle: Tensor | float) -> Tensor:
    """``[[cos a, -sin a, 0], [sin a, cos a, 0]]`` per image (``a`` in radians), ``[N, 2, 3]``."""
    a = torch.as_tensor(angle, dtype=torch.float32).reshape(-1)
    c, s, z = torch.cos(a), torch.sin(a), torch.zeros_like(a)
    return torch.stack([torch.stack([c, -s, z], 1), torch.stack([s, c, z], 1)], 1)


def scale(x: Tensor, sx: Tensor | float, sy: Tensor | float, *, align_corners: bool = False) -> Tensor:
    """Affine resampling with ``theta = [[sx, 0, 0], [0, sy, 0]]`` (sx < 1 enlarges the content)."""
    return affine(x, scale_theta(sx, sy), align_corners=align_corners)


def rotate(x: Tensor, angle: Tensor | float, *, align_corners: bool = False) -> Tensor:
    """Affine resampling with the rotation ``theta`` of ``angle`` radians (see :func:`rotate_theta`)."""
    return affine(x, rotate_theta(angle), align_corners=align_corners)


def crop(x: Tensor, tx: Tensor | int, ty: Tensor | int) -> Tensor:
    """Integer translation with zero fill, per image: ``out[i, j] = x[i + tx, j + ty]``, 0 outside.

    ``tx`` shifts along height (dim 2), ``ty`` along width (dim 3). Implemented as a gather from
    the flattened image plus a validity mask, so it is differentiable in ``x``.
    """
    n, c, h, w = x.shape
    tx, ty = _per_image_long(tx, x), _per_image_long(ty, x)
    gi = torch.arange(h, device=x.device).view(1, h, 1) + tx  # [N or 1, H, 1]
    gj = torch.arange(w, device=x.device).view(1, 1, w) + ty  # [N or 1, 1, W]
    valid = ((gi >= 0) & (gi < h)) & ((gj >= 0) & (gj < w))  # [N or 1, H, W]
    idx = gi.clamp(0, h - 1) * w + gj.clamp(0, w - 1)
    idx = idx.expand(n, h, w).reshape(n, 1, h * w).expand(n, c, h * w)
    out = torch.gather(x.reshape(n, c, h * w), 2, idx).reshape(n, c, h, w)
    return out * valid.unsqueeze(1).to(x.dtype)


def cutout(x: Tensor, cx: Tensor | int, cy: Tensor | int, size: tuple[int, int]) -> Tensor:
    """Zero, per image, rows ``[cx - size[0]//2, cx - size[0]//2 + size[0])`` x columns likewise for ``cy``.

    The square is clipped to the image.
    """
    _, _, h, w = x.shape
    cx, cy = _per_image_long(cx, x), _per_image_long(cy, x)
    i = torch.arange(h, device=x.device).view(1, h, 1)
    j = torch.arange(w, device=x.device).view(1, 1, w)
    x0, y0 = cx - size[0] // 2, cy - size[1] // 2
    inside = (i >= x0) & (i < x0 + size[0]) & (j >= y0) & (j < y0 + size[1])
    return x * (~inside).unsqueeze(1).to(x.dtype)


def noise(x: Tensor, eps: Tensor) -> Tensor:
    """``x + eps`` with ``eps`` broadcast to ``x`` (DSA's optional noise group: ``ratio_noise * N(0, 1)``)."""
    return x + eps.to(device=x.device, dtype=x.dtype)


# ---- drawing the parameters (CPU, float32, from the generator) ------------------------------------


def cutmix_box(h: int, w: int, lam: float, cy: int, cx: int) -> tuple[int, int, int, int]:
    """CutMix's box ``(y1, x1, y2, x2)`` for mixing weight ``lam``: sides ``int(h * sqrt(1 - lam))`` by
    ``int(w * sqrt(1 - lam))`` centred at ``(cy, cx)``, each corner clipped to the image (halves rounded down)."""
    r = math.sqrt(1.0 - lam)
    ch, cw = int(h * r), int(w * r)
    y1, y2 = min(max(cy - ch // 2, 0), h), min(max(cy + ch // 2, 0), h)
    x1, x2 = min(max(cx - cw // 2, 0), w), min(max(cx + cw // 2, 0), w)
    return y1, x1, y2, x2


def cutmix(x: Tensor, *, beta: float = 1.0, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, float]:
    """CutMix (Yun et al. 2019) as IDC / Dance train their networks: a box of every image is replaced by the
    same box of image ``perm[i]``. Returns ``(mixed, perm, ratio)``; the loss is
    ``ratio * CE(out, y) + (1 - ratio) * CE(out, y[perm])`` with ``ratio`` the area fraction left untouched.

    ``lam ~ Beta(beta, beta)``, the box from :func:`cutmix_box` with a uniform centre; the draws come
    from ``generator`` (CPU). ``x`` is not modified.
    """
    if x.dim() != 4:
        raise ValueError(f"cutmix expects images [N, C, H, W], got shape {tuple(x.shape)}.")
    if beta <= 0:
        raise ValueError(f"cutmix beta must be > 0; got {beta}.")
    n, _, h, w = x.shape
    # Beta(a, a) from two Gamma(a) draws: torch's Gamma sampler takes no generator, so draw by inversion for a = 1
    # (the setting IDC / Dance use) and through numpy seeded from the generator otherwise.
    if beta == 1.0:
        lam = float(torch.rand(1, generator=generator, dtype=torch.float64))
    else:
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        lam = float(np.random.default_rng(seed).beta(beta, beta))
    cy, cx = int(torch.randint(0, h, (1,), generator=generator)), int(torch.randint(0, w, (1,), generator=generator))
    perm = torch.randperm(n, generator=generator).to(x.device)
    y1, x1, y2, x2 = cutmix_box(h, w, lam, cy, cx)
    mask = torch.zeros((1, 1, h, w), dtype=torch.bool, device=x.device)
    mask[..., y1:y2, x1:x2] = True
    mixed = torch.where(mask, x[perm], x)
    ratio = 1.0 - (y2 - y1) * (x2 - x1) / (h * w)
    return mixed, perm, ratio


def _rand(n: int, gen: torch.Generator | None) -> Tensor:
    return torch.rand(n, generator=gen, dtype=torch.float32)


def _randint(lo: int, hi: int, n: int, gen: torch.Generator | None) -> Tensor:
    return torch.randint(lo, hi, (n,), generator=gen)


def _color(x: Tensor, p: DSAParams, n: int, gen: torch.Generator | None) -> Tensor:
    x = brightness(x, (_rand(n, gen) - 0.5) * p.brightness)
    x = saturation(x, _rand(n, gen) * p.saturation)
    return contrast(x, _rand(n, gen) + p.contrast)


def _crop(x: Tensor, p: DSAParams, n: int, gen: torch.Generator | None) -> Tensor:
    sx, sy = int(x.shape[2] * p.ratio_crop_pad + 0.5), int(x.shape[3] * p.ratio_crop_pad + 0.5)
    tx = _randint(-sx, sx + 1, n, gen)
    ty = _randint(-sy, sy + 1, n, gen)
    return crop(x, tx, ty)


def _cutout(x: Tensor, p: DSAParams, n: int, gen: torch.Generator | None) -> Tensor:
    size = (int(x.shape[2] * p.ratio_cutout + 0.5), int(x.shape[3] * p.ratio_cutout + 0.5))
    cx = _randint(0, x.shape[2] + (1 - size[0] % 2), n, gen)
    cy = _randint(0, x.shape[3] + (1 - size[1] % 2), n, gen)
    return cutout(x, cx, cy, size)


def _flip(x: Tensor, p: DSAParams, n: int, gen: torch.Generator | None) -> Tensor:
    return flip(x, _rand(n, gen) < p.prob_flip)


def _scale(x: Tensor, p: DSAParams, n: int, gen: torch.Generator | None) -> Tensor:
    lo = 1.0 / p.ratio_scale
    sx = _rand(n, gen) * (p.ratio_scale - lo) + lo
    sy = _rand(n, gen) * (p.ratio_scale - lo) + lo
    return scale(x, sx, sy, align_corners=p.align_corners)


def _rotate(x: Tensor, p: DSAParams, n: int, gen: torch.Generator | None) -> Tensor:
    angle = (_rand(n, gen) - 0.5) * 2 * p.ratio_rotate / 180 * math.pi
    return rotate(x, angle, align_corners=p.align_corners)


def _noise(x: Tensor, p: DSAParams, n: int, gen: torch.Generator | None) -> Tensor:
    eps = torch.randn((n, *x.shape[1:]), generator=gen, dtype=torch.float32) * p.ratio_noise
    return noise(x, eps)


GroupFn = Callable[[Tensor, DSAParams, int, "torch.Generator | None"], Tensor]

GROUPS: dict[str, GroupFn] = {
    "color": _color,
    "crop": _crop,
    "cutout": _cutout,
    "flip": _flip,
    "scale": _scale,
    "rotate": _rotate,
    "noise": _noise,
}
"""Group name -> ``fn(x, params, n, generator)`` drawing ``n`` parameter sets (1 when siamese)."""


def parse_strategy(strategy: str) -> list[str]:
    """``"color_crop"`` -> ``["color", "crop"]``; ``""`` / ``"none"`` -> ``[]``; unknown groups raise ValueError."""
    if strategy.strip().lower() in ("", "none"):
        return []
    groups = [g for g in strategy.split("_") if g]
    bad = [g for g in groups if g not in GROUPS]
    if bad:
        raise ValueError(
            f"unknown DSA group(s) {bad} in strategy {strategy!r}; valid groups: {', '.join(GROUPS)} (joined by '_')."
        )
    return groups


def dsa(
    x: Tensor,
    strategy: str = STRATEGY_DEFAULT,
    params: DSAParams = DSAParams(),
    *,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    siamese: bool = False,
) -> Tensor:
    """Apply DSA to a batch ``[N, C, H, W]``; differentiable in ``x``.

    ``seed`` (a fresh CPU generator; takes precedence) or ``generator`` (a CPU generator,
    advanced by the call) fixes every draw, otherwise the global CPU RNG is used.
    ``siamese=True`` shares one draw over the batch, ``False`` draws per image.
    Strategy ``""`` or ``"none"`` returns ``x`` itself.
    """
    groups = parse_strategy(strategy)
    if not groups:
        return x
    if x.dim() != 4:
        raise ValueError(f"dsa expects images [N, C, H, W], got shape {tuple(x.shape)}.")
    if seed is not None:
        generator = torch.Generator().manual_seed(int(seed))
    if params.aug_mode == "S":
        groups = [groups[int(torch.randint(0, len(groups), (1,), generator=generator))]]
    n = 1 if siamese else x.shape[0]
    for g in groups:
        x = GROUPS[g](x, params, n, generator)
    return x


class DSA(nn.Module):
    """Module form of :func:`dsa` holding ``strategy`` and ``params`` (no learnable state)."""

    def __init__(self, strategy: str = STRATEGY_DEFAULT, params: DSAParams = DSAParams()) -> None:
        super().__init__()
        parse_strategy(strategy)
        self.strategy, self.params = strategy, params

    def forward(
        self, x: Tensor, *, seed: int | None = None, generator: torch.Generator | None = None, siamese: bool = False
    ) -> Tensor:
        return dsa(x, self.strategy, self.params, seed=seed, generator=generator, siamese=siamese)

    def extra_repr(self) -> str:
        return f"strategy={self.strategy!r}, aug_mode={self.params.aug_mode!r}"
