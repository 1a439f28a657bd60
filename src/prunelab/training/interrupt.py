"""Stopping a run on Ctrl-C or SIGTERM (how `timeout`, SLURM preemption and schedulers stop a job) without
losing its work.

While a round trains, the signal is only noted; the task checks the note after each optimizer step (once the
masks are applied), saves the round's `last.ckpt` at exactly that step and raises `Interrupted`. Outside
training (data preparation, the final validation and test) `Interrupted` is raised at once: those steps are
redone when the run is started again. The run then writes `status: interrupted` and exits non-zero.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


class Interrupted(BaseException):
    """The run was asked to stop (SIGINT or SIGTERM)."""

    def __init__(self, signum: int, step: int | None = None, checkpoint: str | None = None):
        super().__init__(signal.Signals(signum).name)
        self.signum, self.step, self.checkpoint = signum, step, checkpoint

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


class _StopRequest:
    def __init__(self) -> None:
        self.signum: int | None = None
        self.deferred = False  # True while a round trains: stop at the next step boundary

    def handle(self, signum: int, frame: FrameType | None) -> None:
        first = self.signum is None
        self.signum = signum
        if not self.deferred or not first:  # a second signal stops at once
            raise Interrupted(signum)


STOP = _StopRequest()


def install_handlers() -> None:
    """Route SIGINT and SIGTERM through the stop request (main thread only; Lightning chains its own SIGTERM
    handler after this one during fit)."""
    STOP.signum = None
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, STOP.handle)


@contextmanager
def deferred() -> Iterator[None]:
    """While training: a signal is noted, and acted on at the next step boundary (`requested()`)."""
    before = STOP.deferred
    STOP.deferred = True
    try:
        yield
    finally:
        STOP.deferred = before
    if STOP.signum is not None:  # noted after the last step boundary (e.g. during a validation)
        raise Interrupted(STOP.signum)


def requested() -> int | None:
    """The signal that asked the run to stop, or None."""
    return STOP.signum
