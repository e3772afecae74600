"""Run settings as data: the paper's Tables 5/6 (``paper``) and a reduced CPU protocol (``cpu``).

:func:`resolve` turns (preset, method, matcher, dataset, ipc, overrides) into one
:class:`~hyperdm.distill.config.DistillConfig` and records where every setting came from in
``config.sources`` (keyed by path, e.g. ``"matcher.k"``), so a run can print and save exactly what it did.
The tables below name settings by path.

``k`` is geoopt's curvature parameter (points satisfy ``<x,x>_L = -k``, curvature ``-1/k``);
the paper prints it in a column headed "K". ``scale`` is the paper's lambda.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .config import (
    MATCHERS,
    METHODS,
    PRESETS,
    PRUNE_SCORES,
    DanceConfig,
    DistillConfig,
    IDMConfig,
    MatcherConfig,
    parse_overrides,
    validate,
)
from .data import canonical_name
from .settings import NOT_GIVEN, leaves, option, set_path

__all__ = [
    "HDDRow",
    "PAPER_HDD",
    "DistillConfig",
    "MatcherConfig",
    "IDMConfig",
    "DanceConfig",
    "NOT_GIVEN",
    "PRESETS",
    "METHODS",
    "MATCHERS",
    "PRUNE_SCORES",
    "resolve",
    "paper_row",
    "validate",
]


@dataclass(frozen=True)
class HDDRow:
    """One row of the paper's Tables 5/6: ``k`` (geoopt's), ``scale`` (lambda), ``lr_img``."""

    k: float
    scale: float
    lr_img: float


def _rows(method: str, dataset: str, ipc1: tuple, ipc10: tuple, ipc50: tuple | None = None) -> dict:
    out = {(method, dataset, 1): HDDRow(*ipc1), (method, dataset, 10): HDDRow(*ipc10)}
    if ipc50 is not None:
        out[(method, dataset, 50)] = HDDRow(*ipc50)
    return out


#: (method, dataset, ipc) -> HDDRow, transcribed from the paper's Tables 5 and 6.
PAPER_HDD: dict[tuple[str, str, int], HDDRow] = {
    **_rows("dm", "fashion-mnist", (1, 20, 1), (1, 40, 1), (1, 60, 1)),
    **_rows("dm", "svhn", (1, 10, 1), (1, 50, 1), (1, 100, 1)),
    **_rows("dm", "cifar10", (1, 1, 1), (1, 20, 1), (1, 80, 1)),
    **_rows("dm", "cifar100", (1, 10, 1), (2, 100, 1), (2, 120, 1)),
    **_rows("idm", "fashion-mnist", (2, 40, 0.5), (2, 60, 1), (2, 80, 0.2)),
    **_rows("idm", "svhn", (2, 120, 0.5), (2, 120, 1), (2, 120, 0.2)),
    **_rows("idm", "cifar10", (3, 80, 0.5), (3, 100, 1), (3, 120, 0.2)),
    **_rows("idm", "cifar100", (2, 60, 0.5), (2, 80, 0.2), (2, 100, 0.6)),
    **_rows("idm", "tinyimagenet", (2, 80, 0.5), (2, 100, 0.5), (2, 120, 0.6)),
    **_rows("dance", "cifar10", (1.8, 20, 0.02), (0.2, 40, 0.2), (2, 60, 0.5)),
    **_rows("dance", "cifar100", (2, 40, 0.02), (1.5, 80, 0.1), (2, 120, 0.5)),
    **_rows("dance", "imagewoof", (0.6, 100, 0.1), (0.5, 120, 0.1)),
}


def paper_row(method: str, dataset: str, ipc: int) -> HDDRow | None:
    return PAPER_HDD.get((method, canonical_name(dataset), int(ipc)))


#: path -> (value, why): settings a preset gives and the source each follows
_Table = dict[str, tuple[object, str]]

_PAPER_LOOP: _Table = {  # DM (Zhao & Bilen) and the official HDD DM code
    "iterations": (20000, "paper: DM with HDD runs 20,000 iterations"),
    "batch_real": (256, "paper / reference DM: 256 real images per class"),
    "momentum_img": (0.5, "reference DM: SGD on images, momentum 0.5"),
    "eval.every": (2000, "reference DM: evaluate every 2,000 iterations"),
    "eval.epochs": (1000, "reference evaluate_synset: 1,000 epochs"),
    "eval.runs": (3, "paper: mean +- std over 3 runs"),
    "checkpoint_every": (500, "hyperdm"),
}
_CPU_LOOP: _Table = {
    "iterations": (200, "cpu preset (reduced protocol)"),
    "batch_real": (64, "cpu preset (reduced protocol)"),
    "momentum_img": (0.5, "reference DM: SGD on images, momentum 0.5"),
    "eval.every": (0, "cpu preset: evaluate once, at the end"),
    "eval.epochs": (300, "cpu preset (reduced protocol)"),
    "eval.runs": (2, "cpu preset (reduced protocol)"),
    "checkpoint_every": (50, "hyperdm"),
}


_IDM_SRC = "IDM command.txt"
_IDM_COMMON: _Table = {  # uitrbn/IDM command.txt (CIFAR-10 lines; IDM's argparse defaults give plain DM)
    "partition": (2, f"{_IDM_SRC}: --aug (2x2 partition and expansion)"),
    "idm.net_num": (100, "IDM default --net_num 100"),
    "idm.net_initial": (3, "IDM code: the queue starts with 3 networks"),
    "idm.net_generate_interval": (30, "IDM default --net_generate_interval 30"),
    "idm.train_net_num": (1, f"{_IDM_SRC}: --train_net_num 1"),
    "idm.fetch_net_num": (2, "IDM default --fetch_net_num 2"),
    "idm.model_train_steps": (10, "IDM default --model_train_steps 10"),
    "idm.net_batch": (256, "IDM default --trained_bs 256"),
    "idm.lr_net": (0.01, f"{_IDM_SRC}: --net_decay (SGD 0.01, momentum 0.9, wd 5e-4)"),
    "idm.acc_window": (100, f"{_IDM_SRC}: accuracy meters reset at each --eval_interval 100"),
}
_IDM_PAPER_LOOP: _Table = {
    "iterations": (10000, "paper: IDM with HDD runs 10,000 iterations"),
    "batch_real": (256, "IDM default --batch_real 256"),
    "eval.every": (1000, "hyperdm (IDM evaluates every 100; evaluation does not change the result)"),
}
_IDM_CPU_LOOP: _Table = {
    "iterations": (60, "cpu preset (reduced protocol)"),
    "batch_real": (64, "cpu preset (reduced protocol)"),
    "idm.net_num": (10, "cpu preset (reduced protocol)"),
    "idm.net_generate_interval": (10, "cpu preset (reduced protocol)"),
    "idm.model_train_steps": (5, "cpu preset (reduced protocol)"),
    "idm.net_batch": (128, "cpu preset (reduced protocol)"),
    "idm.acc_window": (20, "cpu preset (reduced protocol)"),
    "eval.epochs": (150, "cpu preset (reduced protocol)"),
}


_DANCE_SRC = "DANCE reproduce settings"
_DANCE_COMMON: _Table = {  # Hansong-Zhang/DANCE: arguments/arg_condense.py, reproduce_condense.py, pretrain.py, README
    "partition": (2, "DANCE README: --factor 2 (multi-formation, 2x2)"),
    "batch_real": (128, "DANCE default --batch_real 128"),
    "momentum_img": (0.5, "DANCE default --mom_img 0.5"),
    "match_dsa": ("color_crop_cutout", "DANCE default --aug_type color_crop_cutout"),
    "match_aug_mode": ("M", "DANCE DiffAug: color, crop and cutout all applied, one draw for the batch"),
    "dance.iter_calib": (1, "DANCE default --iter_calib 1"),
    "dance.experts.lr": (0.01, "DANCE pretrain: SGD lr 0.01, momentum 0.9, wd 5e-4, x0.2 at 2/3 and 5/6 of the epochs"),
    "dance.experts.batch": (64, "DANCE pretrain default --batch_real 64"),
}
_DANCE_PAPER_LOOP: _Table = {
    "iterations": (10000, f"{_DANCE_SRC}: --niter 10000 (paper: Dance with HDD 10,000 iterations)"),
    "dance.experts.count": (20, f"{_DANCE_SRC}: --pretrain_amount 20"),
    "dance.experts.epochs": (60, f"{_DANCE_SRC}: --pretrain_epochs 60"),
    "eval.every": (1000, "hyperdm (Dance evaluates every 500; evaluation does not change the result)"),
}
_DANCE_CPU_LOOP: _Table = {
    "iterations": (60, "cpu preset (reduced protocol)"),
    "batch_real": (64, "cpu preset (reduced protocol)"),
    "dance.experts.count": (4, "cpu preset (reduced protocol): few experts"),
    "dance.experts.epochs": (4, "cpu preset (reduced protocol): short-trained experts"),
    "dance.experts.per_class": (200, "cpu preset (reduced protocol): experts see 200 images per class"),
    "eval.epochs": (150, "cpu preset (reduced protocol)"),
}


def _dance_lr_img(dataset: str, ipc: int) -> tuple[float, str]:
    """DANCE's --lr_img rule (in pixel units: Dance optimises images in [0, 1])."""
    if dataset in ("imagewoof", "imagenette"):
        return round(0.1 * ipc, 10), f"{_DANCE_SRC}: lr_img 0.1 x ipc for ImageNet subsets (pixel units)"
    return round(0.01 * ipc, 10), f"{_DANCE_SRC}: lr_img 0.01 x ipc (pixel units)"


