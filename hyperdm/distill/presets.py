"""Run settings as data: the paper's Tables 5/6 (``paper``) and a reduced CPU protocol (``cpu``).

:func:`resolve` turns (preset, method, matcher, dataset, ipc, overrides) into one
:class:`DistillConfig` and records where every setting came from in ``config.sources``, so a
run can print and save exactly what it did.

``k`` is geoopt's curvature parameter (points satisfy ``<x,x>_L = -k``, curvature ``-1/k``);
the paper prints it in a column headed "K". ``scale`` is the paper's lambda.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from .data import canonical_name

__all__ = ["HDDRow", "PAPER_HDD", "DistillConfig", "PRESETS", "METHODS", "MATCHERS", "resolve", "paper_row"]

METHODS = ("dm", "idm", "dance")
MATCHERS = ("mmd", "hyperbolic")
PRESETS = ("paper", "cpu")
#: real-data pruning scores: hyperbolic radius (the paper), distance to the class centroid, uniform random (baseline)
PRUNE_SCORES = ("radius", "centroid", "random")


@dataclass(frozen=True)
class HDDRow:
    """One row of the paper's Tables 5/6: ``k`` (geoopt's), ``scale`` (lambda), ``lr_img``."""

    k: float
    scale: float
    lr_img: float


def _rows(method: str, dataset: str, ipc1: tuple, ipc10: tuple, ipc50: Optional[tuple] = None) -> dict:
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


def paper_row(method: str, dataset: str, ipc: int) -> Optional[HDDRow]:
    return PAPER_HDD.get((method, canonical_name(dataset), int(ipc)))


@dataclass
class DistillConfig:
    """Every setting of a distillation run. ``sources`` says where each value came from."""

    method: str = "dm"
    matcher: str = "hyperbolic"
    dataset: str = "fashion-mnist"
    ipc: int = 10
    preset: str = "cpu"
    # the distillation loop
    iterations: int = 20000
    batch_real: int = 256
    lr_img: float = 1.0
    momentum_img: float = 0.5
    init: str = "real"
    model: str = "ConvNet"
    dsa_strategy: str = "color_crop_cutout_flip_scale_rotate"
    match_dsa: Optional[str] = None  # DSA strategy of the matching step; None: dsa_strategy (Dance: color_crop_cutout)
    match_aug_mode: str = "S"  # "S": one DSA group per call (DC/DM/IDM); "M": every group in order (Dance's DiffAug)
    # IDM (Zhao et al. 2023): model queue, partition-and-expansion, cross-entropy term
    partition: int = 1
    net_num: int = 100
    net_initial: int = 3
    net_generate_interval: int = 30
    train_net_num: int = 1
    fetch_net_num: int = 2
    model_train_steps: int = 10
    net_batch: int = 256
    lr_net: float = 0.01
    ce_weight: float = 0.0
    acc_window: int = 100
    # Dance (Zhang et al. 2024): pretrained experts, interpolated encoders, calibration
    experts: int = 20
    expert_epochs: int = 60
    expert_lr: float = 0.01
    expert_batch: int = 64
    expert_per_class: Optional[int] = None
    expert_seed: int = 0
    expert_dir: Optional[str] = None
    iter_calib: int = 1
    # the matcher (hyperbolic only)
    k: float = 1.0
    scale: Union[float, str] = 20.0  # a number, or "auto": MMD / distance of the first batch
    max_norm: Optional[float] = 10.0
    match_dtype: str = "float64"
    compile_matcher: bool = False  # torch.compile the hyperbolic matcher (same loss; pays on GPUs)
    # evaluation
    eval_every: int = 2000
    eval_at: tuple[int, ...] = ()  # further iterations to evaluate at (besides every eval_every and the last)
    eval_epochs: int = 1000
    eval_runs: int = 3
    eval_archs: tuple[str, ...] = ("ConvNet",)
    eval_lr: float = 0.01
    eval_batch: int = 256
    # run management
    checkpoint_every: int = 100
    prune_keep: Optional[float] = None
    prune_score: str = "radius"
    prune_nets: int = 3
    seed: int = 0
    device: str = "cpu"
    data_root: Optional[str] = None
    download: bool = False
    sources: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["eval_archs"] = list(self.eval_archs)
        d["eval_at"] = list(self.eval_at)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DistillConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k in names}
        for name in ("eval_archs", "eval_at"):
            if name in d:
                d[name] = tuple(d[name])
        return cls(**d)

    def eval_iterations(self) -> list[int]:
        """Iterations at which the synthetic set is evaluated (always including the last)."""
        its = list(range(0, self.iterations, self.eval_every)) if self.eval_every > 0 else []
        its = [i for i in its if i > 0] + [i for i in self.eval_at if 0 < i < self.iterations]
        return sorted(set(its + [self.iterations]))

    def summary(self) -> str:
        width = max(len(f.name) for f in dataclasses.fields(self))
        lines = [f"{'setting':<{width}} {'value':<40} source"]
        for f in dataclasses.fields(self):
            if f.name == "sources":
                continue
            v = getattr(self, f.name)
            lines.append(f"{f.name:<{width}} {str(v):<40} {self.sources.get(f.name, 'default')}")
        return "\n".join(lines)


_PAPER_LOOP = {  # DM (Zhao & Bilen) and the official HDD DM code
    "iterations": (20000, "paper: DM with HDD runs 20,000 iterations"),
    "batch_real": (256, "paper / reference DM: 256 real images per class"),
    "momentum_img": (0.5, "reference DM: SGD on images, momentum 0.5"),
    "eval_every": (2000, "reference DM: evaluate every 2,000 iterations"),
    "eval_epochs": (1000, "reference evaluate_synset: 1,000 epochs"),
    "eval_runs": (3, "paper: mean +- std over 3 runs"),
    "checkpoint_every": (500, "hyperdm"),
}
_CPU_LOOP = {
    "iterations": (200, "cpu preset (reduced protocol)"),
    "batch_real": (64, "cpu preset (reduced protocol)"),
    "momentum_img": (0.5, "reference DM: SGD on images, momentum 0.5"),
    "eval_every": (0, "cpu preset: evaluate once, at the end"),
    "eval_epochs": (300, "cpu preset (reduced protocol)"),
    "eval_runs": (2, "cpu preset (reduced protocol)"),
    "checkpoint_every": (50, "hyperdm"),
}


_IDM_SRC = "IDM command.txt"
_IDM_COMMON = {  # uitrbn/IDM command.txt (CIFAR-10 lines; IDM's argparse defaults give plain DM)
    "partition": (2, f"{_IDM_SRC}: --aug (2x2 partition and expansion)"),
    "net_num": (100, "IDM default --net_num 100"),
    "net_initial": (3, "IDM code: the queue starts with 3 networks"),
    "net_generate_interval": (30, "IDM default --net_generate_interval 30"),
    "train_net_num": (1, f"{_IDM_SRC}: --train_net_num 1"),
    "fetch_net_num": (2, "IDM default --fetch_net_num 2"),
    "model_train_steps": (10, "IDM default --model_train_steps 10"),
    "net_batch": (256, "IDM default --trained_bs 256"),
    "lr_net": (0.01, f"{_IDM_SRC}: --net_decay (SGD 0.01, momentum 0.9, wd 5e-4)"),
    "acc_window": (100, f"{_IDM_SRC}: accuracy meters reset at each --eval_interval 100"),
}
_IDM_PAPER_LOOP = {
    "iterations": (10000, "paper: IDM with HDD runs 10,000 iterations"),
    "batch_real": (256, "IDM default --batch_real 256"),
    "eval_every": (1000, "hyperdm (IDM evaluates every 100; evaluation does not change the result)"),
}
_IDM_CPU_LOOP = {
    "iterations": (60, "cpu preset (reduced protocol)"),
    "batch_real": (64, "cpu preset (reduced protocol)"),
    "net_num": (10, "cpu preset (reduced protocol)"),
    "net_generate_interval": (10, "cpu preset (reduced protocol)"),
    "model_train_steps": (5, "cpu preset (reduced protocol)"),
    "net_batch": (128, "cpu preset (reduced protocol)"),
    "acc_window": (20, "cpu preset (reduced protocol)"),
    "eval_epochs": (150, "cpu preset (reduced protocol)"),
}


_DANCE_SRC = "DANCE reproduce settings"
_DANCE_COMMON = {  # Hansong-Zhang/DANCE: arguments/arg_condense.py, reproduce_condense.py, pretrain.py, README
    "partition": (2, "DANCE README: --factor 2 (multi-formation, 2x2)"),
    "batch_real": (128, "DANCE default --batch_real 128"),
    "momentum_img": (0.5, "DANCE default --mom_img 0.5"),
    "match_dsa": ("color_crop_cutout", "DANCE default --aug_type color_crop_cutout"),
    "match_aug_mode": ("M", "DANCE DiffAug: color, crop and cutout all applied, one draw for the batch"),
    "iter_calib": (1, "DANCE default --iter_calib 1"),
    "expert_lr": (0.01, "DANCE pretrain: SGD lr 0.01, momentum 0.9, wd 5e-4, x0.2 at 2/3 and 5/6 of the epochs"),
    "expert_batch": (64, "DANCE pretrain default --batch_real 64"),
}
_DANCE_PAPER_LOOP = {
    "iterations": (10000, f"{_DANCE_SRC}: --niter 10000 (paper: Dance with HDD 10,000 iterations)"),
    "experts": (20, f"{_DANCE_SRC}: --pretrain_amount 20"),
    "expert_epochs": (60, f"{_DANCE_SRC}: --pretrain_epochs 60"),
    "eval_every": (1000, "hyperdm (Dance evaluates every 500; evaluation does not change the result)"),
}
_DANCE_CPU_LOOP = {
    "iterations": (60, "cpu preset (reduced protocol)"),
    "batch_real": (64, "cpu preset (reduced protocol)"),
    "experts": (4, "cpu preset (reduced protocol): few experts"),
    "expert_epochs": (4, "cpu preset (reduced protocol): short-trained experts"),
    "expert_per_class": (200, "cpu preset (reduced protocol): experts see 200 images per class"),
    "eval_epochs": (150, "cpu preset (reduced protocol)"),
}


def _dance_lr_img(dataset: str, ipc: int) -> tuple[float, str]:
    """DANCE's --lr_img rule (in pixel units: Dance optimises images in [0, 1])."""
    if dataset in ("imagewoof", "imagenette"):
        return round(0.1 * ipc, 10), f"{_DANCE_SRC}: lr_img 0.1 x ipc for ImageNet subsets (pixel units)"
    return round(0.01 * ipc, 10), f"{_DANCE_SRC}: lr_img 0.01 x ipc (pixel units)"


