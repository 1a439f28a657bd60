"""The NMT LightningModule in a real (tiny) Lightning loop, in-process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from prunelab.data.translation import SyntheticTranslationDataModule
from prunelab.errors import UserError
from prunelab.models import build_transformer
from prunelab.pruning import MagnitudePruner, NoPruner, Pruner
from prunelab.pruning.masks import prunable_weights
from prunelab.tasks.recipe import Recipe, inverse_sqrt_schedule, linear_schedule
from prunelab.tasks.translation import TranslationTask
from tests.conftest import quiet_trainer


def fit(tmp_path: Path, pruner: Pruner, steps: int = 12, **recipe: Any) -> TranslationTask:
    L.seed_everything(0)
    dm = SyntheticTranslationDataModule(train_size=200, valid_size=10, test_size=10, max_tokens=512)
    dm.setup()
    model = build_transformer(
        vocab_size=dm.tokenizer.vocab_size, d_model=32, n_heads=2, d_ff=64, enc_layers=1, dec_layers=1, dropout=0.0
    )
    task = TranslationTask(model, pruner, dm.tokenizer, beam_size=2, recipe=Recipe(**{"warmup_steps": 4, **recipe}))
    trainer = quiet_trainer(tmp_path, max_steps=steps, val_check_interval=6)
    trainer.fit(task, datamodule=dm)
    return task


@pytest.mark.parametrize("optimizer", ["adam", "adafactor"])
def test_both_optimizers_train(tmp_path: Path, optimizer: str) -> None:
    task = fit(tmp_path, NoPruner(), optimizer=optimizer)
    opt = task.trainer.optimizers[0]
    assert type(opt).__name__.lower() == optimizer
    assert task.trainer.global_step == 12
    assert task.train_tokens > 0


def test_masks_hold_inside_the_training_loop(tmp_path: Path) -> None:
    pruner = MagnitudePruner(sparsity=0.8, frequency=2, start_fraction=0.25, end_fraction=0.5)
    task = fit(tmp_path, pruner, steps=16)
    for name, w in prunable_weights(task.model).items():
        mask = pruner.masks[name]
        assert abs(float((mask == 0).float().mean()) - 0.8) < 0.01, name
        assert bool((w[mask == 0] == 0).all()), name  # Adam's momentum did not revive pruned weights
    assert task.mask_sparsity() == pytest.approx(0.8, abs=0.005)


def test_inverse_sqrt_warmup_then_decay() -> None:
    f = inverse_sqrt_schedule(100)
    assert f(0) == pytest.approx(0.01) and f(49) == pytest.approx(0.5)
    assert f(99) == pytest.approx(1.0)  # the peak at the end of warm-up
    assert f(399) == pytest.approx(0.5)  # sqrt(100 / 400)
    assert all(f(s) > f(s + 1) for s in range(100, 500))


def test_linear_warmup_then_linear_decay_to_zero() -> None:
    f = linear_schedule(10, 110)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)  # peak at the end of warm-up
    assert f(60) == pytest.approx(0.5) and f(110) == 0.0 and f(200) == 0.0
    assert all(f(s) > f(s + 1) for s in range(10, 110))


def test_finetuning_recipe_adamw_linear_schedule(tmp_path: Path) -> None:
    """experiment=finetune's settings: AdamW with decay on the matrices only, warm-up over a fraction of the round's
    steps, and the lr at 0 after the last step."""
    task = fit(
        tmp_path,
        NoPruner(),
        steps=12,
        optimizer="adamw",
        lr=1e-3,
        weight_decay=0.01,
        schedule="linear",
        warmup_fraction=0.25,
        betas=(0.9, 0.999),
    )
    opt = task.trainer.optimizers[0]
    assert isinstance(opt, torch.optim.AdamW)
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 0.01 and all(p.dim() == 2 for p in decayed["params"])
    assert plain["weight_decay"] == 0.0 and all(p.dim() == 1 for p in plain["params"])
    sched = task.lr_schedulers()
    assert sched.lr_lambdas[0](2) == pytest.approx(1.0) and sched.lr_lambdas[0](1) < 1.0  # warm-up: 3 steps of 12
    assert sched.get_last_lr()[0] == pytest.approx(0.0)
    with pytest.raises(UserError, match=r"task\.schedule must be one of"):
        Recipe(schedule="cosine")


def test_label_smoothed_loss_ignores_padding() -> None:
    torch.manual_seed(0)
    model = build_transformer(vocab_size=20, d_model=16, n_heads=2, d_ff=32, enc_layers=1, dec_layers=1, dropout=0.0)
    from prunelab.data.tokenizer import WordTokenizer

    task = TranslationTask(model, NoPruner(), WordTokenizer(["a", "b"]), label_smoothing=0.0)
    batch = {"src": torch.tensor([[5, 6, 2]]), "tgt_in": torch.tensor([[1, 7]]), "tgt_out": torch.tensor([[7, 2]])}
    padded = {
        "src": torch.tensor([[5, 6, 2]]),
        "tgt_in": torch.tensor([[1, 7, 0]]),
        "tgt_out": torch.tensor([[7, 2, 0]]),
    }
    torch.testing.assert_close(task.loss(batch), task.loss(padded))
    logits = model(batch["src"], batch["tgt_in"])[0]
    expected = -(logits.log_softmax(-1)[0, 7] + logits.log_softmax(-1)[1, 2]) / 2
    torch.testing.assert_close(task.loss(batch), expected)
