r""":class:`StableLorentz`: geoopt's Lorentz manifold with cancellation-free forms, and a centroid.

A drop-in subclass of :class:`geoopt.Lorentz`: same constructor (``k`` stored as the tensor
parameter ``self.k``, trainable with ``learnable=True``), same methods and keywords (ambient
points of R^(D+1), time coordinate first, ``dim=-1``, ``keepdim``), so it works with
:class:`geoopt.ManifoldParameter`, :class:`geoopt.ManifoldTensor` and geoopt's Riemannian
optimizers. Every method evaluates the forms of :mod:`hyperdm.lorentz` instead of the textbook
ones, which subtract numbers ``cosh(r/sqrt k)^2`` times larger than their result, and adds
:meth:`StableLorentz.centroid` (Law et al.'s closed form, weighted).

Conventions shared by the methods (see :mod:`hyperdm.lorentz`):

* Points and tangent vectors are read by their space parts: ``x_0 = sqrt(k + |x_s|^2)`` and, for
  a tangent vector at ``x``, ``u_0 = <x_s,u_s>/x_0`` are implied, and every point or tangent
  vector returned carries exactly that time part. Only ``proju`` and ``egrad2rgrad``, which take
  arbitrary ambient vectors, read their time part as well.
* ``k`` is used in the dtype of the points (geoopt takes ``sqrt(k)`` in ``k``'s own dtype, by
  default float32, which costs float64 points 7 digits).
* ``dim`` may be any axis of the inputs (geoopt's own forms honour it only in some methods).

geoopt 0.5.1 calls the deprecated ``torch.jit.script`` while it is imported (torch >= 2.9 warns
about it, as a DeprecationWarning or, from 2.14, a FutureWarning); that one message is silenced
around the import here and nowhere else.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from . import lorentz as L
from .numerics import k_like, safe_sqrt, sqrt_k

with warnings.catch_warnings():
    # torch 2.9 - 2.13 say it with a DeprecationWarning, 2.14 with a FutureWarning: match the message only.
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated")
    import geoopt

__all__ = ["StableLorentz"]


def _last(t: Tensor, dim: int) -> Tensor:
    return t if dim == -1 else t.movedim(dim, -1)


def _back(t: Tensor, dim: int) -> Tensor:
    return t if dim == -1 else t.movedim(-1, dim)


def _reduced(t: Tensor, dim: int, keepdim: bool) -> Tensor:
    """A result computed with ``keepdim=True`` on the last axis, put where ``dim`` asks."""
    return _back(t, dim) if keepdim else t.squeeze(-1)


class StableLorentz(geoopt.Lorentz):
    r"""Lorentz model ``{x : <x,x>_L = -k, x_0 > 0}`` in R^(D+1) (curvature ``-1/k``), stable forms.

    Args:
        k: geoopt's curvature parameter, ``k > 0`` (a float or a tensor); stored like geoopt's, as
            the parameter ``self.k`` in the default dtype unless given as a tensor. For float64 work
            with a ``k`` that float32 cannot hold (0.3, say), pass ``torch.tensor(0.3, dtype=torch.float64)``.
        learnable: make ``k`` trainable (it then receives gradients through every method).

    The methods keep geoopt's signatures and meaning; the differences are numerical, plus these:
    ``inner(x, u, v)`` is the Riemannian product at ``x`` of tangent vectors (``x=None`` gives the
    plain Minkowski product of ambient vectors, which is what geoopt computes whatever ``x`` is);
    ``norm(u)`` is 0 for ``u = 0`` (geoopt floors it at 1e-4) and takes an optional ``x=``;
    ``expmap``, ``retr``, ``expmap0``, ``transp`` and friends read only the space part of the tangent
    vector they are given (geoopt's ``expmap`` projects it with ``proju`` by default, which far out
    costs the digits of its radial part); ``egrad2rgrad`` does not modify the gradient it is given.
    """

    name = "StableLorentz"

    def __init__(self, k: float | Tensor = 1.0, learnable: bool = False) -> None:
        kt = torch.as_tensor(k)
        if kt.numel() != 1 or not bool(torch.isfinite(kt).all()) or not bool((kt > 0).all()):
            raise ValueError(
                f"k must be one finite number > 0 (geoopt's convention: points satisfy <x,x>_L = -k, "
                f"curvature -1/k); got {k!r}. The HDD paper's 'K' column prints this k."
            )
        super().__init__(k=k, learnable=learnable)

    # -- checks ---------------------------------------------------------------------------------

    def _check_point_on_manifold(
        self, x: Tensor, *, atol: float = 1e-5, rtol: float = 1e-5, dim: int = -1
    ) -> tuple[bool, str | None]:
        """``x_0`` must equal ``sqrt(k + |x_s|^2)`` within ``atol + rtol * x_0`` (a test that
        float32 rounding passes at any radius, unlike ``<x,x>_L = -k`` within ``atol``)."""
        x = _last(x, dim)
        x0 = x[..., :1]
        ref = torch.sqrt(k_like(self.k, x) + x[..., 1:].square().sum(-1, keepdim=True))
        if torch.allclose(x0, ref, atol=atol, rtol=rtol):
            return True, None
        return (
            False,
            f"'x' is not on the hyperboloid <x,x>_L = -k (k = {self.k.item()}): x_0 != sqrt(k + |x_s|^2); use projx",
        )

    def _check_vector_on_tangent(
        self, x: Tensor, u: Tensor, *, atol: float = 1e-5, rtol: float = 1e-5, dim: int = -1
    ) -> tuple[bool, str | None]:
        """``u_0`` must equal ``<x_s,u_s>/x_0`` within ``atol + rtol |u_s|`` (i.e. ``<x,u>_L = 0``)."""
        x, u = _last(x, dim), _last(u, dim)
        xs, us = x[..., 1:], u[..., 1:]
        x0 = torch.sqrt(k_like(self.k, x) + xs.square().sum(-1, keepdim=True))
        ref = (xs * us).sum(-1, keepdim=True) / x0
        tol = atol + rtol * torch.linalg.vector_norm(us, dim=-1, keepdim=True)
        if bool(((u[..., :1] - ref).abs() <= tol).all()):
            return True, None
        return False, "'u' is not tangent at 'x': <x,u>_L != 0; use proju"

    # -- distances and products -----------------------------------------------------------------

    def dist(self, x: Tensor, y: Tensor, *, keepdim: bool = False, dim: int = -1) -> Tensor:
        r"""Geodesic distance, :func:`hyperdm.lorentz.dist`: ``2 sqrt(k) asinh(|x - y|_L / (2 sqrt k))``
        from a radial and an angular term that never cancel (lower precisions evaluated in float64)."""
        return _reduced(L.dist(_last(x, dim), _last(y, dim), k=self.k, keepdim=True), dim, keepdim)

    def dist0(self, x: Tensor, *, dim: int = -1, keepdim: bool = False) -> Tensor:
        r"""Distance from the origin, ``sqrt(k) asinh(|x_s|/sqrt k)`` (:func:`hyperdm.lorentz.dist0`)."""
        return _reduced(L.dist0(_last(x, dim), k=self.k, keepdim=True), dim, keepdim)

    def inner(
        self, x: Tensor | None, u: Tensor, v: Tensor | None = None, *, keepdim: bool = False, dim: int = -1
    ) -> Tensor:
        r"""Riemannian inner product at ``x`` of tangent vectors ``u``, ``v`` (``v=None``: ``v = u``).

        ``u_perp . v_perp + (k/x_0^2) beta_u beta_v`` (:func:`hyperdm.lorentz.tangent_inner`), read
        from space parts. ``x=None``: the Minkowski product ``-u_0 v_0 + u_s . v_s`` of ambient vectors.
        """
        if x is None:
            v = u if v is None else v
            return _reduced(L.inner(_last(u, dim), _last(v, dim), keepdim=True), dim, keepdim)
        v = None if v is None else _last(v, dim)
        return _reduced(L.tangent_inner(_last(x, dim), _last(u, dim), v, k=self.k, keepdim=True), dim, keepdim)

    def inner0(self, v: Tensor | None = None, *, keepdim: bool = False, dim: int = -1) -> Tensor:
        r"""Minkowski product with the origin ``o = (sqrt k, 0)``: ``-sqrt(k) v_0``."""
        if v is None:  # optional only in geoopt's signature, which this overrides
            raise TypeError("inner0() needs v, the tangent vector(s) at the origin.")
        v = _last(v, dim)
        return _reduced(-sqrt_k(self.k, v) * v[..., :1], dim, keepdim)

    def norm(self, u: Tensor, *, keepdim: bool = False, dim: int = -1, x: Tensor | None = None) -> Tensor:
        r"""Length of a tangent vector: ``sqrt(<u,u>)``, 0 (with gradient 0) at ``u = 0``.

        With ``x=`` the stable product at ``x`` is used; without, the Minkowski one (which loses
        ``log10(cosh(r)^2)`` digits for a radial vector at radius ``r sqrt(k)``).
        """
        return safe_sqrt(self.inner(x, u, keepdim=keepdim, dim=dim))

    # -- projections and gradients --------------------------------------------------------------

    def projx(self, x: Tensor, *, dim: int = -1) -> Tensor:
        r"""Projection onto the hyperboloid along the time axis: ``(sqrt(k + |x_s|^2), x_s)``."""
        return _back(L.project(_last(x, dim), k=self.k), dim)

    def proju(self, x: Tensor, v: Tensor, *, dim: int = -1) -> Tensor:
        r"""Minkowski-orthogonal projection of an ambient ``v`` onto the tangent space at ``x``,
        ``v + <x,v>_L x/k`` (:func:`hyperdm.lorentz.proju`).

        It reads ``v_0``, and its result moves by ``x_0 |x_s| / k`` times any error in ``v_0``: a
        vector that is tangent already (every tangent vector this class returns) needs no projection.
        """
        return _back(L.proju(_last(x, dim), _last(v, dim), k=self.k), dim)

    def egrad2rgrad(self, x: Tensor, u: Tensor, *, dim: int = -1) -> Tensor:
        r"""Riemannian gradient from the ambient one, ``ĝ + <x_s,ĝ>/k x_s`` with ``ĝ = u_s + (u_0/x_0) x_s``
        (:func:`hyperdm.lorentz.egrad2rgrad`); ``u`` is left unchanged."""
        return _back(L.egrad2rgrad(_last(x, dim), _last(u, dim), k=self.k), dim)

    # -- exponential and logarithmic maps -------------------------------------------------------

    def expmap(self, x: Tensor, u: Tensor, *, norm_tan: bool = True, project: bool = True, dim: int = -1) -> Tensor:
        r"""``exp_x(u) = cosh(t) x + sinh(t)/t u``, ``t = |u|_x/sqrt(k)`` (:func:`hyperdm.lorentz.expmap`).

        ``u`` is read by its space part: the tangent vector used is ``(<x_s,u_s>/x_0, u_s)``, which
        is ``u`` itself when ``u`` is tangent. geoopt's ``norm_tan=True`` projects ``u``
        orthogonally first (:meth:`proju`), which reads ``u_0``: far out that turns the rounding of
        an already tangent ``u`` into a radial error of ``eps sinh(r/sqrt k)^2`` relative (float32,
        radius 10 sqrt(k): larger than ``u``). Here ``norm_tan`` and ``project`` are accepted for
        geoopt's signature and have nothing left to do: the result's time part is ``sqrt(k + |y_s|^2)``.
        """
        return _back(L.expmap(_last(x, dim), _last(u, dim), k=self.k), dim)

    retr = expmap

    def expmap0(self, u: Tensor, *, project: bool = True, dim: int = -1) -> Tensor:
        r"""``exp_o(u) = sqrt(k) (cosh t, sinh(t) u_s/|u_s|)``, ``t = |u_s|/sqrt(k)``, for ``u`` tangent
        at the origin (ambient, time part 0 there and not read). :func:`hyperdm.lorentz.expmap0`."""
        u = _last(u, dim)
        y = L.expmap0(u[..., 1:], k=self.k)
        return _back(L.project(y, k=self.k) if project else y, dim)

    def logmap(self, x: Tensor, y: Tensor, *, dim: int = -1) -> Tensor:
        r"""``log_x(y) = t/sinh(t) (y - cosh(t) x)``, ``t = d(x,y)/sqrt(k)`` (:func:`hyperdm.lorentz.logmap`)."""
        return _back(L.logmap(_last(x, dim), _last(y, dim), k=self.k), dim)

    def logmap0(self, y: Tensor, *, dim: int = -1) -> Tensor:
        r"""``log_o(y) = (0, asinh(s)/s y_s)``, ``s = |y_s|/sqrt(k)``: the inverse of :meth:`expmap0`."""
        y = _last(y, dim)
        return _back(torch.cat((torch.zeros_like(y[..., :1]), L.logmap0(y, k=self.k)), dim=-1), dim)

    def logmap0back(self, x: Tensor, *, dim: int = -1) -> Tensor:
        r"""``log_x(o)``, tangent at ``x`` (:func:`hyperdm.lorentz.logmap0back`)."""
        return _back(L.logmap0back(_last(x, dim), k=self.k), dim)

    def geodesic_unit(self, t: Tensor, x: Tensor, u: Tensor, *, dim: int = -1, project: bool = True) -> Tensor:
        r"""Point at time ``t`` of the unit-speed geodesic from ``x`` along the unit tangent ``u``:
        ``cosh(t/sqrt k) x + sqrt(k) sinh(t/sqrt k) u = exp_x(t u)`` (``t`` broadcasts against ``u``)."""
        return self.expmap(x, t * u, norm_tan=False, project=project, dim=dim)

    # -- parallel transport ---------------------------------------------------------------------

    def transp(self, x: Tensor, y: Tensor, v: Tensor, *, dim: int = -1) -> Tensor:
        r"""Parallel transport from ``x`` to ``y``, ``v + tanh(t/2)/t <log_x y, v>_x / k (x + y)``
        (:func:`hyperdm.lorentz.transp`)."""
        return _back(L.transp(_last(x, dim), _last(y, dim), _last(v, dim), k=self.k), dim)

    def _origin_like(self, x: Tensor) -> Tensor:
        """The origin ``(sqrt k, 0, ..., 0)`` in ``x``'s shape, dtype and device (coordinates last)."""
        sk = sqrt_k(self.k, x).expand(*x.shape[:-1], 1)
        return torch.cat((sk, torch.zeros_like(x[..., 1:])), dim=-1)

    def transp0(self, y: Tensor, u: Tensor, *, dim: int = -1) -> Tensor:
        r"""Parallel transport of ``u`` (tangent at the origin; its space part is read) to ``y``."""
        y, u = _last(y, dim), _last(u, dim)
        o = self._origin_like(torch.broadcast_tensors(y, u)[0])
        return _back(L.transp(o, y, u, k=self.k), dim)

    def transp0back(self, x: Tensor, u: Tensor, *, dim: int = -1) -> Tensor:
        r"""Parallel transport of ``u`` (tangent at ``x``) to the origin; the result's time part is 0."""
        x, u = _last(x, dim), _last(u, dim)
        o = self._origin_like(torch.broadcast_tensors(x, u)[0])
        return _back(L.transp(x, o, u, k=self.k), dim)

    def transp_follow_expmap(self, x: Tensor, u: Tensor, v: Tensor, *, dim: int = -1, project: bool = True) -> Tensor:
        r"""Transport of ``v`` along ``exp_x(s u)``, ``s`` in [0, 1], from ``u`` directly (no logmap)."""
        return self.expmap_transp(x, u, v, dim=dim)[1]

    transp_follow_retr = transp_follow_expmap

    def expmap_transp(self, x: Tensor, u: Tensor, v: Tensor, *, dim: int = -1) -> tuple[Tensor, Tensor]:
        r"""``(exp_x(u), transport of v along it)`` in one pass (what the optimizers call, as ``retr_transp``)."""
        x, u, v = _last(x, dim), _last(u, dim), _last(v, dim)
        y = L.expmap(x, u, k=self.k)
        vt = L.transp_follow(x, u, v, k=self.k, y=y)
        return _back(y, dim), _back(vt, dim)

    retr_transp = expmap_transp

    # -- centroid -------------------------------------------------------------------------------

    def centroid(self, x: Tensor, *, weights: Tensor | None = None, dim: int = -2, keepdim: bool = False) -> Tensor:
        r"""Law et al. (2019) closed-form centroid of the points ``x`` along axis ``dim``.

        .. math:: c = \sqrt{k}\, m / \sqrt{-\langle m,m\rangle_L},\qquad m = \sum_i w_i x_i / \sum_i w_i ,

        with ``-<m,m>_L`` as a sum of two non-negative terms (:func:`hyperdm.lorentz.centroid`).
        The coordinates are on the last axis; ``weights`` (non-negative, not all zero) has the
        shape of ``x`` without it. Differentiable in ``x``, ``weights`` and ``k``.
        """
        if x.dim() < 2:
            raise ValueError(f"centroid needs points [..., N, D+1] (coordinates last); got shape {tuple(x.shape)}")
        d = dim if dim < 0 else dim - x.dim()
        if d >= -1 or d < -x.dim():
            raise ValueError(
                f"dim={dim} must name a points axis of x (shape {tuple(x.shape)}), not the coordinate axis -1"
            )
        if weights is not None and weights.shape != x.shape[:-1]:
            raise ValueError(
                f"weights must have x's shape without the coordinate axis, {tuple(x.shape[:-1])}; "
                f"got {tuple(weights.shape)}"
            )
        return L.centroid(x, k=self.k, weights=weights, dim=d, keepdim=keepdim)
