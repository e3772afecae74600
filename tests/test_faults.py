"""Fault injection on the command line: every failure is one clear line, exit status 2, and no finished file changes.

Faults: SIGKILL in the middle of a checkpoint write, a full disk (a monkeypatched fsync, and a real
tmpfs where this machine lets us mount one), a read-only output directory (a real read-only tmpfs,
else os-level writes that fail with EROFS, since chmod does not stop root), damaged checkpoints, pickles
that would run code, missing or truncated dataset files, CUDA asked for where there is none, and
outputs that exist already. The tiny runs use one thread, so that a resumed run can be compared bit
for bit with an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from hyperdm.distill import artifacts as A
from hyperdm.distill import data as D
from hyperdm.distill.cli import main

# CLI runs, subprocesses and faults on real files: left out by `pytest -m "not slow"`
pytestmark = pytest.mark.slow


ROOT = Path(__file__).resolve().parents[1]
LINUX = sys.platform.startswith("linux")


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def distill_args(root: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--log-level",
        "WARNING",
        "distill",
        "--data-root",
        str(root),
        "--ipc",
        "1",
        "--iterations",
        "4",
        "--batch-real",
        "2",
        "--eval-runs",
        "0",
        "--checkpoint-every",
        "2",
        "--seed",
        "5",
        "--no-progress",
        "--out",
        str(out),
        *extra,
    ]


def snapshot(d: Path) -> dict[str, str]:
    """sha256 of every file under ``d`` (hidden ones too), by relative path."""
    if not d.exists():
        return {}
    return {
        str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*")) if p.is_file()
    }


def run(capsys, args: list[str]) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(args)
    return rc, capsys.readouterr().err


def one_error_line(err: str, command: str) -> str:
    """The error line the CLI printed (the console log may add lines above it, never a traceback)."""
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith(f"hyperdm {command}: error: ")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(autouse=True)
def _one_thread_no_figures(monkeypatch):
    """One thread (bit-identical runs in and out of process) and no Poincare figure.

    The figure takes seconds per run and is not under test.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setattr("hyperdm.distill.plots.plot_poincare", lambda *a, **k: None)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if a command gets as far as reading a dataset (its checks must come first)."""

    def refuse(*a, **k):
        raise AssertionError("the command started its work (load_dataset) before its checks failed")

    monkeypatch.setattr(D, "load_dataset", refuse)


@pytest.fixture(scope="module")
def ref_run(tmp_path_factory, tiny_fmnist_root) -> Path:
    """A finished 4-iteration run (checkpoints at 2 and 4), made in-process with one thread."""
    out = tmp_path_factory.mktemp("ref") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr("hyperdm.distill.plots.plot_poincare", lambda *a, **k: None)
            assert main(distill_args(tiny_fmnist_root, out)) == 0
    finally:
        torch.set_num_threads(threads)
    return out


def same_result(a: Path, b: Path) -> None:
    """Two run directories hold the same synthetic images, bit for bit, and the same loss curve."""
    x, _, _ = A.load_synthetic(a)
    y, _, _ = A.load_synthetic(b)
    assert torch.equal(x, y)
    la, lb = (json.loads((d / "metrics.json").read_text())["loss"] for d in (a, b))
    assert la == lb and len(la) == 4


def _mount_tmpfs(path: Path, size: str) -> bool:
    """Mount a tmpfs of ``size`` on ``path`` (root with mount(8) and CAP_SYS_ADMIN only); False where not possible."""
    path.mkdir(parents=True, exist_ok=True)
    if not LINUX or os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)], capture_output=True
    )
    return r.returncode == 0


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _fake_read_only(monkeypatch, d: Path) -> None:
    """Every os-level create / write / mkdir under ``d`` fails with EROFS, as on a read-only mount (for root too)."""
    d = d.resolve()
    real_open, real_mkdir = os.open, os.mkdir

    def under(p) -> bool:
        q = Path(os.path.abspath(os.fsdecode(p)))
        return q == d or d in q.parents

    def ro_open(p, flags, *a, **k):
        if under(p) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(p))
        return real_open(p, flags, *a, **k)

    def ro_mkdir(p, *a, **k):
        if under(p):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(p))
        return real_mkdir(p, *a, **k)

    monkeypatch.setattr(os, "open", ro_open)
    monkeypatch.setattr(os, "mkdir", ro_mkdir)


@pytest.fixture
def read_only_dir(tmp_path, monkeypatch):
    """``make(contents_from=None) -> Path``: a read-only directory (optionally holding a copy of a directory)."""
    mounted: list[Path] = []

    def make(contents_from: Path | None = None) -> Path:
        d = tmp_path / "ro"
        if _mount_tmpfs(d, "16m"):
            mounted.append(d)
            if contents_from is not None:
                shutil.copytree(contents_from, d / contents_from.name)
            r = subprocess.run(["mount", "-o", "remount,ro", str(d)], capture_output=True)
            assert r.returncode == 0, r.stderr
            with pytest.raises(OSError, match="Read-only file system"):  # really read-only, for root too
                (d / "probe").touch()
        else:
            if contents_from is not None:
                shutil.copytree(contents_from, d / contents_from.name)
            _fake_read_only(monkeypatch, d)
        return d

    yield make
    for d in mounted:
        _umount(d)


# ---------------------------------------------------------------------------------------------
# SIGKILL during a checkpoint write
# ---------------------------------------------------------------------------------------------

_BLOCK_IN_CHECKPOINT_WRITE = """
import hashlib, os, sys, time
from pathlib import Path
real_fsync = os.fsync

