"""The AttendOut tests' task: a real ClassificationTask around a tiny classifier, handed to the pruner as the round
loop hands it over (`use_data`), with a stand-in for the Trainer carrying what A-Net's recipe reads from the real
one (the round's steps, gradient clipping, the precision's forward context)."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace
from typing import Any

import torch

from prunelab.models import TransformerClassifier, build_classifier
from prunelab.pruning.attendout import AttendOutPruner
from prunelab.tasks.classification import ClassificationTask
from prunelab.tasks.recipe import Recipe

LAYERS = 3  # the tiny classifier's encoder layers


def classifier(dropout: float = 0.0) -> TransformerClassifier:
    torch.manual_seed(0)
    return build_classifier(
        num_classes=2, vocab_size=30, d_model=16, n_heads=2, d_ff=32, enc_layers=LAYERS, dropout=dropout
    )


def batch(seed: int, size: int = 6, length: int = 7) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, 30, (size, length), generator=g)
    src[:, 0] = 1
    src[seed % size, length - 2 :] = 0
    return {"src": src, "label": torch.randint(0, 2, (size,), generator=g)}


def trainer_stub(
    steps: int = 100, clip: float | None = None, algorithm: str = "norm", autocast: torch.dtype | None = None
) -> SimpleNamespace:
    """What the pruner and the task read from a Trainer: max steps, gradient clipping, the training forward context."""
    context = (lambda: torch.autocast("cpu", dtype=autocast)) if autocast is not None else contextlib.nullcontext
    return SimpleNamespace(
        estimated_stepping_batches=steps,
        gradient_clip_val=clip,
        gradient_clip_algorithm=algorithm,
        precision_plugin=SimpleNamespace(train_step_context=context),
        world_size=1,
        global_step=0,
    )


def with_task(
    model: torch.nn.Module,
    pruner: AttendOutPruner,
    datamodule: Any = None,
    trainer: SimpleNamespace | None = None,
    label_smoothing: float = 0.0,
    **recipe: Any,
) -> ClassificationTask:
    """The task owning `model` and `pruner` (it attaches the pruner), handed over with `use_data`; `recipe`: the
    task's optimizer settings (lr 1e-2 and a 1-step warm-up unless given)."""
    task = ClassificationTask(
        model,  # type: ignore[arg-type]
        pruner,
        labels=["no", "yes"],
        label_smoothing=label_smoothing,
        recipe=Recipe(**({"lr": 1e-2, "warmup_steps": 1} | recipe)),
    )
    task._trainer = trainer or trainer_stub()  # type: ignore[assignment]
    pruner.use_data(datamodule, task)
    return task
