"""What every distillation loop shares: data, the synthetic set, seeds, checkpoints, evaluation, artifacts.

A method (DM, IDM, Dance) subclasses :class:`DistillLoop` and implements
:meth:`DistillLoop.matching_loss` (one iteration's loss) and, if it keeps state of its own
(IDM's model pool, Dance's trained experts), :meth:`extra_state` / :meth:`load_extra_state`.
Everything else (sampling real images, DSA, the matcher, the image optimizer, atomic
checkpoints and ``--resume``, NaN handling, evaluation, artifacts) lives here once, and so does
the per-class matching step: :meth:`DistillLoop.augmented_class` (a real batch and the expanded
synthetic images under one siamese DSA draw) and :meth:`DistillLoop.class_matching_loss` (their
features under a network, matched). IDM and Dance call the step once per class and network; DM
takes its inputs and embeds all classes in two batched forwards.

Determinism: every random choice of iteration ``it`` (network initialisation, real batches,
DSA parameters) is drawn from generators seeded by ``(seed, it, ...)``, so a resumed run
repeats exactly what an uninterrupted run would have done, and the same seed on CPU gives
bit-identical synthetic images.
"""

from __future__ import annotations

import contextlib
import logging
import math
import platform
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ... import __version__
from ...matchers import HyperbolicMatcher, MMDMatcher
from ..artifacts import CorruptFileError, RunDir, UnsafeFileError, storage_sizes, write_json
from ..augment import DSAParams, dsa
from ..config import DistillConfig, validate
from ..data import RealData
from ..evaluate import estimate_seconds, evaluate_synthetic, format_accuracy
from ..models import Embedder, seeded_network
from ..parallel import Parallel, check_device
from ..progress import format_seconds, progress_bar
from ..prune import prune_indices
from ..seeding import Stream, derive_seed
from ..signals import Stopped, signal_name, stop_requests
from ..synset import expand, pack

__all__ = ["DistillLoop", "NonFiniteLossError", "build_matcher", "per_sample_network"]

log = logging.getLogger(__name__)

_CHECKPOINT_FORMAT = 1

#: at IPC 1, a median real radius ``|v|/sqrt(k)`` above this with the synthetic points free of the clamp is warned
#: about: the one synthetic point per class is pulled toward its class's Law centroid, far inside the real points
#: (measured on Fashion-MNIST against the MMD line: radius 2 lost 1.50 over 3 seeds at 2,000 iterations, radius 4
#: lost 7.97 on seed 0 at 1,000)
IPC1_RADIUS_LIMIT = 3.0

# settings (paths; a section name covers the section) that do not change what the images become; every
# other setting must match on --resume
_MAY_CHANGE_ON_RESUME = frozenset(
    {
        "preset",
        "eval",
        "checkpoint_every",
        "checkpoint_minutes",
        "device",
        "data_root",
        "download",
        "dance.expert_dir",
        "matcher.compile",
    }
)


def _may_change_on_resume(path: str) -> bool:
    parts = path.split(".")
    return any(".".join(parts[:n]) in _MAY_CHANGE_ON_RESUME for n in range(1, len(parts) + 1))


class NonFiniteLossError(RuntimeError):
    """The loss or the images became NaN/inf; the run stopped and kept its last good checkpoint."""


def build_matcher(cfg: DistillConfig, process_group: Any = None) -> nn.Module:
    """The matcher a config asks for. The loop checks finiteness itself, with a run-level message.
    ``process_group``: match against the real features of every rank (data-parallel runs)."""
    m = cfg.matcher
    if m.kind == "mmd":
        return MMDMatcher(reduction="sum", check_finite=False, process_group=process_group)
    return HyperbolicMatcher(
        m.k,
        m.scale,
        max_norm=m.max_norm,
        hierarchical=m.hierarchical,
        radius=m.radius,
        reduction="sum",
        check_finite=False,
        compile=m.compile,
        process_group=process_group,
    )


def per_sample_network(net: nn.Module) -> bool:
    """True when ``net``'s output for a sample does not depend on the rest of its batch (no batch norm in train
    mode)."""
    return not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())


