"""``hyperdm distill`` under torchrun (gloo, 2 CPU processes) against one process with the same seed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

from hyperdm.distill.augment import dsa

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo"
    ),
]


def test_siamese_dsa_commutes_with_striding_the_batch():
    """What lets each rank augment only its rows: one parameter draw per batch, whatever its size."""
    x = torch.randn(10, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    strategy = "color_crop_cutout_flip_scale_rotate"
    for seed in range(5):
        full = dsa(x, strategy, seed=seed, siamese=True)
        for rank in range(2):
            assert torch.allclose(dsa(x[rank::2], strategy, seed=seed, siamese=True), full[rank::2], atol=1e-6)


def test_each_rank_forwards_its_stride_of_the_real_batch(tmp_path, tiny_fmnist_root):
    """Equal losses alone would not show the sharding (duplicated points leave a centroid unchanged)."""
    from hyperdm.distill.data import load_dataset
    from hyperdm.distill.loops import DMLoop
    from hyperdm.distill.parallel import Parallel
    from hyperdm.distill.presets import resolve

    cfg = resolve(
        preset="cpu",
        method="dm",
        matcher="mmd",
        dataset="fashion-mnist",
        ipc=1,
        overrides={"data_root": str(tiny_fmnist_root), "batch_real": 6, "eval_runs": 0},
    )
    seen = []

    def recorder(real, syn, **kw):
        seen.append(real.detach().clone())
        return syn.sum() * 0.0

    real = load_dataset("fashion-mnist", str(tiny_fmnist_root))
    for par in (Parallel(), Parallel(rank=1, world=2)):
        loop = DMLoop(cfg, real, str(tmp_path), progress=False)  # a single process; then told it is rank 1 of 2
        loop.par, loop.matcher = par, recorder
        loop._init_synthetic()
        loop.matching_loss(7)
    full, rank1 = seen
    assert full.shape[:2] == (10, 6) and rank1.shape[:2] == (10, 3)
    assert torch.allclose(rank1, full[:, 1::2], atol=1e-5)


def _distill(args, out, *, procs=None, **kw):
    cmd = [
        sys.executable,
        "-m",
        "hyperdm",
        "--log-level",
        "WARNING",
        "distill",
        *args,
        "--out",
        str(out),
        "--no-progress",
    ]
    if procs:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={procs}",
            "-m",
            "hyperdm",
            *cmd[3:],
        ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600, **kw)


def test_two_processes_give_the_one_process_synthetic_set(tmp_path, tiny_fmnist_root):
    args = [
        "--data-root",
        str(tiny_fmnist_root),
        "--ipc",
        "2",
        "--iterations",
        "3",
        "--batch-real",
        "6",
        "--eval-runs",
        "0",
        "--checkpoint-every",
        "1",
        "--seed",
        "3",
    ]
    one = _distill(args, tmp_path / "one")
    assert one.returncode == 0, one.stderr[-3000:]
    two = _distill(args, tmp_path / "two", procs=2)
    assert two.returncode == 0, two.stderr[-3000:]
    zero = _distill([*args[:5], "0", *args[6:]], tmp_path / "zero")  # --iterations 0: the initial images
    assert zero.returncode == 0, zero.stderr[-3000:]
    s0, s1, s2 = (
        torch.load(tmp_path / d / "synthetic.pt", weights_only=False)["data"][0][0] for d in ("zero", "one", "two")
    )
    m1 = json.loads((tmp_path / "one" / "metrics.json").read_text())
    m2 = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert m2["processes"] == 2 and "processes" not in m1
    # the same loss curve and images up to float rounding (sums split over ranks, other conv batch sizes)
    assert torch.allclose(torch.tensor(m2["loss"]), torch.tensor(m1["loss"]), rtol=1e-5), (m1["loss"], m2["loss"])
    assert (s2 - s1).abs().max() < 1e-4, float((s2 - s1).abs().max())
    assert (s1 - s0).abs().max() > 1e-2  # while the 3 iterations moved the images far more than that
    # rank 0 alone wrote the run directory: one run.log header, one config
    assert (tmp_path / "two" / "run.log").read_text().count("2 processes (torch.distributed)") == 1
    assert json.loads((tmp_path / "two" / "config.json").read_text())["matcher_repr"].endswith("process_group=set)")


def test_idm_two_processes_give_the_one_process_synthetic_set(tmp_path, tiny_fmnist_root):
    """IDM: matching batches and the queue networks' training batches are split; every copy of a queue network
    takes the single-process step (gradients all-reduced), so the runs agree up to float rounding."""
    args = [
        "--method",
        "idm",
        "--data-root",
        str(tiny_fmnist_root),
        "--ipc",
        "1",
        "--iterations",
        "2",
        "--batch-real",
        "6",
        "--net-batch",
        "10",
        "--model-train-steps",
        "2",
        "--eval-runs",
        "0",
        "--seed",
        "2",
    ]
    runs = {}
    for name, procs in (("one", None), ("two", 2)):
        r = _distill(args, tmp_path / name, procs=procs)
        assert r.returncode == 0, r.stderr[-3000:]
        runs[name] = (
            torch.load(tmp_path / name / "synthetic.pt", weights_only=False)["data"][0][0],
            json.loads((tmp_path / name / "metrics.json").read_text())["loss"],
        )
    (s1, l1), (s2, l2) = runs["one"], runs["two"]
    # After one iteration the two runs' images are bit-identical here. From the second on, float32 differences of
    # the split queue-network batches grow, and much faster on some CPUs: on an AMD EPYC the second step already
    # moves the images apart by 1.4e-3 (losses still within 3e-8), against 7e-7 after four steps on an Intel Xeon.
    assert torch.allclose(torch.tensor(l2), torch.tensor(l1), rtol=1e-6), (l1, l2)
    assert (s2 - s1).abs().max() < 1e-2, float((s2 - s1).abs().max())


def test_dance_two_processes_give_the_one_process_synthetic_set(tmp_path, tiny_fmnist_root):
    """Dance: rank 0 trains the experts into the cache, the other rank loads them; real batches are split."""
    args = [
        "--method",
        "dance",
        "--data-root",
        str(tiny_fmnist_root),
        "--ipc",
        "1",
        "--iterations",
        "2",
        "--batch-real",
        "6",
        "--experts",
        "2",
        "--expert-epochs",
        "1",
        "--expert-per-class",
        "10",
        "--eval-runs",
        "0",
        "--seed",
        "4",
    ]
    runs = {}
    for name, procs in (("one", None), ("two", 2)):
        r = _distill([*args, "--expert-dir", str(tmp_path / f"experts-{name}")], tmp_path / name, procs=procs)
        assert r.returncode == 0, r.stderr[-3000:]
        runs[name] = (
            torch.load(tmp_path / name / "synthetic.pt", weights_only=False)["data"][0][0],
            json.loads((tmp_path / name / "metrics.json").read_text())["loss"],
        )
    assert len(list((tmp_path / "experts-two").iterdir())) == 1  # one cache entry, written once
    (s1, l1), (s2, l2) = runs["one"], runs["two"]
    assert torch.allclose(torch.tensor(l2), torch.tensor(l1), rtol=1e-6), (l1, l2)
    assert (s2 - s1).abs().max() < 1e-5, float((s2 - s1).abs().max())


def test_data_parallel_misuse_is_a_clear_error(tmp_path, tiny_fmnist_root, monkeypatch):
    from hyperdm import MMDMatcher
    from hyperdm.distill.data import load_dataset
    from hyperdm.distill.loops import DMLoop, base
    from hyperdm.distill.parallel import Parallel
    from hyperdm.distill.presets import resolve

    monkeypatch.setattr(base.Parallel, "current", classmethod(lambda cls: Parallel(rank=0, world=2)))
    cfg = resolve(overrides={"data_root": str(tiny_fmnist_root), "ipc": 1, "eval_runs": 0})
    real = load_dataset("fashion-mnist", str(tiny_fmnist_root))
    with pytest.raises(ValueError, match=r"process_group=torch\.distributed\.group\.WORLD"):
        DMLoop(cfg, real, str(tmp_path), matcher=MMDMatcher())

    class OneProcessLoop(DMLoop):
        supports_distributed = False

    with pytest.raises(ValueError, match="runs on one process so far"):
        OneProcessLoop(cfg, real, str(tmp_path))


def test_killed_two_process_run_resumes_to_the_uninterrupted_result(tmp_path, tiny_fmnist_root):
    import signal
    import time

    args = [
        "--data-root",
        str(tiny_fmnist_root),
        "--ipc",
        "1",
        "--iterations",
        "12",
        "--batch-real",
        "6",
        "--eval-runs",
        "0",
        "--checkpoint-every",
        "1",
        "--seed",
        "5",
    ]
    full = _distill(args, tmp_path / "full", procs=2)
    assert full.returncode == 0, full.stderr[-3000:]
    killed = tmp_path / "killed"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        "-m",
        "hyperdm",
        "--log-level",
        "WARNING",
        "distill",
        *args,
        "--out",
        str(killed),
        "--no-progress",
    ]
    q = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while time.time() < deadline and q.poll() is None:
        try:
            if torch.load(killed / "checkpoint.pt", weights_only=False)["iteration"] >= 3:
                break
        except Exception:  # not there yet, or mid-rename
            pass
        time.sleep(0.05)
    assert q.poll() is None, "the run finished before it could be killed"
    os.killpg(q.pid, signal.SIGKILL)  # the launcher and both ranks
    q.wait()
    assert not (killed / "synthetic.pt").exists()
    done = torch.load(killed / "checkpoint.pt", weights_only=False)["iteration"]
    assert 3 <= done < 12
    resumed = _distill([*args, "--resume"], killed, procs=2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = torch.load(tmp_path / "full" / "synthetic.pt", weights_only=False)["data"][0][0]
    b = torch.load(killed / "synthetic.pt", weights_only=False)["data"][0][0]
    assert torch.equal(a, b)
    la, lb = (json.loads((d / "metrics.json").read_text())["loss"] for d in (tmp_path / "full", killed))
    assert la == lb and len(la) == 12


def test_sigterm_to_a_two_process_run_stops_every_rank_after_one_step_and_resumes(tmp_path, tiny_fmnist_root):
    """SIGTERM to the launcher and both ranks (what SLURM's scancel or a pod's termination sends): the ranks agree
    on the iteration to stop after, rank 0 writes its checkpoint (here the only one: --checkpoint-every 100), every
    process exits, and the resumed run equals the uninterrupted one."""
    import signal
    import time

    args = ["--data-root", str(tiny_fmnist_root), "--ipc", "1", "--iterations", "12", "--batch-real", "6"]
    args += ["--eval-runs", "0", "--checkpoint-every", "100", "--seed", "5"]
    full = _distill(args, tmp_path / "full", procs=2)
    assert full.returncode == 0, full.stderr[-3000:]
    stopped = tmp_path / "stopped"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "hyperdm"]
    cmd += ["--log-level", "INFO", "distill", *args, "--out", str(stopped), "--no-progress"]
    q = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 300
    log = stopped / "run.log"
    while time.time() < deadline and q.poll() is None:
        if log.exists() and "radii at iteration 0" in log.read_text():
            break
        time.sleep(0.05)
    assert q.poll() is None, "the run finished before it could be stopped"
    os.killpg(q.pid, signal.SIGTERM)  # the launcher and both ranks (the launcher forwards it: a second one each)
    _, err = q.communicate(timeout=120)
    assert q.returncode != 0
    assert (stopped / "checkpoint.pt").exists(), err[-3000:]
    state = torch.load(stopped / "checkpoint.pt", weights_only=False)
    assert 1 <= state["iteration"] < 12 and not (stopped / "synthetic.pt").exists()
    assert f"stopped by SIGTERM: the checkpoint is at iteration {state['iteration']}" in log.read_text()
    resumed = _distill([*args, "--resume"], stopped, procs=2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = torch.load(tmp_path / "full" / "synthetic.pt", weights_only=False)["data"][0][0]
    b = torch.load(stopped / "synthetic.pt", weights_only=False)["data"][0][0]
    assert torch.equal(a, b)


def test_prune_under_torchrun_keeps_what_one_process_keeps(tmp_path, tiny_fmnist_root):
    kept = {}
    for name, procs in (("one", None), ("two", 2)):
        cmd = [
            sys.executable,
            "-m",
            "hyperdm",
            "prune",
            "--dataset",
            "fashion-mnist",
            "--data-root",
            str(tiny_fmnist_root),
            "--keep",
            "0.3",
            "--score",
            "centroid",
            "--nets",
            "2",
            "--out",
            str(tmp_path / name),
        ]
        if procs:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}", *cmd[1:]]
        r = subprocess.run(
            cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300
        )
        assert r.returncode == 0, r.stderr[-3000:]
        kept[name] = np.load(tmp_path / f"{name}.npy")
    assert kept["one"].shape == (90,) and np.array_equal(kept["one"], kept["two"])
