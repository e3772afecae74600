"""DM (Zhao & Bilen, 2023): match per-class feature statistics under a fresh random ConvNet.

Per iteration: one randomly initialised ConvNet; for each class, a batch of real images and
the class's synthetic images get the same DSA transformation (siamese, one seed per class);
features come from ``net.embed``; ``matcher(real, syn)`` replaces DM's MMD line
``sum((mean(real) - mean(syn))**2)``; SGD (momentum 0.5) updates the images.

The reference code runs one forward per class. Instance norm normalises each sample on its
own, so the features of a sample do not depend on the rest of its batch: this loop runs the
real images of all classes in one batched forward (in chunks of ``forward_chunk`` images, to
bound memory: 4096 on CUDA; 512 on the CPU, where a 2,560-image forward ran about 25 % slower than
chunks of 128 to 1024 because its activations do not stay in cache) and the synthetic images in
another, which gives the same features up to float rounding (tested). For networks with batch norm
the reference itself runs all classes in one forward (its ConvNetBN branch); this loop does the same,
without chunking.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..seeding import derive_seed
from .base import DistillLoop, per_sample_network

__all__ = ["DMLoop"]


class DMLoop(DistillLoop):
    method = "dm"
    supports_distributed = True  # each rank forwards its stride of every real batch (see distill.parallel)
    forward_chunk: int | None = None  # None: 4096 on CUDA, 512 on the CPU (see the module docstring)

    def matching_loss(self, it: int) -> Tensor:
        cfg = self.cfg
        net = self.fresh_network(it)
        gen = self.generator(it)
        real, syn = [], []
        # the per-class inputs of the shared step, embedded below in two batched forwards
        for c in range(self.num_classes):
            r, s, _ = self.augmented_class(c, derive_seed(cfg.seed, it, c), gen)
            real.append(r)
            syn.append(s)
        sizes_r, sizes_s = [x.shape[0] for x in real], [x.shape[0] for x in syn]
        xr = torch.cat(real)
        # per-sample networks may be chunked; batch norm needs the whole batch, as the reference's BN branch
        default = 4096 if self.device.type == "cuda" else 512
        chunk = (self.forward_chunk or default) if per_sample_network(net) else xr.shape[0]
        with torch.no_grad():
            fr = torch.cat([net.embed(xr[i : i + chunk]) for i in range(0, xr.shape[0], chunk)])
        fs = net.embed(torch.cat(syn))
        real_feats, syn_feats = fr.split(sizes_r), fs.split(sizes_s)
        # --- DM's MMD line, as a matcher call: MMDMatcher reproduces DM, HyperbolicMatcher is HDD ---
        return self.match(real_feats, syn_feats)
