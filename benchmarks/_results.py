"""What every benchmark records beside its numbers (the machine) and how it saves them."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeGuard

import torch

from hyperdm import __version__

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: str) -> dict[str, Any]:
    """Device, CPU model, cores, threads, versions and date, for a results file."""
    return {
        "device": device,
        "device_name": torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else cpu_model(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "hyperdm": __version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
    }


def save(name: str, result: dict[str, Any]) -> Path:
    """Write ``results/<name>.json`` and say where."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"saved {path}")
    return path


class RowStore:
    """A results file of rows keyed by ``id``, shared by several processes (``--shard``).

    Every read and update holds an exclusive lock on ``<name>.lock`` beside the file, and an update
    merges into what is on disk, so processes never lose each other's rows. A stopped sweep keeps
    every finished row.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.path = RESULTS / f"{name}.json"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        RESULTS.mkdir(exist_ok=True)
        with open(self.path.with_suffix(".lock"), "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _read(self) -> list[dict[str, Any]]:
        return json.loads(self.path.read_text()).get("rows", []) if self.path.exists() else []

    def rows(self) -> list[dict[str, Any]]:
        with self._locked():
            return self._read()

    def get(self, rid: str) -> dict[str, Any] | None:
        return next((r for r in self.rows() if r["id"] == rid), None)

    def put(
        self,
        row: dict[str, Any] | None,
        header: dict[str, Any],
        summary: Callable[[list[dict[str, Any]]], dict[str, Any]],
    ) -> None:
        """Add or replace ``row`` (None: none) and rewrite the file as ``header + rows + summary(rows)``."""
        with self._locked():
            rows = [r for r in self._read() if row is None or r["id"] != row["id"]] + ([row] if row is not None else [])
            save(self.name, {**header, "rows": rows, **summary(rows)})


def same_settings(row: dict[str, Any] | None, want: dict[str, Any]) -> TypeGuard[dict[str, Any]]:
    """True when a saved ``row`` exists and agrees with every setting in ``want``."""
    return row is not None and all(row.get(key) == v for key, v in want.items())


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)`` with ``0 <= I < N``."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard {text!r}: expected I/N, e.g. 0/2 and 1/2") from None
    if not 0 <= i < n:
        raise ValueError(f"--shard {text}: expected I/N with 0 <= I < N, e.g. 0/2 and 1/2")
    return i, n


def add_sweep_args(ap: Any, unit: str) -> None:
    """``--shard``, ``--threads`` and ``--table-only``, shared by the resumable sweeps.

    ``unit`` names what is sharded.
    """
    ap.add_argument("--shard", default="0/1", metavar="I/N", help=f"run {unit} I, I+N, I+2N, ... (default 0/1)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads of this process (default: torch's)")
    ap.add_argument("--table-only", action="store_true", help="print the table of the saved results and exit")


def sweep_setup(ap: Any, a: Any) -> tuple[int, int]:
    """Check ``--shard`` (a usage error names the fix), apply ``--threads``; return ``(shard, shards)``."""
    try:
        shard, shards = parse_shard(a.shard)
    except ValueError as e:
        ap.error(str(e))
    if a.threads:
        torch.set_num_threads(a.threads)
    return shard, shards


def distill_resumable(cfg: Any, out: Path, stop_at: int | None = None) -> tuple[dict[str, Any], float]:
    """``hyperdm.distill`` into ``out``, continuing a run with the same settings that stopped there (and pausing
    at ``stop_at``, if given).

    A run directory holding other settings is replaced. Returns the metrics and the wall time.
    """
    from hyperdm.distill import distill

    t0 = time.perf_counter()
    try:
        m = distill(cfg, str(out), resume=(out / "checkpoint.pt").exists(), progress=False, stop_at=stop_at)
    except ValueError as e:
        if "different settings" not in str(e):
            raise
        print(f"{out}: holds a run with other settings; starting over", flush=True)
        shutil.rmtree(out)
        m = distill(cfg, str(out), progress=False, stop_at=stop_at)
    return m, time.perf_counter() - t0
