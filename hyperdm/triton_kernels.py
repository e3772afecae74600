r"""Triton kernels of the HDD loss: the whole DM case in three launches, no other work on the host.

:func:`hdd` takes real features ``[C, N, D]`` without grad and synthetic ones ``[C, M, D]`` and
returns the per-class distances ``scale * d_L(centroid(exp_o(real)), centroid(exp_o(syn)))`` and,
when asked, their gradient with respect to the synthetic features (the backward of
:mod:`hyperdm.fused` then only multiplies it by the upstream gradient). With
``t_i = min(|v_i|/sqrt(k), max_norm)``, ``b_i = sinh(t_i) e^{-T}`` and ``T`` a side's largest ``t``:

1. **the real pass** (programs over classes and blocks of :data:`ROWS_PER_PROGRAM` rows;
   the tests combine its output on the host to check it): each row is loaded once
   (``BLOCK_D >= D`` elements in registers) for ``B = sum_i b_i``, ``sum_i cosh(t_i) e^{-T}``,
   ``sum_i e^{-t_i-T}``, ``m_s = sum_i (b_i/|v_i|) v_i`` and the spread ``S = sum_i b_i |u_i - u~|^2``
   about ``u~ = m_s / B``. The spread is accumulated about a reference direction ``p`` and shifted
   exactly, ``sum_i b_i |u_i - p|^2 - |sum_i b_i (u_i - p)|^2 / B``; ``p`` is the direction of the
   point that set the running largest ``t`` (the sums move to it, exactly, when it changes), a point
   of largest weight ``b_p``. As ``S >= b_p |p - u~|^2``, the first term is at most
   ``(1 + B / b_p) S <= (1 + N) S``: the difference loses at most a factor ``N + 1`` to cancellation.
   With ``p`` fixed at a class's first feature, a first feature of small norm pointing away from a
   tight cluster left the float32 distance 2.5e-3 off (now 7e-6). The running largest ``t``
   rescales the sums when it grows, as an online softmax does;
2. **the synthetic side** (one program per class): combines the real pass's row blocks (each moved
   to the reference of the block with the largest ``t``), takes the synthetic sums and the exact
   spread ``|v_i - (|v_i|/B) m_s|`` in three sweeps over the class's ``M`` rows, the Law
   centroids' space parts and the distance by the chord form of :func:`hyperdm.lorentz.dist`
   (``asinh`` by its series near 0, no cancellation), and, for the gradient, the class's vectors
   ``Gamma = dd/dy_s`` and ``H`` and scalars (see :mod:`hyperdm.fused` for the formulas);
3. **the gradient's rows** (one program per synthetic row): the row's scalars again, its two dot
   products with ``Gamma`` and ``H``, and the gradient row ``coef_i v_i + (b_i/|v_i|) H``.

Sums over features are in float32 for float32/float16/bfloat16 features (float64 for float64
ones); every per-point and per-class scalar is float64. Runs on CUDA tensors; on CPU tensors
only under Triton's interpreter (``TRITON_INTERPRET=1`` set before triton is first imported),
which the tests use. The kernels themselves are in ``hyperdm._triton_impl``.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import torch
from torch import Tensor

__all__ = ["hdd", "interpreting", "real_partials", "triton_module", "STATS", "CLS", "ROWS_PER_PROGRAM"]

#: scalars at the head of each partial-sum row of the real pass: top, sum b, sum c, sum e^{-t}, sum b |u - p|^2
#: (then m_s, sum b (u - p) and p, ``[D]`` each: rows of ``STATS + 3 D`` float64)
STATS = 5

#: Real rows per program of the real pass. Fewer rows mean more programs (a GPU with many SMs is kept
#: busy at small ``C * N``) but more partial sums to write and combine (``5 + 3 D`` float64 per program).
ROWS_PER_PROGRAM = 64


@functools.lru_cache(maxsize=1)
def triton_module() -> Any:
    """The ``triton`` module, or None when it cannot be imported."""
    try:
        import triton
        import triton.language
    except ImportError:
        return None
    return triton


def _require_triton() -> Any:
    triton = triton_module()
    if triton is None:
        raise RuntimeError(
            "the Triton kernel needs triton (pip install triton); pass fused=False for the PyTorch path."
        )
    return triton


def interpreting() -> bool:
    """True when Triton's interpreter is on (``TRITON_INTERPRET=1``): kernels then run on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET") == "1"


@functools.cache
def _kernels() -> Any:
    """The kernel module, imported on first use (after the interpreter's setting is known)."""
    _require_triton()
    from . import _triton_impl

    return _triton_impl


