r"""Triton kernels of the HDD loss: one pass over each class's real features, and the synthetic side's gradient.

For real features ``v`` ``[C, N, D]`` without grad, :func:`real_summary` returns what
:mod:`hyperdm.fused` needs of them, in one read of ``v`` and without temporaries: per class,
with ``t_i = min(|v_i|/sqrt(k), max_norm)`` and ``T`` the class's largest ``t``,

* ``B = sum_i sinh(t_i) e^{-T}``, ``sum_i cosh(t_i) e^{-T}``, ``sum_i e^{-t_i-T}``;
* ``m_s = sum_i sinh(t_i) e^{-T} v_i / |v_i|`` (``[C, D]``);
* the spread ``sum_i b_i |u_i - u~|^2`` about ``u~ = m_s / B``, accumulated about a reference
  direction ``p`` (the class's first feature) and shifted exactly:
  ``sum_i b_i |u_i - p|^2 - |sum_i b_i (u_i - p)|^2 / B``. Both terms are sums of differences
  taken element by element, so nothing cancels unless ``p`` lies far from ``u~`` compared with
  the spread of the directions (one feature of the class never does by much).

Each program handles one class and a block of its rows; it streams the rows, each loaded once
(``BLOCK_D >= D`` elements in registers), keeps a running maximum of ``t`` and rescales its
accumulators when it grows (as an online softmax does). The partial results of the row blocks
are combined in a few small ops. Accumulation is in float32 for float32/float16/bfloat16
features and in float64 for float64 ones.

:func:`syn_grad` writes the gradient of the synthetic features in one pass: per row, the two dot
products ``v_i . Gamma`` and ``v_i . H`` with the class's vectors, the row's coefficient from them
and per-point float64 factors, and ``coef_i v_i + zeta_i H`` (see :mod:`hyperdm.fused` for the
formula); the row is loaded once.

Runs on CUDA tensors; on CPU tensors only under Triton's interpreter (``TRITON_INTERPRET=1``
set before triton is first imported), which the tests use.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import torch
from torch import Tensor

__all__ = ["interpreting", "real_summary", "syn_grad"]

_STATS = 5  # top, sum b, sum c, sum e^{-t}, sum b |u - p|^2


@functools.lru_cache(maxsize=1)
def _triton() -> Any:
    try:
        import triton
        import triton.language
    except ImportError:
        return None
    return triton


def _require_triton() -> Any:
    triton = _triton()
    if triton is None:
        raise RuntimeError(
            "the Triton kernel needs triton (pip install triton); pass fused=False for the PyTorch path."
        )
    return triton


def interpreting() -> bool:
    """True when Triton's interpreter is on (``TRITON_INTERPRET=1``): kernels then run on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET") == "1"


@functools.cache
def _kernel(interpret: bool) -> Any:
    triton = _triton()
    tl = triton.language

    # Triton reads the kernel's annotations (constexpr marks compile-time constants), so the other
    # parameters stay unannotated and mypy is told so
    def real_pass(  # type: ignore[no-untyped-def]
        v_ptr,
        part_ptr,
        N,
        D,
        rows_per,
        splits,
        inv_sk,
        tmax,
        tiny,
        BLOCK_D: tl.constexpr,  # type: ignore[name-defined]
        F64: tl.constexpr,  # type: ignore[name-defined]
    ):
        c = tl.program_id(0)
        s = tl.program_id(1)
        acc_t = tl.float64 if F64 else tl.float32
        offs = tl.arange(0, BLOCK_D)
        dmask = offs < D
        base = v_ptr + c.to(tl.int64) * N * D
        x0 = tl.load(base + offs, mask=dmask, other=0.0).to(acc_t)
        n0 = tl.sqrt(tl.sum(x0 * x0, axis=0))
        p = x0 / tl.maximum(n0, tiny)  # the reference direction
        top = tl.full((), float("-inf"), acc_t)
        sb = tl.zeros((), acc_t)
        sc = tl.zeros((), acc_t)
        se = tl.zeros((), acc_t)
        s2 = tl.zeros((), acc_t)
        ms = tl.zeros((BLOCK_D,), acc_t)
        dev = tl.zeros((BLOCK_D,), acc_t)
        start = s * rows_per
        stop = tl.minimum(start + rows_per, N)
        for i in range(start, stop):
            x = tl.load(base + i * D + offs, mask=dmask, other=0.0).to(acc_t)
            n = tl.sqrt(tl.sum(x * x, axis=0))
            t = n * inv_sk
            tc = tl.minimum(tl.maximum(t, tiny), tmax)
            new_top = tl.maximum(top, tc)
            r = tl.exp(top - new_top)  # rescale what came before
            sb, sc, se, s2 = sb * r, sc * r, se * r, s2 * r
            ms, dev = ms * r, dev * r
            top = new_top
            ep = tl.exp(tc - top)
            em = tl.exp(-tc - top)
            # sinh(t) e^{-T}: the series near 0, where e^{t} - e^{-t} cancels
            b = tl.where(tc < 1e-2, tl.exp(-top) * (tc + tc * tc * tc / 6.0), (ep - em) * 0.5)
            nsafe = tl.maximum(n, tiny)
            d = x / nsafe - p
            ms += (b / nsafe) * x
            dev += b * d
            s2 += b * tl.sum(d * d, axis=0)
            sb += b
            sc += (ep + em) * 0.5
            se += em
        # one float64 row per program: top, sum b, sum c, sum e^{-t}, sum b |u - p|^2, m_s [D], sum b (u - p) [D]
        out = part_ptr + (c * splits + s).to(tl.int64) * (5 + 2 * D)  # 5: _STATS (kernels read no globals)
        tl.store(out + 0, top)
        tl.store(out + 1, sb)
        tl.store(out + 2, sc)
        tl.store(out + 3, se)
        tl.store(out + 4, s2)
        tl.store(out + 5 + offs, ms, mask=dmask)
        tl.store(out + 5 + D + offs, dev, mask=dmask)

    return triton.jit(real_pass)


