"""``hyperdm`` command line: ``distill``, ``evaluate``, ``prune``, ``plot`` (also ``python -m hyperdm``).

Every command checks its arguments and the resources they name (settings, architecture names,
the device, the output paths, the input files) before any work, and writes nothing when a check
fails. One error boundary (:func:`main`) turns every expected failure into one line on stderr
that names the problem and the fix, with exit status 2; an unexpected one prints one line and
exits 1, and ``--debug`` shows its traceback. Results are never replaced without ``--overwrite``.
"""

from __future__ import annotations

import argparse
import errno
import logging
import sys
import traceback
import types
import typing
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from .settings import fraction, int_at_least, positive_float

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


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (the usage of ``distill`` alone is a screenful)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_common_args(p: argparse.ArgumentParser, *, top: bool) -> None:
    """--log-level and --debug, accepted before and after the subcommand (the subcommand's copies default to
    'not given', so they never undo the top-level ones)."""
    p.add_argument(
        "--log-level",
        default="INFO" if top else argparse.SUPPRESS,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="console log level (default INFO)",
    )
    p.add_argument(
        "--debug",
        action="store_true",
        default=False if top else argparse.SUPPRESS,
        help="show the Python traceback of an error (for bug reports)",
    )


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-root",
        default=None,
        metavar="DIR",
        help="where the datasets live (default: $HYPERDM_DATA, else ./data, then system copies such as "
        "/usr/share/datasets/fashion-mnist); a root given here (or in $HYPERDM_DATA) is the only place "
        "searched. Fashion-MNIST is found in the torchvision layout DIR/FashionMNIST/raw",
    )
    p.add_argument(
        "--download",
        action="store_true",
        help="fetch Fashion-MNIST / MNIST from their canonical source if missing (nothing is downloaded without it)",
    )
    p.add_argument("--device", default=None, help="torch device, e.g. cpu, cuda, cuda:1 (default: cpu)")
    p.add_argument(
        "--seed", type=int, default=None, help="seed of every random choice (default 0); same seed on CPU = same images"
    )
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bars: a one-line heartbeat in the log every 30 s instead (also when not in a terminal)",
    )
    _add_common_args(p, top=False)


def _add_setting_args(p: argparse.ArgumentParser) -> None:
    """One option per setting of :class:`~hyperdm.distill.config.DistillConfig`, read from its fields: the flag is
    ``--`` + the flat name (``matcher.k``: ``--k``; ``eval.epochs``: ``--eval-epochs``) unless the field names
    another, the type, choices and help come from the field. Each defaults to NOT_GIVEN (the preset decides)."""
    from .config import DistillConfig
    from .settings import NOT_GIVEN, leaves

    groups: dict[str, Any] = {}
    titles = {
        "matcher": (
            "the matcher",
            "the MMD line or HDD's hyperbolic one (k, lambda, the clamp, the radius calibration)",
        ),
        "eval": ("evaluation", "when and how the synthetic set is evaluated"),
        "idm": ("IDM (--method idm)", "settings only IDM has; refused for the other methods"),
        "dance": ("Dance (--method dance)", "settings only Dance has; refused for the other methods"),
        "": ("the distillation loop", None),
    }
    for path, flat, f, tp in leaves(DistillConfig):
        meta = f.metadata
        if not meta.get("cli", True):
            continue
        section = path.split(".")[0] if "." in path else ""
        if section not in groups:
            title, about = titles.get(section, (section, None))
            groups[section] = p.add_argument_group(title, about)
        g = groups[section]
        base = (
            [a for a in typing.get_args(tp) if a is not type(None)]
            if typing.get_origin(tp) in (typing.Union, types.UnionType)
            else [tp]
        )
        kw: dict[str, Any] = {
            "dest": flat,
            "default": NOT_GIVEN,
            "help": meta["help"] + ("" if path == flat else f" [{path}]"),
        }
        if base == [bool]:
            kw.update(action="store_const", const=True)
        else:
            elem = base[0]
            if typing.get_origin(elem) is tuple:
                elem = typing.get_args(elem)[0]
                kw["nargs"] = "+"
            kw.update(type=meta.get("parse") or elem, choices=meta.get("choices"), metavar=meta.get("metavar"))
        flag, _ = _setting_flags(flat)
        none_flag = meta.get("none_flag")  # e.g. --no-clamp: the setting None
        g.add_argument(flag, **kw)
        if none_flag is not None:
            g.add_argument(none_flag[0], dest=f"{flat}__none", action="store_true", help=none_flag[1])