def _dance_specifics(dataset: str) -> dict[str, tuple[Any, str]]:
    if dataset in ("imagewoof", "imagenette"):
        return {"model": ("ConvNetD5", f"{_DANCE_SRC}: depth-5 ConvNet for ImageNet subsets"),
                "experts": (5, f"{_DANCE_SRC}: --pretrain_amount 5 for ImageNet subsets"),
                "expert_epochs": (80, f"{_DANCE_SRC}: --pretrain_epochs 80 for ImageNet subsets")}
    if dataset == "tinyimagenet":
        return {"model": ("ConvNetD4", "DM / IDM: depth-4 ConvNet for 64x64 images")}
    return {}


def _idm_specifics(dataset: str, ipc: int) -> dict[str, tuple[Any, str]]:
    """command.txt settings that depend on dataset and IPC (Fashion-MNIST / SVHN follow the CIFAR-10 lines)."""
    out: dict[str, tuple[Any, str]] = {"ce_weight": (0.5 if ipc < 50 else 0.1, f"{_IDM_SRC}: --ce_weight (CIFAR-10 IPC {ipc})")}
    if ipc == 1:
        out["batch_real"] = (5000, f"{_IDM_SRC}: --batch_real 5000 at IPC 1")
        out["net_generate_interval"] = (5, f"{_IDM_SRC}: --net_generate_interval 5 at IPC 1")
    if dataset == "cifar100" and ipc == 10:
        out["ce_weight"] = (0.1, f"{_IDM_SRC}: CIFAR-100 IPC 10 --ce_weight 0.1")
        out["model_train_steps"] = (50, f"{_IDM_SRC}: CIFAR-100 IPC 10 --model_train_steps 50")
    if dataset == "tinyimagenet":
        out["ce_weight"] = (0.8 if ipc == 50 else 0.5, f"{_IDM_SRC}: Tiny ImageNet --ce_weight")
        if ipc == 50:
            out["model_train_steps"] = (50, f"{_IDM_SRC}: Tiny ImageNet IPC 50 --model_train_steps 50")
        out["model"] = ("ConvNetD4", "IDM / DM: depth-4 ConvNet for 64x64 images")
    return out