def _dance_specifics(dataset: str) -> _Table:
    if dataset in ("imagewoof", "imagenette"):
        return {
            "model": ("ConvNetD5", f"{_DANCE_SRC}: depth-5 ConvNet for ImageNet subsets"),
            "dance.experts.count": (5, f"{_DANCE_SRC}: --pretrain_amount 5 for ImageNet subsets"),
            "dance.experts.epochs": (80, f"{_DANCE_SRC}: --pretrain_epochs 80 for ImageNet subsets"),
        }
    if dataset == "tinyimagenet":
        return {"model": ("ConvNetD4", "DM / IDM: depth-4 ConvNet for 64x64 images")}
    return {}


def _idm_specifics(dataset: str, ipc: int) -> _Table:
    """command.txt settings that depend on dataset and IPC (Fashion-MNIST / SVHN follow the CIFAR-10 lines)."""
    out: _Table = {"idm.ce_weight": (0.5 if ipc < 50 else 0.1, f"{_IDM_SRC}: --ce_weight (CIFAR-10 IPC {ipc})")}
    if ipc == 1:
        out["batch_real"] = (5000, f"{_IDM_SRC}: --batch_real 5000 at IPC 1")
        out["idm.net_generate_interval"] = (5, f"{_IDM_SRC}: --net_generate_interval 5 at IPC 1")
    if dataset == "cifar100" and ipc == 10:
        out["idm.ce_weight"] = (0.1, f"{_IDM_SRC}: CIFAR-100 IPC 10 --ce_weight 0.1")
        out["idm.model_train_steps"] = (50, f"{_IDM_SRC}: CIFAR-100 IPC 10 --model_train_steps 50")
    if dataset == "tinyimagenet":
        out["idm.ce_weight"] = (0.8 if ipc == 50 else 0.5, f"{_IDM_SRC}: Tiny ImageNet --ce_weight")
        if ipc == 50:
            out["idm.model_train_steps"] = (50, f"{_IDM_SRC}: Tiny ImageNet IPC 50 --model_train_steps 50")
        out["model"] = ("ConvNetD4", "IDM / DM: depth-4 ConvNet for 64x64 images")
    return out