def _setting_options() -> list[str]:
    """Flat names (= argparse dests) of the settings that have a command-line option."""
    from .config import DistillConfig
    from .settings import leaves

    return [flat for _, flat, f, _ in leaves(DistillConfig) if f.metadata.get("cli", True)]


def _setting_flags(flat: str) -> tuple[str, str | None]:
    """The command-line flag of the setting with flat name ``flat``, and its None flag (e.g. --no-clamp) if any."""
    from .config import DistillConfig
    from .settings import leaves, option

    f = next(f for _, name, f, _ in leaves(DistillConfig) if name == flat)
    none_flag = f.metadata.get("none_flag")
    return option(flat, f), none_flag[0] if none_flag else None


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__
    from .config import MATCHERS, METHODS, PRESETS, PRUNE_SCORES

    parser = _Parser(
        prog="hyperdm",
        description="Hyperbolic dataset distillation (HDD) toolkit.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--version", action="version", version=f"hyperdm {__version__}", help="print the version and exit"
    )
    _add_common_args(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{distill,evaluate,prune,plot}")

    d = sub.add_parser(
        "distill",
        help="distil a synthetic set, evaluate it, write the run directory",
        description="Distil IPC synthetic images per class with a DM-family loop and a matcher, then "
        "evaluate them. Every setting comes from --preset unless given here; the run "
        "prints and saves (config.json) what each setting resolved to and why.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d.add_argument("--method", choices=METHODS, default="dm", help="distillation loop (default dm)")
    d.add_argument(
        "--matcher",
        choices=MATCHERS,
        default="hyperbolic",
        help="mmd: DM's Euclidean mean matching (the baseline); hyperbolic: HDD (default)",
    )
    d.add_argument(
        "--dataset",
        default="fashion-mnist",
        help="fashion-mnist (default), mnist, cifar10, cifar100, svhn, tinyimagenet, imagewoof, imagenette, "
        "imagefolder",
    )
    d.add_argument("--ipc", type=int, default=10, help="synthetic images per class (default 10)")
    d.add_argument(
        "--preset",
        choices=PRESETS,
        default="cpu",
        help="paper: the paper's Tables 5/6 and full protocol (20,000 iterations, 1,000-epoch evaluation); "
        "cpu: a reduced protocol a 2-core machine finishes in minutes (default)",
    )
    _add_setting_args(d)
    d.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="run directory (default runs/<method>-<matcher>-<dataset>-ipc<N>-seed<S>)",
    )
    d.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    d.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run files already in --out (without it, or --resume, an existing run is refused)",
    )
    _add_data_args(d)

    e = sub.add_parser(
        "evaluate",
        help="evaluate a synthetic set with the standard protocol",
        description="Train fresh networks on a synthetic set (SGD lr 0.01, momentum 0.9, wd 5e-4, "
        "batch 256, lr x0.1 at half, DSA) and report final-epoch test accuracy, mean +- std.",
    )
    e.add_argument("path", help="a run directory or a synthetic .pt ({'data': [[images, labels]]})")
    e.add_argument("--dataset", help="dataset of the test set (default: from the run's config.json or the .pt)")
    e.add_argument(
        "--epochs", type=int_at_least(1), default=1000, help="training epochs (default 1000, the standard protocol)"
    )
    e.add_argument("--runs", type=int_at_least(1), default=3, help="fresh networks per architecture (default 3)")
    e.add_argument("--arch", nargs="+", default=["ConvNet"], metavar="NAME", help="ConvNet AlexNet VGG11 ResNet18")
    e.add_argument(
        "--dsa", default="color_crop_cutout_flip_scale_rotate", help="DSA strategy during training ('none' disables)"
    )
    e.add_argument("--out", default=None, metavar="FILE", help="write the results as JSON here (default: print only)")
    e.add_argument("--overwrite", action="store_true", help="replace --out if it exists (refused otherwise)")
    _add_data_args(e)

    p = sub.add_parser(
        "prune",
        help="rank real images by hyperbolic radius and keep a fraction",
        description="Score every training image by its hyperbolic radius (or distance to its class "
        "centroid) under random ConvNets and save the kept indices (.npy and .json).",
    )
    p.add_argument("--dataset", default="fashion-mnist", help="dataset to prune")
    p.add_argument("--keep", type=fraction, required=True, help="fraction of each class to keep, in (0, 1], e.g. 0.2")
    p.add_argument(
        "--score",
        choices=PRUNE_SCORES,
        default="radius",
        help="ranking score (default radius; random: uniform per class, the baseline)",
    )
    p.add_argument(
        "--nets", type=int_at_least(1), default=3, help="random ConvNets to average the score over (default 3)"
    )
    p.add_argument("--k", type=positive_float, default=1.0, help="geoopt's curvature parameter k (curvature -1/k)")
    p.add_argument(
        "--out",
        required=True,
        metavar="FILE",
        help="output name; writes FILE.npy (indices) and FILE.json, keeping FILE as typed (kept_0.01 -> kept_0.01.npy)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace FILE.npy / FILE.json if they exist (refused otherwise)"
    )
    _add_data_args(p)

    q = sub.add_parser(
        "plot",
        help="redraw a run's figures (grid, Poincare disk, loss curve)",
        description="Redraw synthetic.png, poincare.png and loss.png of a run directory from its "
        "synthetic.pt and metrics.json (the figures are replaced; the results are only read).",
    )
    q.add_argument("run", help="a run directory written by `hyperdm distill`")
    _add_data_args(q)
    return parser


