"""Dance (Zhang et al., "DANCE: Dual-view distribution alignment", IJCAI 2024) on the shared toolkit.

What Dance adds to DM, as its reference code (Hansong-Zhang/DANCE ``DANCE.py``) does:

* experts: ``experts`` networks trained on real data beforehand, each with its initial and trained
  weights (:mod:`hyperdm.distill.experts`; cached on disk and reused across runs);
* inner-class view, per iteration: a random expert and a mixing factor ``l ~ U(0, 1)`` give a
  "middle encoder" with parameters ``l * init + (1 - l) * trained``; for every class, the real
  batch and the class's expanded synthetic images get one augmentation draw (DiffAug
  "color_crop_cutout", every group applied), their mean features are matched under the middle
  encoder (the matcher's place: DM's MMD line) and the images take one SGD step;
* inter-class view (calibration): ``iter_calib`` passes in which, for every class, the augmented
  synthetic images are classified by the trained expert and the cross-entropy takes an image step;
* multi-formation (factor 2, IDC style): every stored image holds a 2x2 grid of sub-images,
  expanded for matching and evaluation (:func:`hyperdm.distill.synset.expand`);
* images live in pixel space ``[0, 1]``: they are clamped to it at the start of every iteration,
  and the SGD learning rate (``lr_img``, e.g. 0.01 x IPC) is in pixel units.

The toolkit keeps images normalised (``z = (x - mean) / std``). Clamping ``x`` to ``[0, 1]`` is
clamping ``z`` to ``[-mean / std, (1 - mean) / std]``, and SGD with momentum on ``x`` is SGD on
``z`` with the gradient divided by ``std**2`` per channel (``dL/dx = dL/dz / std``, and a step
``dx`` is a step ``dz = dx / std``; momentum is linear, so every iterate agrees). This loop does
exactly that, so the paper's and the reference's learning rates mean what they meant there.

Differences from the reference, stated: the synthetic set starts from random real images (the
reference takes each class's first images and down-samples them with nearest-neighbour, hyperdm
with antialiased bilinear, :func:`hyperdm.distill.synset.pack`); at most ``batch_syn_max = 200``
synthetic images per class are used in the reference, which every preset here stays within.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F

from ..config import DanceConfig
from ..experts import Expert, load_or_train_experts
from ..models import Embedder
from ..seeding import Stream, derive_seed
from .base import DistillLoop

__all__ = ["DanceLoop"]

log = logging.getLogger(__name__)


class DanceLoop(DistillLoop):
    method = "dance"
    #: under torchrun each rank forwards its stride of every real batch; rank 0 trains (or finds) the experts
    #: first, the others then load them from the cache (train them beforehand when that takes hours)
    supports_distributed = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.cfg.dance is None:
            raise ValueError(
                f"DanceLoop needs the dance settings, and this config is --method {self.cfg.method} (it has none); "
                "build it for Dance: resolve(method='dance', ...) or DistillConfig(method='dance', ...)."
            )
        mean = torch.tensor(self.real.info.mean, dtype=torch.float32, device=self.device).reshape(1, -1, 1, 1)
        std = torch.tensor(self.real.info.std, dtype=torch.float32, device=self.device).reshape(1, -1, 1, 1)
        self.pixel_lo, self.pixel_hi = -mean / std, (1 - mean) / std  # [0, 1] in normalised units
        self.pixel_grad_scale = 1.0 / std**2  # SGD in pixel units, see the module docstring
        self.experts: list[Expert] = []
        self.expert_dir: str | None = None
        self.middle: Embedder | None = None
        self.expert_net: Embedder | None = None

    @property
    def dance(self) -> DanceConfig:
        """The run's ``dance`` section (``cfg.dance``; checked present when the loop was built)."""
        dance = self.cfg.dance
        assert dance is not None, "cfg.dance was removed after the DanceLoop was built"
        return dance

    # ---- experts ----------------------------------------------------------------------------

    def prepare(self) -> None:
        ecfg = self.cfg.expert_config()
        # experts learn from the whole training set (they are shared by every run on it), not the pruned pool
        if not self.par.is_main:  # rank 0 goes first, so that only it trains; the others then read its cache
            self.par.barrier()
        self.experts, directory = load_or_train_experts(
            self.real.train_images,
            self.real.train_labels,
            self.real.info,
            ecfg,
            root=self.dance.expert_dir,
            device=self.cfg.device,
            progress=self.progress,
        )
        if self.par.is_main:
            self.par.barrier()
        dev = self.device
        self.experts = [
            Expert({k: v.to(dev) for k, v in e.init.items()}, {k: v.to(dev) for k, v in e.trained.items()}, e.train_acc)
            for e in self.experts
        ]
        self.expert_dir = str(directory)
        self.metrics["experts"] = {"dir": self.expert_dir, "train_acc": [e.train_acc for e in self.experts]}
        self.middle = self.fresh_network(-1, tag=3000)
        self.expert_net = self.fresh_network(-1, tag=3001)

    def _load_expert(self, gen: torch.Generator) -> float:
        """Pick an expert and a mixing factor with ``gen``; set the middle encoder and the trained expert."""
        assert self.middle is not None and self.expert_net is not None
        j = int(torch.randint(0, len(self.experts), (1,), generator=gen))
        lam = torch.rand(1, generator=gen).to(self.device)
        e = self.experts[j]
        self.expert_net.load_state_dict(e.trained)
        with torch.no_grad():
            for name, p in self.middle.named_parameters():  # parameters only, as the reference
                p.copy_(lam * e.init[name] + (1 - lam) * e.trained[name])
        return float(lam)

    # ---- one iteration ----------------------------------------------------------------------

    def before_image_update(self) -> None:
        """SGD in pixel units: the normalised-space gradient divided by std**2 (see the module docstring)."""
        assert self.syn is not None and self.syn.grad is not None
        self.syn.grad.mul_(self.pixel_grad_scale)

    def step(self, it: int) -> float:
        assert self.syn is not None and self.middle is not None and self.expert_net is not None
        cfg, calib_passes = self.cfg, self.dance.iter_calib
        gen = self.generator(it)
        self._load_expert(gen)
        with torch.no_grad():  # the reference clamps the images to the valid pixel range every iteration
            self.syn.copy_(torch.maximum(torch.minimum(self.syn, self.pixel_hi), self.pixel_lo))
        total = 0.0
        for c in range(self.num_classes):  # inner-class view: match under the middle encoder
            # --- DM's MMD line, as a matcher call (one class) ---
            loss, _, _ = self.class_matching_loss(self.middle, c, derive_seed(cfg.seed, it, c), gen)
            total += self.image_step(loss, it)
        calib = 0.0
        for p in range(calib_passes):  # inter-class view: calibrate through the trained expert
            for c in range(self.num_classes):
                x_syn, y_syn = self.syn_expanded(c)
                syn = self.augment(x_syn, derive_seed(cfg.seed, it, Stream.DANCE_PART, p, c))
                calib += self.image_step(F.cross_entropy(self.expert_net(syn), y_syn), it)
        if calib_passes > 0:
            self.metrics.setdefault("calibration_loss", []).append(calib / (calib_passes * self.num_classes))
        return total

    def images_per_iteration(self) -> int:
        # the matching step's images, then iter_calib passes over the expanded synthetic set
        return (
            super().images_per_iteration() + self.dance.iter_calib * self.num_classes * self.cfg.ipc * self.partition**2
        )