def fsync(fd):
    name = os.readlink(f"/proc/self/fd/{fd}")
    ck = Path(name).parent / "checkpoint.pt"
    if os.path.basename(name).startswith(".checkpoint.pt.") and ck.exists():  # the second checkpoint, written in full
        print("BLOCKED", hashlib.sha256(ck.read_bytes()).hexdigest(), name, flush=True)
        time.sleep(600)
    return real_fsync(fd)

os.fsync = fsync
from hyperdm.distill.cli import main

sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.skipif(not LINUX, reason="finds the file being written through /proc/self/fd")
def test_sigkill_during_a_checkpoint_write_keeps_the_last_checkpoint(tmp_path, tiny_fmnist_root, ref_run, capsys):
    script = tmp_path / "blocking.py"
    script.write_text(_BLOCK_IN_CHECKPOINT_WRITE)
    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen(
        [sys.executable, str(script), *distill_args(tiny_fmnist_root, out)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line, deadline = "", time.time() + 300
    try:
        while time.time() < deadline and p.poll() is None:
            ready, _, _ = select.select([p.stdout], [], [], 1.0)
            if ready:
                line = p.stdout.readline()
                if line.startswith("BLOCKED"):
                    break
        assert line.startswith("BLOCKED"), (line, p.poll(), p.stderr.read() if p.poll() is not None else "")
        os.kill(p.pid, signal.SIGKILL)  # the new checkpoint sits written in full in its temporary file
    finally:
        if p.poll() is None:
            p.kill()
        p.wait()
    _, sha_before, tmp_name = line.split()
    assert Path(tmp_name).exists()  # killed in the middle of the write, before the rename
    assert hashlib.sha256((out / "checkpoint.pt").read_bytes()).hexdigest() == sha_before  # unchanged
    assert A.RunDir(out).load_checkpoint()["iteration"] == 2
    assert not (out / "synthetic.pt").exists()
    # --resume continues from iteration 2, removes the stale temporary file and ends where an uninterrupted run ends
    rc, err = run(capsys, distill_args(tiny_fmnist_root, out, "--resume"))
    assert rc == 0, err
    assert not Path(tmp_name).exists() and A.RunDir(out).stale_temps() == []
    same_result(out, ref_run)


# ---------------------------------------------------------------------------------------------
# a full disk
# ---------------------------------------------------------------------------------------------


@pytest.mark.skipif(not LINUX, reason="finds the file being written through /proc/self/fd")
def test_full_disk_during_a_checkpoint_write(tmp_path, tiny_fmnist_root, ref_run, capsys, monkeypatch):
    out = tmp_path / "run"
    real_fsync = os.fsync
    seen: dict[str, str] = {}

    def full(fd):
        name = os.readlink(f"/proc/self/fd/{fd}")
        ck = Path(name).parent / "checkpoint.pt"
        if os.path.basename(name).startswith(".checkpoint.pt.") and ck.exists():
            seen["before"] = hashlib.sha256(ck.read_bytes()).hexdigest()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full)
    rc, err = run(capsys, distill_args(tiny_fmnist_root, out))
    assert rc == 2
    line = one_error_line(err, "distill")
    assert line == (
        f"hyperdm distill: error: {out / 'checkpoint.pt'}: No space left on device; no finished file was "
        "changed; free some space or choose --out on another disk."
    )
    assert hashlib.sha256((out / "checkpoint.pt").read_bytes()).hexdigest() == seen["before"]
    assert A.RunDir(out).load_checkpoint()["iteration"] == 2
    assert A.RunDir(out).stale_temps() == [] and not (out / "synthetic.pt").exists()
    monkeypatch.setattr(os, "fsync", real_fsync)  # space again: the run continues to the uninterrupted result
    rc, err = run(capsys, distill_args(tiny_fmnist_root, out, "--resume"))
    assert rc == 0, err
    same_result(out, ref_run)


def test_full_disk_on_a_real_tmpfs(tmp_path, tiny_fmnist_root, capsys):
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "256k"):
        pytest.skip("cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN and mount(8))")
    try:
        (disk / "finished.json").write_text('{"a finished result": true}\n')
        with open(disk / "filler", "wb", buffering=0) as f, contextlib.suppress(OSError):  # fill the disk
            while True:
                f.write(b"\0" * 4096)
        before = snapshot(disk)
        rc, err = run(
            capsys,
            [
                "--log-level",
                "WARNING",
                "prune",
                "--data-root",
                str(tiny_fmnist_root),
                "--keep",
                "0.5",
                "--score",
                "random",
                "--out",
                str(disk / "kept"),
            ],
        )
        assert rc == 2
        line = one_error_line(err, "prune")
        assert line.startswith(f"hyperdm prune: error: {disk / 'kept.npy'}: No space left on device; no finished file")
        assert snapshot(disk) == before  # no kept.npy, no kept.json, no temporary file; the rest untouched
    finally:
        _umount(disk)


