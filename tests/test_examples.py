"""The examples run end to end, and the reference patch is a well-formed unified diff."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import hunks_are_well_formed

# training runs, subprocesses or spawned processes: left out by `pytest -m "not slow"`
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def _run(args, timeout=300):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_swap_mmd_line_example_runs():
    out = _run([str(ROOT / "examples" / "swap_mmd_line.py"), "--seed", "0"])
    assert out.returncode == 0, out.stderr
    losses = dict(re.findall(r"^(MMD|HDD): loss ([0-9.eE+-]+),", out.stdout, flags=re.M))
    assert set(losses) == {"MMD", "HDD"}, out.stdout
    assert all(float(v) > 0 for v in losses.values())


@pytest.mark.parametrize("matcher", ["mmd", "hyperbolic"])
def test_own_loop_example_runs(tiny_fmnist_root, matcher):
    out = _run(
        [
            str(ROOT / "examples" / "own_loop.py"),
            "--matcher",
            matcher,
            "--iterations",
            "2",
            "--batch-real",
            "4",
            "--ipc",
            "2",
            "--check-steps",
            "3",
            "--data-root",
            str(tiny_fmnist_root),
        ]
    )
    assert out.returncode == 0, out.stderr
    losses = [float(v) for v in re.findall(rf"{matcher} loss per class ([0-9.eE+-]+)", out.stdout)]
    assert len(losses) == 2 and all(v > 0 for v in losses), out.stdout
    assert re.search(r"test accuracy after a 3-step check: [0-9.]+%", out.stdout)


def test_dm_hdd_example_runs(tiny_fmnist_root, tmp_path):
    out = _run(
        [
            str(ROOT / "examples" / "dm_hdd.py"),
            "--iterations",
            "2",
            "--eval-epochs",
            "2",
            "--data-root",
            str(tiny_fmnist_root),
            "--out",
            str(tmp_path / "run"),
        ]
    )
    assert out.returncode == 0, out.stderr
    assert re.search(r"iteration 2: ConvNet [0-9.]+ \+- [0-9.]+ %", out.stdout), out.stdout
    assert (tmp_path / "run" / "synthetic.pt").is_file()


def test_idm_hdd_example_runs(tiny_fmnist_root, tmp_path):
    out = _run(
        [
            str(ROOT / "examples" / "idm_hdd.py"),
            "--ipc",
            "1",
            "--iterations",
            "2",
            "--eval-epochs",
            "1",
            "--data-root",
            str(tiny_fmnist_root),
            "--out",
            str(tmp_path / "run"),
        ]
    )
    assert out.returncode == 0, out.stderr
    assert "partition 2x2" in out.stdout and re.search(r"iteration 2: ConvNet [0-9.]+ \+- [0-9.]+ %", out.stdout), (
        out.stdout
    )


def test_dance_hdd_example_runs(tiny_fmnist_root, tmp_path):
    out = _run(
        [
            str(ROOT / "examples" / "dance_hdd.py"),
            "--ipc",
            "1",
            "--iterations",
            "2",
            "--eval-epochs",
            "1",
            "--experts",
            "1",
            "--expert-epochs",
            "1",
            "--expert-dir",
            str(tmp_path / "experts"),
            "--data-root",
            str(tiny_fmnist_root),
            "--out",
            str(tmp_path / "run"),
        ]
    )
    assert out.returncode == 0, out.stderr
    assert "1 experts x 1 epochs, multi-formation 2x2" in out.stdout, out.stdout
    assert re.search(r"experts \(last-epoch training accuracy\): [0-9.]+%", out.stdout), out.stdout
    assert re.search(r"iteration 2: ConvNet [0-9.]+ \+- [0-9.]+ %", out.stdout), out.stdout
    assert len(list((tmp_path / "experts").glob("*/expert000.pt"))) == 1


def test_reference_patch_is_well_formed():
    """Every hunk's line counts match its header, and the patch swaps both MMD lines of main_DM.py."""
    text = (ROOT / "examples" / "reference_dm.patch").read_bytes().decode()
    files = re.findall(r"^\+\+\+ b/(\S+)", text, flags=re.M)
    assert files == ["main_DM.py", "networks.py", "utils.py"]
    lines = text.split("\n")
    hunks = hunks_are_well_formed(text)
    assert hunks >= 6
    added = "\n".join(line for line in lines if line.startswith("+"))
    assert added.count("matcher(output_real") == 2 and "HyperbolicMatcher(k=args.hdd_k" in added
    assert "\r\n" in text  # the reference files use CRLF line ends; the patch must keep them to apply