class DistillLoop:
    """Shared machinery of a distillation run; subclasses define :meth:`matching_loss`."""

    method = "base"
    #: runs data-parallel under torchrun (see :mod:`hyperdm.distill.parallel`)
    supports_distributed = False

    def __init__(
        self,
        cfg: DistillConfig,
        real: RealData,
        out: str,
        *,
        matcher: nn.Module | None = None,
        progress: bool = True,
    ) -> None:
        validate(cfg)
        self.cfg = cfg
        self.real = real
        self.run_dir = RunDir(out)  # created by run(), after every check
        self.device = check_device(cfg.device)
        self.num_classes = real.info.num_classes
        self.par = Parallel.current()
        self.progress = progress and self.par.is_main  # one progress bar per run: rank 0's
        if self.par.enabled:
            if not self.supports_distributed:
                raise ValueError(
                    f"--method {cfg.method} runs on one process so far; data-parallel runs (torchrun, "
                    f"{self.par.world} processes here) support --method dm, idm and dance. Run it without torchrun."
                )
            if matcher is not None and getattr(matcher, "process_group", None) is None:
                raise ValueError(
                    "a matcher passed to a data-parallel run must match across ranks: give it "
                    "process_group=torch.distributed.group.WORLD."
                )
        group = self.par.group if self.par.enabled else None
        self.matcher = (matcher if matcher is not None else build_matcher(cfg, group)).to(self.device)
        self.match_dtype = torch.float64 if cfg.matcher.dtype == "float64" else torch.float32
        self.train_images = real.train_images.to(self.device)
        self.train_labels = real.train_labels.to(self.device)
        self.class_indices: list[Tensor] = [i.to(self.device) for i in real.indices_by_class()]
        smallest = min(int(i.numel()) for i in self.class_indices)
        self.partition = int(cfg.partition)
        need = cfg.ipc * self.partition**2 if cfg.init == "real" else cfg.ipc
        if smallest < need:
            raise ValueError(
                f"ipc={cfg.ipc} needs {need} real images per class to initialise from, but the smallest class of "
                f"{real.info.name} has {smallest} training images; use --ipc <= {smallest // (need // cfg.ipc)}."
            )
        self._check_architectures()
        self.match_strategy = cfg.dsa_strategy if cfg.match_dsa is None else cfg.match_dsa
        self.match_params = DSAParams(aug_mode=cfg.match_aug_mode)
        self.syn_labels = torch.arange(self.num_classes, device=self.device).repeat_interleave(cfg.ipc)
        self.syn: Tensor | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.metrics: dict[str, Any] = {"loss": [], "evals": [], "distill_seconds": 0.0, "images_seen": 0}
        self.kept: Tensor | None = None

    def _check_architectures(self) -> None:
        """Build the distillation model and every evaluation architecture once for this dataset's images and
        forward one blank image, so that a network that cannot take them fails now, not after the distillation."""
        info = self.real.info
        blank = torch.zeros(1, info.channels, *info.im_size)
        for name in dict.fromkeys((self.cfg.model, *self.cfg.eval.archs)):
            try:
                net = seeded_network(name, info.channels, info.num_classes, info.im_size, seed=0).eval()
                with torch.no_grad():
                    net(blank)
            except (RuntimeError, ValueError) as e:
                raise ValueError(
                    f"architecture {name} cannot run on {info.name} images "
                    f"({info.channels}x{info.im_size[0]}x{info.im_size[1]}): {e}; choose another --model / --arch."
                ) from None

    # ---- pieces the methods call -------------------------------------------------------------

    def fresh_network(self, it: int, *, tag: int = 0, model: str | None = None, trainable: bool = False) -> Embedder:
        """A randomly initialised network for iteration ``it`` (seeded by ``(seed, it, tag)``), in train
        mode on the run's device; its parameters are frozen unless ``trainable``."""
        info = self.real.info
        net = seeded_network(
            model or self.cfg.model,
            info.channels,
            info.num_classes,
            info.im_size,
            seed=derive_seed(self.cfg.seed, it, Stream.NETWORK, tag),
        )
        net = net.to(self.device).train()
        for p in net.parameters():
            p.requires_grad_(trainable)
        return net

    def generator(self, it: int, *, tag: int = 0) -> torch.Generator:
        """The CPU generator for iteration ``it`` (real batches, DSA seeds)."""
        return torch.Generator().manual_seed(derive_seed(self.cfg.seed, it, Stream.SAMPLE, tag))

    def sample_real(self, c: int, n: int, gen: torch.Generator) -> Tensor:
        """``min(n, class size)`` random real images of class ``c``, without replacement."""
        idx = self.class_indices[c]
        pick = torch.randperm(idx.numel(), generator=gen)[:n].to(idx.device)
        return self.train_images[idx[pick]]

    def sample_real_any(self, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        """``n`` random real images of any class (from the possibly pruned pool), with labels."""
        pool = torch.cat(self.class_indices)
        pick = pool[torch.randperm(pool.numel(), generator=gen)[:n].to(pool.device)]
        return self.train_images[pick], self.train_labels[pick]

    def syn_class(self, c: int) -> Tensor:
        assert self.syn is not None
        return self.syn[c * self.cfg.ipc : (c + 1) * self.cfg.ipc]

    def syn_expanded(self, c: int) -> tuple[Tensor, Tensor]:
        """Class ``c``'s synthetic images as the networks see them (expanded when the set is partitioned), with
        labels."""
        ipc = self.cfg.ipc
        return expand(self.syn_class(c), self.syn_labels[c * ipc : (c + 1) * ipc], self.partition)

    def augment(self, x: Tensor, seed: int) -> Tensor:
        """Siamese DSA of the matching step: the same ``seed`` gives the same transformation to real and
        synthetic batches (``cfg.match_dsa`` or else ``cfg.dsa_strategy``, groups chosen by ``cfg.match_aug_mode``)."""
        return dsa(x, self.match_strategy, self.match_params, seed=seed, siamese=True)

    def augmented_class(self, c: int, seed: int, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """Class ``c``'s matching inputs: ``(real, syn, syn_labels)``.

        ``real``: ``cfg.batch_real`` real images of the class drawn with ``gen`` (the same batch on every
        rank; this rank keeps rows ``rank::world``); ``syn``: the class's expanded synthetic images. Both
        get the DSA draw of ``seed`` (siamese: one transformation for the two batches).
        """
        x_syn, y_syn = self.syn_expanded(c)
        real = self.augment(self.par.shard(self.sample_real(c, self.cfg.batch_real, gen)), seed)
        return real, self.augment(x_syn, seed), y_syn

    def class_matching_loss(
        self, net: Embedder, c: int, seed: int, gen: torch.Generator
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One class's matching step under ``net``: ``(loss, syn_features, syn_labels)``.

        The inputs of :meth:`augmented_class`, features from ``net.embed`` (the real ones without grad),
        and ``matcher(real features, synthetic features)``: DM's MMD line for one class. The synthetic
        features and labels are returned for terms a method adds (IDM's cross-entropy).
        """
        real, syn, y_syn = self.augmented_class(c, seed, gen)
        with torch.no_grad():
            f_real = net.embed(real)
        f_syn = net.embed(syn)
        return self.match([f_real], [f_syn]), f_syn, y_syn

    def match(self, real_feats: Sequence[Tensor], syn_feats: Sequence[Tensor]) -> Tensor:
        """The line DM calls its MMD line: ``matcher(real features, synthetic features)`` over all classes.

        Takes per-class feature lists; stacks them into ``[C, N, D]`` when the classes have equal
        counts (the usual case) or passes flat features with labels otherwise.
        """
        dt = self.match_dtype
        if len({f.shape[0] for f in real_feats}) == 1 and len({f.shape[0] for f in syn_feats}) == 1:
            return self.matcher(torch.stack(list(real_feats)).to(dt), torch.stack(list(syn_feats)).to(dt))
        rl = torch.cat(
            [torch.full((f.shape[0],), c, dtype=torch.long, device=f.device) for c, f in enumerate(real_feats)]
        )
        sl = torch.cat(
            [torch.full((f.shape[0],), c, dtype=torch.long, device=f.device) for c, f in enumerate(syn_feats)]
        )
        return self.matcher(
            torch.cat(list(real_feats)).to(dt), torch.cat(list(syn_feats)).to(dt), real_labels=rl, syn_labels=sl
        )

    # ---- to implement ---------------------------------------------------------------------------

    def matching_loss(self, it: int) -> Tensor:
        """The loss of iteration ``it`` (a scalar with a graph to ``self.syn``)."""
        raise NotImplementedError

    def step(self, it: int) -> float:
        """One iteration: loss, backward, image update; returns the loss value. Methods that update
        the images several times per iteration (IDM, Dance: once per class) override this."""
        return self.image_step(self.matching_loss(it), it)

    def image_step(self, loss: Tensor, it: int) -> float:
        """Check ``loss`` is finite, backward it, update the images once; returns the loss value."""
        assert self.optimizer is not None
        value = float(loss.detach())
        self.check_finite(value, it)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.par.enabled and self.syn is not None and self.syn.grad is not None:
            self.par.average_(self.syn.grad)  # equal on every rank already; averaging keeps the replicas in step
        self.before_image_update()
        self.optimizer.step()
        return value

    def before_image_update(self) -> None:
        """Called between backward and the optimizer step (Dance scales the gradient to pixel units)."""

    def check_finite(self, value: float, it: int) -> None:
        if not math.isfinite(value):
            raise NonFiniteLossError(f"the {self.cfg.matcher.kind} loss is {value} at iteration {it}")

    def training_set(self) -> tuple[Tensor, Tensor]:
        """The synthetic set as training images (expanded if the method stores partitioned images)."""
        assert self.syn is not None
        return expand(self.syn.detach(), self.syn_labels, self.partition)

    def prepare(self) -> None:
        """Called once per run (fresh or resumed) before the first iteration; Dance loads its experts here."""

    def extra_state(self) -> dict[str, Any]:
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    def images_per_iteration(self) -> int:
        """Images pushed through a network per iteration (for the throughput figure)."""
        sizes = [min(self.cfg.batch_real, int(i.numel())) for i in self.class_indices]
        return sum(sizes) + self.num_classes * self.cfg.ipc * self.partition**2

    # ---- the run ------------------------------------------------------------------------------

    def _init_synthetic(self) -> None:
        cfg = self.cfg
        gen = torch.Generator().manual_seed(derive_seed(cfg.seed, Stream.INIT))
        f = self.partition
        if cfg.init == "real":  # partitioned sets: f*f different real images, down-sampled into the cells
            syn = torch.cat([pack(self.sample_real(c, f * f * cfg.ipc, gen), f) for c in range(self.num_classes)])
        else:
            info = self.real.info
            syn = torch.randn((self.num_classes * cfg.ipc, info.channels, *info.im_size), generator=gen).to(self.device)
        self.syn = syn.detach().clone().float().requires_grad_(True)
        self.optimizer = torch.optim.SGD([self.syn], lr=cfg.lr_img, momentum=cfg.momentum_img)

    def _prune(self, keep: float) -> None:
        """Keep the fraction ``keep`` (``prune_keep``) of each class, ranked by hyperbolic radius over random
        networks (paper Sec. 4.3)."""
        cfg = self.cfg
        labels = self.real.train_labels
        kept = prune_indices(
            self.train_images,
            labels,
            self.real.info,
            keep=keep,
            score=cfg.prune_score,
            nets=cfg.prune_nets,
            k=cfg.matcher.k,
            model=cfg.model,
            seed=cfg.seed,
            progress=self.progress,
        )
        self.kept = kept.cpu()
        self._apply_kept()
        how = (
            "uniformly at random"
            if cfg.prune_score == "random"
            else f"score {cfg.prune_score} over {cfg.prune_nets} random {cfg.model}"
        )
        log.info(
            "pruning: kept %d of %d real images (%.0f%% per class, %s)",
            kept.numel(),
            labels.numel(),
            100 * keep,
            how,
        )

    def _apply_kept(self) -> None:
        assert self.kept is not None
        keep = torch.zeros(self.real.train_labels.numel(), dtype=torch.bool)
        keep[self.kept] = True
        keep = keep.to(self.device)
        self.class_indices = [i[keep[i]] for i in self.class_indices]

    def _state(self, it: int) -> dict[str, Any]:
        assert self.syn is not None and self.optimizer is not None
        return {
            "format": _CHECKPOINT_FORMAT,
            "iteration": it,
            "images": self.syn.detach().cpu().clone(),
            "labels": self.syn_labels.cpu(),
            "optimizer": self.optimizer.state_dict(),
            "matcher": self.matcher.state_dict(),
            "metrics": self.metrics,
            "config": self.cfg.to_dict(),
            "kept": self.kept,
            "extra": self.extra_state(),
        }

    def _checkpoint(self, it: int) -> None:
        assert self.syn is not None
        if not torch.isfinite(self.syn).all():  # never replace a good checkpoint with a broken one
            raise NonFiniteLossError(f"images are NaN/inf at iteration {it}")
        if self.par.is_main:  # rank 0 writes for all
            self.run_dir.save_checkpoint(self._state(it))

    def _load_state(self) -> dict[str, Any] | None:
        """The checkpoint of this run directory (None if there is none), checked for format and shapes."""
        rd = self.run_dir
        state = rd.load_checkpoint()  # weights_only=True after the container checks; names the fix when damaged
        if state is None:
            return None
        fix = rd.damaged_checkpoint_fix()
        lacks = [
            k
            for k in ("format", "iteration", "images", "labels", "optimizer", "matcher", "metrics", "config")
            if k not in state
        ]
        if lacks:
            raise CorruptFileError(f"{rd.checkpoint} is not a hyperdm checkpoint (it lacks {', '.join(lacks)}). {fix}")
        if state.get("format") != _CHECKPOINT_FORMAT:
            raise CorruptFileError(
                f"{rd.checkpoint} has checkpoint format {state.get('format')!r}; this hyperdm "
                f"({__version__}) reads format {_CHECKPOINT_FORMAT}. {fix}"
            )
        try:
            DistillConfig.from_dict(state["config"])
        except (TypeError, ValueError, AttributeError) as e:
            raise CorruptFileError(f"{rd.checkpoint}: its settings cannot be read ({e}). {fix}") from None
        images = state.get("images")
        if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[0] != self.num_classes * self.cfg.ipc:
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise CorruptFileError(
                f"{rd.checkpoint}: its images are {shape}, not {self.num_classes * self.cfg.ipc} "
                f"images of {self.real.info.name}. {fix}"
            )
        return state

    def _check_same_settings(self, state: dict[str, Any]) -> None:
        """Refuse to resume a checkpoint made with settings that change what the images become."""
        old, new = DistillConfig.from_dict(state["config"]).settings(), self.cfg.settings()
        changed = [p for p in dict.fromkeys((*old, *new)) if not _may_change_on_resume(p) and old.get(p) != new.get(p)]
        if changed:
            were = "; ".join(f"{p}: {old.get(p)!r} in the checkpoint, {new.get(p)!r} now" for p in changed[:4])
            raise ValueError(
                f"--resume: the checkpoint in {self.run_dir.path} was made with different settings ({were}"
                f"{'; ...' if len(changed) > 4 else ''}); resume with the same settings, or use a new --out directory."
            )

    def _resume(self, state: dict[str, Any]) -> int:
        self._check_same_settings(state)
        self.kept = state.get("kept")
        if self.kept is not None:
            self._apply_kept()
        self.syn = state["images"].to(self.device).float().requires_grad_(True)
        self.optimizer = torch.optim.SGD([self.syn], lr=self.cfg.lr_img, momentum=self.cfg.momentum_img)
        self.optimizer.load_state_dict(state["optimizer"])
        self.matcher.load_state_dict(state["matcher"])
        self.metrics = state["metrics"]
        self.load_extra_state(state.get("extra", {}))
        log.info(
            "resumed from iteration %d of %d (%s)", state["iteration"], self.cfg.iterations, self.run_dir.checkpoint
        )
        return int(state["iteration"])

    def write_config(self) -> None:
        if not self.par.is_main:
            return
        write_json(
            self.run_dir.config,
            {
                **self.cfg.to_dict(),
                "versions": {
                    "hyperdm": __version__,
                    "torch": torch.__version__,
                    "numpy": np.__version__,
                    "python": sys.version.split()[0],
                    "platform": platform.platform(),
                },
                "dataset_root": self.real.root,
                "num_classes": self.num_classes,
                "loop": type(self).__name__,
                "matcher_repr": repr(self.matcher),
            },
        )

    def evaluate(self, it: int) -> dict[str, Any]:
        assert self.syn is not None
        ecfg = self.cfg.eval_config()
        images, labels = self.training_set()
        res = evaluate_synthetic(
            images, labels, self.real.test_images, self.real.test_labels, self.real.info, ecfg, progress=self.progress
        )
        entry = {"iteration": it, **{a: {k: v for k, v in r.items() if k != "runs"} for a, r in res.items()}}
        return entry

    def run(self, *, resume: bool = False, overwrite: bool = False, stop_at: int | None = None) -> dict[str, Any]:
        """Distil, evaluate at ``cfg.eval_iterations()``, write every artifact. Returns the metrics as written to
        metrics.json.

        ``stop_at``: pause at that iteration instead (after its evaluation, if one is due there): write the
        checkpoint and the metrics so far (``final: false``) and return; ``resume=True`` later continues the run.

        ``resume``: continue from the run directory's checkpoint (a fresh start if it has none).
        ``overwrite``: remove the run files already in the directory and start over. Without either, a
        directory that holds run files is refused (FileExistsError) before anything is written, and a
        damaged checkpoint is refused (CorruptFileError) before the log is touched.
        """
        if resume and overwrite:
            raise ValueError("--resume continues the run in --out and --overwrite replaces it; pass one of them.")
        if stop_at is not None and not (isinstance(stop_at, int) and stop_at >= 1):
            raise ValueError(f"stop_at must be an iteration >= 1 (or None: run to the end); got {stop_at!r}.")
        cfg = self.cfg
        rd = self.run_dir
        with contextlib.ExitStack() as stack:
            state, problem = None, None
            if self.par.is_main:  # rank 0 reads the run directory, holds its lock, and tells the others
                try:
                    why = rd.refusal(resume=resume, overwrite=overwrite)
                    if why:
                        raise FileExistsError(why)
                    if resume and not rd.existing():
                        raise FileNotFoundError(
                            f"--resume: {rd.path} holds no run to continue (no checkpoint.pt, no run files); check "
                            "--out for a typo, or start the run without --resume."
                        )
                    stack.enter_context(rd.lock())  # one writer per run directory (creates it)
                    state = self._load_state() if resume else None
                    if state is not None:
                        self._check_same_settings(state)  # before the settings table, which would bury it
                except (FileExistsError, FileNotFoundError, CorruptFileError, UnsafeFileError, ValueError) as e:
                    problem = e
            state, problem = self.par.broadcast((state, problem))
            if problem is not None:
                raise problem
            if self.par.is_main:
                if overwrite:
                    rd.clear()
                elif resume:
                    rd.remove_stale_temps()  # left by a write that a SIGKILL interrupted
            stack.enter_context(rd.logging_to_file() if self.par.is_main else contextlib.nullcontext())
            log.info(
                "hyperdm %s: %s with the %s matcher on %s, IPC %d, preset %s%s\n%s",
                __version__,
                cfg.method,
                cfg.matcher.kind,
                cfg.dataset,
                cfg.ipc,
                cfg.preset,
                f", {self.par.world} processes (torch.distributed)" if self.par.enabled else "",
                cfg.summary(),
            )
            if resume and state is None:
                log.warning(
                    "--resume: %s holds no checkpoint yet (the run stopped before its first one); starting from the "
                    "beginning",
                    rd.path,
                )
            if state is not None:
                start = self._resume(state)
            else:
                if cfg.prune_keep is not None and cfg.prune_keep < 1:
                    self._prune(cfg.prune_keep)
                self._init_synthetic()
                start = 0
            assert self.syn is not None  # set by _resume or _init_synthetic
            self.metrics["real_images_used"] = int(sum(int(i.numel()) for i in self.class_indices))
            self.write_config()
            self.prepare()
            eval_its = cfg.eval_iterations() if cfg.eval.runs > 0 and cfg.eval.epochs > 0 else []
            done = {e["iteration"] for e in self.metrics["evals"]}
            per_it = self.images_per_iteration()
            bar = progress_bar(cfg.iterations, f"{cfg.method}+{cfg.matcher.kind}", self.progress, initial=start)
            it = start
            last_good = start
            t_distill = 0.0
            last_save = time.monotonic()
            every_s = 60.0 * cfg.checkpoint_minutes
            # SIGTERM, SIGHUP, SIGUSR1 and Ctrl-C stop the run after the current step, with a checkpoint
            stops = stack.enter_context(stop_requests())
            agree = self.par.max_int if self.par.enabled else None
            # under torchrun a signal is only recorded in the loop, and every rank stops at the same check (a rank
            # that stopped alone would leave the others in a collective, and no checkpoint would be written)
            together = stops.deferred(act=False) if agree is not None else contextlib.nullcontext()
            with together:
                try:
                    while True:
                        if it in eval_its and it not in done:
                            if it >= cfg.iterations:  # the distillation is over: its bar stops its clock now
                                bar.close()
                            if self.par.is_main:  # the other ranks wait at the barrier
                                # a signal cuts the evaluation at once (under torchrun the ranks then stop below)
                                with stops.interruptible(agreed=agree is not None):
                                    self._timed_evaluation(it)
                            done.add(it)
                            self._write_metrics(final=False)
                            self._checkpoint(it)
                            self.par.barrier()
                            last_good = it
                            stops.check(agree)  # a signal during the evaluation: every rank stops here
                        if it >= cfg.iterations:
                            break
                        if stop_at is not None and it >= stop_at:  # a pause: keep everything, continue with resume
                            if it > last_good:
                                self._checkpoint(it)
                            log.info(
                                "paused at iteration %d of %d (stop_at); continue with --resume", it, cfg.iterations
                            )
                            return self._write_metrics(final=False)
                        with stops.deferred():  # a signal here stops the run once this step is complete
                            t0 = time.perf_counter()
                            value = self.step(it)
                            if "radius" not in self.metrics:
                                self._record_radius(it)
                            if not bool(torch.isfinite(self.syn.detach()).all()):
                                raise NonFiniteLossError(
                                    f"the images became NaN/inf at iteration {it} (loss {value:.4g})"
                                )
                            dt = time.perf_counter() - t0
                            t_distill += dt
                            self.metrics["distill_seconds"] += dt
                            self.metrics["images_seen"] += per_it
                            self.metrics["loss"].append(value)
                            it += 1
                            if bar is not None:
                                bar.update(1)
                                bar.set_postfix(loss=f"{value / self.num_classes:.4g}")
                            due = it % cfg.checkpoint_every == 0 or it == cfg.iterations
                            timed = every_s > 0 and time.monotonic() - last_save >= every_s
                            if timed and agree is not None:  # every rank's clock: all of them checkpoint together
                                timed = bool(agree(int(timed)))
                            if due or timed:
                                self._checkpoint(it)
                                last_good, last_save = it, time.monotonic()
                                rate = (it - start) / t_distill if t_distill > 0 else 0.0
                                log.info(
                                    "iteration %d/%d  loss per class %.4g  %.2f it/s  %s  checkpoint saved",
                                    it,
                                    cfg.iterations,
                                    value / self.num_classes,
                                    rate,
                                    self._eta(it, rate, [i for i in eval_its if i not in done]),
                                )
                        stops.check(agree)  # under torchrun: stop together once any rank got a signal
                except NonFiniteLossError as e:
                    if rd.checkpoint.exists():
                        msg = (
                            f"{e}; stopped. The last good checkpoint (iteration {last_good}) is kept in "
                            f"{rd.checkpoint}. Lower --lr-img or --scale, check the data, or resume from the "
                            "checkpoint with other settings in a new run."
                        )
                    else:
                        msg = (
                            f"{e}; stopped before the first checkpoint, so there is nothing to resume. Lower "
                            "--lr-img or --scale or check the data, then start again with --overwrite (or another "
                            "--out)."
                        )
                    log.error(msg)
                    self.metrics["stopped"] = msg
                    self._write_metrics(final=False)
                    raise NonFiniteLossError(msg) from None
                except (KeyboardInterrupt, Stopped) as e:
                    why = "interrupted" if isinstance(e, KeyboardInterrupt) else f"stopped by {signal_name(e.signum)}"
                    if self.syn is not None and bool(torch.isfinite(self.syn.detach()).all()) and it > last_good:
                        self._checkpoint(it)
                        last_good = it
                    if rd.checkpoint.exists() or not self.par.is_main:
                        log.warning("%s: the checkpoint is at iteration %d; continue with --resume", why, last_good)
                    else:
                        log.warning("%s before the first checkpoint: nothing to resume", why)
                    raise
                finally:
                    if bar is not None:
                        bar.close()
            return self._finish()

    _eval_seconds: float | None = None  # the last evaluation's duration in this process (None: none yet)

    def _timed_evaluation(self, it: int) -> None:
        """Evaluate the images of iteration ``it`` into the metrics, with the time it took."""
        t_eval = time.perf_counter()
        self.metrics["evals"].append(self.evaluate(it))
        seconds = time.perf_counter() - t_eval
        self.metrics["eval_seconds"] = self.metrics.get("eval_seconds", 0.0) + seconds
        self._eval_seconds = seconds  # the estimate of the next ones

    def _eta(self, it: int, rate: float, evals_left: Sequence[int]) -> str:
        """``ETA 12 min 5 s (distillation 4 min 2 s + 2 evaluations, about 8 min)``: the whole job, evaluations
        included (their time measured on the last one, or estimated from a few timed training steps)."""
        distill = (self.cfg.iterations - it) / rate if rate > 0 else float("nan")
        if not evals_left:
            return f"ETA {format_seconds(distill)} (distillation; no evaluation left)"
        if self._eval_seconds is None:
            images, _ = self.training_set()
            self._eval_seconds = estimate_seconds(
                images.shape[0], self.real.test_images.shape[0], self.real.info, self.cfg.eval_config()
            )
        ev = len(evals_left) * self._eval_seconds
        n = len(evals_left)
        return (
            f"ETA {format_seconds(distill + ev)} (distillation {format_seconds(distill)} + {n} evaluation"
            f"{'s' if n > 1 else ''}, about {format_seconds(ev)})"
        )

    def _record_radius(self, it: int) -> None:
        """Where the first iteration's features sit on the hyperboloid (the matcher's radius statistics): logged once
        and kept in metrics.json as ``radius``."""
        stats = getattr(self.matcher, "last_stats", None)
        if stats is None:
            return
        entry: dict[str, Any] = {"iteration": it, **stats.as_dict(), "max_norm": stats.max_norm}
        alpha = getattr(self.matcher, "alpha", None)
        if alpha is not None:
            entry["alpha"] = alpha
        self.metrics["radius"] = entry
        log.info(
            "radii at iteration %d: median |v|/sqrt(k) of the real features %.3g (%.0f%% at the clamp), of the "
            "synthetic %.3g (%.0f%%)%s",
            it,
            entry["real_median"],
            100 * entry["real_clamped"],
            entry["syn_median"],
            100 * entry["syn_clamped"],
            "" if alpha is None else f"; radius calibration: features scaled by {alpha:.4g}",
        )
        radius = min(entry["real_median"], entry["max_norm"])  # where the real points sit, clamp included
        if self.par.is_main and self.cfg.ipc == 1 and radius > IPC1_RADIUS_LIMIT and entry["syn_clamped"] < 0.5:
            log.warning(
                "IPC 1 with the real features at median radius %.3g and the synthetic ones free of the clamp: each "
                "class's one synthetic image is pulled toward the class's Law centroid, far inside the real points, "
                "and moves away from real images (measured on Fashion-MNIST against the MMD line at 1,000 iterations: "
                "8 points lost at radius 4, 20 at radius 8, 23 with the exact map). HDD as published (the clamp) "
                "stays level with the MMD line there (docs/results.md, 'Radius calibration').",
                radius,
            )

    def _write_metrics(self, *, final: bool) -> dict[str, Any]:
        m = dict(self.metrics)
        secs = m.get("distill_seconds", 0.0)
        m["images_per_second"] = m["images_seen"] / secs if secs > 0 else None
        m["iterations_done"] = len(m["loss"])
        m["loss_per_class"] = [v / self.num_classes for v in m["loss"]]
        m["final"] = final
        scale = getattr(self.matcher, "scale", None)  # the hyperbolic matcher's lambda (chosen once with scale="auto")
        if scale is not None:
            m["matcher_scale"] = float(scale)
        alpha = getattr(self.matcher, "alpha", None)  # the radius calibration's feature scale, once chosen
        if alpha is not None:
            m["matcher_alpha"] = float(alpha)
        if self.par.enabled:
            m["processes"] = self.par.world
        if self.par.is_main:
            write_json(self.run_dir.metrics, m)
        return m

    def _finish(self) -> dict[str, Any]:
        assert self.syn is not None
        if not self.par.is_main:
            return self._write_metrics(final=True)
        rd, info = self.run_dir, self.real.info
        images = self.syn.detach().cpu()
        rd.save_synthetic(
            images,
            self.syn_labels.cpu(),
            normalised=True,
            mean=list(info.mean),
            std=list(info.std),
            dataset=info.name,
            ipc=self.cfg.ipc,
            method=self.cfg.method,
            matcher=self.cfg.matcher.kind,
            partition=self.partition,
            hyperdm=__version__,
        )
        pix = self.real.denormalise(images)
        rd.save_grid(pix, nrow=self.cfg.ipc)
        self.metrics["storage"] = storage_sizes(pix)
        final = self._write_metrics(final=True)
        try:
            from ..plots import plot_poincare

            shown, shown_labels = self.training_set()  # the images the matcher saw (expanded when partitioned)
            plot_poincare(
                self.real,
                shown.cpu(),
                shown_labels.cpu(),
                rd.poincare,
                k=float(getattr(self.matcher, "calibrated_k", self.cfg.matcher.k)),
                max_norm=self.cfg.matcher.max_norm,
                model=self.cfg.model,
                seed=self.cfg.seed,
            )
        except ImportError as e:  # matplotlib is in the [distill] extra
            log.warning('poincare.png skipped: %s (pip install ".[distill]")', e)
        for entry in self.metrics["evals"]:
            for arch, r in entry.items():
                if arch != "iteration":
                    log.info("iteration %d, %s: %s", entry["iteration"], arch, format_accuracy(r["accs"]))
        n_ev = len(self.metrics["evals"])
        took = format_seconds(self.metrics.get("eval_seconds", 0.0))
        log.info(
            "distillation took %s (%d iterations); evaluation %s",
            format_seconds(self.metrics["distill_seconds"]),
            len(self.metrics["loss"]),
            f"took {took} ({n_ev} evaluation{'s' if n_ev != 1 else ''})" if n_ev else "none (--eval-runs 0)",
        )
        log.info("artifacts in %s", rd.path)
        return final