def _setup_logging(level: str) -> None:
    """The console log at ``level``; the handler has the level itself, so run.log (which records INFO while a run
    lasts) never brings INFO lines to a console asked for WARNING."""
    root = logging.getLogger("hyperdm")
    console = [
        h for h in root.handlers if isinstance(h, logging.StreamHandler) and getattr(h, "_hyperdm_console", False)
    ]
    if not console:
        new = logging.StreamHandler(sys.stderr)
        new.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        new._hyperdm_console = True  # type: ignore[attr-defined]
        root.addHandler(new)
        console = [new]
    for h in console:
        if h.stream is not sys.stderr:  # main() called again (tests, notebooks) after sys.stderr was replaced
            h.stream = sys.stderr  # not setStream(): it flushes the old stream, which may be closed
        h.setLevel(getattr(logging, level))
    root.setLevel(getattr(logging, level))


def _fill_defaults(a: argparse.Namespace) -> None:
    """Record which of the shared options were typed (``a.given``), then fill in their defaults."""
    a.given = {name for name in ("seed", "device", "data_root") if getattr(a, name, None) is not None}
    if getattr(a, "seed", None) is None:
        a.seed = 0
    if getattr(a, "device", None) is None:
        a.device = "cpu"


def _distill(a: argparse.Namespace) -> int:
    from . import distill
    from .evaluate import format_accuracy
    from .parallel import launched_rank
    from .presets import resolve
    from .progress import format_seconds
    from .settings import NOT_GIVEN

    overrides: dict[str, Any] = {name: getattr(a, name) for name in _setting_options()}
    for name in overrides:
        if getattr(a, f"{name}__none", False):  # --no-clamp: max_norm None, an ordinary override
            if overrides[name] is not NOT_GIVEN:
                flag, off = _setting_flags(name)
                raise ValueError(f"{off} and {flag} contradict each other; pass one of them.")
            overrides[name] = None
    # only what was typed is labelled "command line" in the settings table
    overrides.update({name: getattr(a, name) for name in ("seed", "device", "data_root") if name in a.given})
    if a.download:
        overrides["download"] = True
    cfg = resolve(
        preset=a.preset, method=a.method, matcher=a.matcher, dataset=a.dataset, ipc=a.ipc, overrides=overrides
    )
    out = a.out or f"runs/{cfg.method}-{cfg.matcher.kind}-{cfg.dataset}-ipc{cfg.ipc}-seed{cfg.seed}"
    a.out = out  # (for the line an interruption prints)
    metrics = distill(cfg, out, resume=a.resume, overwrite=a.overwrite, progress=not a.no_progress)
    if launched_rank() != 0:  # rank 0 speaks for the run
        return 0
    print(f"run directory: {Path(out).resolve()}")
    if not metrics["evals"]:
        print("no evaluation (--eval-runs 0); evaluate the synthetic set later with `hyperdm evaluate <run directory>`")
    for e in metrics["evals"]:
        for arch, r in e.items():
            if arch != "iteration":
                acc = format_accuracy(r["accs"])
                print(f"iteration {e['iteration']}: {arch} test accuracy {acc}, {r['epochs']} epochs")
    ev = metrics.get("eval_seconds")
    print(
        f"distillation {format_seconds(metrics['distill_seconds'])}"
        + (f", evaluation {format_seconds(ev)}" if ev else "")
    )
    return 0


