"""What several test modules share: Fashion-MNIST loaded once (on first use, not at import), small slices of it,
tiny configurations, the command line in a subprocess, feature generators and the composed (autograd) HDD loss."""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hyperdm import lorentz as L
from hyperdm.distill.presets import resolve

ROOT = Path(__file__).resolve().parents[1]
F64 = torch.float64
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

#: tests that need the real Fashion-MNIST (the Debian package, which CI installs)
needs_fmnist = pytest.mark.skipif(
    not (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file(),
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)",
)


@functools.cache
def fashion_mnist():
    """The whole Fashion-MNIST, loaded once per test session, on first use."""
    from hyperdm.distill.data import load_dataset

    return load_dataset("fashion-mnist")


def small(per_class: int = 40, test: int = 2000, real=None):
    """A class-balanced subset of Fashion-MNIST (``real``: of another dataset): keeps the tests fast."""
    real = fashion_mnist() if real is None else real
    idx = torch.cat(
        [torch.nonzero(real.train_labels == c).squeeze(1)[:per_class] for c in range(real.info.num_classes)]
    )
    return dataclasses.replace(
        real,
        train_images=real.train_images[idx],
        train_labels=real.train_labels[idx],
        test_images=real.test_images[:test],
        test_labels=real.test_labels[:test],
    )


def tiny_cfg(matcher="hyperbolic", **kw):
    base = {"iterations": 4, "batch_real": 8, "eval_epochs": 2, "eval_runs": 1, "checkpoint_every": 2, "seed": 3}
    base.update(kw)
    ipc = base.pop("ipc", 1)
    return resolve(preset="cpu", matcher=matcher, dataset="fashion-mnist", ipc=ipc, overrides=base)


def cli(args, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "hyperdm", "--log-level", "WARNING", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


RESUME_ARGS = [
    "distill",
    "--matcher",
    "hyperbolic",
    "--ipc",
    "2",
    "--iterations",
    "30",
    "--batch-real",
    "8",
    "--eval-runs",
    "0",
    "--checkpoint-every",
    "3",
    "--seed",
    "11",
    "--no-progress",
]


def kill_and_resume(
    full_args, killed_args, killed: Path, *, at: int, timeout: float = 180, sig: int = signal.SIGKILL, ready=None
) -> int:
    """Start an uninterrupted run and a second one; send ``sig`` (SIGKILL by default) to the second once its
    checkpoint has reached iteration ``at``, continue it with ``--resume``, and wait for both (each must exit 0).
    Returns the iteration of the checkpoint the stopped run left. A SIGTERM must end the run with status 143 and
    one line naming --resume. ``ready()``, if given, says when to send the signal instead of the checkpoint."""
    p = cli(full_args)
    q = cli(killed_args)
    deadline = time.time() + timeout
    while time.time() < deadline and q.poll() is None:
        ck = killed / "checkpoint.pt"
        if ready is not None:
            if ready():
                break
        elif ck.exists():
            try:
                if torch.load(ck, weights_only=True)["iteration"] >= at:
                    break
            except Exception:  # a reader may race the atomic rename on some filesystems; try again
                pass
        time.sleep(0.05)
    assert q.poll() is None, "the run finished before it could be killed; make it longer"
    os.kill(q.pid, sig)
    _, err = q.communicate(timeout=120)
    if sig != signal.SIGKILL:
        assert q.returncode == 128 + sig, err
        assert f"stopped by {signal.Signals(sig).name}" in err and "--resume" in err, err
    assert not (killed / "synthetic.pt").exists()
    done = torch.load(killed / "checkpoint.pt", weights_only=True)["iteration"]
    r = cli([*killed_args, "--resume"])
    _, err = r.communicate(timeout=300)
    assert r.returncode == 0, err
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    return done


def features(c, n, d, *, scale=1.0, seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    return ((torch.randn(c, n, d, generator=g, dtype=F64).relu() + 0.05) * scale).to(dtype)


def composed(real, syn, k, max_norm, hierarchical, rmask=None, smask=None):
    cr = L.feature_centroid(real, k=k, max_norm=max_norm, hierarchical=hierarchical, mask=rmask)
    cs = L.feature_centroid(syn, k=k, max_norm=max_norm, hierarchical=hierarchical, mask=smask)
    return L.dist(cr, cs, k=k)


def cluster(seed: int, n: int, d: int, spread: float, radius: float, dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(d, generator=g, dtype=F64)
    u = u / u.norm()
    dirs = u + spread * torch.randn(n, d, generator=g, dtype=F64) / math.sqrt(d)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    return (dirs * radius * (1 + 1e-3 * torch.randn(n, 1, generator=g, dtype=F64))).to(dtype)


def hunks_are_well_formed(text: str) -> int:
    """Every hunk's line counts match its header; returns the number of hunks."""
    lines = text.split("\n")
    i, hunks = 0, 0
    while i < len(lines):
        m = re.match(r"@@ -\d+(?:,(\d+))? \+\d+(?:,(\d+))? @@", lines[i])
        i += 1
        if not m:
            continue
        hunks += 1
        old, new = int(m.group(1) or 1), int(m.group(2) or 1)
        while old > 0 or new > 0:
            tag = lines[i][:1]
            assert tag in (" ", "-", "+"), (i, lines[i])
            old -= tag in (" ", "-")
            new -= tag in (" ", "+")
            i += 1
        assert old == 0 and new == 0
    return hunks
