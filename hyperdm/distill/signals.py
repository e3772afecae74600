"""Stop a run cleanly on the signals job schedulers send: SIGTERM, SIGHUP and SIGUSR1, like Ctrl-C (SIGINT).

SLURM, Kubernetes, ``timeout`` and ``kill`` end a job with SIGTERM (SLURM can be asked for SIGUSR1
before its time limit; a closed terminal sends SIGHUP), then SIGKILL after a grace period. While
:func:`stop_requests` is active, each of these signals ends the run the way Ctrl-C does: the loop
finishes (or had not started) the current step, writes its checkpoint atomically, says in one line
how to continue (``--resume``), and the process exits with the conventional status ``128 + signal``
(143 for SIGTERM, 130 for SIGINT).

Inside :meth:`StopRequests.deferred` (one distillation step: the loss, the backward, the image
update and its bookkeeping) a signal is only recorded, and acted on when the step is complete, so
the images and the optimizer state are never saved half-updated; outside it (evaluation, data
loading) it stops the run at once. Under torchrun the whole loop is deferred with ``act=False`` and
:meth:`StopRequests.check` is the one place that stops it: the ranks agree on the stop there, so
every rank stops after the same iteration and rank 0 writes the checkpoint (a rank that stopped on
its own would leave the others waiting in a collective). Rank 0's evaluation is
:meth:`StopRequests.interruptible`: a signal ends it at once, and the ranks then stop together.

Only the first signal counts: the ones after it are ignored while the run saves its checkpoint and
exits (torchrun forwards a SIGTERM it gets to every rank, so a ``kill`` of the whole process group
delivers two). A run that hangs after the first signal ends with SIGKILL, as schedulers send after
their grace period.

Handlers are installed only from the main thread (Python delivers signals there), and the previous
handlers come back when the context ends.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

__all__ = ["Stopped", "StopRequests", "stop_requests", "active", "signal_name", "STOP_SIGNALS"]

#: the signals that stop a run like Ctrl-C (those this platform has)
STOP_SIGNALS: tuple[int, ...] = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGHUP", "SIGUSR1") if hasattr(signal, name)
)


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class Stopped(BaseException):
    """The run was stopped by ``signum`` (SIGTERM, SIGHUP or SIGUSR1). Like :class:`KeyboardInterrupt`, not an
    :class:`Exception`, so that no ``except Exception`` on the way swallows it. ``exit_code`` is ``128 + signum``."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal_name(signum)}")
        self.signum = int(signum)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _raise_for(signum: int) -> None:
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Stopped(signum)


class StopRequests:
    """The state of :func:`stop_requests`: the first stop signal received, and whether a step is in progress."""

    def __init__(self) -> None:
        self.pending: int | None = None
        self._deferring = 0

    def handle(self, signum: int, frame: FrameType | None) -> None:
        if self.pending is not None:  # the run is already stopping (saving its checkpoint): ignore the repeat
            return
        self.pending = signum
        if not self._deferring:
            _raise_for(signum)

    @contextlib.contextmanager
    def deferred(self, *, act: bool = True) -> Iterator[None]:
        """A step that must not be cut in half: a signal inside is acted on when the block ends (``act=False``:
        left to :meth:`check`, for a block whose ranks must stop together)."""
        self._deferring += 1
        try:
            yield
        finally:
            self._deferring -= 1
        if act and self.pending is not None and not self._deferring:
            _raise_for(self.pending)

    @contextlib.contextmanager
    def interruptible(self, *, agreed: bool = False) -> Iterator[None]:
        """A block that a signal cuts at once, even inside a deferred one (an evaluation: it saves nothing). With
        ``agreed`` the block just ends there and the stop is left to :meth:`check`, where the ranks agree."""
        outer, self._deferring = self._deferring, 0
        try:
            yield
        except (KeyboardInterrupt, Stopped):
            if not agreed:
                raise
        finally:
            self._deferring = outer

    def check(self, agree: Callable[[int], int] | None = None) -> None:
        """Stop now if a signal came: with ``agree`` (an all-reduce of the largest value over the ranks), as soon as
        any rank received one, so that all stop after the same iteration."""
        mine = self.pending or 0
        got = agree(mine) if agree is not None else mine
        if got:
            if self.pending is None:
                self.pending = got
            _raise_for(got)


_ACTIVE: list[StopRequests] = []


def active() -> StopRequests:
    """The innermost active :func:`stop_requests` (a fresh, inert one when none is: nothing is installed)."""
    return _ACTIVE[-1] if _ACTIVE else StopRequests()


@contextlib.contextmanager
def stop_requests(signals: tuple[int, ...] = (signal.SIGINT, *STOP_SIGNALS)) -> Iterator[StopRequests]:
    """Turn ``signals`` into :class:`Stopped` (:class:`KeyboardInterrupt` for SIGINT) for the duration of the block,
    deferred inside :meth:`StopRequests.deferred`. Nested uses share the outer state. Off the main thread it installs
    nothing (signals are then the process's default)."""
    if _ACTIVE:
        yield _ACTIVE[-1]
        return
    state = StopRequests()
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for s in signals:
            with contextlib.suppress(ValueError, OSError):  # a signal this platform cannot catch
                previous[s] = signal.signal(s, state.handle)
    _ACTIVE.append(state)
    try:
        yield state
    finally:
        _ACTIVE.pop()
        for s, h in previous.items():
            signal.signal(s, h)
