"""Short DM / IDM / Dance runs with the hyperbolic matcher reproduce recorded loss curves and images.

``data/pinned_runs.json`` holds the per-iteration losses and two digests of the final synthetic
images (sum and sum of squares) of five short runs on real Fashion-MNIST (40 images per class,
seed 5, five iterations, float64 matching unless named), recorded with the matcher that composed
``lorentz.feature_centroid`` and ``lorentz.dist`` under autograd, on an AMD EPYC CPU.

Two checks per run. On the machine running the test, the fused matcher with its analytic backward
reproduces the same run with that composed matcher to float rounding: losses and digests to a
relative 1e-6 (1e-5 for the float32-matching run: float32 images and matching round at ~1e-7;
measured differences were 0 for every float64 run and 1.4e-6 / 2.3e-7 for the image digests of the
float32 run). Against the recording, a relative 5e-5 (the images' sum, which cancels, relative to the
size of its terms): the ConvNet runs in float32, and its CPU kernels round differently on other
instruction sets (an Intel Xeon's runs differed from the recording by up to 3.7e-6).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from helpers import composed as _composed
from helpers import fashion_mnist, needs_fmnist
from torch import nn

from hyperdm.distill.loops import get_loop
from hyperdm.distill.presets import resolve

# training runs, subprocesses or spawned processes: left out by `pytest -m "not slow"`
pytestmark = pytest.mark.slow

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


class _ComposedMatcher(nn.Module):
    """The recording's matcher: ``scale * sum_c dist(centroid(real_c), centroid(syn_c))`` composed under autograd."""

    def __init__(self, k: float, scale: float, max_norm: float | None) -> None:
        super().__init__()
        self.k, self.scale, self.max_norm = k, scale, max_norm

    def forward(self, real: torch.Tensor, syn: torch.Tensor) -> torch.Tensor:
        return self.scale * _composed(real, syn, self.k, self.max_norm, False).sum()


@needs_fmnist
@pytest.mark.parametrize("name", list(RUNS))
def test_run_reproduces_the_recorded_curve(name, tmp_path, monkeypatch):
    monkeypatch.setenv("HYPERDM_CACHE", str(tmp_path / "cache"))
    idx = torch.cat([torch.nonzero(fashion_mnist().train_labels == c).squeeze(1)[:40] for c in range(10)])
    real = dataclasses.replace(
        fashion_mnist(),
        train_images=fashion_mnist().train_images[idx],
        train_labels=fashion_mnist().train_labels[idx],
        test_images=fashion_mnist().test_images[:200],
        test_labels=fashion_mnist().test_labels[:200],
    )
    method, kw = RUNS[name]
    kw = dict(kw)
    ipc = kw.pop("ipc", 1)
    cfg = resolve(preset="cpu", method=method, matcher="hyperbolic", dataset="fashion-mnist", ipc=ipc, overrides=kw)
    if name.endswith("noclamp"):
        cfg.matcher.max_norm = None
    composed = _ComposedMatcher(cfg.matcher.k, cfg.matcher.scale, cfg.matcher.max_norm)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the recording's thread count (summation order)
    try:
        got = {}
        for which, matcher in (("fused", None), ("composed", composed)):
            loop = get_loop(cfg.method)(cfg, real, str(tmp_path / which), matcher=matcher, progress=False)
            metrics = loop.run()
            images = loop.syn.detach().double()
            got[which] = {
                "loss": metrics["loss"],
                "images_sum": float(images.sum()),
                "images_sq": float(images.square().sum()),
            }
    finally:
        torch.set_num_threads(threads)
    rel = 1e-5 if name == "dm-float32" else 1e-6
    _assert_close(got["fused"], got["composed"], rel)  # the same machine: float rounding only
    # another CPU: float32 kernels round otherwise; the sum of the pixel values cancels, so its tolerance is scaled
    # by sqrt(n * sum of squares), a bound on the sum of their magnitudes
    recorded = PINNED[name]
    _assert_close(got["fused"], recorded, 5e-5, sum_abs=5e-5 * (images.numel() * recorded["images_sq"]) ** 0.5)


def _assert_close(got: dict, want: dict, rel: float, sum_abs: float | None = None) -> None:
    """Losses and both image digests to ``rel``; the sum of the pixel values to ``sum_abs`` where given."""
    assert got["loss"] == pytest.approx(want["loss"], rel=rel)
    assert got["images_sq"] == pytest.approx(want["images_sq"], rel=rel)
    sum_tol = {"rel": rel} if sum_abs is None else {"abs": sum_abs}
    assert got["images_sum"] == pytest.approx(want["images_sum"], **sum_tol)