def _evaluate(a: argparse.Namespace) -> int:
    from .artifacts import check_new_files, load_synthetic, write_json
    from .data import load_dataset
    from .evaluate import EvalConfig, check_synthetic, evaluate_synthetic, format_accuracy

    cfg = EvalConfig(
        epochs=a.epochs,
        runs=a.runs,
        archs=tuple(a.arch),
        seed=a.seed,
        device=a.device,
        dsa_strategy="" if a.dsa == "none" else a.dsa,
    )
    cfg.validate()  # epochs, runs, architecture names, DSA strategy, device
    out = Path(a.out) if a.out else None
    if out is not None:
        check_new_files([out], overwrite=a.overwrite)
    images, labels, meta = load_synthetic(a.path)  # weights_only=True: nothing in the file runs
    config: dict[str, Any] = c if isinstance(c := meta.get("config"), dict) else {}
    dataset = a.dataset or config.get("dataset") or meta.get("dataset")
    if not dataset or not isinstance(dataset, str):
        raise ValueError(f"{a.path} does not say which dataset it was distilled from; pass --dataset NAME.")
    if meta.get("normalised") is False:
        raise ValueError("this synthetic set is stored in pixel scale; hyperdm evaluates normalised images.")
    real = load_dataset(dataset, a.data_root, download=a.download)
    if tuple(images.shape[1:]) != (real.info.channels, *real.info.im_size):
        raise ValueError(
            f"the synthetic images are {tuple(images.shape[1:])} but {real.info.name} images are "
            f"{(real.info.channels, *real.info.im_size)}; pass the right --dataset."
        )
    images, labels = _as_training_set(images, labels, meta)
    check_synthetic(images, labels, real.info)
    res = evaluate_synthetic(
        images, labels, real.test_images, real.test_labels, real.info, cfg, progress=not a.no_progress
    )
    for arch, r in res.items():
        print(f"{arch}: {format_accuracy(r['accs'])} ({a.epochs} epochs, final epoch)")
    if out is not None:
        write_json(
            out,
            {
                "path": str(a.path),
                "dataset": real.info.name,
                "eval": {"epochs": a.epochs, "runs": a.runs, "seed": a.seed},
                "results": res,
            },
        )
    return 0


def _as_training_set(images: Any, labels: Any, meta: dict[str, Any]) -> tuple[Any, Any]:
    """Expand a partitioned set (``partition`` in its .pt) into the images it trains on."""
    from .synset import expand

    partition = meta.get("partition", 1)
    if not isinstance(partition, int) or isinstance(partition, bool) or partition < 1:
        raise ValueError(
            f"the set's 'partition' must be an integer >= 1 (1: plain images; 2: IDM / Dance 2x2 grids); "
            f"got {partition!r}."
        )
    if partition > 1:
        images, labels = expand(images, labels, partition)
        log.info("expanded the %dx%d-partitioned set to %d training images", partition, partition, images.shape[0])
    return images, labels


