"""Storage of synthetic sets next to their accuracy: float32, uint8 and PNG bytes, and what uint8 costs.

For every finished run directory given (default: the seed-0 runs of reproduce.py), reads
``synthetic.pt``, counts the bytes of the set as float32, as uint8 (pixels in [0, 1] rounded to
1/255; values outside [0, 1] are clipped, as any image file would) and as PNG files (lossless:
exactly the uint8 pixels), and evaluates both the float set and its uint8 round trip with the run's
own evaluation settings, side by side in one process. The real training set's uint8 size is given
for scale.

    python benchmarks/storage.py                                   # runs/reproduce/*-seed0
    python benchmarks/storage.py runs/reproduce/dm-hyperbolic-ipc10-seed0 --threads 2

Results: ``benchmarks/results/storage_<dataset>_<preset>_<device>.json``.
"""

from __future__ import annotations

import argparse
import glob
import time
from pathlib import Path
from typing import Any

import torch

from _results import machine, save
from hyperdm.distill import DistillConfig
from hyperdm.distill.artifacts import load_synthetic, read_json, storage_sizes, to_uint8
from hyperdm.distill.config import run_setting
from hyperdm.distill.data import load_dataset
from hyperdm.distill.evaluate import evaluate_synthetic
from hyperdm.distill.synset import expand


def uint8_round_trip(images: torch.Tensor, real: Any) -> tuple[torch.Tensor, float]:
    """Normalised images -> uint8 pixels -> normalised again; also the fraction of pixel values that clipping
    changes (more than half a level outside [0, 1]; float rounding of a stored 0 or 1 does not count)."""
    x01 = real.denormalise(images)
    half = 0.5 / 255.0
    clipped = float(((x01 < -half) | (x01 > 1 + half)).float().mean())
    q = to_uint8(x01).float() / 255.0
    mean = torch.tensor(real.info.mean).view(1, -1, 1, 1)
    std = torch.tensor(real.info.std).view(1, -1, 1, 1)
    return (q - mean) / std, clipped


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="*", help="finished run directories (default runs/reproduce/*-seed0)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--name", default=None, help="results file name (default storage_<dataset>_<preset>_<device>)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    runs = a.runs or sorted(p for p in glob.glob("runs/reproduce/*-seed0") if (Path(p) / "synthetic.pt").exists())
    if not runs:
        ap.error("no finished run directories; run benchmarks/reproduce.py first or name run directories")
    rows, header, reals = [], None, {}
    for run in runs:
        images, labels, meta = load_synthetic(run)
        cfg = meta["config"]
        if cfg["dataset"] not in reals:
            reals[cfg["dataset"]] = load_dataset(cfg["dataset"], cfg.get("data_root"))
        real = reals[cfg["dataset"]]
        header = header or {
            "benchmark": "storage",
            "dataset": cfg["dataset"],
            "preset": cfg["preset"],
            **machine(a.device),
            "real_train_uint8_bytes": int(real.train_images.numel()),
        }
        stored = storage_sizes(real.denormalise(images))  # what is stored: partitioned sets stay packed
        quant, clipped = uint8_round_trip(images, real)
        ecfg = DistillConfig.from_dict(cfg).eval_config(device=a.device)  # the run's own evaluation
        part = int(meta.get("partition", 1))
        accs = {}
        t0 = time.perf_counter()
        for kind, x in (("float32", images), ("uint8", quant)):
            xe, ye = expand(x, labels, part)
            accs[kind] = evaluate_synthetic(xe, ye, real.test_images, real.test_labels, real.info, ecfg)["ConvNet"]
        matcher = run_setting(cfg, "matcher.kind")  # nested config.json, or the flat one of hyperdm 0.1
        row = {
            "run": str(run),
            "method": cfg["method"],
            "matcher": matcher,
            "ipc": cfg["ipc"],
            "seed": cfg["seed"],
            "partition": part,
            "images_stored": int(images.shape[0]),
            **stored,
            "clipped_fraction": clipped,
            "acc_float32": accs["float32"]["mean"],
            "accs_float32": accs["float32"]["accs"],
            "acc_uint8": accs["uint8"]["mean"],
            "accs_uint8": accs["uint8"]["accs"],
            "eval_epochs": ecfg.epochs,
            "eval_runs": ecfg.runs,
            "seconds": time.perf_counter() - t0,
            "acc_reported_by_run": read_json(Path(run) / "metrics.json")["evals"][-1]["ConvNet"]["mean"],
        }
        rows.append(row)
        print(
            f"{cfg['method']}+{matcher} IPC {cfg['ipc']}: float32 {row['float32_bytes']:,} B "
            f"{100 * row['acc_float32']:.2f} %, uint8 {row['uint8_bytes']:,} B {100 * row['acc_uint8']:.2f} %, "
            f"PNG {row['png_bytes']:,} B; {100 * clipped:.2f} % of pixel values clipped",
            flush=True,
        )
        assert header is not None
        save(
            a.name or f"storage_{header['dataset']}_{header['preset']}_{a.device.split(':')[0]}",
            {**header, "rows": rows},
        )


if __name__ == "__main__":
    main()
