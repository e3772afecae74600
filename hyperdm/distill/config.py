"""Every setting of a distillation run, nested by concern: the loop, ``matcher``, ``eval``, ``idm``, ``dance``.

:class:`DistillConfig` keeps the loop's settings (dataset, IPC, iterations, image optimiser, DSA,
seed, device, ...) at the top level, and one section per concern:

* ``matcher`` (:class:`MatcherConfig`): which line matches the features (``kind``: ``hyperbolic``
  or ``mmd``) and the hyperbolic line's ``k``, ``scale`` (lambda), ``max_norm`` clamp, dtype;
* ``eval`` (:class:`~hyperdm.distill.evaluate.EvalConfig`): when and how the synthetic set is evaluated;
* ``idm`` (:class:`IDMConfig`) and ``dance`` (:class:`DanceConfig`): the settings only those methods
  have. They are ``None`` for the other methods, so a run's settings table and ``config.json`` list
  only what the run uses, and an IDM setting given to a DM run is an error, not a silently unused value.

``sources`` maps a setting's path (``"matcher.k"``, ``"eval.epochs"``, ``"seed"``) to where its value
came from; :func:`hyperdm.distill.presets.resolve` fills it. Every setting also has a flat name, its
command-line option (``matcher.k``: ``--k``; ``eval.epochs``: ``--eval-epochs``), which overrides may use.

``k`` is geoopt's curvature parameter (points satisfy ``<x,x>_L = -k``, curvature ``-1/k``).
"""

from __future__ import annotations

import dataclasses
import difflib
import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .seeding import Stream, derive_seed
from .settings import (
    NOT_GIVEN,
    admits_none,
    check_ranges,
    check_value,
    flat_names,
    fraction,
    get_path,
    int_at_least,
    leaves,
    nonnegative_float,
    option,
    positive_float,
    scale_arg,
    section_names,
    set_path,
    setting,
    strategy_arg,
    to_dict,
    unit_interval,
)

__all__ = [
    "DistillConfig",
    "MatcherConfig",
    "IDMConfig",
    "DanceConfig",
    "EvalConfig",
    "ExpertConfig",
    "NOT_GIVEN",
    "METHODS",
    "MATCHERS",
    "PRESETS",
    "PRUNE_SCORES",
    "validate",
    "run_setting",
    "parse_overrides",
]

METHODS = ("dm", "idm", "dance")
MATCHERS = ("mmd", "hyperbolic")
PRESETS = ("paper", "cpu")
#: real-data pruning scores: hyperbolic radius (the paper), distance to the class centroid, uniform random (baseline)
PRUNE_SCORES = ("radius", "centroid", "random")


#: path -> option of ``hyperdm evaluate``, for the settings of :class:`EvalConfig` it takes (the others are
#: Python's only there)
EVALUATE_OPTIONS = {"epochs": "--epochs", "runs": "--runs", "archs": "--arch"}
_AT_LEAST_ONE_RUN = int_at_least(1)