def _method_table(preset: str, method: str, dataset: str, ipc: int) -> _Table:
    """path -> (value, why) of the loop, evaluation and method settings of ``preset`` for ``method``."""
    paper = preset == "paper"
    table: _Table = dict(_PAPER_LOOP if paper else _CPU_LOOP)
    table["model"] = ("ConvNet", "paper: ConvNet-3 (width 128, instance norm)")
    table["eval.lr"] = (0.01, "reference evaluate_synset: SGD lr 0.01, momentum 0.9, wd 5e-4")
    table["eval.batch"] = (256, "reference evaluate_synset: batch 256")
    if method == "dance":
        table["init"] = (
            "real",
            "DANCE --init mix: random real images, f*f of them down-sampled into each stored image",
        )
        table["dsa_strategy"] = (
            "color_crop_cutout_flip_scale_rotate",
            "DANCE --dsa_strategy color_crop_cutout_flip_scale_rotate (evaluation)",
        )
        table.update(_DANCE_COMMON)
        table.update(_DANCE_PAPER_LOOP if paper else _DANCE_CPU_LOOP)
        if paper:
            table.update(_dance_specifics(dataset))
        table["lr_img"] = _dance_lr_img(dataset, ipc)
        return table
    table["init"] = ("real", "reference DM: initialise from random real images")
    table["dsa_strategy"] = (
        "color_crop_cutout_flip_scale_rotate",
        "reference DM: DSA color_crop_cutout_flip_scale_rotate",
    )
    table["match_dsa"] = (None, "the matching uses dsa_strategy")
    table["match_aug_mode"] = ("S", "reference DM: DSA aug_mode 'S' (one group per call)")
    if method == "idm":
        table.update(_IDM_COMMON)
        table.update(_IDM_PAPER_LOOP if paper else _IDM_CPU_LOOP)
        specifics = _idm_specifics(dataset, ipc)
        table.update(specifics if paper else {"idm.ce_weight": specifics["idm.ce_weight"]})
        table["lr_img"] = (0.2, f"{_IDM_SRC}: --lr_img 0.2")
    else:
        table["lr_img"] = (1.0, "reference DM: lr_img 1")
    return table