def real_summary(v: Tensor, *, sk: float, tmax: float, rows_per_program: int = 64) -> tuple[Tensor, Tensor, Tensor]:
    """``(m_s [C, D], sums [C, 3] = (B, sum cosh, sum e^{-t}), spread [C])``, float64, each class scaled by
    ``e^{-T}``."""
    triton = _require_triton()
    C, N, D = v.shape
    if N == 0 or D == 0:
        raise ValueError("the Triton kernel needs at least one real feature per class and D >= 1.")
    v = v.contiguous()
    f64 = v.dtype == torch.float64
    splits = triton.cdiv(N, rows_per_program)
    part = torch.empty(C, splits, _STATS + 2 * D, dtype=torch.float64, device=v.device)
    tiny = 1e-300 if f64 else 1e-30
    _kernel(interpreting())[(C, splits)](
        v,
        part,
        N,
        D,
        rows_per_program,
        splits,
        1.0 / sk,
        float(tmax),
        tiny,
        BLOCK_D=triton.next_power_of_2(D),
        F64=f64,
    )
    if splits == 1:  # each class's sums are already on one scale
        tot = part[:, 0, 1:]
    else:  # bring the row blocks to one scale
        top = part[..., :1]
        tot = (part[..., 1:] * torch.exp(top - top.amax(1, keepdim=True))).sum(1)
    sums, ms, dev = tot[:, :3], tot[:, _STATS - 1 : _STATS - 1 + D], tot[:, _STATS - 1 + D :]
    # the spread about u~, shifted exactly from the one about p
    spread = (tot[:, 3] - dev.square().sum(-1) / sums[:, 0].clamp_min(1e-300)).clamp_min(0.0)
    if N == 1:
        spread = spread * 0.0
    return ms, sums, spread


@functools.cache
def _grad_kernel(interpret: bool) -> Any:
    triton = _triton()
    tl = triton.language

    def syn_grad_pass(  # type: ignore[no-untyped-def]
        v_ptr,
        gam_ptr,
        h_ptr,
        coef_ptr,
        out_ptr,
        pg_ptr,
        M,
        D,
        BLOCK_D: tl.constexpr,  # type: ignore[name-defined]
        F64: tl.constexpr,  # type: ignore[name-defined]
    ):
        c = tl.program_id(0)
        i = tl.program_id(1)
        acc_t = tl.float64 if F64 else tl.float32
        offs = tl.arange(0, BLOCK_D)
        dmask = offs < D
        gam = tl.load(gam_ptr + c.to(tl.int64) * D + offs, mask=dmask, other=0.0)
        h = tl.load(h_ptr + c.to(tl.int64) * D + offs, mask=dmask, other=0.0)
        row = (c * M + i).to(tl.int64)
        x = tl.load(v_ptr + row * D + offs, mask=dmask, other=0.0).to(acc_t)
        pg = tl.sum(x * gam, axis=0).to(tl.float64)
        ph = tl.sum(x * h, axis=0).to(tl.float64)
        a = tl.load(coef_ptr + row * 4 + 0)
        b = tl.load(coef_ptr + row * 4 + 1)
        d = tl.load(coef_ptr + row * 4 + 2)
        z = tl.load(coef_ptr + row * 4 + 3)
        cv = (a * pg + b * ph + d).to(acc_t)
        g = cv * x + z.to(acc_t) * h
        tl.store(out_ptr + row * D + offs, g.to(out_ptr.dtype.element_ty), mask=dmask)
        tl.store(pg_ptr + row, pg)

    return triton.jit(syn_grad_pass)


def syn_grad(v: Tensor, gam: Tensor, h: Tensor, coef: Tensor) -> tuple[Tensor, Tensor]:
    """``(grad [C, M, D] in v's dtype, v_i . gam [C, M] float64)`` with ``grad_i = (a_i (v_i . gam) +
    b_i (v_i . h) + d_i) v_i + z_i h``: ``v`` ``[C, M, D]``, ``gam`` and ``h`` ``[C, D]``, ``coef``
    ``[C, M, 4]`` float64 holding ``a, b, d, z`` per point. Products and sums in float32 for
    float32/float16/bfloat16 features (float64 for float64), the coefficient in float64."""
    triton = _require_triton()
    C, M, D = v.shape
    v = v.contiguous()
    f64 = v.dtype == torch.float64
    acc = torch.float64 if f64 else torch.float32
    out = torch.empty_like(v)
    pg = torch.empty(C, M, dtype=torch.float64, device=v.device)
    if C * M == 0:
        return out, pg
    _grad_kernel(interpreting())[(C, M)](
        v,
        gam.to(acc).contiguous(),
        h.to(acc).contiguous(),
        coef.to(torch.float64).contiguous(),
        out,
        pg,
        M,
        D,
        BLOCK_D=triton.next_power_of_2(D),
        F64=f64,
    )
    return out, pg
