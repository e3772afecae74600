"""What lambda does ``scale="auto"`` pick, and how does it compare with the paper's Tables 5/6?

For each (method, IPC) with a paper row on the dataset, build the loop with the paper preset's
settings (k from the table, the exp-map clamp, float64 matching, the preset's real batch), make
the initial synthetic set, and run the first matching call with ``HyperbolicMatcher(scale="auto")``:
lambda = MMD / geodesic distance of that first batch. DM calls the matcher once for all classes;
IDM calls it per class, so its first call sees class 0 only. Repeated over seeds (each seed: another
random network, real batch and initial set). Prints and saves
``benchmarks/results/auto_scale_<dataset>.json``.

    python benchmarks/auto_scale.py --dataset fashion-mnist --seeds 0 1 2 3 4
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time

from _results import machine, save
from hyperdm import HyperbolicMatcher
from hyperdm.distill.data import load_dataset
from hyperdm.distill.loops import get_loop
from hyperdm.distill.presets import paper_row, resolve


class _FirstCallDone(Exception):
    pass


def first_call_scale(method: str, dataset: str, ipc: int, seed: int, real, device: str) -> tuple[float, float]:
    """(lambda chosen on the first batch, the paper's lambda) for one seed."""
    row = paper_row(method, dataset, ipc)
    if row is None:
        raise ValueError(f"the paper has no lambda for {method} on {dataset} at IPC {ipc}; pick a row it reports.")
    over = {"scale": "auto", "seed": seed, "device": device, "eval_runs": 0}
    cfg = resolve(preset="paper", method=method, matcher="hyperbolic", dataset=dataset, ipc=ipc, overrides=over)
    with tempfile.TemporaryDirectory() as out:
        loop = get_loop(method)(cfg, real, out, progress=False)
        loop._init_synthetic()
        loop.prepare()

        def stop(*_: object) -> None:  # lambda is chosen inside the first call; nothing after it is needed
            raise _FirstCallDone

        matcher = loop.matcher
        assert isinstance(matcher, HyperbolicMatcher)
        matcher.register_forward_hook(stop)
        with contextlib.suppress(_FirstCallDone):
            loop.step(0)
        assert matcher.scale is not None  # chosen by the first call
        return float(matcher.scale), float(row.scale)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--methods", nargs="+", default=["dm", "idm"], choices=["dm", "idm"])
    ap.add_argument("--ipcs", type=int, nargs="+", default=[1, 10, 50])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--data-root", default=None)
    a = ap.parse_args()
    real = load_dataset(a.dataset, a.data_root)
    rows = []
    for method in a.methods:
        for ipc in a.ipcs:
            row = paper_row(method, a.dataset, ipc)
            if row is None:
                continue
            t0 = time.perf_counter()
            lams = [first_call_scale(method, a.dataset, ipc, s, real, a.device)[0] for s in a.seeds]
            r = {
                "method": method,
                "ipc": ipc,
                "k": row.k,
                "paper_lambda": row.scale,
                "auto_lambdas": lams,
                "auto_mean": statistics.mean(lams),
                "auto_std": statistics.pstdev(lams),
                "ratio_auto_to_paper": statistics.mean(lams) / row.scale,
                "seconds": time.perf_counter() - t0,
            }
            rows.append(r)
            print(
                f"{method:>4} ipc {ipc:>2} k {row.k:g}: paper lambda {row.scale:g}, auto {r['auto_mean']:.2f} +- "
                f"{r['auto_std']:.2f} over {len(lams)} seeds (auto / paper = {r['ratio_auto_to_paper']:.2f})",
                flush=True,
            )
    save(
        f"auto_scale_{a.dataset}",
        {"benchmark": "auto_scale", "dataset": a.dataset, "seeds": a.seeds, **machine(a.device), "rows": rows},
    )


if __name__ == "__main__":
    main()
