"""experiment=small_corpus_classification's regulariser: AdamW's decoupled weight decay reaches the embeddings."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from prunelab.data.classification import SyntheticClassificationDataModule
from prunelab.data.tokenizer import UNK
from prunelab.models import build_classifier
from prunelab.pruning import NoPruner
from prunelab.tasks.classification import ClassificationTask
from prunelab.tasks.recipe import Recipe
from tests.conftest import quiet_trainer

STEPS = 10


def fit(tmp_path: Path, **task_kwargs: object) -> tuple[ClassificationTask, torch.Tensor]:
    """A few steps on the real regime, whose vocabulary comes from the training texts: <unk> is in no training
    batch, the stand-in for a rare word between two of its occurrences. -> (task, <unk>'s row before training)."""
    L.seed_everything(0)
    dm = SyntheticClassificationDataModule(
        regime="real", train_size=300, valid_size=8, test_size=8, max_tokens=512, n_adjectives=500
    )
    dm.setup()
    assert all(UNK not in ex[0] for ex in dm.examples["train"])
    model = build_classifier(
        vocab_size=dm.tokenizer.vocab_size, num_classes=2, d_model=16, n_heads=2, d_ff=32, enc_layers=1, dropout=0.0
    )
    before = model.embed.weight[UNK].detach().clone()
    task = ClassificationTask(model, NoPruner(), dm.labels, recipe=Recipe(warmup_steps=3, **task_kwargs))
    trainer = quiet_trainer(tmp_path, max_steps=STEPS, limit_val_batches=0)
    trainer.fit(task, datamodule=dm)
    return task, before


def test_adamw_shrinks_the_embedding_of_a_word_absent_from_every_batch(tmp_path: Path) -> None:
    lr, wd = 3e-3, 1.0
    task, before = fit(tmp_path, optimizer="adamw", lr=lr, weight_decay=wd)
    factor = task.lr_schedulers().lr_lambdas[0]
    shrink = 1.0
    for step in range(STEPS):  # decoupled decay: w <- w (1 - lr_t wd) at each step, whatever the gradient
        shrink *= 1.0 - lr * factor(step) * wd
    after = task.model.embed.weight[UNK].detach()
    assert shrink < 0.99
    torch.testing.assert_close(after, before * shrink, rtol=1e-5, atol=1e-7)


def test_plain_adam_leaves_that_embedding_where_it_was(tmp_path: Path) -> None:
    task, before = fit(tmp_path, optimizer="adam", weight_decay=0.0)
    assert torch.equal(task.model.embed.weight[UNK].detach(), before)
    assert task.trainer.global_step == STEPS  # it did train