# ---------------------------------------------------------------------------------------------
# a read-only output directory
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["distill", "prune", "evaluate", "plot"])
def test_read_only_output_fails_before_any_work(
    command, tmp_path, tiny_fmnist_root, ref_run, read_only_dir, capsys, no_work
):
    ro = read_only_dir(ref_run if command == "plot" else None)
    before = snapshot(ro)
    data = ["--data-root", str(tiny_fmnist_root)]
    args = {
        "distill": distill_args(tiny_fmnist_root, ro / "run"),
        "prune": ["prune", *data, "--keep", "0.5", "--out", str(ro / "kept")],
        "evaluate": ["evaluate", str(ref_run), *data, "--epochs", "1", "--runs", "1", "--out", str(ro / "ev.json")],
        "plot": ["plot", str(ro / ref_run.name), *data],
    }[command]
    rc, err = run(capsys, args)
    assert rc == 2
    line = one_error_line(err, command)
    assert f"cannot create files in {ro}" in line and "Read-only file system" in line
    fix = (
        "copy the run directory to a writable disk and plot the copy"
        if command == "plot"
        else "the file system is read-only; choose --out on a writable disk"
    )
    assert line.endswith(f"; {fix}.")
    assert snapshot(ro) == before  # nothing created, the run copied for plot untouched