@dataclass
class EvalConfig:
    """The evaluation protocol: ``runs`` fresh ``archs`` networks, each trained ``epochs`` epochs (SGD ``lr``,
    ``momentum``, ``weight_decay``, batch ``batch``, DSA ``dsa_strategy``) on the synthetic set.

    Inside a distillation run (``DistillConfig.eval``) ``every`` and ``at`` say when to evaluate, and
    ``dsa_strategy``, ``seed`` and ``device`` come from the run (its ``dsa_strategy``, a seed derived from
    its ``seed``, its ``device``).
    """

    FLAT_PREFIX: ClassVar[str] = "eval_"

    epochs: int = setting(
        1000,
        "epochs of each evaluation training (paper 1,000; cpu 300)",
        parse=int_at_least(1, "--eval-runs 0 skips the evaluation"),
    )
    runs: int = setting(3, "fresh networks per evaluation (paper 3; cpu 2; 0 skips evaluation)", parse=int_at_least(0))
    lr: float = setting(0.01, "SGD learning rate of the evaluation training", parse=positive_float)
    momentum: float = setting(0.9, "SGD momentum of the evaluation training", parse=unit_interval)
    weight_decay: float = setting(5e-4, "weight decay of the evaluation training", parse=nonnegative_float)
    batch: int = setting(256, "batch size of the evaluation training", parse=int_at_least(1))
    dsa_strategy: str = setting(
        "color_crop_cutout_flip_scale_rotate", "DSA strategy of the training", run="dsa_strategy"
    )
    archs: tuple[str, ...] = setting(
        ("ConvNet",),
        "evaluation architectures: ConvNet AlexNet VGG11 ResNet18 (default ConvNet)",
        flag="--arch",
        metavar="NAME",
    )
    seed: int = setting(0, "seed of the evaluation", run="seed")
    device: str = setting("cpu", "torch device", run="device")
    test_batch: int = setting(1024, "batch size of the test pass", parse=int_at_least(1))
    every: int = setting(2000, "evaluate every N iterations of a run (0: only at the end)", parse=int_at_least(0))
    at: tuple[int, ...] = setting(
        (), "also evaluate at these iterations (e.g. 200 500 1000)", metavar="IT", parse=int_at_least(1)
    )

    def validate(self) -> None:
        """Raise ValueError naming the fix for any setting that cannot give an accuracy: the ranges declared on
        the fields (named with ``hyperdm evaluate``'s options, where it has one), one run at least, then the
        architecture names, the DSA strategy and the device. (Inside a run, the run's check comes first and names
        the run's options, ``--eval-epochs``.)"""
        from .models import check_architecture
        from .parallel import check_device

        why = _AT_LEAST_ONE_RUN.problem(self.runs)  # the field admits a run's 0 (no evaluation); here one is needed
        if why is not None:
            raise ValueError(f"runs (--runs) {why} (the accuracy is a mean over runs); got {self.runs!r}.")
        check_ranges(self, options=EVALUATE_OPTIONS)
        if not self.archs:
            raise ValueError("archs (--arch) must name at least one architecture.")
        for a in self.archs:
            check_architecture(a)
        if self.dsa_strategy:
            from .augment import parse_strategy

            parse_strategy(self.dsa_strategy)
        check_device(self.device)


