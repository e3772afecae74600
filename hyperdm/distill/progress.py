"""Progress a user can trust: tqdm bars in a terminal, a one-line heartbeat in logs, honest durations.

:func:`progress_bar` gives a tqdm bar when progress is wanted and stderr is a terminal; otherwise
(``--no-progress``, a job's log file, a pipe) a :class:`Heartbeat` that logs one line, with the rate
and the time left, every :data:`HEARTBEAT_SECONDS`. Both have tqdm's ``update``, ``set_postfix``
and ``close``. :func:`redirect_logging` keeps log lines from being glued to a bar in a terminal.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator
from typing import Any

__all__ = ["HEARTBEAT_SECONDS", "Heartbeat", "format_seconds", "progress_bar", "redirect_logging"]

log = logging.getLogger("hyperdm.progress")

#: seconds between two heartbeat lines when no bar is shown
HEARTBEAT_SECONDS = 30.0


def format_seconds(s: float) -> str:
    """``45 s``, ``12 min 5 s``, ``2 h 03 min``: a duration as a person reads it."""
    if s != s or s == float("inf"):
        return "unknown"
    s = max(0.0, s)
    if s < 90:
        return f"{s:.0f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60)} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


class Heartbeat:
    """A progress bar's interface, reported as one log line every ``every`` seconds (not at all for short jobs)."""

    def __init__(self, total: int, desc: str, *, initial: int = 0, unit: str = "it", every: float | None = None):
        self.total, self.desc, self.unit, self.n = int(total), desc, unit, int(initial)
        self.every = HEARTBEAT_SECONDS if every is None else float(every)
        self._start_n = self.n
        self._t0 = self._last = time.monotonic()
        self._postfix = ""

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            log.info("%s", self.line(now))

    def line(self, now: float | None = None) -> str:
        now = time.monotonic() if now is None else now
        done, took = self.n - self._start_n, now - self._t0
        rate = done / took if took > 0 else 0.0
        left = (self.total - self.n) / rate if rate > 0 else float("nan")
        pct = f" ({100 * self.n / self.total:.0f} %)" if self.total else ""
        return (
            f"{self.desc}: {self.n:,}/{self.total:,} {self.unit}{pct}, {rate:,.3g} {self.unit}/s, "
            f"{format_seconds(left)} left{self._postfix}"
        )

    def set_postfix(self, **kw: Any) -> None:
        self._postfix = "".join(f", {k} {v}" for k, v in kw.items())

    def close(self) -> None:
        pass


def progress_bar(
    total: int, desc: str, enabled: bool, *, initial: int = 0, leave: bool = True, unit: str = "it"
) -> Any:
    """A tqdm bar with rate and ETA when ``enabled`` and stderr is a terminal (and tqdm, part of the [distill]
    extra, is installed); otherwise a :class:`Heartbeat`."""
    if enabled and _is_tty(sys.stderr):
        try:
            from tqdm.auto import tqdm

            return tqdm(total=total, initial=initial, desc=desc, leave=leave, dynamic_ncols=True, unit=unit)
        except ImportError:
            pass
    return Heartbeat(total, desc, initial=initial, unit=unit)


class _ThroughTqdm:
    """A stream whose lines go through ``tqdm.write``: above the bars, which are redrawn below."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        from tqdm.auto import tqdm

        if text.strip():
            tqdm.write(text.rstrip("\n"), file=self.stream)

    def flush(self) -> None:
        self.stream.flush()


def _is_tty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


@contextlib.contextmanager
def redirect_logging() -> Iterator[None]:
    """While active, hyperdm's console log lines (handlers writing to a terminal) go through tqdm, above any bar
    (never glued to it); each handler keeps its own level and format."""
    handlers = [
        h for h in logging.getLogger("hyperdm").handlers if isinstance(h, logging.StreamHandler) and _is_tty(h.stream)
    ]
    try:
        import tqdm  # noqa: F401
    except ImportError:
        handlers = []
    old = [h.stream for h in handlers]
    for h in handlers:
        h.stream = _ThroughTqdm(h.stream)
    try:
        yield
    finally:
        for h, st in zip(handlers, old, strict=True):
            h.stream = st