def resolve(
    *,
    preset: str = "cpu",
    method: str = "dm",
    matcher: str = "hyperbolic",
    dataset: str = "fashion-mnist",
    ipc: int = 10,
    overrides: Optional[dict[str, Any]] = None,
) -> DistillConfig:
    """Resolve a preset into a full :class:`DistillConfig`; ``overrides`` (e.g. from the CLI) win.

    ``paper``: the paper's Tables 5/6 for ``k``, ``scale`` (lambda) and ``lr_img``; where the
    paper is silent it follows the official HDD code (exp-map clamp ``|v|/sqrt(k) <= 10``,
    hyperbolic matching in float64) and the reference DM code (momentum 0.5, 256 real images
    per class, evaluation every 2,000 iterations). ``cpu``: the same loop, shortened (200
    iterations, 64 real images per class, 300-epoch evaluation x 2 runs) so that a 2-core
    machine finishes Fashion-MNIST IPC 10 in minutes; it is a reduced protocol and its
    accuracies are not the paper's.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}.")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}.")
    if matcher not in MATCHERS:
        raise ValueError(f"unknown matcher {matcher!r}; choose one of {', '.join(MATCHERS)}.")
    dataset = canonical_name(dataset)
    if not isinstance(ipc, int) or isinstance(ipc, bool) or ipc < 1:
        raise ValueError(f"ipc (images per class) must be a positive integer; got {ipc!r}.")
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    cfg = DistillConfig(method=method, matcher=matcher, dataset=dataset, ipc=ipc, preset=preset)
    src = {"method": "argument", "matcher": "argument", "dataset": "argument", "ipc": "argument", "preset": "argument"}
    table = dict(_PAPER_LOOP if preset == "paper" else _CPU_LOOP)
    if method == "idm":
        table.update(_IDM_COMMON)
        table.update(_IDM_PAPER_LOOP if preset == "paper" else _IDM_CPU_LOOP)
        table.update(_idm_specifics(dataset, ipc) if preset == "paper" else {"ce_weight": _idm_specifics(dataset, ipc)["ce_weight"]})
    if method == "dance":
        table.update(_DANCE_COMMON)
        table.update(_DANCE_PAPER_LOOP if preset == "paper" else _DANCE_CPU_LOOP)
        if preset == "paper":
            table.update(_dance_specifics(dataset))
    for name, (value, why) in table.items():
        setattr(cfg, name, value)
        src[name] = why
    # table entries keep their own source (e.g. a deeper ConvNet for larger images)
    src.setdefault("model", "paper: ConvNet-3 (width 128, instance norm)")
    if method == "dance":
        src["init"] = "DANCE --init mix: random real images, f*f of them down-sampled into each stored image"
        src["dsa_strategy"] = "DANCE --dsa_strategy color_crop_cutout_flip_scale_rotate (evaluation)"
    else:
        src["init"] = "reference DM: initialise from random real images"
        src["dsa_strategy"] = "reference DM: DSA color_crop_cutout_flip_scale_rotate"
        src["match_dsa"] = "the matching uses dsa_strategy"
        src["match_aug_mode"] = "reference DM: DSA aug_mode 'S' (one group per call)"
        for name in ("experts", "expert_epochs", "expert_lr", "expert_batch", "expert_per_class", "expert_seed", "expert_dir",
                     "iter_calib"):
            src[name] = "unused (Dance only)"
    if method != "idm":
        for name in ("net_num", "net_initial", "net_generate_interval", "train_net_num", "fetch_net_num", "model_train_steps",
                     "net_batch", "lr_net", "ce_weight", "acc_window"):
            src[name] = "unused (IDM only)"
    src["eval_lr"] = "reference evaluate_synset: SGD lr 0.01, momentum 0.9, wd 5e-4"
    src["eval_batch"] = "reference evaluate_synset: batch 256"
    src["max_norm"] = "official HDD code: exp-map clamps |v|/sqrt(k) at 10"
    # the method's own image learning rate (the mmd baseline; hyperbolic rows of Tables 5/6 override it)
    if method == "idm":
        cfg.lr_img, src["lr_img"] = 0.2, f"{_IDM_SRC}: --lr_img 0.2"
    elif method == "dance":
        cfg.lr_img, src["lr_img"] = _dance_lr_img(dataset, ipc)
    else:
        cfg.lr_img, src["lr_img"] = 1.0, "reference DM: lr_img 1"
    row = paper_row(method, dataset, ipc)
    if matcher == "hyperbolic":
        dm_row = paper_row("dm", dataset, ipc)
        if row is not None:
            cfg.k, cfg.scale, cfg.lr_img = row.k, row.scale, row.lr_img
            for name in ("k", "scale", "lr_img"):
                src[name] = f"paper Tables 5/6 ({method}, {dataset}, ipc {ipc})"
        elif preset == "paper" and not {"k", "scale"} <= overrides.keys():
            raise ValueError(
                f"the paper gives no HDD row for method={method}, dataset={dataset}, ipc={ipc}; "
                "pass --k and --scale (and --lr-img) explicitly, or use --preset cpu."
            )
        elif method == "dance" and dm_row is not None:  # e.g. Fashion-MNIST: no Dance row; keep Dance's lr_img
            cfg.k, cfg.scale = dm_row.k, dm_row.scale
            src["k"] = src["scale"] = f"paper Table 5 (dm, {dataset}, ipc {ipc}): the paper has no Dance row for {dataset}"
        else:
            src["k"] = src["scale"] = "official DM-HDD code (k = 1, lambda = 20); no paper row"
            if method == "dm":
                src["lr_img"] = "reference DM: lr_img 1"
        cfg.match_dtype = "float64"
        src["match_dtype"] = "official HDD code: matching in float64"
    else:
        cfg.match_dtype = "float32"
        src["match_dtype"] = "reference DM: the MMD line in float32"
        for name in ("k", "scale", "max_norm"):
            src[name] = "unused by the mmd matcher"
    for name, value in overrides.items():
        if not hasattr(cfg, name) or name == "sources":
            raise ValueError(f"unknown setting {name!r}")
        if name in ("eval_archs", "eval_at"):
            value = tuple(value)
        setattr(cfg, name, value)
        src[name] = "command line / override"
    cfg.sources = src
    validate(cfg)
    return cfg


def validate(cfg: DistillConfig) -> None:
    """Raise ValueError with the fix for any setting that cannot work."""

    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ValueError(msg)

    def finite(x: Any) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

    need(cfg.iterations >= 0, f"iterations (--iterations) must be >= 0; got {cfg.iterations}.")
    need(cfg.batch_real >= 1, f"batch_real (--batch-real) must be >= 1; got {cfg.batch_real}.")
    need(finite(cfg.lr_img) and cfg.lr_img > 0, f"lr_img (--lr-img) must be > 0 and finite; got {cfg.lr_img}.")
    need(finite(cfg.momentum_img) and 0 <= cfg.momentum_img < 1, f"momentum_img must lie in [0, 1); got {cfg.momentum_img}.")
    need(finite(cfg.k) and cfg.k > 0, f"k (--k; geoopt's curvature parameter, curvature -1/k) must be > 0 and finite; got {cfg.k}.")
    need(cfg.scale == "auto" or (finite(cfg.scale) and cfg.scale >= 0),
         f"scale (--scale, lambda) must be >= 0 and finite, or 'auto'; got {cfg.scale!r}.")
    need(cfg.max_norm is None or (finite(cfg.max_norm) and cfg.max_norm > 0),
         f"max_norm (--max-norm) must be > 0 and finite, or None (--no-clamp); got {cfg.max_norm}.")
    need(cfg.match_dtype in ("float32", "float64"), f"match_dtype must be float32 or float64; got {cfg.match_dtype!r}.")
    need(cfg.eval_every >= 0, f"eval_every (--eval-every) must be >= 0 (0: evaluate only at the end); got {cfg.eval_every}.")
    need(cfg.eval_epochs >= 0 and cfg.eval_runs >= 0,
         f"eval_epochs (--eval-epochs) and eval_runs (--eval-runs) must be >= 0 (0 runs: no evaluation); got "
         f"{cfg.eval_epochs} and {cfg.eval_runs}.")
    need(finite(cfg.eval_lr) and cfg.eval_lr > 0 and cfg.eval_batch >= 1, "eval_lr must be a finite number > 0 and eval_batch >= 1.")
    need(len(cfg.eval_archs) >= 1, "eval_archs (--arch) must name at least one architecture.")
    from .models import check_architecture  # raises ValueError listing the valid names

    for name in (cfg.model, *cfg.eval_archs):
        check_architecture(name)
    need(all(isinstance(i, int) and not isinstance(i, bool) and i >= 1 for i in cfg.eval_at),
         f"eval_at must list iterations >= 1 (e.g. 200 500 1000); got {list(cfg.eval_at)}.")
    need(cfg.checkpoint_every >= 1, f"checkpoint_every must be >= 1; got {cfg.checkpoint_every}.")
    need(cfg.init in ("real", "noise"), f"init must be 'real' or 'noise'; got {cfg.init!r}.")
    need(
        cfg.prune_keep is None or 0 < cfg.prune_keep <= 1,
        f"prune_keep must be a fraction in (0, 1] (e.g. 0.2 keeps 20%); got {cfg.prune_keep}.",
    )
    need(cfg.partition >= 1, f"partition must be >= 1; got {cfg.partition}.")
    need(finite(cfg.ce_weight) and cfg.ce_weight >= 0, f"ce_weight must be >= 0 and finite; got {cfg.ce_weight}.")
    need(finite(cfg.lr_net) and cfg.lr_net > 0, f"lr_net must be > 0 and finite; got {cfg.lr_net}.")
    need(cfg.net_num >= 1 and cfg.net_initial >= 1 and cfg.net_generate_interval >= 1,
         "net_num, net_initial and net_generate_interval must be >= 1.")
    need(cfg.train_net_num >= 1 and cfg.fetch_net_num >= 0 and cfg.model_train_steps >= 0 and cfg.net_batch >= 1,
         "train_net_num and net_batch must be >= 1; fetch_net_num and model_train_steps >= 0.")
    from .augment import parse_strategy  # raises ValueError naming the valid groups

    parse_strategy(cfg.dsa_strategy)
    if cfg.match_dsa is not None:
        parse_strategy(cfg.match_dsa)
    need(cfg.match_aug_mode in ("S", "M"), f"match_aug_mode must be 'S' (one DSA group) or 'M' (all groups); got {cfg.match_aug_mode!r}.")
    need(cfg.experts >= 1 and cfg.expert_epochs >= 1 and cfg.expert_batch >= 1,
         "experts, expert_epochs and expert_batch must be >= 1.")
    need(finite(cfg.expert_lr) and cfg.expert_lr > 0, f"expert_lr must be > 0 and finite; got {cfg.expert_lr}.")
    need(cfg.expert_per_class is None or cfg.expert_per_class >= 1,
         f"expert_per_class must be >= 1 (or None for every training image); got {cfg.expert_per_class}.")
    need(cfg.iter_calib >= 0, f"iter_calib must be >= 0; got {cfg.iter_calib}.")
    need(cfg.prune_score in PRUNE_SCORES,
         f"prune_score must be one of {', '.join(map(repr, PRUNE_SCORES))}; got {cfg.prune_score!r}.")
