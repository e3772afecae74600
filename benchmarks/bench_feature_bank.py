"""Pruning scores on an ImageNet-sized feature bank: 1,281,167 x 2,048 float16 on a memmap file.

Generates the bank (ReLU of Gaussian features scaled to norms of about 25, like random ConvNet
features; labels: 1,000 classes of about 1,281 samples, as ImageNet-1k's training set) chunk by
chunk into a ``.npy`` memmap, then times, one after the other in one process,
``FeatureBank.scores("radius")``, ``FeatureBank.scores("centroid")`` and ``select(0.2)`` on the
memmap-backed bank. Memory: this process's peak resident set (``ru_maxrss``, which counts the
file pages it has mapped and touched) and the peak of its anonymous resident memory (``RssAnon``,
sampled every 50 ms: what it allocates, page cache excluded). The file is deleted at the end
unless ``--keep``.

    python benchmarks/bench_feature_bank.py --dir /tmp          # needs ~5.3 GB of disk
    python benchmarks/bench_feature_bank.py --rows 100000        # a smaller trial

Results: ``benchmarks/results/feature_bank_<rows>x<dim>.json``.
"""

from __future__ import annotations

import argparse
import resource
import threading
import time
from pathlib import Path

import numpy as np
import torch

from _results import machine, save
from hyperdm.pruning import FeatureBank


def rss_anon_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    return 0


class AnonPeak:
    """Samples RssAnon in a thread; ``peak`` is the largest value seen since ``reset``."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_anon_bytes())
            time.sleep(0.05)

    def reset(self) -> None:
        self.peak = rss_anon_bytes()

    def stop(self) -> None:
        self._stop.set()
        self._t.join()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_281_167)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument(
        "--chunk", type=int, default=None, help="rows per chunk when scoring (default: the library's, 2**24 values)"
    )
    ap.add_argument("--dir", default="/tmp", help="where the memmap file goes")
    ap.add_argument("--keep", action="store_true", help="keep the generated file")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    path = Path(a.dir) / f"hyperdm_bank_{a.rows}x{a.dim}.npy"
    gen = torch.Generator().manual_seed(a.seed)
    labels = torch.arange(a.rows) % a.classes
    labels = labels[torch.randperm(a.rows, generator=gen)]
    scale = 25.0 / (a.dim / 2) ** 0.5  # |relu(randn)| ~ sqrt(D/2): norms of about 25
    mon = AnonPeak()
    timings, memory = {}, {}
    t0 = time.perf_counter()
    mm = np.lib.format.open_memmap(str(path), mode="w+", dtype=np.float16, shape=(1, a.rows, a.dim))
    gen_rows = 65536
    for s in range(0, a.rows, gen_rows):
        n = min(gen_rows, a.rows - s)
        mm[0, s : s + n] = (torch.randn(n, a.dim, generator=gen).relu_() * scale).half().numpy()
    mm.flush()
    del mm
    timings["generate_s"] = time.perf_counter() - t0
    bank = FeatureBank(np.load(path, mmap_mode="r"), labels)
    results = {}
    for name, fn in (
        ("radius", lambda: bank.scores("radius", chunk_size=a.chunk)),
        ("centroid", lambda: bank.scores("centroid", chunk_size=a.chunk)),
        ("select_radius_0.2", lambda: bank.select(0.2, method="radius", chunk_size=a.chunk)),
    ):
        mon.reset()
        t0 = time.perf_counter()
        out = fn()
        dt = time.perf_counter() - t0
        timings[f"{name}_s"] = dt
        memory[f"{name}_peak_rss_anon_bytes"] = mon.peak
        results[name] = {"n": int(out.numel()), "first": [float(v) for v in out[:3]]}
        print(
            f"{name:>18}: {dt:8.2f} s  {a.rows / dt:12,.0f} rows/s  "
            f"{a.rows * a.dim * 2 / dt / 2**30:6.2f} GiB/s of features"
            f"  peak anonymous RSS {mon.peak / 2**20:8.0f} MiB",
            flush=True,
        )
    mon.stop()
    memory["process_peak_rss_bytes_ru_maxrss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    kept = results["select_radius_0.2"]["n"]
    print(
        f"generated {path} ({path.stat().st_size / 2**30:.2f} GiB) in {timings['generate_s']:.1f} s; "
        f"kept {kept:,} of {a.rows:,}; process peak RSS (incl. mapped file pages) "
        f"{memory['process_peak_rss_bytes_ru_maxrss'] / 2**30:.2f} GiB"
    )
    save(
        f"feature_bank_{a.rows}x{a.dim}",
        {
            "benchmark": "bench_feature_bank",
            "rows": a.rows,
            "dim": a.dim,
            "classes": a.classes,
            "dtype": "float16",
            "chunk": a.chunk or "library default (2**24 values per float64 work array)",
            "file_bytes": path.stat().st_size,
            **machine("cpu"),
            "timings": timings,
            "memory": memory,
            "results": results,
            "throughput_rows_per_s": {k[:-2]: a.rows / v for k, v in timings.items() if k != "generate_s"},
        },
    )
    if not a.keep:
        path.unlink()


if __name__ == "__main__":
    main()