def _matcher_table(preset: str, method: str, matcher: str, dataset: str, ipc: int, given: set[str]) -> _Table:
    """path -> (value, why) of the matcher settings (and the paper's lr_img where its tables give one)."""
    if matcher == "mmd":
        unused = {
            p: (v, "unused by the mmd matcher")
            for p, v in (
                ("matcher.k", 1.0),
                ("matcher.scale", 20.0),
                ("matcher.max_norm", 10.0),
                ("matcher.hierarchical", False),
                ("matcher.radius", None),
            )
        }
        return {**unused, "matcher.dtype": ("float32", "reference DM: the MMD line in float32")}
    table: _Table = {
        "matcher.max_norm": (10.0, "official HDD code: exp-map clamps |v|/sqrt(k) at 10"),
        "matcher.dtype": ("float64", "official HDD code: matching in float64"),
    }
    row, dm_row = paper_row(method, dataset, ipc), paper_row("dm", dataset, ipc)
    if row is not None:
        why = f"paper Tables 5/6 ({method}, {dataset}, ipc {ipc})"
        table.update({"matcher.k": (row.k, why), "matcher.scale": (row.scale, why), "lr_img": (row.lr_img, why)})
    elif preset == "paper" and not {"matcher.k", "matcher.scale"} <= given:
        raise ValueError(
            f"the paper gives no HDD row for method={method}, dataset={dataset}, ipc={ipc}; "
            "pass --k and --scale (and --lr-img) explicitly, or use --preset cpu."
        )
    elif method == "dance" and dm_row is not None:  # e.g. Fashion-MNIST: no Dance row; keep Dance's lr_img
        why = f"paper Table 5 (dm, {dataset}, ipc {ipc}): the paper has no Dance row for {dataset}"
        table.update({"matcher.k": (dm_row.k, why), "matcher.scale": (dm_row.scale, why)})
    else:
        why = "official DM-HDD code (k = 1, lambda = 20); no paper row"
        table.update({"matcher.k": (1.0, why), "matcher.scale": (20.0, why)})
    return table


