"""Errors caused by the user's input: reported as one line, with a non-zero exit, no traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable


class UserError(Exception):
    """Bad configuration or data; the message names the problem and the offending value or path."""


def exit_code(command: Callable[[], object]) -> int:
    """Run a command-line entry's work: 0 when it finishes, 2 and the one line `error: ...` on stderr when the user's
    input was wrong (a UserError); anything else is a bug and keeps its traceback."""
    try:
        command()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


class NonFiniteError(UserError):
    """Training diverged: the loss or the weights became NaN or infinite (a too high `task.lr`, or SLT's
    growing magnitudes). The task raises it with the step; the round driver adds the round and the last
    good checkpoint, which it keeps (a checkpoint with non-finite weights is never written)."""

    def __init__(self, what: str, step: int):
        super().__init__(what, step)
        self.what, self.step = what, step
        self.round: int | None = None
        self.kept: str | None = None

    def __str__(self) -> str:
        where = f"step {self.step}" + (f" of round {self.round}" if self.round is not None else "")
        kept = (
            f"the last good checkpoint is kept: {self.kept}"
            if self.kept
            else "no checkpoint of the round was written before"
        )
        return f"non-finite {self.what} at {where}: training diverged (try a lower task.lr); {kept}"