# ---------------------------------------------------------------------------------------------
# damaged checkpoints, pickles that would run code
# ---------------------------------------------------------------------------------------------


def _flip_a_data_byte(p: Path) -> None:
    import struct
    import zipfile

    raw = bytearray(p.read_bytes())
    with zipfile.ZipFile(p) as z:
        info = max(z.infolist(), key=lambda i: i.file_size)  # the largest tensor record
    n, m = struct.unpack("<HH", raw[info.header_offset + 26 : info.header_offset + 30])
    raw[info.header_offset + 30 + n + m + 7] ^= 0xFF
    p.write_bytes(bytes(raw))


def _evil(marker: Path):
    class Evil:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').close()",))

    return Evil()


@pytest.mark.parametrize(
    "damage, says",
    [
        ("empty", "is empty (0 bytes)"),
        ("truncated", "is truncated or damaged"),
        ("garbage", "is not a PyTorch file"),
        ("bit flip", "fails its CRC-32 check"),
        ("not a checkpoint", "is not a hyperdm checkpoint (it lacks"),
        ("runs code", "refused to load"),
    ],
)
def test_damaged_checkpoint_is_named_and_kept(damage, says, tmp_path, tiny_fmnist_root, ref_run, capsys):
    out = tmp_path / "run"
    shutil.copytree(ref_run, out)
    ck = out / "checkpoint.pt"
    marker = tmp_path / "ran"
    if damage == "empty":
        ck.write_bytes(b"")
    elif damage == "truncated":
        ck.write_bytes(ck.read_bytes()[: ck.stat().st_size // 2])
    elif damage == "garbage":
        ck.write_text("garbage\n")
    elif damage == "bit flip":
        _flip_a_data_byte(ck)
    elif damage == "not a checkpoint":
        torch.save({"data": [[torch.zeros(1), torch.zeros(1)]]}, ck)
    else:
        state = torch.load(ck, weights_only=True)
        state["metrics"]["note"] = _evil(marker)
        torch.save(state, ck)
    before = snapshot(out)
    rc, err = run(capsys, distill_args(tiny_fmnist_root, out, "--resume"))
    assert rc == 2
    line = one_error_line(err, "distill")
    assert str(ck) in line and says in line
    assert line.endswith(
        f"To continue, delete it (rm {ck}) and run with --overwrite to start over, or keep it and pass "
        "--out with another directory."
    )
    assert snapshot(out) == before  # nothing written, run.log not appended to
    assert not marker.exists()


def test_a_pt_that_would_run_code_is_refused_everywhere(tmp_path, tiny_fmnist_root, ref_run, capsys):
    marker = tmp_path / "ran"
    evil = tmp_path / "community.pt"  # the reference DM format, with a payload in accs_all_exps
    torch.save(
        {"data": [[torch.zeros(10, 1, 28, 28), torch.arange(10)]], "accs_all_exps": {"ConvNet": [_evil(marker)]}}, evil
    )
    data = ["--data-root", str(tiny_fmnist_root)]
    rc, err = run(capsys, ["evaluate", str(evil), *data, "--dataset", "fashion-mnist", "--epochs", "1", "--runs", "1"])
    assert rc == 2
    line = one_error_line(err, "evaluate")
    assert line.startswith(f"hyperdm evaluate: error: refused to load {evil}: it holds the Python object "), line
    assert "exec, and unpickling it could run code." in line  # torch names the global "exec" or "builtins.exec"
    run_dir = tmp_path / "run"
    shutil.copytree(ref_run, run_dir)
    shutil.copy(evil, run_dir / "synthetic.pt")
    rc, err = run(capsys, ["plot", str(run_dir), *data])
    assert rc == 2 and "refused to load" in one_error_line(err, "plot")
    with pytest.raises(A.UnsafeFileError):
        A.load_synthetic(evil)
    from hyperdm.distill.experts import _load_cached

    with pytest.raises(A.UnsafeFileError, match="the expert is trained again"):
        _load_cached(evil)
    assert not marker.exists()
    # the control: the same file does run its payload when loaded without weights_only
    torch.load(evil, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize(
    "content, says",
    [
        (b"not a torch file\n", "is not a PyTorch file"),
        (
            {"data": [[torch.zeros(2, 1, 28, 28), torch.tensor([0, 10])]]},
            "labels must be classes 0..9 of fashion-mnist; found 0..10",
        ),
        ({"data": [[torch.full((2, 1, 28, 28), float("nan")), torch.tensor([0, 1])]]}, "NaN/inf"),
        (
            {"data": [[torch.zeros(2, 1, 28, 28), torch.tensor([0, 1])]], "partition": "2x2"},
            "'partition' must be an integer >= 1",
        ),
        ({"data": [["images", "labels"]]}, "'data' must hold tensors"),
    ],
)
def test_bad_synthetic_files_are_refused_before_training(
    content, says, tmp_path, tiny_fmnist_root, capsys, monkeypatch
):
    path = tmp_path / "set.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)

    def no_training(*a, **k):
        raise AssertionError("training started")

    monkeypatch.setattr("hyperdm.distill.evaluate.train_and_test", no_training)
    rc, err = run(
        capsys,
        [
            "evaluate",
            str(path),
            "--dataset",
            "fashion-mnist",
            "--data-root",
            str(tiny_fmnist_root),
            "--epochs",
            "1",
            "--runs",
            "1",
        ],
    )
    assert rc == 2 and says in one_error_line(err, "evaluate")


# ---------------------------------------------------------------------------------------------
# dataset files missing or truncated
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["missing", "truncated gzip", "truncated data"])
def test_missing_or_truncated_dataset_file(damage, tmp_path, tiny_fmnist_root, capsys):
    root = tmp_path / "data"
    shutil.copytree(tiny_fmnist_root, root)
    raw = root / "FashionMNIST" / "raw"
    target = raw / "train-images-idx3-ubyte.gz"
    if damage == "missing":
        target.unlink()
    elif damage == "truncated gzip":
        target.write_bytes(target.read_bytes()[:200])
    else:  # a whole gzip stream whose idx payload stops short
        import gzip

        payload = gzip.decompress(target.read_bytes())
        target.write_bytes(gzip.compress(payload[:1000]))
    out = tmp_path / "run"
    rc, err = run(capsys, distill_args(root, out))
    assert rc == 2
    says = {
        "missing": f"{raw}  - lacks train-images-idx3-ubyte[.gz]",
        "truncated gzip": f"{target}: not a readable idx file",
        "truncated data": f"{target}: truncated: header says 300x28x28 = 235200 bytes of data, file has 984",
    }[damage]
    assert says in one_error_line(err, "distill") or says in err
    assert "Traceback" not in err
    assert not out.exists()  # nothing left behind
    if damage == "missing":  # the system copy was not searched
        assert "/usr/share/datasets" not in err.split("Looked in:")[1].split("Get it")[0]


# ---------------------------------------------------------------------------------------------
# CUDA where there is none
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "device, says",
    [
        ("cuda", "--device cuda: "),
        ("cuda:3", "this machine has 1 CUDA device (cuda:0 to cuda:0); pick one of them."),
        ("gpu", "--device 'gpu' is not a torch device; use cpu, cuda, cuda:N (N-th GPU) or mps."),
    ],
)
@pytest.mark.parametrize("command", ["distill", "evaluate", "prune"])
def test_cuda_asked_for_where_there_is_none(
    command, device, says, tmp_path, tiny_fmnist_root, ref_run, capsys, monkeypatch, no_work
):
    if device == "cuda":
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    else:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    out = tmp_path / "out"
    args = {
        "distill": distill_args(tiny_fmnist_root, out, "--device", device),
        "evaluate": ["evaluate", str(ref_run), "--device", device, "--out", str(out)],
        "prune": ["prune", "--keep", "0.5", "--device", device, "--out", str(out)],
    }[command]
    rc, err = run(capsys, args)
    assert rc == 2
    line = one_error_line(err, command)
    assert says in line
    if device == "cuda":
        assert "use --device cpu" in line
    assert not out.exists() and not Path(str(out) + ".npy").exists()


# ---------------------------------------------------------------------------------------------
# outputs that exist: refused, never replaced without --overwrite; names keep what was typed
# ---------------------------------------------------------------------------------------------


def test_prune_names_keep_what_was_typed_and_nothing_is_replaced(tmp_path, tiny_fmnist_root, capsys):
    base = ["--log-level", "WARNING", "prune", "--data-root", str(tiny_fmnist_root), "--score", "random"]
    for keep in ("0.1", "0.5"):
        assert run(capsys, [*base, "--keep", keep, "--out", str(tmp_path / f"kept_{keep}")])[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "kept_0.1.json",
        "kept_0.1.npy",
        "kept_0.5.json",
        "kept_0.5.npy",
    ]
    assert np.load(tmp_path / "kept_0.1.npy").shape == (30,) and np.load(tmp_path / "kept_0.5.npy").shape == (150,)
    before = snapshot(tmp_path)
    rc, err = run(capsys, [*base, "--keep", "0.2", "--out", str(tmp_path / "kept_0.1")])
    assert rc == 2
    assert one_error_line(err, "prune") == (
        f"hyperdm prune: error: {tmp_path / 'kept_0.1.npy'}, {tmp_path / 'kept_0.1.json'} "
        "already exist; pass --overwrite to replace them, or choose another --out."
    )
    assert snapshot(tmp_path) == before
    assert run(capsys, [*base, "--keep", "0.2", "--out", str(tmp_path / "kept_0.1.npy"), "--overwrite"])[0] == 0
    assert np.load(tmp_path / "kept_0.1.npy").shape == (60,)
    assert json.loads((tmp_path / "kept_0.1.json").read_text())["keep"] == 0.2


def test_feature_bank_names_keep_what_was_typed(tmp_path):
    from hyperdm.pruning import FeatureBank

    banks = {}
    for name in ("bank_0.01", "bank_0.5"):
        banks[name] = FeatureBank(np.full((1, 2, 3), float(len(name)), np.float32), torch.tensor([0, 1]))
        banks[name].save(tmp_path / name)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "bank_0.01.json",
        "bank_0.01.npy",
        "bank_0.5.json",
        "bank_0.5.npy",
    ]
    for name, bank in banks.items():
        assert torch.equal(FeatureBank.load(tmp_path / name, mmap=False).features, bank.features)