def _prune(a: argparse.Namespace) -> int:
    import io

    import numpy as np

    from .artifacts import atomic_write_bytes, check_new_files, output_path, write_json
    from .data import load_dataset
    from .parallel import check_device, joined
    from .prune import prune_indices

    check_device(a.device)
    # the names keep what was typed: kept_0.01 -> kept_0.01.npy (a trailing .npy / .json is replaced)
    npy, js = (output_path(a.out, ext, strip=(".npy", ".json")) for ext in (".npy", ".json"))
    check_new_files([npy, js], overwrite=a.overwrite)
    real = load_dataset(a.dataset, a.data_root, download=a.download)
    info = real.info
    with joined(a.device) as (par, device):  # under torchrun each rank scores its stride of the images
        # the same scoring networks as `distill --prune-keep` with the same --seed, so both keep the same images
        kept = prune_indices(
            real.train_images,
            real.train_labels,
            info,
            keep=a.keep,
            score=a.score,
            nets=a.nets,
            k=a.k,
            seed=a.seed,
            device=device,
            progress=not a.no_progress,
        )
    if not par.is_main:
        return 0
    buf = io.BytesIO()
    np.save(buf, kept.numpy().astype(np.int64))
    npy_existed = npy.exists()
    atomic_write_bytes(npy, buf.getvalue())
    try:
        write_json(
            js,
            {
                "dataset": info.name,
                "keep": a.keep,
                "score": a.score,
                "nets": a.nets,
                "k": a.k,
                "seed": a.seed,
                "kept": int(kept.numel()),
                "total": int(real.train_labels.numel()),
            },
        )
    except BaseException:
        if not npy_existed:  # no half pair: the .npy alone would look like a finished result
            npy.unlink(missing_ok=True)
        raise
    print(f"kept {kept.numel()} of {real.train_labels.numel()} images -> {npy}")
    return 0


def _plot(a: argparse.Namespace) -> int:
    from .artifacts import RunDir, check_writable, load_synthetic, read_json
    from .config import run_setting
    from .data import load_dataset
    from .plots import plot_loss, plot_poincare

    run = Path(a.run)
    if not run.exists():
        raise FileNotFoundError(f"no run directory at {run}; pass a directory written by `hyperdm distill`.")
    if not run.is_dir():
        raise NotADirectoryError(
            f"{run} is a file; `hyperdm plot` redraws the figures of a run directory: pass the "
            f"directory that holds the run (for a synthetic .pt alone, `hyperdm evaluate {run}`)."
        )
    rd = RunDir(run)
    if not rd.synthetic.exists():
        raise FileNotFoundError(
            f"{run} holds no synthetic.pt, so it is not a finished run directory; pass one written "
            "by `hyperdm distill` (or finish the run with `hyperdm distill ... --resume`)."
        )
    check_writable(run, what="the run directory", fix="copy the run directory to a writable disk and plot the copy")
    images, labels, meta = load_synthetic(rd.path)
    cfg: dict[str, Any] = c if isinstance(c := meta.get("config"), dict) else {}
    dataset = cfg.get("dataset") or meta.get("dataset")
    if not dataset or not isinstance(dataset, str):
        raise ValueError(f"{run} does not say which dataset it was distilled from (no config.json).")
    real = load_dataset(dataset, a.data_root or cfg.get("data_root"), download=a.download)
    metrics = read_json(rd.metrics) if rd.metrics.exists() else {}
    with rd.lock("plot"):  # not while a distill writes there
        rd.save_grid(real.denormalise(images), nrow=int(cfg.get("ipc") or meta.get("ipc") or 10))
        shown, shown_labels = _as_training_set(images, labels, meta)
        # config.json is nested (matcher.k), or flat (k) as the first release wrote it: run_setting reads both;
        # a radius calibration's scale alpha is in metrics.json, and k / alpha^2 shows the calibrated geometry
        alpha = metrics.get("matcher_alpha")
        k = float(run_setting(cfg, "matcher.k", 1.0)) / (float(alpha) ** 2 if alpha else 1.0)
        plot_poincare(
            real,
            shown,
            shown_labels,
            rd.poincare,
            k=k,
            max_norm=run_setting(cfg, "matcher.max_norm", 10.0),
            model=cfg.get("model", "ConvNet"),
            seed=int(cfg.get("seed", 0)),
        )
        if metrics:
            plot_loss(metrics, rd.path / "loss.png")
    print(f"wrote {rd.grid}, {rd.poincare}" + (f", {rd.path / 'loss.png'}" if rd.metrics.exists() else ""))
    return 0


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "distill": _distill,
    "evaluate": _evaluate,
    "prune": _prune,
    "plot": _plot,
}

