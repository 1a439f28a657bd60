"""What keeps a task's training honest across failures and restarts: the watch on the training loss (`LossWatch`: the
first non-finite loss, recorded on the device so that training never waits for the host), the weights no checkpoint
may hold (`check_weights`), and torch's generators saved with a checkpoint so that a resumed round draws the same
dropout (`rng_state`, `set_rng_state`).

Floor: tasks (below the task modules; it imports only torch and errors)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from prunelab.errors import NonFiniteError


class LossWatch:
    """The first non-finite training loss: its step (-1: none yet) and value, kept on the loss's device and updated
    without a host read at every step; the host reads it only every so many steps (`check`)."""

    def __init__(self) -> None:
        self._first: torch.Tensor | None = None
        self._value: torch.Tensor | None = None

    def check(
        self, loss: torch.Tensor | None, step: int, last: bool = False, every: int | None = None, trainer: Any = None
    ) -> None:
        """Record the training `loss` of optimizer step `step`, and stop at the first non-finite one, naming its step
        (NonFiniteError). The host reads the record every `every` steps (None: every step on CPU, where reading is
        free; every 50 on a GPU, so training never waits for the device each step), at the round's last step (`last`)
        and when there is no loss (before any checkpoint is written). All DDP ranks of `trainer` decide together."""
        if loss is not None:
            loss = loss.detach().float().reshape(())
            if self._first is None or self._first.device != loss.device:
                self._first = torch.full((), -1, dtype=torch.long, device=loss.device)
                self._value = torch.zeros((), device=loss.device)
            newly = ~torch.isfinite(loss) & (self._first < 0)
            self._first = torch.where(newly, torch.full_like(self._first, step), self._first)
            self._value = torch.where(newly, loss, self._value)
            every = every or (1 if loss.device.type == "cpu" else 50)
            if not last and step % every:
                return
        first = int(self._first) if self._first is not None else -1
        bad = first >= 0
        if trainer is not None and trainer.world_size > 1:
            bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        if bad:  # a rank that saw no bad loss itself reports the step it stopped at
            what = f"loss ({float(self._value):g})" if first >= 0 else "loss (on another process)"
            raise NonFiniteError(what, first if first >= 0 else step)


def check_weights(state: Mapping[str, torch.Tensor], step: int, prefix: str = "model.") -> None:
    """Never write a checkpoint (e.g. over a good last.ckpt) whose weights diverged: NonFiniteError naming the first
    floating-point tensor under `prefix` holding a NaN or an infinity (only the network's: pruners keep NaN
    placeholders, e.g. for scores not computed yet)."""
    bad = [k for k, v in state.items() if k.startswith(prefix) and v.is_floating_point() and not v.isfinite().all()]
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise NonFiniteError(f"weights ({bad[0]}{more})", step)


def rng_state() -> dict[str, Any]:
    """torch's generators now (the CPU one and every initialised GPU's): what dropout draws next."""
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Back to `rng_state()`'s generators (a GPU's only on a machine with as many GPUs)."""
    torch.set_rng_state(state["cpu"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
