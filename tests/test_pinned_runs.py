"""Short DM / IDM / Dance runs with the hyperbolic matcher reproduce recorded loss curves and images.

``data/pinned_runs.json`` holds the per-iteration losses and two digests of the final synthetic
images (sum and sum of squares) of five short runs on real Fashion-MNIST (40 images per class,
seed 5, five iterations, float64 matching unless named), recorded with the matcher that composed
``lorentz.feature_centroid`` and ``lorentz.dist`` under autograd. The fused matcher with its
analytic backward must reproduce them to float rounding: losses and digests to a relative 1e-6
(1e-5 for the float32-matching run: float32 images and matching round at ~1e-7; measured differences were 0 for every
float64 run and 1.4e-6 / 2.3e-7 for the image digests of the float32 run).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from test_distill_loop import FMNIST, needs_fmnist

from hyperdm.distill.loops import get_loop
from hyperdm.distill.presets import resolve

PINNED = json.loads((Path(__file__).parent / "data" / "pinned_runs.json").read_text())
COMMON = {"iterations": 5, "batch_real": 8, "eval_epochs": 1, "eval_runs": 0, "checkpoint_every": 5, "seed": 5}
RUNS = {
    "dm": ("dm", dict(COMMON)),
    "dm-float32": ("dm", dict(COMMON, match_dtype="float32")),
    "dm-ipc10-noclamp": ("dm", dict(COMMON, ipc=10)),
    "idm": (
        "idm",
        dict(
            COMMON, net_generate_interval=2, net_num=3, net_initial=2, model_train_steps=2, net_batch=16, acc_window=0
        ),
    ),
    "dance": ("dance", dict(COMMON, experts=2, expert_epochs=1, expert_per_class=10)),
}


@needs_fmnist
@pytest.mark.parametrize("name", list(RUNS))
def test_run_reproduces_the_recorded_curve(name, tmp_path, monkeypatch):
    monkeypatch.setenv("HYPERDM_CACHE", str(tmp_path / "cache"))
    idx = torch.cat([torch.nonzero(FMNIST.train_labels == c).squeeze(1)[:40] for c in range(10)])
    real = dataclasses.replace(
        FMNIST,
        train_images=FMNIST.train_images[idx],
        train_labels=FMNIST.train_labels[idx],
        test_images=FMNIST.test_images[:200],
        test_labels=FMNIST.test_labels[:200],
    )
    method, kw = RUNS[name]
    kw = dict(kw)
    ipc = kw.pop("ipc", 1)
    cfg = resolve(preset="cpu", method=method, matcher="hyperbolic", dataset="fashion-mnist", ipc=ipc, overrides=kw)
    if name.endswith("noclamp"):
        cfg.max_norm = None
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the recording's thread count (summation order)
    try:
        loop = get_loop(cfg.method)(cfg, real, str(tmp_path / "run"), progress=False)
        metrics = loop.run()
    finally:
        torch.set_num_threads(threads)
    images = loop.syn.detach().double()
    want = PINNED[name]
    rel = 1e-5 if name == "dm-float32" else 1e-6
    assert metrics["loss"] == pytest.approx(want["loss"], rel=rel)
    assert float(images.sum()) == pytest.approx(want["images_sum"], rel=rel)
    assert float(images.square().sum()) == pytest.approx(want["images_sq"], rel=rel)
