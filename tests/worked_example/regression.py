"""A worked example of adding a task kind (CONTRIBUTING.md, "Adding a task kind"): regression of a number from a
text, here how many words the embedded classification task's text has. It is made of exactly the four pieces the
steps name, and nothing in src/prunelab changes for it:

1. the data file: a data module whose `kind` is the new kind (here the embedded classification data, each text's
   target its word count) and the batches it collates (`target`, a float per example);
2. the task file: a PrunableTask with the same `kind`, its loss, its evaluation and its score (`mse`, lower is better,
   so the monitored value is negated), accepting the classifier network (`model_kinds`);
3. the scorer the importance studies rank by (higher is better: the negated MSE);
4. YAML: `conf/task/regression.yaml`, `conf/data/toy_regression.yaml` (on Hydra's search path).

Every pruner that takes any task (`Pruner.tasks` None) prunes it: MP, the lottery family, one-shot, heads, components,
structured."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from prunelab.data.classification import SyntheticClassificationDataModule, collate_classification
from prunelab.pruning.base import Pruner
from prunelab.scoring.scoring import FullPassScorer
from prunelab.tasks.base import PrunableTask, gathered_by_index
from prunelab.tasks.recipe import Recipe


# --- 1. the data file ---------------------------------------------------------------------------------------------
def collate_regression(examples: Sequence[Any], pad_id: int) -> dict[str, Any]:
    """The classification batch, plus `target` (B,) float: each example's number (its label's name)."""
    batch = collate_classification(examples, pad_id)
    batch["target"] = torch.tensor([float(name) for name in batch["ref"]])
    return batch


class ToyRegressionDataModule(SyntheticClassificationDataModule):
    """`data=toy_regression`: the embedded classification texts, each one's target its number of words."""

    kind = "regression"

    def read_split(self, split: str) -> tuple[list[str], list[str]]:
        texts, _ = super().read_split(split)
        return texts, [str(len(t.split())) for t in texts]

    def model_kwargs(self) -> dict[str, Any]:
        return {"num_classes": 2}  # the classifier network (it has at least two outputs): the first is the number

    def task_kwargs(self) -> dict[str, Any]:
        return {}

    def collate_fn(self) -> Any:
        return lambda examples: collate_regression(examples, self.tokenizer.pad_id)


def predicted(model: Any, src: Tensor) -> Tensor:
    """(B,) the number the network predicts: its first output."""
    return model(src)[:, 0]


# --- 3. the scorer ------------------------------------------------------------------------------------------------
class NegatedMseScorer(FullPassScorer):
    """The importance studies' score: minus the mean squared error (higher is better, as they rank)."""

    name = "-MSE"

    @torch.no_grad()
    def score(self, model: Any, batches: Sequence[dict[str, Any]]) -> float:
        was_training = model.training
        model.eval()
        try:
            errors = [(predicted(model, b["src"]).double() - b["target"].double()) ** 2 for b in batches]
        finally:
            model.train(was_training)
        return -float(torch.cat(errors).mean())


# --- 2. the task file ---------------------------------------------------------------------------------------------
class RegressionTask(PrunableTask):
    kind = "regression"
    model_kinds = ("classification",)  # the encoder classifier's network
    score_key, score_name = "mse", "mean squared error"
    higher_is_better = False

    def __init__(self, model: Any, pruner: Pruner, recipe: Recipe | None = None):
        super().__init__(model, pruner, recipe)
        self._outputs: list[tuple[int, float, float]] = []  # (index, predicted, target) of this eval epoch

    def forward_logits(self, model: Any, batch: dict[str, Any]) -> Tensor:
        return model(batch["src"])  # (B, 2): the first column is the prediction

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        pred = self.student_logits(batch)
        loss, parts = self.distilled(F.mse_loss(pred[:, 0].float(), batch["target"]), pred, batch)
        self.log_training_step(loss, batch, parts)
        return loss

    def _eval_step(self, batch: dict[str, Any]) -> None:
        pred = predicted(self.model, batch["src"]).float()
        for i, p, t in zip(batch["idx"].tolist(), pred.tolist(), batch["target"].tolist(), strict=True):
            self._outputs.append((i, p, t))

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch)

    def on_validation_epoch_start(self) -> None:
        self._outputs = []

    on_test_epoch_start = on_validation_epoch_start

    def _score(self, split: str) -> None:
        records = gathered_by_index(self._outputs)
        mse = sum((p - t) ** 2 for _, p, t in records) / len(records)
        self.log(f"{split}/mse", mse, prog_bar=True, rank_zero_only=True)
        if split == "val":
            self.log_target(-mse)  # higher is better for checkpoint selection
        self.last_eval[split] = {"hypotheses": [repr(p) for _, p, _ in records], "scores": {"mse": mse}}

    def on_validation_epoch_end(self) -> None:
        self._score("val")

    def on_test_epoch_end(self) -> None:
        self._score("test")

    @staticmethod
    def scorer(datamodule: Any, settings: Any = None) -> Any:
        return NegatedMseScorer()