def test_existing_outputs_are_refused_before_any_work(tmp_path, ref_run, capsys, no_work):
    before = snapshot(ref_run)
    rc, err = run(capsys, distill_args(Path("/nonexistent"), ref_run))
    assert rc == 2
    line = one_error_line(err, "distill")
    assert line.startswith(f"hyperdm distill: error: {ref_run} already holds a run (config.json, checkpoint.pt, ")
    assert line.endswith("pass --resume to continue it, --overwrite to replace it, or choose another --out.")
    ev = tmp_path / "ev.json"
    ev.write_text("{}\n")
    rc, err = run(capsys, ["evaluate", str(ref_run), "--epochs", "1", "--runs", "1", "--out", str(ev)])
    assert rc == 2 and "ev.json already exists; pass --overwrite" in one_error_line(err, "evaluate")
    assert ev.read_text() == "{}\n" and snapshot(ref_run) == before  # run.log not appended to


def test_overwrite_replaces_a_run(tmp_path, tiny_fmnist_root, ref_run, capsys):
    out = tmp_path / "run"
    shutil.copytree(ref_run, out)
    (out / "notes.txt").write_text("mine\n")
    (out / ".checkpoint.pt.abc.tmp").write_bytes(b"left by a SIGKILL")
    rc, err = run(capsys, distill_args(tiny_fmnist_root, out, "--iterations", "0", "--overwrite"))
    assert rc == 0, err
    assert A.RunDir(out).load_checkpoint() is None or A.RunDir(out).load_checkpoint()["iteration"] == 0
    assert json.loads((out / "metrics.json").read_text())["loss"] == []
    assert (out / "notes.txt").read_text() == "mine\n"  # not a run file: untouched
    assert not (out / ".checkpoint.pt.abc.tmp").exists()
    assert "iteration 2/4" not in (out / "run.log").read_text()  # a fresh log
    rc, err = run(capsys, distill_args(tiny_fmnist_root, out, "--resume", "--overwrite"))
    assert rc == 2 and "pass one of them" in one_error_line(err, "distill")


