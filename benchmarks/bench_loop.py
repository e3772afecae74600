"""One DM iteration: our batched loop vs the reference's per-class loop structure, with HDD and with MMD.

Four variants, the same network, data, images and seeds, differing only in structure or matcher:

* ``batched-<matcher>``: :class:`hyperdm.distill.loops.DMLoop` as shipped: the real images of all
  classes in one forward (chunked), the synthetic images in another, one matcher call for all classes.
* ``per-class-<matcher>``: the structure of VICO DM's ``main_DM.py`` and the official HDD code:
  for each class, one forward of its real batch, one of its synthetic images, one matcher call,
  losses summed. Built from the same loop's pieces (sampling, siamese DSA, matcher), so only the
  structure differs; its loss is checked against the batched one.
* ``batched-compiled`` (``--compiled``): ``batched-hyperbolic`` with ``compile_matcher=True``
  (``HyperbolicMatcher(compile=True)``); compiled during the warm-up rounds.

An iteration = sample + augment + forward + matching loss + backward + SGD step on the images.
Timings interleave the variants round by round in one process (warm-up first) and report the
median. Peak memory: CUDA's ``max_memory_allocated`` per variant; on CPU the peak resident set of a
fresh child process that runs only that variant (a process's peak never goes down, so one process
cannot measure four; the child loads a small class-balanced subset so that loading peaks below the
iterations, and reports the peak minus its resident set just before them). Prints and saves
``benchmarks/results/loop_<device>.json``.

    python benchmarks/bench_loop.py --device cpu --ipc 10 --batch-real 256 --rounds 5
    python benchmarks/bench_loop.py --device cuda --rounds 20 --compiled
    python benchmarks/bench_loop.py --batched-only --threads 1 --rounds 15 --name loop_cpu_fused

``--batched-only`` times the two batched variants alone, and every run reports HDD / MMD round by round
(each round steps both from the same images), whose median is steadier than the ratio of the medians.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from _results import machine, save
from hyperdm.distill.data import DatasetInfo, RealData, load_dataset
from hyperdm.distill.loops import DMLoop
from hyperdm.distill.models import Embedder
from hyperdm.distill.presets import resolve
from hyperdm.distill.seeding import derive_seed

VARIANTS = ("batched-mmd", "per-class-mmd", "batched-hyperbolic", "per-class-hyperbolic")


def split_variant(v: str) -> tuple[str, str]:
    """``"per-class-mmd"`` -> ``("per-class", "mmd")``."""
    structure, matcher = v.rsplit("-", 1)
    return structure, matcher


def per_class_loss(loop: DMLoop, it: int) -> torch.Tensor:
    """The reference's structure: one forward per class and one matcher call per class, summed."""
    net = loop.fresh_network(it)
    assert isinstance(net, Embedder)  # every architecture of the zoo
    gen = loop.generator(it)
    loss = torch.zeros((), device=loop.device)
    for c in range(loop.num_classes):
        seed = derive_seed(loop.cfg.seed, it, c)
        real = loop.augment(loop.sample_real(c, loop.cfg.batch_real, gen), seed)
        syn = loop.augment(loop.syn_class(c), seed)
        with torch.no_grad():
            f_real = net.embed(real)
        f_syn = net.embed(syn)
        loss = loss + loop.match([f_real], [f_syn])
    return loss


def make_loop(matcher: str, a: argparse.Namespace, real, out: str) -> DMLoop:
    """``matcher``: mmd, hyperbolic, or compiled (hyperbolic through torch.compile)."""
    cfg = resolve(
        preset="paper",
        method="dm",
        matcher="hyperbolic" if matcher == "compiled" else matcher,
        dataset=a.dataset,
        ipc=a.ipc,
        overrides={
            "batch_real": a.batch_real,
            "device": a.device,
            "seed": a.seed,
            "eval_runs": 0,
            "compile_matcher": matcher == "compiled",
        },
    )
    loop = DMLoop(cfg, real, out, progress=False)
    loop._init_synthetic()
    return loop