#: what to do about an OSError, by errno
_OS_FIXES = {
    errno.ENOSPC: "no finished file was changed; free some space or choose --out on another disk",
    errno.EDQUOT: "no finished file was changed; free some space or choose --out on another disk",
    errno.EROFS: "the file system is read-only; choose --out on a writable disk",
    errno.EACCES: "choose --out in a directory you may write to (or fix its permissions)",
    errno.EPERM: "choose --out in a directory you may write to (or fix its permissions)",
}


def _expected_message(e: BaseException) -> str | None:
    """The one-line message of an expected failure, or None for a bug."""
    from .loops import NonFiniteLossError

    if isinstance(e, NonFiniteLossError):
        return f"stopped: {e}"
    if isinstance(e, OSError):
        if e.errno is None or not e.strerror:  # raised by hyperdm with a whole sentence
            return str(e)
        text = f"{e.filename}: {e.strerror}" if e.filename else e.strerror
        fix = _OS_FIXES.get(e.errno)
        return f"{text}; {fix}." if fix else f"{text}."
    if isinstance(e, (ValueError, NotImplementedError, ImportError)):
        return str(e)
    if type(e).__name__ == "OutOfMemoryError":  # torch.OutOfMemoryError (a RuntimeError)
        return (
            f"out of memory on the device: {str(e).splitlines()[0]}; lower --batch-real or --ipc, or use a device "
            "with more memory."
        )
    return None


def _warning_to_log(message: Warning | str, category: type[Warning], *args: object, **kwargs: object) -> None:
    """A warning on the command line: one WARNING line of the log (console and run.log), without the source line."""
    logging.getLogger("hyperdm").warning("%s", message)


def _resume_hint(a: argparse.Namespace) -> str:
    """How to continue an interrupted ``distill`` (its checkpoint names the iteration), else nothing."""
    if a.command != "distill" or not getattr(a, "out", None):
        return ""
    ck = Path(a.out) / "checkpoint.pt"
    if not ck.exists():
        return " (before the first checkpoint: nothing to resume)"
    return f"; the checkpoint in {a.out} is kept: continue with the same command and --resume"


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``hyperdm`` command; returns the exit status (0, 2 for an expected failure, 1 for a bug, 130 for
    Ctrl-C, ``128 + signal`` for SIGTERM, SIGHUP and SIGUSR1: 143, 129, 138)."""
    parser = build_parser()
    a = parser.parse_args(argv)
    _setup_logging(a.log_level)
    _fill_defaults(a)
    from .progress import redirect_logging
    from .signals import Stopped, stop_requests

    try:
        # SIGTERM, SIGHUP, SIGUSR1: like Ctrl-C (a run saves its checkpoint first); warnings as one log line each
        with stop_requests(), warnings.catch_warnings(), redirect_logging():  # log lines above the bars
            warnings.showwarning = _warning_to_log
            return _COMMANDS[a.command](a)
    except KeyboardInterrupt:
        print(f"hyperdm {a.command}: interrupted{_resume_hint(a)}", file=sys.stderr)
        return 130
    except Stopped as e:
        print(f"hyperdm {a.command}: {e}{_resume_hint(a)}", file=sys.stderr)
        return e.exit_code
    except Exception as e:  # the one error boundary of the command line
        msg = _expected_message(e)
        if a.debug:
            traceback.print_exc()
        if msg is None:
            print(
                f"hyperdm {a.command}: internal error: {type(e).__name__}: {e}. This is a bug in hyperdm; run again "
                "with --debug for the traceback and report it.",
                file=sys.stderr,
            )
            return 1
        print(f"hyperdm {a.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