def _override_source(path: str, value: Any) -> str:
    if path == "matcher.max_norm" and value is None:
        return "command line / override: no clamp (exact exp-map; not the method as published)"
    if path == "matcher.radius" and value is not None:
        return "command line / override: radius calibration (not the method as published)"
    return "command line / override"


#: the settings resolve() takes as arguments (overrides may give them too)
_ARGUMENTS = ("preset", "method", "matcher.kind", "dataset", "ipc")


def resolve(
    *,
    preset: str = "cpu",
    method: str = "dm",
    matcher: str = "hyperbolic",
    dataset: str = "fashion-mnist",
    ipc: int = 10,
    overrides: dict[str, Any] | None = None,
) -> DistillConfig:
    """Resolve a preset into a full :class:`DistillConfig`; ``overrides`` (e.g. from the CLI) win.

    ``overrides`` name settings by path (``"matcher.k"``), by flat name as on the command line (``"k"``,
    ``"eval_epochs"``) or by section (``{"eval": {"epochs": 5}}``); :data:`NOT_GIVEN` leaves a setting to the
    preset, and ``None`` is a value where a setting takes it (``{"max_norm": None}``: no clamp). Every key
    and type is checked before anything is resolved. The ``idm`` and ``dance`` sections exist only for
    their method; a setting of theirs given for another method is an error.

    ``paper``: the paper's Tables 5/6 for ``k``, ``scale`` (lambda) and ``lr_img``; where the
    paper is silent it follows the official HDD code (exp-map clamp ``|v|/sqrt(k) <= 10``,
    hyperbolic matching in float64) and the reference DM code (momentum 0.5, 256 real images
    per class, evaluation every 2,000 iterations). ``cpu``: the same loop, shortened (200
    iterations, 64 real images per class, 300-epoch evaluation x 2 runs) so that a 2-core
    machine finishes Fashion-MNIST IPC 10 in minutes; it is a reduced protocol and its
    accuracies are not the paper's.
    """
    given = parse_overrides(overrides)
    # the arguments as given (overrides may replace them): Any until the checks below
    args: dict[str, Any] = {"preset": preset, "method": method, "matcher.kind": matcher, "dataset": dataset, "ipc": ipc}
    args.update({p: given.pop(p) for p in _ARGUMENTS if p in given})
    preset, method, matcher, ipc = args["preset"], args["method"], args["matcher.kind"], args["ipc"]
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}.")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}.")
    if matcher not in MATCHERS:
        raise ValueError(f"unknown matcher {matcher!r}; choose one of {', '.join(MATCHERS)}.")
    dataset = args["dataset"] = canonical_name(args["dataset"])
    if not isinstance(ipc, int) or isinstance(ipc, bool) or ipc < 1:
        raise ValueError(f"ipc (images per class) must be a positive integer; got {ipc!r}.")
    for path in given:
        section = path.split(".")[0]
        if section in ("idm", "dance") and section != method:
            opt = next(option(flat, f) for p, flat, f, _ in leaves(DistillConfig) if p == path)
            raise ValueError(
                f"{path} ({opt}) is a setting of --method {section}; this run is "
                f"--method {method}. Drop it, or run --method {section}."
            )
    cfg = DistillConfig(method=method, dataset=dataset, ipc=ipc, preset=preset)
    src = dict.fromkeys(_ARGUMENTS, "argument")
    table = _method_table(preset, method, dataset, ipc)
    table.update(_matcher_table(preset, method, matcher, dataset, ipc, set(given)))
    for path, (value, why) in {"matcher.kind": (matcher, "argument"), **table}.items():
        set_path(cfg, path, value)
        src[path] = why
    for path, value in given.items():
        set_path(cfg, path, value)
        src[path] = _override_source(path, value)
    cfg.sources = src
    validate(cfg)
    return cfg
