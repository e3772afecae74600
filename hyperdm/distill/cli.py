"""``hyperdm`` command line: ``distill``, ``evaluate``, ``prune``, ``plot`` (also ``python -m hyperdm``)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

__all__ = ["main", "build_parser"]

log = logging.getLogger("hyperdm.cli")

_EPILOG = """\
k is geoopt's curvature parameter: points satisfy <x,x>_L = -k, the curvature is -1/k. The
paper's tables print it in a column headed "K". --scale is the paper's lambda.

examples:
  hyperdm distill --dataset fashion-mnist --ipc 10 --preset cpu
  hyperdm distill --method dm --matcher mmd --dataset cifar10 --ipc 10 --preset paper --device cuda
  hyperdm distill --method dance --dataset cifar10 --ipc 10 --preset paper --device cuda
  hyperdm evaluate runs/dm-hyperbolic-fashion-mnist-ipc10-seed0 --epochs 1000 --runs 3 --arch ConvNet AlexNet
"""


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", default=None, metavar="DIR",
                   help="where the datasets live (default: $HYPERDM_DATA, else ./data); Fashion-MNIST is also "
                        "found in the torchvision layout DIR/FashionMNIST/raw and in /usr/share/datasets/fashion-mnist")
    p.add_argument("--download", action="store_true",
                   help="fetch Fashion-MNIST / MNIST from their canonical source if missing (nothing is downloaded without it)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default: cpu)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0); same seed on CPU = same images")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (the log still reports progress)")


def _scale_arg(text: str) -> Any:
    if text == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    from .presets import METHODS, MATCHERS, PRESETS, PRUNE_SCORES

    parser = argparse.ArgumentParser(
        prog="hyperdm", description="Hyperbolic dataset distillation (HDD) toolkit.", epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="console log level")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{distill,evaluate,prune,plot}")

    d = sub.add_parser("distill", help="distil a synthetic set, evaluate it, write the run directory",
                       description="Distil IPC synthetic images per class with a DM-family loop and a matcher, then "
                                   "evaluate them. Every setting comes from --preset unless given here; the run "
                                   "prints and saves (config.json) what each setting resolved to and why.",
                       epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    d.add_argument("--method", choices=METHODS, default="dm", help="distillation loop (default dm)")
    d.add_argument("--matcher", choices=MATCHERS, default="hyperbolic",
                   help="mmd: DM's Euclidean mean matching (the baseline); hyperbolic: HDD (default)")
    d.add_argument("--dataset", default="fashion-mnist",
                   help="fashion-mnist, mnist, cifar10, cifar100, svhn, tinyimagenet, imagewoof, imagenette, imagefolder")
    d.add_argument("--ipc", type=int, default=10, help="synthetic images per class (default 10)")
    d.add_argument("--preset", choices=PRESETS, default="cpu",
                   help="paper: the paper's Tables 5/6 and full protocol (20,000 iterations, 1,000-epoch evaluation); "
                        "cpu: a reduced protocol a 2-core machine finishes in minutes (default)")
    d.add_argument("--iterations", type=int, help="distillation iterations (paper 20,000; cpu 200)")
    d.add_argument("--batch-real", type=int, help="real images per class per iteration (paper 256; cpu 64)")
    d.add_argument("--lr-img", type=float, help="SGD learning rate of the images (paper table; DM 1)")
    d.add_argument("--k", type=float, help="hyperbolic: geoopt's curvature parameter k > 0 (curvature -1/k)")
    d.add_argument("--scale", type=_scale_arg, metavar="LAMBDA|auto",
                   help="hyperbolic: the paper's lambda, multiplying the geodesic distance; 'auto': MMD / distance of "
                        "the first batch, so the loss starts at the MMD line's magnitude")
    d.add_argument("--max-norm", type=float,
                   help="hyperbolic: exp-map clamp of |v|/sqrt(k) (official code: 10); --no-clamp removes it")
    d.add_argument("--no-clamp", action="store_true", help="hyperbolic: exact exp-map (not the method as published)")
    d.add_argument("--match-dtype", choices=["float32", "float64"], help="dtype of the matching (paper HDD: float64)")
    d.add_argument("--compile-matcher", dest="compile_matcher", action="store_const", const=True,
                   help="hyperbolic: torch.compile the matching maths (same loss; fewer kernels on GPUs; "
                        "the first iteration compiles for tens of seconds)")
    d.add_argument("--model", help="distillation backbone (default ConvNet; ConvNetD4 for 64x64 images)")
    d.add_argument("--init", choices=["real", "noise"], help="initialise from random real images (default) or noise")
    d.add_argument("--dsa", dest="dsa_strategy", metavar="STRATEGY",
                   help="DSA strategy (default color_crop_cutout_flip_scale_rotate; 'none' disables)")
    d.add_argument("--eval-every", type=int, help="evaluate every N iterations (0: only at the end)")
    d.add_argument("--eval-at", dest="eval_at", type=int, nargs="+", metavar="IT",
                   help="also evaluate at these iterations (e.g. 200 500 1000)")
    d.add_argument("--eval-epochs", type=int, help="epochs of each evaluation training (paper 1,000; cpu 300)")
    d.add_argument("--eval-runs", type=int, help="fresh networks per evaluation (paper 3; cpu 2; 0 skips evaluation)")
    d.add_argument("--arch", dest="eval_archs", nargs="+", metavar="NAME",
                   help="evaluation architectures: ConvNet AlexNet VGG11 ResNet18 (default ConvNet)")
    d.add_argument("--partition", type=int, help="idm, dance: each stored image holds a PxP grid of sub-images (IDM: 2; Dance: --factor 2)")
    d.add_argument("--ce-weight", type=float, help="idm: weight of the accuracy-weighted cross-entropy term (IDM: 0.5 / 0.1)")
    d.add_argument("--net-num", type=int, help="idm: size of the model queue (IDM: 100)")
    d.add_argument("--model-train-steps", type=int, help="idm: SGD steps per fetched queue network per iteration (IDM: 10)")
    d.add_argument("--net-batch", type=int, help="idm: real batch size for training the queue networks (IDM: 256)")
    d.add_argument("--experts", type=int, help="dance: number of expert networks (Dance: 20)")
    d.add_argument("--expert-epochs", type=int, help="dance: training epochs of each expert (Dance: 60)")
    d.add_argument("--expert-per-class", type=int, metavar="N",
                   help="dance: train the experts on N real images per class (default: all; cpu preset 200)")
    d.add_argument("--expert-seed", type=int, help="dance: seed of the experts (default 0; shared by runs of any --seed)")
    d.add_argument("--expert-dir", metavar="DIR",
                   help="dance: expert cache root (default $HYPERDM_CACHE/experts or ~/.cache/hyperdm/experts)")
    d.add_argument("--iter-calib", type=int, help="dance: calibration passes per iteration (Dance: 1; 0 disables)")
    d.add_argument("--match-dsa", metavar="STRATEGY",
                   help="DSA strategy of the matching step only (default: --dsa; Dance: color_crop_cutout)")
    d.add_argument("--checkpoint-every", type=int, help="write checkpoint.pt every N iterations (atomic)")
    d.add_argument("--prune-keep", type=float, metavar="F",
                   help="hierarchical pruning: keep the fraction F of each class closest to the root (e.g. 0.2)")
    d.add_argument("--prune-score", choices=PRUNE_SCORES,
                   help="pruning score (default radius; random: the uniform baseline, no network)")
    d.add_argument("--out", default=None, metavar="DIR",
                   help="run directory (default runs/<method>-<matcher>-<dataset>-ipc<N>-seed<S>)")
    d.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    _add_data_args(d)

    e = sub.add_parser("evaluate", help="evaluate a synthetic set with the standard protocol",
                       description="Train fresh networks on a synthetic set (SGD lr 0.01, momentum 0.9, wd 5e-4, "
                                   "batch 256, lr x0.1 at half, DSA) and report final-epoch test accuracy, mean +- std.")
    e.add_argument("path", help="a run directory or a synthetic .pt ({'data': [[images, labels]]})")
    e.add_argument("--dataset", help="dataset of the test set (default: from the run's config.json or the .pt)")
    e.add_argument("--epochs", type=int, default=1000, help="training epochs (default 1000, the standard protocol)")
    e.add_argument("--runs", type=int, default=3, help="fresh networks per architecture (default 3)")
    e.add_argument("--arch", nargs="+", default=["ConvNet"], metavar="NAME", help="ConvNet AlexNet VGG11 ResNet18")
    e.add_argument("--dsa", default="color_crop_cutout_flip_scale_rotate", help="DSA strategy during training ('none' disables)")
    e.add_argument("--out", default=None, metavar="FILE", help="write the results as JSON here (default: print only)")
    _add_data_args(e)

    p = sub.add_parser("prune", help="rank real images by hyperbolic radius and keep a fraction",
                       description="Score every training image by its hyperbolic radius (or distance to its class "
                                   "centroid) under random ConvNets and save the kept indices (.npy and .json).")
    p.add_argument("--dataset", default="fashion-mnist", help="dataset to prune")
    p.add_argument("--keep", type=float, required=True, help="fraction of each class to keep, e.g. 0.2")
    p.add_argument("--score", choices=PRUNE_SCORES, default="radius",
                   help="ranking score (default radius; random: uniform per class, the baseline)")
    p.add_argument("--nets", type=int, default=3, help="random ConvNets to average the score over (default 3)")
    p.add_argument("--k", type=float, default=1.0, help="geoopt's curvature parameter k (curvature -1/k)")
    p.add_argument("--out", required=True, metavar="FILE", help="output path; writes FILE.npy (indices) and FILE.json")
    _add_data_args(p)

    q = sub.add_parser("plot", help="redraw a run's figures (grid, Poincare disk, loss curve)")
    q.add_argument("run", help="a run directory")
    _add_data_args(q)
    return parser


def _setup_logging(level: str) -> None:
    root = logging.getLogger("hyperdm")
    if not any(getattr(h, "_hyperdm_console", False) for h in root.handlers):
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        h._hyperdm_console = True  # type: ignore[attr-defined]
        root.addHandler(h)
    root.setLevel(getattr(logging, level))


def _distill(a: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {
        name: getattr(a, name)
        for name in ("iterations", "batch_real", "lr_img", "k", "scale", "match_dtype", "model", "init", "dsa_strategy",
                     "eval_every", "eval_at", "eval_epochs", "eval_runs", "eval_archs", "checkpoint_every", "prune_keep", "prune_score",
                     "partition", "ce_weight", "net_num", "model_train_steps", "net_batch", "experts", "expert_epochs",
                     "expert_per_class", "expert_seed", "expert_dir", "iter_calib", "match_dsa",
                     "compile_matcher")
    }
    if a.no_clamp and a.max_norm is not None:
        raise ValueError("--no-clamp and --max-norm contradict each other; pass one of them.")
    overrides["max_norm"] = a.max_norm  # None means "not given" to resolve(); --no-clamp is applied below
    for name in ("dsa_strategy", "match_dsa"):
        if overrides[name] == "none":
            overrides[name] = ""
    from .parallel import joined

    with joined(a.device) as (par, device):  # under torchrun: join the process group, cuda -> cuda:LOCAL_RANK
        if not par.is_main:  # rank 0 speaks for the run
            logging.getLogger("hyperdm").setLevel(logging.WARNING)
        return _distill_run(a, overrides, par, device)


def _distill_run(a: argparse.Namespace, overrides: dict[str, Any], par: Any, device: str) -> int:
    from .data import load_dataset
    from .loops import get_loop
    from .presets import resolve
    overrides.update(seed=a.seed, device=device, data_root=a.data_root, download=a.download)
    cfg = resolve(preset=a.preset, method=a.method, matcher=a.matcher, dataset=a.dataset, ipc=a.ipc, overrides=overrides)
    if a.no_clamp:
        cfg.max_norm = None
        cfg.sources["max_norm"] = "command line: --no-clamp (exact exp-map; not the method as published)"
    loop_cls = get_loop(cfg.method)
    out = a.out or f"runs/{cfg.method}-{cfg.matcher}-{cfg.dataset}-ipc{cfg.ipc}-seed{cfg.seed}"
    real = load_dataset(cfg.dataset, cfg.data_root, download=cfg.download)
    loop = loop_cls(cfg, real, out, progress=not a.no_progress)
    metrics = loop.run(resume=a.resume)
    if not par.is_main:
        return 0
    print(f"run directory: {Path(out).resolve()}")
    for e in metrics["evals"]:
        for arch, r in e.items():
            if arch != "iteration":
                print(f"iteration {e['iteration']}: {arch} test accuracy {100 * r['mean']:.2f} +- {100 * r['std']:.2f} % "
                      f"({len(r['accs'])} runs, {r['epochs']} epochs)")
    return 0


def _evaluate(a: argparse.Namespace) -> int:
    from .artifacts import load_synthetic, write_json
    from .data import load_dataset
    from .evaluate import EvalConfig, evaluate_synthetic

    images, labels, meta = load_synthetic(a.path)
    dataset = a.dataset or (meta.get("config") or {}).get("dataset") or meta.get("dataset")
    if not dataset:
        raise ValueError(f"{a.path} does not say which dataset it was distilled from; pass --dataset NAME.")
    real = load_dataset(dataset, a.data_root, download=a.download)
    if tuple(images.shape[1:]) != (real.info.channels, *real.info.im_size):
        raise ValueError(f"the synthetic images are {tuple(images.shape[1:])} but {real.info.name} images are "
                         f"{(real.info.channels, *real.info.im_size)}; pass the right --dataset.")
    if meta.get("normalised") is False:
        raise ValueError("this synthetic set is stored in pixel scale; hyperdm evaluates normalised images.")
    images, labels = _as_training_set(images, labels, meta)
    cfg = EvalConfig(epochs=a.epochs, runs=a.runs, archs=tuple(a.arch), seed=a.seed, device=a.device,
                     dsa_strategy="" if a.dsa == "none" else a.dsa)
    res = evaluate_synthetic(images, labels, real.test_images, real.test_labels, real.info, cfg, progress=not a.no_progress)
    for arch, r in res.items():
        print(f"{arch}: {100 * r['mean']:.2f} +- {100 * r['std']:.2f} % ({len(r['accs'])} runs, {a.epochs} epochs, final epoch)")
    if a.out:
        write_json(a.out, {"path": str(a.path), "dataset": real.info.name, "eval": {
            "epochs": a.epochs, "runs": a.runs, "seed": a.seed}, "results": res})
    return 0


def _as_training_set(images: Any, labels: Any, meta: dict[str, Any]) -> tuple[Any, Any]:
    """Expand a partitioned set (``partition`` in its .pt) into the images it trains on."""
    from .synset import expand

    partition = int(meta.get("partition", 1))
    if partition > 1:
        images, labels = expand(images, labels, partition)
        log.info("expanded the %dx%d-partitioned set to %d training images", partition, partition, images.shape[0])
    return images, labels


def _prune(a: argparse.Namespace) -> int:
    import io

    import numpy as np

    from .artifacts import atomic_write_bytes, write_json
    from .data import load_dataset
    from .parallel import joined
    from .prune import prune_indices

    real = load_dataset(a.dataset, a.data_root, download=a.download)
    info = real.info
    with joined(a.device) as (par, device):  # under torchrun each rank scores its stride of the images
        # the same scoring networks as `distill --prune-keep` with the same --seed, so both keep the same images
        kept = prune_indices(real.train_images, real.train_labels, info, keep=a.keep, score=a.score, nets=a.nets, k=a.k,
                             seed=a.seed, device=device)
    if not par.is_main:
        return 0
    out = Path(a.out)
    buf = io.BytesIO()
    np.save(buf, kept.numpy().astype(np.int64))
    atomic_write_bytes(out.with_suffix(".npy"), buf.getvalue())
    write_json(out.with_suffix(".json"), {"dataset": info.name, "keep": a.keep, "score": a.score, "nets": a.nets, "k": a.k,
                                         "seed": a.seed, "kept": int(kept.numel()), "total": int(real.train_labels.numel())})
    print(f"kept {kept.numel()} of {real.train_labels.numel()} images -> {out.with_suffix('.npy')}")
    return 0


def _plot(a: argparse.Namespace) -> int:
    from .artifacts import RunDir, load_synthetic, read_json
    from .data import load_dataset
    from .plots import plot_loss, plot_poincare

    rd = RunDir(a.run)
    images, labels, meta = load_synthetic(rd.path)
    cfg = meta.get("config") or {}
    real = load_dataset(cfg.get("dataset") or meta["dataset"], a.data_root or cfg.get("data_root"), download=a.download)
    rd.save_grid(real.denormalise(images), nrow=int(cfg.get("ipc") or meta.get("ipc") or 10))
    shown, shown_labels = _as_training_set(images, labels, meta)
    plot_poincare(real, shown, shown_labels, rd.poincare, k=float(cfg.get("k", 1.0)), max_norm=cfg.get("max_norm", 10.0),
                  model=cfg.get("model", "ConvNet"), seed=int(cfg.get("seed", 0)))
    if rd.metrics.exists():
        plot_loss(read_json(rd.metrics), rd.path / "loss.png")
    print(f"wrote {rd.grid}, {rd.poincare}" + (f", {rd.path / 'loss.png'}" if rd.metrics.exists() else ""))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    _setup_logging(a.log_level)
    from .data import DatasetNotFoundError
    from .loops import NonFiniteLossError

    try:
        return {"distill": _distill, "evaluate": _evaluate, "prune": _prune, "plot": _plot}[a.command](a)
    except NonFiniteLossError as e:
        print(f"hyperdm: stopped: {e}", file=sys.stderr)
        return 3
    except (ValueError, FileNotFoundError, FileExistsError, NotImplementedError, DatasetNotFoundError, ImportError) as e:
        print(f"hyperdm {a.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hyperdm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
