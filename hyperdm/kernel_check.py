r"""Trust, but verify: the Triton kernels are checked against the PyTorch path before they are used.

The kernels of :mod:`hyperdm.triton_kernels` are compiled by Triton for whatever GPU and Triton
version a user has; hyperdm cannot have tested every combination. So with ``fused="auto"`` the
first call for each **key** (device, dtype, feature size ``D``, clamp) also runs the PyTorch path on
the same inputs and compares:

* the per-class losses, norm-wise: ``|d_kernel - d_torch| <= tol * |d_torch|``;
* the synthetic features' gradient, norm-wise the same way.

The PyTorch path runs twice, on the features as they are and upcast to float64 (once for float64
features), and each quantity must agree with one of the two: in float32 far out (exact map, radii of
hundreds) the float32 PyTorch path's spread is the one that is off (7 % of the loss, while the kernel,
which accumulates about the outermost point, is within 6e-7 of float64), and there the float32
gradient is only good to a few percent on either path, so each reference vouches where it is exact.

``tol`` is :data:`TOLERANCES` for the features' dtype: 1e-8 for float64, 1e-3 for float32, 2e-2 for
float16/bfloat16. The paths add the same terms in a different order (the kernels accumulate row by
row, the PyTorch path by matrix products) and round differently: measured under Triton's interpreter
on ConvNet-like features, within 2e-8 (loss) and 2e-7 (gradient) for float32 and 3e-4 (the float16
gradient's own rounding) for float16, relative; the worst case in the test suite, the float32 gradient
of a cluster 1e-3 wide at radius 10, 1.2e-4. The tolerances sit above that, and far below what a
miscompiled or racing kernel gives (garbage: off by a fraction of the loss itself or more).

The verdict is kept for the key (:func:`kernel_status`): **ok** and the kernels run from then on;
on a **mismatch**, or an **error** while compiling or launching a kernel, hyperdm warns once (what
failed, the GPU, the triton and torch versions, how to report it) and uses the PyTorch path for that
key from then on. ``fused=True`` raises instead. The check costs one PyTorch-path evaluation (forward
and backward) per key, once per process. Keys the kernels do not cover (:data:`MAX_BLOCK_D`,
:data:`MAX_PARTIAL_BYTES`) are recorded as **unsupported** with the reason.

``HYPERDM_TRITON=0`` (or ``off``, ``false``, ``no``) in the environment turns the kernels off for the
whole program: ``fused="auto"`` takes the PyTorch path, ``fused=True`` raises.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "ENV",
    "MAX_BLOCK_D",
    "MAX_PARTIAL_BYTES",
    "TOLERANCES",
    "KernelMismatchError",
    "Verdict",
    "disabled",
    "kernel_status",
    "reset",
]

log = logging.getLogger(__name__)

#: the environment variable that turns the kernels off for a whole program
ENV = "HYPERDM_TRITON"
#: Largest row (``BLOCK_D``, the next power of two at or above ``D``) the kernels hold in registers:
#: 8,192 elements, 64 KiB of float64, the most Triton's own tutorials put in one program's row. Each
#: program keeps six such vectors live; beyond this they spill, or fail to compile on smaller GPUs.
MAX_BLOCK_D = 8192
#: Largest buffer of the real pass's partial sums (``C x splits x (5 + 3 D)`` float64): 512 MiB.
MAX_PARTIAL_BYTES = 512 * 2**20
#: Norm-wise relative tolerance of the first-call comparison, by the features' dtype (see the module docstring).
TOLERANCES = {torch.float64: 1e-8, torch.float32: 1e-3, torch.float16: 2e-2, torch.bfloat16: 2e-2}

Key = tuple[str, str, int, float]


class KernelMismatchError(RuntimeError):
    """``fused=True``: the Triton kernels disagreed with the PyTorch path, or failed to compile or launch."""


@dataclass(frozen=True)
class Verdict:
    """What the first call of a key found: ``status`` is ``ok``, ``mismatch``, ``error`` or ``unsupported``."""

    status: str
    reason: str = ""
    loss_error: float | None = None  # norm-wise relative difference of the losses
    grad_error: float | None = None  # of the synthetic gradients
    tolerance: float | None = None
    device_name: str = ""
    triton: str = ""
    torch: str = torch.__version__

    @property
    def ok(self) -> bool:
        return self.status == "ok"


_VERDICTS: dict[Key, Verdict] = {}
_WARNED: set[Key] = set()


def disabled() -> bool:
    """True when ``HYPERDM_TRITON`` turns the kernels off for this program."""
    return os.environ.get(ENV, "").strip().lower() in ("0", "off", "false", "no")


def key_of(x: Tensor, tmax: float) -> Key:
    """The key a verdict is kept for: device, dtype, feature size, clamp (``tmax``)."""
    return (str(x.device), str(x.dtype).removeprefix("torch."), int(x.shape[-1]), float(tmax))


def _key_str(key: Key) -> str:
    device, dtype, d, tmax = key
    return f"{device}, {dtype}, D={d}, clamp={tmax:g}"


def kernel_status() -> dict[str, dict[str, Any]]:
    """Every verdict so far, by key (``"cuda:0, float32, D=2048, clamp=10"``): status, reason, the measured
    differences and the tolerance, the GPU, and the triton and torch versions."""
    return {_key_str(key): asdict(v) for key, v in _VERDICTS.items()}


def reset() -> None:
    """Forget every verdict (the next call of each key checks again)."""
    _VERDICTS.clear()
    _WARNED.clear()


def verdict(key: Key) -> Verdict | None:
    return _VERDICTS.get(key)


def _device_name(x: Tensor) -> str:
    if x.is_cuda:
        try:
            return torch.cuda.get_device_name(x.device)
        except Exception:
            return "a CUDA GPU"
    return f"{x.device.type} (Triton's interpreter)"


def _triton_version() -> str:
    try:
        import triton

        return str(triton.__version__)
    except Exception:
        return "unknown"


def bounds(C: int, N: int, D: int, rows_per_program: int) -> str | None:
    """Why the kernels cannot take ``[C, N, D]`` real features (None: they can)."""
    block = 1 << max(0, int(D) - 1).bit_length()
    if block > MAX_BLOCK_D:
        return f"D={D} needs rows of {block} elements, above the kernels' {MAX_BLOCK_D} (MAX_BLOCK_D)"
    from .triton_kernels import STATS

    splits = -(-int(N) // max(1, int(rows_per_program)))
    size = int(C) * splits * (STATS + 3 * int(D)) * 8
    if size > MAX_PARTIAL_BYTES:
        return (
            f"C={C}, N={N}, D={D} need {size / 2**20:.0f} MiB of partial sums, above {MAX_PARTIAL_BYTES // 2**20} MiB "
            "(MAX_PARTIAL_BYTES)"
        )
    return None


def record_unsupported(key: Key, reason: str, x: Tensor) -> None:
    """Keep the reason the kernels were not used for ``key`` (the first one only)."""
    if key not in _VERDICTS:
        _VERDICTS[key] = Verdict("unsupported", reason, device_name=_device_name(x), triton=_triton_version())


def _rel(a: Tensor, b: Tensor, floor: float = 1e-300) -> float:
    """``|a - b| / max(|b|, floor)``, norm-wise, in float64."""
    a64, b64 = a.detach().to(torch.float64), b.detach().to(torch.float64)
    return float(torch.linalg.vector_norm(a64 - b64) / torch.linalg.vector_norm(b64).clamp_min(floor))


def fail(key: Key, x: Tensor, status: str, reason: str, strict: bool, **numbers: Any) -> None:
    """Record a failed verdict for ``key``; raise with ``strict`` (``fused=True``), else warn once."""
    v = Verdict(status, reason, device_name=_device_name(x), triton=_triton_version(), **numbers)
    _VERDICTS[key] = v
    where = f"{v.device_name}, triton {v.triton}, torch {v.torch}"
    if strict:
        raise KernelMismatchError(
            f"fused=True: the Triton kernels {reason} ({_key_str(key)}; {where}). Pass fused='auto' (it falls back "
            "to the PyTorch path) or fused=False, and please report this with the message."
        )
    if key not in _WARNED:
        _WARNED.add(key)
        msg = (
            f"hyperdm: the Triton kernels {reason} ({_key_str(key)}; {where}); the PyTorch path computes the loss "
            f"for this setting from now on (same loss, slower). Please report this line to hyperdm's issue tracker; "
            f"{ENV}=0 turns the kernels off."
        )
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
        log.warning("%s", msg)


def approve(
    key: Key,
    real: Tensor,
    syn: Tensor,
    *,
    kernel: Callable[[], tuple[Tensor, Tensor | None]],
    references: tuple[Callable[[], tuple[Tensor, Tensor]], ...],
    strict: bool,
    sqrt_k: float = 1.0,
) -> bool:
    """Whether the kernels may compute this call: the key's verdict, checked now on these inputs if it has none.

    ``kernel()`` and each of ``references`` return ``(per-class distances, synthetic gradient)`` on the same inputs;
    the loss and the gradient must each agree with one reference. A class whose reference distance is below
    ``sqrt(tol) sqrt(k)`` (its centroids coincide to rounding) is compared by its loss only, absolutely; when
    every class is such, nothing is decided (no verdict: the next call checks again; ``auto`` takes the PyTorch
    path this call, ``strict`` the kernels). A failure warns
    once and returns False (``strict``: raises :class:`KernelMismatchError`).
    """
    v = _VERDICTS.get(key)
    if v is not None:
        if v.ok:
            return True
        if strict:
            fail(key, real, v.status, v.reason, True)
        return False
    try:
        d_k, g_k = kernel()
    except Exception as e:
        fail(
            key,
            real,
            "error",
            f"failed to compile or launch: {type(e).__name__}: {str(e).splitlines()[0][:300]}",
            strict,
        )
        return False
    refs = [ref() for ref in references]
    tol = TOLERANCES.get(real.dtype, 1e-4)
    # classes whose centroids (nearly) coincide have a distance that is rounding and a gradient whose direction
    # is rounding's: compare them by the loss alone, absolutely; with no other class the call decides nothing
    floor = tol**0.5 * sqrt_k
    far = refs[-1][0] > floor
    if not bool(far.any()):
        log.debug("hyperdm: Triton self-check of %s postponed: every class's centroids coincide", _key_str(key))
        return strict  # fused=True runs the kernels (unchecked this call); "auto" the PyTorch path
    loss_err = min(_rel(d_k, d_t, floor) for d_t, _ in refs)
    grad_err = min(_rel(g_k[far], g_t[far]) for _, g_t in refs) if g_k is not None else 0.0
    numbers: dict[str, Any] = {"loss_error": loss_err, "grad_error": grad_err, "tolerance": tol}
    finite = bool(torch.isfinite(d_k).all()) and (g_k is None or bool(torch.isfinite(g_k).all()))
    if not finite or not (loss_err <= tol and grad_err <= tol):
        what = f"loss off by {loss_err:.3g}, gradient by {grad_err:.3g} (norm-wise, relative; tolerance {tol:g})"
        fail(key, real, "mismatch", f"disagree with the PyTorch path: {what}", strict, **numbers)
        return False
    _VERDICTS[key] = Verdict("ok", "", device_name=_device_name(real), triton=_triton_version(), **numbers)
    log.info("hyperdm: Triton kernels checked for %s: %s", _key_str(key), what_ok(loss_err, grad_err, tol))
    return True


def what_ok(loss_err: float, grad_err: float, tol: float) -> str:
    return f"loss within {loss_err:.2g}, gradient within {grad_err:.2g} of the PyTorch path (tolerance {tol:g})"
