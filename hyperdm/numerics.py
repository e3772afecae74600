"""Small numerical helpers shared by :mod:`hyperdm.lorentz`, :mod:`hyperdm.manifold` and :mod:`hyperdm.fused`.

Each is a few lines with one job: ``k`` as a tensor, and the series forms of ``sinh(t)/t`` and its
relatives that stay exact (and keep a finite gradient) near ``t = 0``.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["Curvature", "k_like", "sqrt_k", "small_argument", "sinhc", "asinhc", "tanhc_half", "safe_sqrt"]

#: geoopt's curvature parameter ``k > 0`` (points satisfy ``<x,x>_L = -k``): a number or a 0-d tensor
Curvature = float | Tensor

# Below this argument the series forms of sinh(t)/t and its relatives are used.
_SMALL = {torch.float64: 1e-6, torch.float32: 1e-3, torch.float16: 5e-2, torch.bfloat16: 5e-2}


def small_argument(dtype: torch.dtype) -> float:
    """Where the series forms take over from the closed forms, for ``dtype``."""
    return _SMALL.get(dtype, 1e-3)


def k_like(k: Curvature, like: Tensor) -> Tensor:
    """``k`` as a tensor on ``like``'s device and dtype (a tensor ``k`` keeps its gradient; a number is converted
    straight to ``like``'s dtype, never through float32)."""
    if isinstance(k, Tensor):
        return k.to(device=like.device, dtype=like.dtype)
    return torch.as_tensor(float(k), device=like.device, dtype=like.dtype)


def sqrt_k(k: Curvature, like: Tensor) -> Tensor:
    """``sqrt(k)`` as a tensor on ``like``'s device and dtype."""
    return k_like(k, like).sqrt()


def sinhc(t: Tensor) -> Tensor:
    """sinh(t)/t, equal to 1 + t^2/6 + O(t^4) near 0; finite gradient everywhere."""
    small = t.abs() < small_argument(t.dtype)
    ts = torch.where(small, torch.ones_like(t), t)
    return torch.where(small, 1.0 + t * t / 6.0, torch.sinh(ts) / ts)


def asinhc(t: Tensor) -> Tensor:
    """asinh(t)/t, equal to 1 - t^2/6 + O(t^4) near 0; finite gradient everywhere."""
    small = t.abs() < small_argument(t.dtype)
    ts = torch.where(small, torch.ones_like(t), t)
    return torch.where(small, 1.0 - t * t / 6.0, torch.asinh(ts) / ts)


def tanhc_half(t: Tensor) -> Tensor:
    """tanh(t/2)/t, equal to 1/2 - t^2/24 + O(t^4) near 0; finite gradient everywhere."""
    small = t.abs() < small_argument(t.dtype)
    ts = torch.where(small, torch.ones_like(t), t)
    return torch.where(small, 0.5 - t * t / 24.0, torch.tanh(ts / 2.0) / ts)


def safe_sqrt(q: Tensor) -> Tensor:
    """sqrt(max(q, 0)) with gradient 0 (not inf) at q <= 0; NaN stays NaN."""
    nonpos = q <= 0
    return torch.where(nonpos, torch.zeros_like(q), torch.sqrt(torch.where(nonpos, torch.ones_like(q), q)))
