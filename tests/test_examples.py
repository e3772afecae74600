"""README's main-job command: the swap example runs end to end and prints both losses."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_swap_mmd_line_example_runs():
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "swap_mmd_line.py"), "--seed", "0"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    losses = dict(re.findall(r"^(MMD|HDD): loss ([0-9.eE+-]+),", out.stdout, flags=re.M))
    assert set(losses) == {"MMD", "HDD"}, out.stdout
    assert all(float(v) > 0 for v in losses.values())
