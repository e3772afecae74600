"""The IDM and Dance reference patches are well-formed, swap the MMD line, and default to the paper's rows;
the local runner used for their smoke runs reads real images and maps CUDA to the CPU."""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import hunks_are_well_formed

from hyperdm.distill.presets import PAPER_HDD

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def added(text: str) -> str:
    return "\n".join(line[1:] for line in text.split("\n") if line.startswith("+") and not line.startswith("+++"))


def removed(text: str) -> list[str]:
    return [line[1:].strip() for line in text.split("\n") if line.startswith("-") and not line.startswith("---")]


def rows_in(code: str) -> dict:
    """The ``hdd_rows = {...}`` literal the patch adds."""
    m = re.search(r"hdd_rows = (\{.*?\})\s*\n\s*k_row", code.replace("\r", ""), flags=re.S)
    assert m, "no hdd_rows literal"
    return ast.literal_eval(re.sub(r"#[^\n]*", "", m.group(1)))


def test_idm_patch():
    raw = (EXAMPLES / "reference_idm.patch").read_bytes().decode()
    assert re.findall(r"^\+\+\+ b/(\S+)", raw, flags=re.M) == ["IDM_cifar10.py"]
    assert hunks_are_well_formed(raw) == 3
    # IDM's files use CRLF line ends: every context, removed and added line keeps its \r, headers have none
    body = [ln for ln in raw.split("\n") if ln[:1] in (" ", "-", "+") and not ln.startswith(("---", "+++"))]
    assert body and all(ln.endswith("\r") for ln in body)
    assert not any(ln.endswith("\r") for ln in raw.split("\n") if ln.startswith(("---", "+++", "@@")))
    text = raw.replace("\r", "")
    mmd = "loss_c += torch.sum((torch.mean(output_real, dim=0) - torch.mean(output_syn, dim=0))**2)"
    assert removed(text) == [mmd]  # the MMD line is the only line removed ...
    new = added(text)
    assert new.count(mmd) == 1 and "if matcher is None:" in new  # ... kept for --matcher mmd
    assert "loss_c += matcher(output_real, output_syn)" in new
    assert "from hyperdm import HyperbolicMatcher" in new
    assert "HyperbolicMatcher(k=args.hdd_k, scale=args.hdd_lambda)" in new
    assert re.search(r"'--matcher', type=str, default='hyperbolic', choices=\['mmd', 'hyperbolic'\]", new)
    assert "'--hdd_k', type=float, default=None" in new and "'--hdd_lambda', type=float, default=None" in new
    rows = rows_in(new)
    assert set(rows) == {(d, i) for d in ("CIFAR10", "CIFAR100") for i in (1, 10, 50)}
    for (dataset, ipc), (k, lam) in rows.items():
        row = PAPER_HDD[("idm", dataset.lower(), ipc)]
        assert (k, lam) == (row.k, row.scale), (dataset, ipc)


def test_dance_patch():
    raw = (EXAMPLES / "reference_dance.patch").read_bytes().decode()
    assert "\r" not in raw  # Dance's files use LF line ends
    assert re.findall(r"^\+\+\+ b/(\S+)", raw, flags=re.M) == ["DANCE.py", "arguments/arg_condense.py", "misc/utils.py"]
    assert hunks_are_well_formed(raw) == 7
    mmd = "loss = torch.sum((feat.mean(0) - feat_tg.mean(0))**2)"
    assert removed(raw) == [
        "def innerloss(img_real, img_syn, model):",
        mmd,
        "loss = innerloss(img_aug[:n], img_aug[n:], model_interval)",
        "cut_w = np.int(W * cut_rat)",
        "cut_h = np.int(H * cut_rat)",  # np.int is gone from NumPy >= 1.24
    ]
    new = added(raw)
    assert new.count(mmd) == 1 and "if matcher is None:" in new and "loss = matcher(feat_tg, feat)" in new
    assert "def innerloss(img_real, img_syn, model, matcher=None):" in new
    assert "innerloss(img_aug[:n], img_aug[n:], model_interval, matcher)" in new
    assert "HyperbolicMatcher(k=args.hdd_k, scale=args.hdd_lambda) if args.matcher == 'hyperbolic' else None" in new
    assert re.search(r"'--matcher', type=str, default='hyperbolic', choices=\['mmd', 'hyperbolic'\]", new)
    assert "cut_w = int(W * cut_rat)" in new and "np.int(" not in new
    rows = rows_in(new)
    expected = {(d, i): (r.k, r.scale) for (m, d, i), r in PAPER_HDD.items() if m == "dance"}
    assert rows == expected


# ----------------------------------------------------------------------------- the local runner


def load_runner():
    spec = importlib.util.spec_from_file_location("run_reference_locally", EXAMPLES / "run_reference_locally.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_runner_stand_in_holds_real_images(tiny_fmnist_root):
    from conftest import read_idx

    run = load_runner()
    raw = tiny_fmnist_root / "FashionMNIST" / "raw"
    run.FashionAsCIFAR10.source, run.FashionAsCIFAR10.per_class, run.FashionAsCIFAR10.test_size = raw, 3, 7
    train, test = (
        run.FashionAsCIFAR10("unused", train=True),
        run.FashionAsCIFAR10("unused", train=False, transform=np.asarray),
    )
    x, y = read_idx(raw / "train-images-idx3-ubyte.gz"), read_idx(raw / "train-labels-idx1-ubyte.gz")
    assert train.data.shape == (30, 32, 32, 3) and train.data.dtype == np.uint8 and len(test) == 7
    assert train.targets == [c for c in range(10) for _ in range(3)]
    first = np.nonzero(y == 4)[0][1]  # the second coat
    assert np.array_equal(train.data[13, 2:30, 2:30, 1], x[first])
    assert (train.data[:, :2] == 0).all() and (train.data[..., 0] == train.data[..., 2]).all()
    img, label = test[0]
    assert img.shape == (32, 32, 3) and label == int(read_idx(raw / "t10k-labels-idx1-ubyte.gz")[0])


def test_runner_maps_cuda_to_cpu():
    run = load_runner()
    with run.CudaToCpu():
        a = torch.zeros(3, device="cuda")
        b = torch.arange(4, device=torch.device("cuda:0"))
        c = torch.ones(2).to("cuda")
        d = torch.ones(2).to(torch.device("cuda"), dtype=torch.float64)
        e = torch.nn.Linear(2, 2).to("cuda")
    assert {t.device.type for t in (a, b, c, d, e.weight)} == {"cpu"} and d.dtype == torch.float64
    if not torch.cuda.is_available():  # without the mode, this machine has no CUDA device to give
        with pytest.raises((RuntimeError, AssertionError)):
            torch.zeros(1, device="cuda")
