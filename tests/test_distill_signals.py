"""The stop-request state behind ``hyperdm distill``'s clean stops, with real signals sent to this process."""

from __future__ import annotations

import os
import signal

import pytest

from hyperdm.distill.signals import Stopped, StopRequests, stop_requests


def _term() -> None:
    os.kill(os.getpid(), signal.SIGTERM)


def test_a_signal_outside_a_step_stops_at_once_and_a_repeat_while_stopping_is_ignored():
    """torchrun forwards the SIGTERM it gets to every rank, so a ``kill`` of the process group delivers two: the
    second must not cut the first one's checkpoint save in half."""
    saved = []
    with stop_requests() as stops:
        with pytest.raises(Stopped) as e:
            _term()
        assert e.value.exit_code == 143 and stops.pending == signal.SIGTERM
        _term()  # while the run saves its checkpoint: ignored
        os.kill(os.getpid(), signal.SIGUSR1)
        saved.append("checkpoint")
    assert saved == ["checkpoint"] and stops.pending == signal.SIGTERM  # the first signal is the one reported
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_a_signal_inside_a_step_is_acted_on_when_the_step_ends():
    steps = []

    def step(stops: StopRequests) -> None:
        with stops.deferred():
            _term()
            steps.append("finished")  # not cut in half

    with stop_requests() as stops, pytest.raises(Stopped):
        step(stops)
    assert steps == ["finished"]


def test_with_act_false_only_the_agreed_check_stops():
    """Under torchrun the loop is deferred with act=False: a signal on one rank is acted on at the check, where the
    ranks agree (here a stand-in for the all-reduce of the largest value)."""
    agreed, went_on = [], []

    def agree(mine: int) -> int:
        agreed.append(mine)
        return mine

    def loop(stops: StopRequests) -> None:
        with stops.deferred(act=False):
            stops.check(agree)  # nothing yet: goes on
            _term()  # between steps: recorded, not raised (one rank must not stop alone)
            with stops.deferred():  # the next step runs, and its end does not act either
                went_on.append(True)
            stops.check(agree)

    with stop_requests() as stops, pytest.raises(Stopped) as e:
        loop(stops)
    assert went_on == [True] and e.value.signum == signal.SIGTERM
    assert agreed == [0, signal.SIGTERM]


def test_check_stops_on_another_ranks_signal():
    state = StopRequests()
    state.check(lambda mine: mine)  # no signal anywhere: nothing happens
    with pytest.raises(Stopped) as e:
        state.check(lambda mine: max(mine, int(signal.SIGUSR1)))  # this rank has none, another has SIGUSR1
    assert e.value.signum == signal.SIGUSR1 and state.pending == signal.SIGUSR1


def test_sigint_is_a_keyboard_interrupt_and_act_false_leaves_it_pending():
    with stop_requests() as stops:
        with stops.deferred(act=False):
            os.kill(os.getpid(), signal.SIGINT)
        assert stops.pending == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            stops.check()


def test_an_interruptible_block_is_cut_at_once_even_inside_a_deferred_one():
    """Rank 0's evaluation under torchrun: the signal ends it at once (agreed=True: the block just ends, and the
    ranks stop together at the check); without agreed it stops the run there, as in one process."""
    done = []

    def evaluation(stops: StopRequests, *, agreed: bool) -> None:
        with stops.interruptible(agreed=agreed):
            _term()
            done.append("evaluated")  # never reached

    with stop_requests() as stops:
        with stops.deferred(act=False):
            evaluation(stops, agreed=True)
            assert stops.pending == signal.SIGTERM
            with pytest.raises(Stopped):
                stops.check(lambda mine: mine)
        assert done == []
    with stop_requests() as stops, pytest.raises(Stopped):
        evaluation(stops, agreed=False)
