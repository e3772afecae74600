"""IDM (Zhao et al., "Improved distribution matching", CVPR 2023) on the shared toolkit.

What IDM adds to DM, as its reference code (uitrbn/IDM, with the settings of its command.txt) does:

* a queue of networks that keep training on real data: it starts with ``net_initial`` random
  networks, gains a new one every ``net_generate_interval`` iterations (the oldest leaves once
  there are ``net_num``), and after each iteration ``fetch_net_num`` queued networks take
  ``model_train_steps`` SGD steps (lr ``lr_net``, momentum 0.9, wd 5e-4) on random real batches;
* partition and expansion: every stored image holds a 2x2 grid of down-sampled images, expanded
  (:func:`hyperdm.distill.synset.expand`) for matching and for evaluation;
* per iteration, ``train_net_num`` queued networks (in eval mode) match each class's real and
  expanded synthetic features (the matcher's place: DM's MMD line), plus ``ce_weight`` times the
  network's running training accuracy (in percent, as the reference's meter reports it) times the
  cross-entropy of the synthetic images; the images take one SGD step per class, as in the reference.

The logits for the cross-entropy term are ``classifier(features)`` of the features already computed
(the reference runs ``net(img_syn)`` a second time: the same numbers).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..config import IDMConfig
from ..models import Embedder
from ..seeding import derive_seed
from .base import DistillLoop

__all__ = ["IDMLoop"]

log = logging.getLogger(__name__)


@dataclass
class _Queued:
    net: Embedder
    opt: torch.optim.Optimizer
    born: int
    correct: int = 0
    seen: int = 0

    def accuracy_percent(self) -> float:
        return 100.0 * self.correct / self.seen if self.seen else 0.0


class IDMLoop(DistillLoop):
    method = "idm"
    #: under torchrun each rank forwards its stride of every real batch: the matching batches (the matcher
    #: all-reduces their statistics) and the queue networks' training batches (gradients all-reduced, so
    #: every rank's copy of a queue network takes the single-process step)
    supports_distributed = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.cfg.idm is None:
            raise ValueError(
                f"IDMLoop needs the idm settings, and this config is --method {self.cfg.method} (it has none); "
                "build it for IDM: resolve(method='idm', ...) or DistillConfig(method='idm', ...)."
            )
        self.queue: list[_Queued] = []

    @property
    def idm(self) -> IDMConfig:
        """The run's ``idm`` section (``cfg.idm``; checked present when the loop was built)."""
        idm = self.cfg.idm
        assert idm is not None, "cfg.idm was removed after the IDMLoop was built"
        return idm

    # ---- the model queue ------------------------------------------------------------------

    def _new_net(self, it: int, tag: int) -> _Queued:
        net = self.fresh_network(it, tag=1000 + tag, trainable=True)
        opt = torch.optim.SGD(net.parameters(), lr=self.idm.lr_net, momentum=0.9, weight_decay=5e-4)
        return _Queued(net, opt, born=it * 1000 + tag)

    def _grow(self, it: int) -> None:
        cfg = self.idm
        if not self.queue:
            self.queue = [self._new_net(-1, t) for t in range(cfg.net_initial)]
        if it % cfg.net_generate_interval == 0:
            if len(self.queue) >= cfg.net_num:
                self.queue.pop(0)
            self.queue.append(self._new_net(it, 0))
        if cfg.acc_window > 0 and it % cfg.acc_window == 0:
            for q in self.queue:
                q.correct = q.seen = 0

    def _train_queue(self, it: int, gen: torch.Generator) -> None:
        cfg = self.idm
        for j in torch.randperm(len(self.queue), generator=gen)[: cfg.fetch_net_num].tolist():
            q = self.queue[j]
            q.net.train()
            for _ in range(cfg.model_train_steps):
                x, y = self.sample_real_any(cfg.net_batch, gen)
                # under torchrun: this rank's stride; the summed loss / whole batch size, all-reduced = the
                # mean's gradient
                if self.par.enabled:
                    n_all = y.numel()
                    x, y = self.par.shard(x), self.par.shard(y)
                    out = q.net(x)
                    loss = F.cross_entropy(out, y, reduction="sum") / n_all
                else:
                    out = q.net(x)
                    loss = F.cross_entropy(out, y)
                q.opt.zero_grad(set_to_none=True)
                loss.backward()
                counts = torch.stack([(out.argmax(1) == y).sum(), torch.tensor(y.numel(), device=y.device)])
                if self.par.enabled:
                    self.par.sum_grads_(q.net)
                    self.par.sum_(counts)
                q.opt.step()
                q.correct += int(counts[0])
                q.seen += int(counts[1])

    # ---- one iteration ----------------------------------------------------------------------

    def step(self, it: int) -> float:
        assert self.optimizer is not None
        cfg, idm = self.cfg, self.idm
        gen = self.generator(it)
        self._grow(it)
        chosen = torch.randperm(len(self.queue), generator=gen)[: idm.train_net_num].tolist()
        total = 0.0
        for n, j in enumerate(chosen):
            q = self.queue[j]
            q.net.eval()
            q.net.requires_grad_(False)
            weight = q.accuracy_percent()
            for c in range(self.num_classes):
                # --- DM's MMD line, as a matcher call (one class) ---
                loss, f_syn, y_syn = self.class_matching_loss(q.net, c, derive_seed(cfg.seed, it, n, c), gen)
                if idm.ce_weight > 0 and weight > 0:
                    loss = loss + idm.ce_weight * weight * F.cross_entropy(q.net.classifier(f_syn), y_syn)
                total += self.image_step(loss, it)
            q.net.requires_grad_(True)
        self._train_queue(it, gen)
        return total

    def images_per_iteration(self) -> int:
        idm = self.idm  # each chosen network matches every class once, then the queue trains
        return (
            idm.train_net_num * super().images_per_iteration()
            + idm.fetch_net_num * idm.model_train_steps * idm.net_batch
        )

    # ---- resume -------------------------------------------------------------------------------

    def extra_state(self) -> dict[str, Any]:
        return {
            "queue": [
                {
                    "net": q.net.state_dict(),
                    "opt": q.opt.state_dict(),
                    "born": q.born,
                    "correct": q.correct,
                    "seen": q.seen,
                }
                for q in self.queue
            ]
        }

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.queue = []
        for t, entry in enumerate(state.get("queue", [])):
            q = self._new_net(-2, t)
            q.net.load_state_dict(entry["net"])
            q.opt.load_state_dict(entry["opt"])
            q.born, q.correct, q.seen = entry["born"], entry["correct"], entry["seen"]
            self.queue.append(q)
