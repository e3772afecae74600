"""Progress a user can trust: bars in a terminal, a heartbeat otherwise, epochs counted as asked, an ETA that
includes the evaluation, and durations reported apart."""

from __future__ import annotations

import io
import logging
import sys

import pytest
import torch
from helpers import needs_fmnist, small, tiny_cfg

from hyperdm.distill import progress as progress_mod
from hyperdm.distill.loops import DMLoop

# training runs, subprocesses or spawned processes: left out by `pytest -m "not slow"`
pytestmark = pytest.mark.slow


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_a_bar_in_a_terminal_and_a_heartbeat_elsewhere(monkeypatch, caplog):
    tqdm = pytest.importorskip("tqdm")
    monkeypatch.setattr(sys, "stderr", _Tty())
    bar = progress_mod.progress_bar(10, "x", True, unit="img")
    assert isinstance(bar, tqdm.tqdm) and bar.unit == "img"
    bar.close()
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a log file, a pipe: no bar
    assert isinstance(progress_mod.progress_bar(10, "x", True), progress_mod.Heartbeat)
    assert isinstance(progress_mod.progress_bar(10, "x", False), progress_mod.Heartbeat)  # --no-progress
    monkeypatch.setattr(progress_mod, "HEARTBEAT_SECONDS", 0.0)
    hb = progress_mod.progress_bar(4, "pruning", False, unit="img")
    with caplog.at_level(logging.INFO, logger="hyperdm"):
        hb.update(1)
        hb.set_postfix(loss="1.25")
        hb.update(3)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("pruning: 1/4 img (25 %), ") and "img/s" in lines[0] and "left" in lines[0]
    assert lines[1].startswith("pruning: 4/4 img (100 %), ") and lines[1].endswith("0 s left, loss 1.25")


def test_format_seconds():
    f = progress_mod.format_seconds
    assert (f(5.2), f(89), f(125), f(7325), f(float("nan"))) == ("5 s", "89 s", "2 min 5 s", "2 h 02 min", "unknown")


def test_log_lines_go_above_a_bar_in_a_terminal(monkeypatch):
    tqdm = pytest.importorskip("tqdm")
    term = _Tty()
    handler = logging.StreamHandler(term)
    handler.setLevel(logging.WARNING)
    logger = logging.getLogger("hyperdm")
    logger.addHandler(handler)
    written = []
    monkeypatch.setattr(tqdm.tqdm, "write", classmethod(lambda cls, s, file=None, **k: written.append(s)))
    try:
        with progress_mod.redirect_logging():
            logger.warning("a warning")
            logger.info("an info line the handler's level leaves out")
        assert written == ["a warning"] and handler.stream is term  # through tqdm, then the stream is put back
    finally:
        logger.removeHandler(handler)


@needs_fmnist
def test_evaluation_bar_counts_the_epochs_asked_for(monkeypatch):
    """The reference trains Epoch + 1 passes; the bar says 3 for --eval-epochs 3, not 4."""
    from hyperdm.distill import evaluate

    bars = []

    class Bar(progress_mod.Heartbeat):
        def __init__(self, total, desc, enabled, **kw):
            super().__init__(total, desc, unit=kw.get("unit", "it"))
            bars.append(self)

    monkeypatch.setattr(evaluate, "progress_bar", Bar)
    real = small(test=50)
    x, y = real.train_images[:10], real.train_labels[:10]
    cfg = evaluate.EvalConfig(epochs=3, runs=1, dsa_strategy="none")
    evaluate.evaluate_synthetic(x, y, real.test_images, real.test_labels, real.info, cfg, progress=True)
    (bar,) = bars
    assert (bar.total, bar.n, bar.unit) == (3, 3, "epoch")


@needs_fmnist
def test_eta_includes_the_evaluation_and_the_end_reports_both_times(tmp_path, caplog):
    cfg = tiny_cfg(iterations=4, checkpoint_every=2, eval_epochs=2, eval_runs=1)
    with caplog.at_level(logging.INFO, logger="hyperdm"):
        m = DMLoop(cfg, small(test=200), str(tmp_path), progress=False).run()
    lines = [r.getMessage() for r in caplog.records]
    first = next(ln for ln in lines if ln.startswith("iteration 2/4"))
    assert "ETA " in first and "(distillation " in first and "+ 1 evaluation, about " in first
    last = next(ln for ln in lines if ln.startswith("iteration 4/4"))
    assert "+ 1 evaluation" in last  # the one at iteration 4 is still ahead
    end = next(ln for ln in lines if ln.startswith("distillation took"))
    assert "(4 iterations); evaluation took" in end and "(1 evaluation)" in end
    assert m["eval_seconds"] > 0 and m["distill_seconds"] > 0
    assert any(ln.startswith("iteration 4, ConvNet: ") and ln.endswith("% (one run)") for ln in lines)


@needs_fmnist
def test_prune_reports_progress(tmp_path, monkeypatch, caplog):
    """Scoring a training set takes minutes: the feature pass reports images per second and the time left."""
    from hyperdm.distill.prune import prune_indices

    monkeypatch.setattr(progress_mod, "HEARTBEAT_SECONDS", 0.0)
    real = small()
    with caplog.at_level(logging.INFO, logger="hyperdm"):
        kept = prune_indices(real.train_images, real.train_labels, real.info, keep=0.5, nets=1, batch=150)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("pruning: features")]
    assert [ln.split(", ")[0] for ln in lines] == [
        "pruning: features under 1 ConvNet: 150/400 img (38 %)",
        "pruning: features under 1 ConvNet: 300/400 img (75 %)",
        "pruning: features under 1 ConvNet: 400/400 img (100 %)",
    ]
    assert all("img/s" in ln and " left" in ln for ln in lines)
    assert kept.numel() == 200 and torch.equal(kept, torch.sort(kept).values)