# ---------------------------------------------------------------------------------------------- one writer per run


def test_a_second_writer_is_refused_naming_the_holder(tmp_path, tiny_fmnist_root, capsys):
    """A run directory held by another live process (here: a process that holds its lock, as a running distill
    does) is refused in one line naming that process's PID and host, before anything is written."""
    import socket
    import subprocess
    import sys

    out = tmp_path / "run"
    rc, _ = run(capsys, distill_args(tiny_fmnist_root, out))
    assert rc == 0
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from hyperdm.distill.artifacts import RunDir\n"
            f"with RunDir({str(out)!r}).lock():\n    print('locked', flush=True); time.sleep(120)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
        rc, err = run(capsys, distill_args(tiny_fmnist_root, out, "--resume"))
        line = one_error_line(err, "distill")
        assert rc == 2 and f"PID {holder.pid} on host {socket.gethostname()}" in line
        assert "in use by another hyperdm process" in line and "--out" in line
        assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before  # nothing written
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone (killed): its lock went with it, and the next run takes over with a warning
    rc, err = run(capsys, distill_args(tiny_fmnist_root, out, "--overwrite", "--log-level", "WARNING"))
    assert rc == 0 and f"took over the lock left by PID {holder.pid}" in err


def test_resume_of_a_directory_without_a_run_fails_fast(tmp_path, tiny_fmnist_root, capsys, monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("work started before the check")

    monkeypatch.setattr("hyperdm.distill.data.load_dataset", refuse)
    for out in (tmp_path / "typo", tmp_path):  # missing, and an existing directory without run files
        rc, err = run(capsys, distill_args(tiny_fmnist_root, out, "--resume"))
        line = one_error_line(err, "distill")
        assert rc == 2 and f"{out} holds no run to continue" in line and "without --resume" in line
    assert not (tmp_path / "typo").exists()


def test_in_process_lock_and_a_stale_lock_file(tmp_path):
    """The lock is the directory's, not the process's: a second holder in the same process is refused too; a lock
    file naming a process that is gone does not stop anyone."""
    import json as _json

    from hyperdm.distill.artifacts import RunDir, RunLockedError

    rd = RunDir(tmp_path / "r")
    with rd.lock(), pytest.raises(RunLockedError, match=f"PID {os.getpid()}"), rd.lock():
        pass
    (tmp_path / "r" / RunDir.LOCK).write_text(_json.dumps({"pid": 2**22 + 7, "host": "elsewhere", "since": "then"}))
    with rd.lock():
        rec = _json.loads((tmp_path / "r" / RunDir.LOCK).read_text())
        assert rec["pid"] == os.getpid()
    assert (tmp_path / "r" / RunDir.LOCK).read_text() == ""  # released: names no holder
    assert RunDir(tmp_path / "r").existing() == []  # the lock file is not a run file