def one_iteration(loop: DMLoop, structure: str, it: int) -> float:
    assert loop.optimizer is not None
    loss = loop.matching_loss(it) if structure == "batched" else per_class_loss(loop, it)
    loop.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    loop.optimizer.step()
    return float(loss.detach())


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def rss_bytes() -> int:
    """Current resident set of this process (Linux)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def class_subset(real, per_class: int):
    """``per_class`` training images of every class (enough for the loop's sampling), no test set."""
    idx = torch.cat(
        [torch.nonzero(real.train_labels == c).squeeze(1)[:per_class] for c in range(real.info.num_classes)]
    )
    return dataclasses.replace(
        real,
        train_images=real.train_images[idx].clone(),
        train_labels=real.train_labels[idx].clone(),
        test_images=real.test_images[:1].clone(),
        test_labels=real.test_labels[:1].clone(),
    )


def save_subset(real: RealData, path: str) -> None:
    """Write ``real`` as plain tensors and values, so the child reads it back with ``weights_only=True``."""
    torch.save(
        {
            **{f.name: getattr(real, f.name) for f in dataclasses.fields(real) if f.name != "info"},
            "info": dataclasses.asdict(real.info),
        },
        path,
    )


def load_subset(path: str) -> RealData:
    """Read what :func:`save_subset` wrote (``torch.load(weights_only=True)``)."""
    d = torch.load(path, weights_only=True)
    return RealData(**{**d, "info": DatasetInfo(**d["info"])})


def child_peak(variant: str, a: argparse.Namespace, data_file: str) -> dict:
    """Run one variant in a fresh process on a small data file; its peak resident set minus its resident set
    just before the iterations is what the iterations add (CPU). The small file keeps loading below that peak."""
    cmd = [
        sys.executable,
        __file__,
        "--peak-of",
        variant,
        "--peak-data",
        data_file,
        "--device",
        a.device,
        "--ipc",
        str(a.ipc),
        "--batch-real",
        str(a.batch_real),
        "--dataset",
        a.dataset,
        "--seed",
        str(a.seed),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--batch-real", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5, help="timed iterations per variant (after 2 warm-up rounds)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--compiled", action="store_true", help="add batched-compiled (HyperbolicMatcher(compile=True))")
    ap.add_argument(
        "--batched-only", action="store_true", help="time only batched-mmd and batched-hyperbolic (more rounds)"
    )
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--name", default=None, help="results name (default loop_<device>): results/<name>.json")
    ap.add_argument("--peak-of", choices=(*VARIANTS, "batched-compiled"), default=None, help=argparse.SUPPRESS)
    ap.add_argument("--peak-data", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    base = tuple(v for v in VARIANTS if v.startswith("batched-")) if a.batched_only else VARIANTS
    variants = base + (("batched-compiled",) if a.compiled else ())
    with tempfile.TemporaryDirectory() as tmp:
        if a.peak_of:  # child: one variant on the small data file, report what the iterations add to the RSS
            structure, matcher = split_variant(a.peak_of)
            real = load_subset(a.peak_data)
            loop = make_loop(matcher, a, real, tmp)
            before = rss_bytes()
            for it in range(2):
                one_iteration(loop, structure, it)
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            print(json.dumps({"variant": a.peak_of, "peak_rss_bytes": peak, "rss_before_iterations_bytes": before}))
            return
        real = load_dataset(a.dataset, a.data_root)
        loops = {m: make_loop(m, a, real, f"{tmp}/{m}") for m in dict.fromkeys(split_variant(v)[1] for v in variants)}
        times: dict[str, list[float]] = {v: [] for v in variants}
        losses: dict[str, list[float]] = {v: [] for v in variants}
        peaks: dict[str, int] = {}
        for r in range(2 + a.rounds):
            for v in variants:
                structure, matcher = split_variant(v)
                loop = loops[matcher]
                assert loop.syn is not None and loop.optimizer is not None  # set up by make_loop
                images = loop.syn.detach().clone()  # every variant steps from the same images in a round
                opt_state = loop.optimizer.state_dict()
                if a.device.startswith("cuda"):
                    torch.cuda.reset_peak_memory_stats()
                sync(a.device)
                t0 = time.perf_counter()
                value = one_iteration(loop, structure, 1000 + r)
                sync(a.device)
                dt = time.perf_counter() - t0
                if a.device.startswith("cuda"):
                    peaks[v] = max(peaks.get(v, 0), torch.cuda.max_memory_allocated())
                with torch.no_grad():
                    loop.syn.copy_(images)
                loop.optimizer.load_state_dict(opt_state)
                if r >= 2:
                    times[v].append(dt)
                    losses[v].append(value)
        if not a.device.startswith("cuda"):
            data_file = f"{tmp}/subset.pt"
            save_subset(class_subset(real, 2 * a.batch_real), data_file)
            for v in variants:
                c = child_peak(v, a, data_file)
                peaks[v] = c["peak_rss_bytes"] - c["rss_before_iterations_bytes"]
    per_it = loops["mmd"].images_per_iteration()
    rows: dict[str, dict[str, Any]] = {}
    for v in variants:
        med = statistics.median(times[v])
        rows[v] = {
            "median_seconds": med,
            "all_seconds": times[v],
            "iterations_per_second": 1 / med,
            "images_per_second": per_it / med,
            "peak_memory_bytes": peaks.get(v),
            "peak_memory_kind": "cuda max_memory_allocated"
            if a.device.startswith("cuda")
            else "child process: peak RSS minus RSS before the iterations",
            "losses": losses[v],
        }
    for m in ("mmd", "hyperbolic") if not a.batched_only else ():
        b, p = rows[f"batched-{m}"], rows[f"per-class-{m}"]
        b["speedup_vs_per_class"] = p["median_seconds"] / b["median_seconds"]
        b["max_rel_loss_difference_vs_per_class"] = max(
            abs(x - y) / abs(y) for x, y in zip(b["losses"], p["losses"], strict=True)
        )
    for v in ("batched-hyperbolic", "batched-compiled"):
        if v in rows:
            rows[v]["time_vs_batched_mmd"] = rows[v]["median_seconds"] / rows["batched-mmd"]["median_seconds"]
            # each round runs every variant from the same images, so the ratio within a round is paired
            ratios = [x / y for x, y in zip(times[v], times["batched-mmd"], strict=True)]
            rows[v]["time_vs_batched_mmd_per_round"] = ratios
            rows[v]["time_vs_batched_mmd_median_of_rounds"] = statistics.median(ratios)
    if "batched-compiled" in rows:
        c, h = rows["batched-compiled"], rows["batched-hyperbolic"]
        c["max_rel_loss_difference_vs_batched_hyperbolic"] = max(
            abs(x - y) / abs(y) for x, y in zip(c["losses"], h["losses"], strict=True)
        )
    for v, row in rows.items():
        extra = "".join(
            f"  {k} {row[k]:.3g}"
            for k in (
                "speedup_vs_per_class",
                "time_vs_batched_mmd",
                "time_vs_batched_mmd_median_of_rounds",
                "max_rel_loss_difference_vs_per_class",
                "max_rel_loss_difference_vs_batched_hyperbolic",
            )
            if k in row
        )
        mem = f"{row['peak_memory_bytes'] / 2**20:.0f} MiB" if row["peak_memory_bytes"] else "n/a"
        print(
            f"{v:>22}: {row['median_seconds'] * 1000:8.1f} ms/it  {row['images_per_second']:8.0f} img/s  "
            f"peak {mem}{extra}",
            flush=True,
        )
    save(
        a.name or f"loop_{a.device.split(':')[0]}",
        {
            "benchmark": "bench_loop",
            "dataset": a.dataset,
            "ipc": a.ipc,
            "batch_real": a.batch_real,
            "images_per_iteration": per_it,
            "rounds": a.rounds,
            "threads": torch.get_num_threads(),
            "command": "python " + " ".join([os.path.relpath(__file__), *sys.argv[1:]]),
            "seed": a.seed,
            "model": loops["mmd"].cfg.model,
            "k": loops["hyperbolic"].cfg.matcher.k,
            "scale": loops["hyperbolic"].cfg.matcher.scale,
            "match_dtype_hyperbolic": loops["hyperbolic"].cfg.matcher.dtype,
            **machine(a.device),
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
