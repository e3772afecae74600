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
    python benchmarks/bench_feature_bank.py --baseline           # and the previous scorers beside them

The file is read once before the timings, so that every scorer reads it from the page cache.

Results: ``benchmarks/results/feature_bank_<rows>x<dim>.json``.
"""

from __future__ import annotations

import argparse
import resource
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

from _results import machine, save
from hyperdm import lorentz
from hyperdm.pruning import FeatureBank, select


def baseline_radius(bank: FeatureBank, chunk_values: int = 2**24) -> torch.Tensor:
    """The radius scorer of hyperdm before the streaming one: float64 NumPy copies of 2**24 values at a time."""
    fe = bank._features[0]
    n = fe.shape[0]
    step = max(1, chunk_values // fe.shape[-1])
    out = torch.empty(n, dtype=torch.float64)
    for s in range(0, n, step):
        rows = torch.from_numpy(np.asarray(fe[s : s + step], dtype=np.float64))
        out[s : s + step] = lorentz.radius0(rows, k=1.0)
    return out


def baseline_centroid(bank: FeatureBank, chunk_values: int = 2**24) -> torch.Tensor:
    """The class-centroid scorer before the streaming one: each class's rows gathered from the file, their Law
    centroid (``lorentz.feature_centroid``), then every row's ``lorentz.dist`` to it in float64 chunks."""
    fe, labels = bank._features[0], bank.labels
    mn = lorentz.SAFE_RADIUS
    classes = torch.unique(labels)
    cents = []
    for c in classes.tolist():
        idx = torch.nonzero(labels == c).squeeze(1)
        rows = torch.as_tensor(np.asarray(fe[idx.numpy()], dtype=np.float64))[None]
        cents.append(lorentz.feature_centroid(rows, k=1.0, max_norm=mn)[0])
    cent = torch.stack(cents)
    cls = torch.searchsorted(classes, labels)
    out = torch.empty(labels.numel(), dtype=torch.float64)
    step = max(1, chunk_values // fe.shape[-1])
    for s in range(0, labels.numel(), step):
        f = torch.as_tensor(np.asarray(fe[s : s + step], dtype=np.float64))
        out[s : s + step] = lorentz.dist(lorentz.expmap0(f, k=1.0, max_norm=mn), cent[cls[s : s + step]], k=1.0)
    return out


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
    ap.add_argument(
        "--baseline",
        action="store_true",
        help="also time the previous scorers (per-class gathering; float64 NumPy copies) on the same file, and "
        "compare their scores and selections with the current ones",
    )
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
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
    # read the file once so that every scorer reads it from the page cache
    t0 = time.perf_counter()
    with open(path, "rb") as fh:
        while fh.read(1 << 26):
            pass
    timings["warm_page_cache_s"] = time.perf_counter() - t0
    results: dict = {}
    scores: dict = {}
    runs = [
        ("radius", lambda: bank.scores("radius", chunk_size=a.chunk)),
        ("centroid", lambda: bank.scores("centroid", chunk_size=a.chunk)),
        ("select_radius_0.2", lambda: bank.select(0.2, method="radius", chunk_size=a.chunk)),
    ]
    if a.baseline:
        runs += [
            ("baseline_radius", lambda: baseline_radius(bank)),
            ("baseline_centroid", lambda: baseline_centroid(bank)),
        ]
    for name, fn in runs:
        mon.reset()
        t0 = time.perf_counter()
        out = fn()
        dt = time.perf_counter() - t0
        timings[f"{name}_s"] = dt
        memory[f"{name}_peak_rss_anon_bytes"] = mon.peak
        results[name] = {"n": int(out.numel()), "first": [float(v) for v in out[:3]]}
        scores[name] = out
        print(
            f"{name:>18}: {dt:8.2f} s  {a.rows / dt:12,.0f} rows/s  "
            f"{a.rows * a.dim * 2 / dt / 2**30:6.2f} GiB/s of features"
            f"  peak anonymous RSS {mon.peak / 2**20:8.0f} MiB",
            flush=True,
        )
    mon.stop()
    if a.baseline:  # the current scorers against the previous ones, on the same file
        for name in ("radius", "centroid"):
            new_s, old_s = scores[name], scores[f"baseline_{name}"]
            rel = float(((new_s - old_s).abs() / old_s.abs().clamp_min(1e-300)).max())
            same = torch.equal(select(new_s, keep=0.2, labels=labels), select(old_s, keep=0.2, labels=labels))
            results[f"{name}_vs_baseline"] = {"max_relative_difference": rel, "same_selection_keep_0.2": same}
            print(f"{name}: largest relative difference to the previous scorer {rel:.2e}; same selection: {same}")
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
            "chunk": a.chunk or "library default (hyperdm.pruning.STREAM_ELEMENTS values per chunk)",
            "file_bytes": path.stat().st_size,
            **machine("cpu"),
            "timings": timings,
            "memory": memory,
            "results": results,
            "throughput_rows_per_s": {k[:-2]: a.rows / v for k, v in timings.items() if k != "generate_s"},
            "throughput_gib_per_s": {
                k[:-2]: a.rows * a.dim * 2 / v / 2**30 for k, v in timings.items() if k != "generate_s"
            },
            "command": "python benchmarks/bench_feature_bank.py " + " ".join(sys.argv[1:]),
        },
    )
    if not a.keep:
        path.unlink()


if __name__ == "__main__":
    main()
