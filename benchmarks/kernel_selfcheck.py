#!/usr/bin/env python
"""Are hyperdm's Triton kernels right on this GPU? The first-call self-check, run for a grid of settings.

For each dtype, feature size ``D`` and clamp, one ``fused.hdd_distance`` call with ``fused="auto"`` on
random ConvNet-like features (norms about 25; ``C`` classes of ``N`` real and ``M`` synthetic features):
its first call compares the kernels with the PyTorch path (:mod:`hyperdm.kernel_check`). Prints every
verdict, the measured differences and the tolerance, and saves them as JSON.

    python benchmarks/kernel_selfcheck.py --device cuda                 # on a GPU
    TRITON_INTERPRET=1 python benchmarks/kernel_selfcheck.py --device cpu --quick   # the script itself, on a CPU
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import torch

from _results import RESULTS, machine
from hyperdm import fused, kernel_check, lorentz, triton_kernels

DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}


def features(c: int, n: int, d: int, *, seed: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(c, n, d, generator=g, dtype=torch.float64).relu() + 0.05
    return (x / x.norm(dim=-1, keepdim=True) * 25.0 * (1 + 0.1 * torch.rand(c, n, 1, generator=g))).to(device, dtype)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtypes", nargs="+", default=["float32", "float64", "float16", "bfloat16"], choices=list(DTYPES))
    ap.add_argument("--D", type=int, nargs="+", default=[64, 1152, 2048, 8192, 8193])
    ap.add_argument("--C", type=int, default=10)
    ap.add_argument("--N", type=int, default=256)
    ap.add_argument("--M", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="small sizes (C 2, N 8, M 2, D 16 and 64), e.g. on a CPU")
    ap.add_argument(
        "--out", default=None, help="JSON output (default benchmarks/results/kernel_selfcheck_<device>.json)"
    )
    a = ap.parse_args()
    if a.quick:
        a.C, a.N, a.M, a.D = 2, 8, 2, [16, 64]
    if a.device == "cpu" and triton_kernels.interpreting():
        fused.AUTO_ON_INTERPRETER = True  # the interpreter stands in for a GPU
    kernel_check.reset()
    rows = []
    for name in a.dtypes:
        dt = DTYPES[name]
        for d in a.D:
            for max_norm in (10.0, None):
                real = features(a.C, a.N, d, seed=d, dtype=dt, device=a.device)
                syn = features(a.C, a.M, d, seed=d + 1, dtype=dt, device=a.device).requires_grad_()
                t0 = time.perf_counter()
                with warnings.catch_warnings(record=True) as rec:
                    warnings.simplefilter("always")
                    try:
                        out = fused.hdd_distance(real, syn, k=1.0, max_norm=max_norm)
                        torch.autograd.grad(out.sum(), syn)
                        error = None
                    except Exception as e:  # a failure of the PyTorch path is a result too
                        error = f"{type(e).__name__}: {e}"
                if a.device.startswith("cuda"):
                    torch.cuda.synchronize()
                key = kernel_check.key_of(real, max_norm if max_norm is not None else lorentz.SAFE_RADIUS)
                v = kernel_check.verdict(key)
                rows.append(
                    {
                        "dtype": name,
                        "D": d,
                        "max_norm": max_norm,
                        "status": None if v is None else v.status,
                        "reason": None if v is None else v.reason,
                        "loss_error": None if v is None else v.loss_error,
                        "grad_error": None if v is None else v.grad_error,
                        "tolerance": None if v is None else v.tolerance,
                        "seconds_first_call": time.perf_counter() - t0,
                        "warnings": [str(w.message) for w in rec],
                        "error": error,
                    }
                )
                r = rows[-1]
                print(
                    f"{name:9} D={d:<5} clamp={max_norm!s:5} {r['status'] or 'no verdict':12} "
                    f"loss {r['loss_error'] if r['loss_error'] is not None else float('nan'):.2g}  "
                    f"grad {r['grad_error'] if r['grad_error'] is not None else float('nan'):.2g}  "
                    f"({r['seconds_first_call']:.1f} s){'  ' + (r['reason'] or '') if r['status'] != 'ok' else ''}"
                    f"{'  ERROR ' + error if error else ''}",
                    flush=True,
                )
    result = {
        "benchmark": "kernel self-check",
        **machine(a.device),
        "sizes": {"C": a.C, "N": a.N, "M": a.M},
        "triton": getattr(triton_kernels.triton_module(), "__version__", None),
        "rows": rows,
        "kernel_status": kernel_check.kernel_status(),
    }
    path = Path(a.out) if a.out else RESULTS / f"kernel_selfcheck_{a.device.split(':')[0]}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    ok = sum(r["status"] == "ok" for r in rows)
    print(f"{ok} of {len(rows)} settings ok; saved {path}")


if __name__ == "__main__":
    main()