@dataclass(frozen=True)
class ExpertConfig:
    """How the experts are trained (the reference's ``pretrain.py`` settings by default). Inside a run
    (``DistillConfig.dance.experts``) ``model`` is the run's ``model``."""

    FLAT_PREFIX: ClassVar[str] = "expert_"

    count: int = setting(20, "dance: number of expert networks (Dance: 20)", flat="experts", parse=int_at_least(1))
    epochs: int = setting(60, "dance: training epochs of each expert (Dance: 60)", parse=int_at_least(1))
    lr: float = setting(
        0.01, "dance: SGD learning rate of the experts (x gamma at 2/3 and 5/6 of the epochs)", parse=positive_float
    )
    momentum: float = setting(0.9, "dance: SGD momentum of the experts", parse=unit_interval)
    weight_decay: float = setting(5e-4, "dance: weight decay of the experts", parse=nonnegative_float)
    batch: int = setting(64, "dance: batch size of the expert training", parse=int_at_least(1))
    gamma: float = setting(
        0.2, "dance: learning-rate factor at each milestone of the expert training", parse=positive_float
    )
    strategy: str = setting(
        "color_crop", "dance: DiffAug groups of the expert training"
    )  # DANCE: color_crop_cutout; CutMix replaces cutout
    cutmix_prob: float = setting(0.5, "dance: probability of CutMix on an expert training batch")
    cutmix_beta: float = setting(1.0, "dance: Beta parameter of CutMix's mixing ratio", parse=positive_float)
    model: str = setting("ConvNet", "expert architecture", run="model")
    per_class: int | None = setting(
        None,
        "dance: train the experts on N real images per class (default: all; cpu preset 200)",
        metavar="N",
        parse=int_at_least(1),
    )
    seed: int = setting(0, "dance: seed of the experts (default 0; shared by runs of any --seed)")

    def milestones(self) -> tuple[int, int]:
        return (2 * self.epochs // 3, 5 * self.epochs // 6)


@dataclass
class MatcherConfig:
    """The line that matches real and synthetic features: DM's MMD line or HDD's hyperbolic one.

    Hyperbolic: ``scale * d_L(c_real, c_syn)`` between the Lorentz centroids of the exp-mapped features,
    ``k`` geoopt's curvature parameter, ``|v| / sqrt(k)`` clamped at ``max_norm`` before the exp-map
    (``None``: exact); ``radius`` calibrates the features' scale on the first real batch
    (:class:`hyperdm.HyperbolicMatcher`). ``k``, ``scale``, ``max_norm``, ``hierarchical`` and ``radius`` are
    unused by ``mmd``.
    """

    kind: str = setting("hyperbolic", "matcher kind", flat="matcher", cli=False, choices=MATCHERS)
    k: float = setting(1.0, "hyperbolic: geoopt's curvature parameter k > 0 (curvature -1/k)", parse=positive_float)
    scale: float | str = setting(
        20.0,
        "hyperbolic: the paper's lambda, multiplying the geodesic distance; 'auto': "
        "MMD / distance of the first batch, so the loss starts at the MMD line's magnitude",
        parse=scale_arg,
        metavar="LAMBDA|auto",
    )
    max_norm: float | None = setting(
        10.0,
        "hyperbolic: exp-map clamp of |v|/sqrt(k) (official code: 10); --no-clamp removes it",
        parse=positive_float,
        none_flag=("--no-clamp", "hyperbolic: exact exp-map (not the method as published)"),
    )
    hierarchical: bool = setting(
        False, "hyperbolic: weight each feature by its hierarchy level (radius) in the centroid"
    )
    radius: float | None = setting(
        None,
        "hyperbolic: radius calibration: scale the features so that the median |v|/sqrt(k) of the first real "
        "batch is R (not the method as published; default: none; small R suits IPC 1, large R IPC 10: "
        "docs/results.md)",
        parse=positive_float,
        metavar="R",
    )
    dtype: str = setting(
        "float64", "dtype of the matching (paper HDD: float64)", flat="match_dtype", choices=("float32", "float64")
    )
    compile: bool = setting(
        False,
        "hyperbolic: torch.compile the matching maths (same loss; fewer kernels on GPUs; the "
        "first iteration compiles for tens of seconds)",
        flat="compile_matcher",
    )


@dataclass
class IDMConfig:
    """IDM (Zhao et al. 2023): the model queue and the cross-entropy term (see :mod:`hyperdm.distill.loops.idm`)."""

    net_num: int = setting(100, "idm: size of the model queue (IDM: 100)", parse=int_at_least(1))
    net_initial: int = setting(3, "idm: networks in the queue at the start (IDM: 3)", parse=int_at_least(1))
    net_generate_interval: int = setting(
        30, "idm: a new queue network every N iterations (IDM: 30)", parse=int_at_least(1)
    )
    train_net_num: int = setting(1, "idm: queue networks matched per iteration (IDM: 1)", parse=int_at_least(1))
    fetch_net_num: int = setting(2, "idm: queue networks trained per iteration (IDM: 2)", parse=int_at_least(0))
    model_train_steps: int = setting(
        10, "idm: SGD steps per fetched queue network per iteration (IDM: 10)", parse=int_at_least(0)
    )
    net_batch: int = setting(
        256, "idm: real batch size for training the queue networks (IDM: 256)", parse=int_at_least(1)
    )
    lr_net: float = setting(0.01, "idm: SGD learning rate of the queue networks (IDM: 0.01)", parse=positive_float)
    ce_weight: float = setting(
        0.0, "idm: weight of the accuracy-weighted cross-entropy term (IDM: 0.5 / 0.1)", parse=nonnegative_float
    )
    acc_window: int = setting(
        100, "idm: iterations between resets of the queue networks' accuracy meters (0: never)", parse=int_at_least(0)
    )


@dataclass
class DanceConfig:
    """Dance (Zhang et al. 2024): the experts and the calibration (see :mod:`hyperdm.distill.loops.dance`)."""

    experts: ExpertConfig = field(default_factory=ExpertConfig)
    expert_dir: str | None = setting(
        None, "dance: expert cache root (default $HYPERDM_CACHE/experts or ~/.cache/hyperdm/experts)", metavar="DIR"
    )
    iter_calib: int = setting(
        1, "dance: calibration passes per iteration (Dance: 1; 0 disables)", parse=int_at_least(0)
    )


@dataclass
class DistillConfig:
    """Every setting of a distillation run. ``sources`` says where each value came from (keyed by path)."""

    method: str = setting("dm", "distillation loop", cli=False, choices=METHODS)
    dataset: str = setting("fashion-mnist", "dataset", cli=False)
    ipc: int = setting(10, "synthetic images per class", cli=False)
    preset: str = setting("cpu", "preset", cli=False)
    # the distillation loop
    iterations: int = setting(20000, "distillation iterations (paper 20,000; cpu 200)", parse=int_at_least(0))
    batch_real: int = setting(256, "real images per class per iteration (paper 256; cpu 64)", parse=int_at_least(1))
    lr_img: float = setting(1.0, "SGD learning rate of the images (paper table; DM 1)", parse=positive_float)
    momentum_img: float = setting(0.5, "SGD momentum of the images (DM: 0.5)", parse=unit_interval)
    init: str = setting("real", "initialise from random real images (default) or noise", choices=("real", "noise"))
    model: str = setting("ConvNet", "distillation backbone (default ConvNet; ConvNetD4 for 64x64 images)")
    dsa_strategy: str = setting(
        "color_crop_cutout_flip_scale_rotate",
        "DSA strategy (default color_crop_cutout_flip_scale_rotate; 'none' disables)",
        flag="--dsa",
        metavar="STRATEGY",
        parse=strategy_arg,
    )
    match_dsa: str | None = setting(
        None,
        "DSA strategy of the matching step only (default: --dsa; Dance: color_crop_cutout)",
        metavar="STRATEGY",
        parse=strategy_arg,
    )
    match_aug_mode: str = setting(
        "S", "DSA groups per matching call: S one (DC/DM/IDM), M all in order (Dance's DiffAug)", choices=("S", "M")
    )
    partition: int = setting(
        1,
        "each stored image holds a PxP grid of sub-images, expanded before matching and evaluation "
        "(IDM: 2; Dance: --factor 2)",
        parse=int_at_least(1),
    )
    checkpoint_every: int = setting(100, "write checkpoint.pt every N iterations (atomic)", parse=int_at_least(1))
    checkpoint_minutes: float = setting(
        5.0,
        "also write checkpoint.pt when M minutes have passed since the last one (0: only every N iterations), so "
        "a run killed without warning loses at most that",
        parse=nonnegative_float,
        metavar="M",
    )
    prune_keep: float | None = setting(
        None,
        "hierarchical pruning: keep the fraction F of each class closest to the root (e.g. 0.2)",
        parse=fraction,
        metavar="F",
    )
    prune_score: str = setting(
        "radius", "pruning score (default radius; random: the uniform baseline, no network)", choices=PRUNE_SCORES
    )
    prune_nets: int = setting(3, "random networks the pruning score is averaged over", parse=int_at_least(1))
    seed: int = setting(0, "seed of every random choice", cli=False)
    device: str = setting("cpu", "torch device", cli=False)
    data_root: str | None = setting(None, "where the datasets live", cli=False)
    download: bool = setting(False, "fetch the dataset if missing", cli=False)
    # the sections
    matcher: MatcherConfig = field(default_factory=MatcherConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    idm: IDMConfig | None = None
    dance: DanceConfig | None = None
    sources: dict[str, str] = field(default_factory=dict)

    #: keys of config.json that record the run rather than a setting (read back and ignored)
    RUN_RECORD: ClassVar[frozenset] = frozenset({"versions", "dataset_root", "num_classes", "loop", "matcher_repr"})

    def __post_init__(self) -> None:
        if self.method == "idm" and self.idm is None:
            self.idm = IDMConfig()
        if self.method == "dance" and self.dance is None:
            self.dance = DanceConfig()

    # ---- views ---------------------------------------------------------------------------------

    def eval_config(self, *, device: str | None = None) -> EvalConfig:
        """The evaluation this run performs: ``eval`` with the run's DSA strategy and device, seeded from its seed."""
        return dataclasses.replace(
            self.eval,
            dsa_strategy=self.dsa_strategy,
            seed=derive_seed(self.seed, Stream.EVAL),
            device=device or self.device,
        )

    def expert_config(self) -> ExpertConfig:
        """How this (Dance) run's experts are trained: ``dance.experts`` with the run's model."""
        if self.dance is None:
            raise ValueError(f"--method {self.method} has no experts; they belong to --method dance.")
        return dataclasses.replace(self.dance.experts, model=self.model)

    def eval_iterations(self) -> list[int]:
        """Iterations at which the synthetic set is evaluated (always including the last)."""
        every, at = self.eval.every, self.eval.at
        its = list(range(0, self.iterations, every)) if every > 0 else []
        its = [i for i in its if i > 0] + [i for i in at if 0 < i < self.iterations]
        return sorted({*its, self.iterations})

    def setting(self, name: str) -> Any:
        """The value of a setting named by path or flat name (``"matcher.k"`` or ``"k"``; ``"matcher"``: its kind)."""
        path = FLAT.get(name, name)
        if path not in _leaf_info():
            raise ValueError(f"unknown setting {name!r}; {_known('')}")
        return get_path(self, path)

    def settings(self) -> dict[str, Any]:
        """path -> value of every setting this run has (sections that are None left out)."""
        out = {}
        for path, _, _, _ in leaves(type(self)):
            section = path.split(".")[0]
            if section in ("idm", "dance") and getattr(self, section) is None:
                continue
            out[path] = get_path(self, path)
        return out

    def summary(self) -> str:
        items = self.settings()
        width = max(len(p) for p in items)
        lines = [f"{'setting':<{width}} {'value':<40} source"]
        for path, v in items.items():
            lines.append(f"{path:<{width}} {v!s:<40} {self.sources.get(path, 'default')}")
        return "\n".join(lines)

    # ---- config.json ---------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready nested dict (what ``config.json`` and checkpoints hold)."""
        return to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DistillConfig:
        """Read :meth:`to_dict`'s output back, or the flat dict written by hyperdm 0.1 (mapped into the sections).

        Keys that record the run (versions, dataset root, ...) are ignored; any other unknown key, or a
        value of the wrong type, is a ValueError naming it.
        """
        if not isinstance(d, dict):
            raise ValueError(f"a configuration is a dict of settings; got {type(d).__name__}.")
        if not isinstance(d.get("matcher", {}), dict):  # hyperdm 0.1: one flat dict, "matcher" the matcher kind
            return _from_flat(cls, d)
        cfg = cls(method=d.get("method", "dm"))
        cfg.idm = cfg.dance = None
        _apply_dict(cfg, {k: v for k, v in d.items() if k not in cls.RUN_RECORD and k != "sources"}, "")
        sources = d.get("sources", {})
        cfg.sources = dict(sources) if isinstance(sources, dict) else {}
        return cfg


def _apply_dict(cfg: DistillConfig, d: dict[str, Any], prefix: str) -> None:
    """Set the settings of a nested dict (as :meth:`DistillConfig.to_dict` writes it) on ``cfg``."""
    settings, sections = _leaf_info(), section_names(DistillConfig)
    for key, value in d.items():
        path = prefix + key
        if path in sections:
            if value is None:
                set_path(cfg, path, None)
                continue
            if not isinstance(value, dict):
                raise ValueError(f"{path} must be a dict of {path} settings; got {value!r}.")
            if get_path(cfg, path) is None:
                set_path(cfg, path, sections[path]())
            _apply_dict(cfg, value, path + ".")
        elif path in settings:
            set_path(cfg, path, check_value(path, settings[path][0], value, settings[path][1]))
        else:
            raise ValueError(f"unknown setting {path!r}; {_known(prefix)}")


def _known(prefix: str) -> str:
    """Which names may follow ``prefix`` (``""``: the top level; ``"matcher."``: the matcher's settings)."""
    names = dict.fromkeys(
        p[len(prefix) :].split(".")[0]
        for p in (*(q for q, _, _, _ in leaves(DistillConfig)), *section_names(DistillConfig))
        if p.startswith(prefix)
    )
    where = f"the {prefix[:-1]} settings" if prefix else "the settings (and sections)"
    return f"{where} are: {', '.join(names)}."


#: flat name (hyperdm 0.1's config.json, and the command line) -> path
FLAT = flat_names(DistillConfig)


def _from_flat(cls: type[DistillConfig], d: dict[str, Any]) -> DistillConfig:
    """A configuration from hyperdm 0.1's flat config.json: every flat name mapped to its path."""
    method = d.get("method", "dm")
    cfg = cls(method=method)
    sources = {}
    for name, value in d.items():
        if name in cls.RUN_RECORD or name == "sources":
            continue
        path = FLAT.get(name)
        if path is None:
            raise ValueError(f"unknown setting {name!r} in a flat (hyperdm 0.1) configuration.")
        section = path.split(".")[0]
        if section in ("idm", "dance") and getattr(cfg, section) is None:
            continue  # 0.1 kept every method's settings; the other methods' were unused
        opt, tp = _leaf_info()[path]
        set_path(cfg, path, check_value(path, opt, value, tp))
    for name, why in (d.get("sources") or {}).items():
        if name in FLAT:
            sources[FLAT[name]] = why
    cfg.sources = sources
    return cfg


def run_setting(d: dict[str, Any], path: str, default: Any = None) -> Any:
    """The setting at ``path`` (e.g. ``"matcher.k"``) of a config.json dict, nested or hyperdm 0.1's flat one."""
    node: Any = d
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            break
        node = node[part]
    else:
        return node
    flat = {p: f for f, p in FLAT.items()}.get(path, path)
    value = d.get(flat, default)
    return default if isinstance(value, dict) else value


# ---- overrides ----------------------------------------------------------------------------------


def parse_overrides(overrides: dict[str, Any] | None) -> dict[str, Any]:
    """path -> value of the settings ``overrides`` gives, each checked for its type; ValueError naming the fix.

    A key is a path (``"matcher.k"``), a flat name as on the command line (``"k"``, ``"eval_epochs"``), or a
    section whose value is a dict of its settings (``{"matcher": {"k": 2.0}}``). :data:`NOT_GIVEN` means not
    given. ``None`` is a value where a setting takes it (``max_norm=None``: no clamp; ``prune_keep=None``: no
    pruning); for a setting that cannot be None (``iterations=None``) it is read as not given, so argparse
    defaults of None may be passed through.
    """
    if overrides is None:
        return {}
    if not isinstance(overrides, dict):
        raise ValueError(
            f"overrides must be a dict of settings, e.g. {{'iterations': 500}}; got {type(overrides).__name__}."
        )
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        _parse_one(str(key), value, "", out)
    return out


def _parse_one(key: str, value: Any, prefix: str, out: dict[str, Any]) -> None:
    if value is NOT_GIVEN:
        return
    leaf, sections = _leaf_info(), section_names(DistillConfig)
    path = prefix + key
    if path in sections and (isinstance(value, dict) or not (not prefix and key in FLAT)):
        if not isinstance(value, dict):
            first = _known(path + ".").split(": ")[1].split(",")[0].rstrip(".")
            raise ValueError(
                f"override {path!r} is a section: give a dict of its settings, e.g. "
                f"{{{path!r}: {{{first!r}: ...}}}}; got {value!r}."
            )
        for k, v in value.items():
            _parse_one(str(k), v, path + ".", out)
        return
    if path not in leaf and not prefix:
        path = FLAT.get(key, path)
    if path not in leaf:
        near = difflib.get_close_matches(
            key, [p[len(prefix) :] for p in leaf if p.startswith(prefix)] + ([] if prefix else list(FLAT)), n=1
        )
        hint = f"did you mean {prefix + near[0]!r}? " if near else ""
        raise ValueError(f"unknown setting {path!r}; {hint}{_known(prefix)}")
    opt, tp = leaf[path]
    if value is None and not admits_none(tp):
        return
    if path in out:
        raise ValueError(f"setting {path} is given twice in the overrides; give it once.")
    out[path] = check_value(path, opt, value, tp)


def _leaf_info() -> dict[str, tuple[str, Any]]:
    """path -> (command-line option, type) of every setting."""
    return {path: (option(flat, f), tp) for path, flat, f, tp in leaves(DistillConfig)}


# ---- compatibility: hyperdm 0.1's flat attributes --------------------------------------------------


def _flat_alias(name: str, path: str) -> property:
    def warn() -> None:
        warnings.warn(f"DistillConfig.{name} is now DistillConfig.{path}", DeprecationWarning, stacklevel=3)

    def get(self: DistillConfig) -> Any:
        warn()
        return get_path(self, path)

    def put(self: DistillConfig, value: Any) -> None:
        warn()
        set_path(self, path, value)

    return property(get, put, doc=f"Deprecated: {path}.")


for _name, _path in FLAT.items():
    if _name not in {f.name for f in dataclasses.fields(DistillConfig)}:
        setattr(DistillConfig, _name, _flat_alias(_name, _path))
del _name, _path


# ---- checks ----------------------------------------------------------------------------------------


def validate(cfg: DistillConfig) -> None:
    """Raise ValueError with the fix for any setting that cannot work.

    Each setting's range and choices are declared once, on its field (``setting(parse=..., choices=...)``), and
    checked here by :func:`~hyperdm.distill.settings.check_ranges` (the command line parses with the same
    declarations); what remains below are the rules that involve several settings or another module's names."""

    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ValueError(msg)

    for section in ("idm", "dance"):
        need(
            (getattr(cfg, section) is not None) == (cfg.method == section),
            f"the {section} settings belong to --method {section}; this run is --method {cfg.method}"
            + (
                f": set {section}=None."
                if cfg.method != section
                else f": give it {section}=IDMConfig() / DanceConfig()."
            ),
        )
    check_ranges(cfg)
    need(len(cfg.eval.archs) >= 1, "eval.archs (--arch) must name at least one architecture.")
    from .models import check_architecture  # raises ValueError listing the valid names

    for name in (cfg.model, *cfg.eval.archs):
        check_architecture(name)
    from .augment import parse_strategy  # raises ValueError naming the valid groups

    parse_strategy(cfg.dsa_strategy)
    if cfg.match_dsa is not None:
        parse_strategy(cfg.match_dsa)
