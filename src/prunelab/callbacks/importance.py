"""Component importance over training (Wang & Tu 2020, Figure 8): every N epochs, the contribution
heatmap of the model as it is, as PNG + CSV in `<run>/importance/` and as an image in W&B. Off by default
(`track_importance.every_n_epochs=0`); it reads the model and never changes it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L

from prunelab.callbacks.curves import write_csv
from prunelab.callbacks.heatmaps import plot_component_heatmaps
from prunelab.criteria.components import contribution_scores
from prunelab.loggers import wandb_run
from prunelab.scoring.variants import DecodeSettings

log = logging.getLogger("prunelab")


class ComponentImportanceTracker(L.Callback):
    def __init__(self, out_dir: Path, every_n_epochs: int = 1, max_batches: int | None = 2, beam_size: int = 1):
        if every_n_epochs < 1:
            raise ValueError("every_n_epochs must be >= 1")
        self.out_dir = out_dir
        self.every = every_n_epochs
        self.max_batches = max_batches
        self.settings = DecodeSettings(beam_size=beam_size)
        self.rows: list[list[Any]] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if epoch % self.every or not trainer.is_global_zero:
            return
        dm = trainer.datamodule  # type: ignore[attr-defined]
        batches = list(dm.val_dataloader())[: self.max_batches]
        res = pl_module.own_scorer(dm, self.settings).ablation(pl_module.model, batches)  # type: ignore[attr-defined]
        scores = contribution_scores(res.drops, res.baseline)
        step = trainer.global_step
        self.out_dir.mkdir(parents=True, exist_ok=True)
        png = self.out_dir / f"epoch_{epoch:03d}.png"
        plot_component_heatmaps(png, {f"contribution, epoch {epoch}": scores}, f"step {step}, BLEU {res.baseline:.1f}")
        self.rows += [[epoch, step, n, res.drops[n], v] for n, v in scores.items()]
        write_csv(self.out_dir / "contribution.csv", ["epoch", "step", "component", "drop", "contribution"], self.rows)
        log.info("importance at epoch %d: %s", epoch, png)
        for lg in trainer.loggers:
            run = wandb_run(lg)
            if run is not None:
                import wandb

                run.log({"importance/contribution": wandb.Image(str(png)), "trainer/global_step": step})
