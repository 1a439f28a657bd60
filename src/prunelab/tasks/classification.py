"""The classification LightningModule: cross-entropy, and accuracy, macro-F1 and Matthews correlation from
torchmetrics over the whole split (gathered across DDP ranks). The best checkpoint is chosen by `metric`.
Pruners plug in exactly as for translation (PrunableTask)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_f1_score,
    multiclass_matthews_corrcoef,
)

from prunelab.errors import UserError
from prunelab.models.classifier import TransformerClassifier
from prunelab.pruning.base import Pruner
from prunelab.scoring.scoring import AccuracyScorer
from prunelab.tasks.base import PrunableTask, gathered_by_index
from prunelab.tasks.recipe import Recipe

METRICS = ("acc", "f1", "mcc")


class ClassificationTask(PrunableTask):
    kind = "classification"
    score_name = "accuracy"

    def __init__(
        self,
        model: TransformerClassifier,
        pruner: Pruner,
        labels: list[str],
        label_smoothing: float = 0.1,
        metric: str = "acc",
        recipe: Recipe | None = None,
    ):
        super().__init__(model, pruner, recipe)
        if metric not in METRICS:
            raise UserError(f"task.metric must be one of {', '.join(METRICS)}, got {metric!r}")
        self.labels = list(labels)
        self.label_smoothing = label_smoothing
        self.metric = metric
        self.score_key = metric
        self.score_name = {"acc": "accuracy", "f1": "macro-F1", "mcc": "Matthews correlation"}[metric]
        self.monitor = f"val/{metric}_at_target"
        self._outputs: list[tuple[int, int, int]] = []  # (index, predicted, gold) of this eval epoch

    def forward_logits(self, model: Any, batch: dict[str, Any]) -> Tensor:
        return model(batch["src"], types=batch.get("types"))  # (B, classes); token types, where the data has them

    def example_loss(self, logits: Tensor, batch: dict[str, Any]) -> Tensor:
        """Label-smoothed cross-entropy of `logits` (B, classes), averaged over the examples."""
        return F.cross_entropy(logits.float(), batch["label"], label_smoothing=self.label_smoothing)

    def loss(self, batch: dict[str, Any]) -> Tensor:
        return self.example_loss(self.forward_logits(self.model, batch), batch)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        logits = self.student_logits(batch)
        masks = {"enc": batch["src"] != self.model.cfg.pad_id}  # the layer outputs that count: real tokens
        loss, parts = self.distilled(self.example_loss(logits, batch), logits, batch, None, masks)  # KL per example
        self.log_training_step(loss, batch, parts)
        return loss

    def _eval_step(self, batch: dict[str, Any], split: str) -> None:
        logits = self.model(batch["src"], types=batch.get("types")).float()
        loss = F.cross_entropy(logits, batch["label"])
        self.log(f"{split}/loss", loss, sync_dist=True, batch_size=len(batch["ref"]))
        pred = logits.argmax(-1)
        for i, p, g in zip(batch["idx"].tolist(), pred.tolist(), batch["label"].tolist(), strict=True):
            self._outputs.append((i, p, g))

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_validation_epoch_start(self) -> None:
        self._outputs = []

    on_test_epoch_start = on_validation_epoch_start

    def _score(self, split: str) -> None:
        records = gathered_by_index(self._outputs)
        pred = torch.tensor([p for _, p, _ in records])
        gold = torch.tensor([g for _, _, g in records])
        n = len(self.labels)
        scores = {
            "acc": float(multiclass_accuracy(pred, gold, n, average="micro")),
            "f1": float(multiclass_f1_score(pred, gold, n, average="macro")),
            "mcc": float(multiclass_matthews_corrcoef(pred, gold, n)),
        }
        for k, v in scores.items():
            self.log(f"{split}/{k}", v, prog_bar=k == self.metric)
        if split == "val":
            self.log_target(scores[self.metric])
        self.last_eval[split] = {"hypotheses": [self.labels[p] for p in pred.tolist()], "scores": scores}

    @staticmethod
    def scorer(datamodule: Any, settings: Any = None) -> Any:
        """Accuracy in percent (the 0-100 scale of BLEU); nothing is decoded, so `settings` do not apply."""
        return AccuracyScorer()

    def run_report(self) -> dict[str, Any]:
        return {**super().run_report(), "labels": self.labels}  # class index -> label name, as the model predicts them

    def on_validation_epoch_end(self) -> None:
        self._score("val")

    def on_test_epoch_end(self) -> None:
        self._score("test")
