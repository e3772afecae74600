r"""Where the features sit on the hyperboloid: radius statistics and the radius calibration.

The exp-map at the origin puts a feature ``v`` at geodesic radius ``sqrt(k) t`` with
``t = |v| / sqrt(k)`` (clamped at ``max_norm``), ``k`` geoopt's curvature parameter (points
satisfy ``<x,x>_L = -k``; curvature ``-1/k``). Radii tell which geometry a matcher works in:

* ``t`` of order 10 or more (random ConvNet features have ``|v|`` of 20-26, so with ``k = 1``
  and the official clamp at 10 every point is clamped): all points at one radius, so only
  feature *directions* are matched and ``k`` merely scales the loss;
* ``t`` well below 1: the map is nearly flat and the loss nearly Euclidean;
* in between (``t`` of order 1-8): the map is neither flat nor saturated.

:class:`RadiusStats` summarises the per-point ``t`` a matcher already computes (no extra pass
over the features); :func:`calibration_factor` finds the feature scale ``alpha`` that puts the
median radius of a batch at a chosen ``r0``.

Scaling the features by ``alpha`` is the same as choosing another ``k`` (up to lambda): every
piece of the loss (exp-map, clamp, Law centroid, distance) is homogeneous, ``exp_o^k(v) =
sqrt(k) exp_o^1(v / sqrt(k))``, so

.. math::
    \lambda\, d_k(\alpha v_r, \alpha v_s) = \lambda \alpha\, d_{k / \alpha^2}(v_r, v_s),

and a matcher applies its calibration as ``k / alpha^2`` and ``lambda alpha``, which costs no pass
over the features.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["RadiusStats", "median", "calibration_factor", "check_radius"]


class RadiusStats:
    """Where one matcher call's points sit: per side, the median of ``t = |v| / sqrt(k)`` (before the clamp; the
    geodesic radius is ``sqrt(k) min(t, max_norm)``) and the fraction of points at the clamp, ``t >= max_norm``
    (with the exact map, ``t >= hyperdm.lorentz.SAFE_RADIUS``, where the map saturates).

    Built from the per-point norms the loss takes anyway, and lazy: a call only keeps a reference to them; each
    value is computed on the device the first time it is read (0-d float64 tensors: ``real_median``,
    ``real_clamped``, ``syn_median``, ``syn_clamped``), and only :meth:`as_dict` reads them on the host.

    ``norms``: ``[..., N + M]`` feature norms, the ``n_real`` real points first; ``sqrt_k``: ``sqrt(k)`` of the
    call; ``mask``: which entries are points (the rest is padding), same shape as ``norms``.
    """

    FIELDS = ("real_median", "real_clamped", "syn_median", "syn_clamped")

    def __init__(
        self, norms: Tensor, n_real: int, *, sqrt_k: float | Tensor, max_norm: float, mask: Tensor | None = None
    ) -> None:
        self._norms, self._n, self._sk, self._max, self._mask = norms, int(n_real), sqrt_k, float(max_norm), mask
        self._cache: dict[str, Tensor] = {}

    def _side(self, i: int) -> tuple[Tensor, Tensor | None]:
        t = self._norms.detach().to(torch.float64) / (
            self._sk.detach().to(torch.float64) if isinstance(self._sk, Tensor) else self._sk
        )
        sl = (slice(None, self._n),) if i == 0 else (slice(self._n, None),)
        valid = None if self._mask is None else (self._mask[..., sl[0]] > 0)
        return t[..., sl[0]], valid

    def _get(self, name: str) -> Tensor:
        if name not in self._cache:
            t, valid = self._side(0 if name.startswith("real") else 1)
            self._cache[name] = median(t, valid) if name.endswith("median") else _fraction(t >= self._max, valid)
        return self._cache[name]

    @property
    def real_median(self) -> Tensor:
        """Median ``|v|/sqrt(k)`` of the real points."""
        return self._get("real_median")

    @property
    def real_clamped(self) -> Tensor:
        """Fraction of the real points at the clamp."""
        return self._get("real_clamped")

    @property
    def syn_median(self) -> Tensor:
        """Median ``|v|/sqrt(k)`` of the synthetic points."""
        return self._get("syn_median")

    @property
    def syn_clamped(self) -> Tensor:
        """Fraction of the synthetic points at the clamp."""
        return self._get("syn_clamped")

    @property
    def max_norm(self) -> float:
        """The clamp the call used (``SAFE_RADIUS`` for the exact map)."""
        return self._max

    def as_dict(self) -> dict[str, float]:
        """The four values as Python floats (host reads)."""
        return {name: float(self._get(name)) for name in self.FIELDS}

    def __repr__(self) -> str:
        return "RadiusStats(" + ", ".join(f"{k}={v:.4g}" for k, v in self.as_dict().items()) + ")"


def median(values: Tensor, valid: Tensor | None = None) -> Tensor:
    """The median of ``values`` (all elements; where ``valid``, if given), as a 0-d tensor.

    The usual median: the middle value, or the mean of the two middle values for an even count (not
    ``torch.median``, which returns the lower one). No host sync: the count stays on the device.
    """
    flat = values.reshape(-1)
    if flat.numel() == 0:
        return flat.new_full((), float("nan"))
    if valid is None:
        size = flat.numel()
        s = torch.sort(flat).values
        return 0.5 * (s[(size - 1) // 2] + s[size // 2])
    ok = valid.reshape(-1).to(torch.bool)
    s = torch.sort(torch.where(ok, flat, torch.full_like(flat, float("inf")))).values  # invalid ones last
    n = ok.sum()
    lo = torch.clamp((n - 1) // 2, min=0)
    hi = torch.clamp(n // 2, max=flat.numel() - 1)
    return 0.5 * (s.gather(0, lo.reshape(1)) + s.gather(0, hi.reshape(1)))[0]


def _fraction(flags: Tensor, valid: Tensor | None) -> Tensor:
    if valid is None:
        return flags.to(torch.float64).mean()
    ok = valid.to(torch.bool)
    return (flags & ok).sum(dtype=torch.float64) / ok.sum().clamp_min(1)


def calibration_factor(norms: Tensor, r0: float, *, k: float | Tensor, valid: Tensor | None = None) -> Tensor:
    """``alpha`` such that the median of ``alpha |v| / sqrt(k)`` over the batch is ``r0`` (0-d float64 tensor).

    ``norms``: the feature norms ``|v|`` of the (real) batch, any shape; ``valid``: which are real rows.
    Raises ``ValueError`` when ``r0 <= 0`` or the median norm is not a finite positive number.
    """
    check_radius(r0)
    med = median(norms.detach().to(torch.float64), valid)
    kk = k.detach().to(torch.float64) if isinstance(k, Tensor) else torch.tensor(float(k), dtype=torch.float64)
    m = float(med)  # one host read, once per calibration
    if not (m > 0 and m < float("inf")):
        raise ValueError(
            f"radius calibration: the median feature norm of the batch is {m:g}; calibrate on real features that are "
            "finite and not all zero (the first batch the matcher sees), or pass radius=None."
        )
    return r0 * kk.to(med.device).sqrt() / med


def check_radius(r0: object) -> None:
    """Refuse a radius that is not a finite number > 0, saying what to pass instead."""
    if isinstance(r0, bool) or not isinstance(r0, (int, float)) or not (0 < float(r0) < float("inf")):
        raise ValueError(
            f"radius must be a finite number > 0 (the median geodesic radius, in units of sqrt(k), of the first "
            f"real batch); got {r0!r}. Try radius=2.0, or radius=None for no calibration."
        )