def _warps(block: int) -> int:
    """Warps per program for rows of ``block`` elements: enough threads that a row's vectors stay in registers."""
    return min(16, max(4, block // 256))


def real_partials(
    v: Tensor, *, sk: float, tmax: float, rows_per_program: int | None = None, norms: Tensor | None = None
) -> tuple[Tensor, int]:
    """The real pass: ``([C, splits, STATS + 3 D] float64, splits)``, one row per program and row block: the
    scalars of :data:`STATS`, then ``m_s``, ``sum b (u - p)`` and the reference direction ``p`` (the tests combine
    the blocks on the host to check them).
    ``norms`` ``[C, >= N]`` float64 receives each row's ``|v|`` (a scratch buffer when None)."""
    triton = _require_triton()
    C, N, D = v.shape
    if N == 0 or D == 0:
        raise ValueError("the Triton kernel needs at least one real feature per class and D >= 1.")
    v = v.contiguous()
    f64 = v.dtype == torch.float64
    rows_per_program = ROWS_PER_PROGRAM if rows_per_program is None else int(rows_per_program)
    if rows_per_program < 1:
        raise ValueError(f"rows_per_program must be >= 1; got {rows_per_program}.")
    splits = triton.cdiv(N, rows_per_program)
    block = triton.next_power_of_2(D)
    part = torch.empty(C, splits, STATS + 3 * D, dtype=torch.float64, device=v.device)
    tiny = 1e-300 if f64 else 1e-30
    if norms is None:
        norms = torch.empty(C, N, dtype=torch.float64, device=v.device)
    _kernels().real_pass[(C, splits)](
        v, part, norms, N, norms.shape[1], D, rows_per_program, splits, 1.0 / sk, float(tmax), tiny,
        BLOCK_D=block, F64=f64, STATS=STATS, num_warps=_warps(block),
    )  # fmt: skip
    return part, splits


#: per-class scalars the synthetic side hands the gradient's rows: ks, ls, B, A+, sum e^{-t}, spread, T
CLS = 7


def hdd(
    real: Tensor,
    syn: Tensor,
    *,
    sk: float,
    tmax: float,
    scale: float = 1.0,
    grad: bool = True,
    norms: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """``(scale * d [C] float64, its gradient with respect to syn [C, M, D] in syn's dtype, or None)`` for
    real features without grad ``[C, N, D]`` and synthetic ones ``[C, M, D]``, ``sk = sqrt(k)`` (geoopt's
    ``k``) and ``tmax`` the clamp of ``|v|/sqrt(k)``: three launches (the real pass, the synthetic side with
    the distance, and the gradient's rows; two without ``grad``), no other work. ``norms`` ``[C, N + M]``
    float64, if given, receives every point's ``|v|`` (real first), which the kernels take anyway."""
    triton = _require_triton()
    C, N, D = real.shape
    M = syn.shape[1]
    if N == 0 or M == 0 or D == 0 or syn.shape != (C, M, D):
        raise ValueError(
            f"the Triton kernels take real [C, N, D] and syn [C, M, D] with N, M, D >= 1; got "
            f"{tuple(real.shape)} and {tuple(syn.shape)}."
        )
    if norms is None:
        norms = torch.empty(C, N + M, dtype=torch.float64, device=real.device)
    elif norms.shape != (C, N + M) or norms.dtype != torch.float64 or not norms.is_contiguous():
        raise ValueError(f"norms must be a contiguous float64 [C, N + M] = [{C}, {N + M}] tensor.")
    part, splits = real_partials(real, sk=sk, tmax=tmax, norms=norms)
    syn = syn.contiguous()
    f64 = syn.dtype == torch.float64
    acc = torch.float64 if f64 else torch.float32
    d = torch.empty(C, dtype=torch.float64, device=syn.device)
    cls = torch.empty(C, CLS, dtype=torch.float64, device=syn.device)
    vec = torch.empty(C, 3, D, dtype=acc, device=syn.device)
    kernels = _kernels()
    block = triton.next_power_of_2(D)
    warps = _warps(block)
    inv_sk = 1.0 / sk
    kernels.syn_finish[(C,)](
        part, syn, d, cls, vec, norms, N, M, D, splits, sk, inv_sk, float(tmax), float(N > 1), float(M > 1),
        float(scale), BLOCK_D=block, F64=f64, GRAD=grad, STATS=STATS, CLS=CLS, num_warps=warps,
    )  # fmt: skip
    if not grad:
        return d, None
    g = torch.empty_like(syn)
    kernels.syn_rows[(C, M)](
        syn,
        cls,
        vec,
        g,
        M,
        D,
        sk,
        inv_sk,
        float(tmax),
        float(M > 1),
        BLOCK_D=block,
        F64=f64,
        CLS=CLS,
        num_warps=warps,
    )
    return d, g
