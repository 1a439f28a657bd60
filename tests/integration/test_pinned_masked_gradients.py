"""Masked weights get zero gradient at the optimizer step, pinned in a real (tiny) Lightning fit with gradient
clipping: Adam's moments stay exactly 0 at masked positions, and clipping sees only the kept weights.

The reference is computed by hand on a copy of the model: the batch of the first step, its label-smoothed loss,
the raw gradient, masked, its norm over kept entries, the clip coefficient min(1, c / (norm + 1e-6)) of
torch.nn.utils.clip_grad_norm_, and Adam's first moment after one step, (1 - beta1) * clipped gradient.
"""

from __future__ import annotations

import copy
from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from prunelab.data.translation import SyntheticTranslationDataModule
from prunelab.models import build_transformer
from prunelab.pruning import MagnitudePruner
from prunelab.tasks.recipe import Recipe
from prunelab.tasks.translation import TranslationTask

CLIP = 0.05  # far below the gradient norm: every step is clipped
SPARSITY = 0.9
STEPS = 3


class Recorder(L.Callback):
    """The first step's batch and weights (before it), and Adam's state right after it."""

    def __init__(self) -> None:
        self.batch: dict[str, Any] = {}
        self.weights: dict[str, torch.Tensor] = {}
        self.exp_avg: dict[str, torch.Tensor] = {}

    def on_train_batch_start(self, trainer: L.Trainer, task: L.LightningModule, batch: Any, batch_idx: int) -> None:
        if batch_idx == 0:
            self.batch = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            self.weights = {k: v.detach().clone() for k, v in task.model.state_dict().items()}

    def on_train_batch_end(
        self, trainer: L.Trainer, task: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if batch_idx == 0:
            state = trainer.optimizers[0].state
            self.exp_avg = {n: state[p]["exp_avg"].clone() for n, p in task.model.named_parameters()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    L.seed_everything(0)
    dm = SyntheticTranslationDataModule(train_size=200, valid_size=10, test_size=10, max_tokens=512)
    dm.setup()
    model = build_transformer(
        vocab_size=dm.tokenizer.vocab_size, d_model=32, n_heads=2, d_ff=64, enc_layers=1, dec_layers=1, dropout=0.0
    )
    # fixed masks: MP with its whole ramp at step 1, pruned once before training through its own hook (at step 1
    # of the fit it prunes to the same level again: already-masked weights rank lowest, so nothing changes)
    pruner = MagnitudePruner(sparsity=SPARSITY, initial_sparsity=SPARSITY, start_step=1, end_step=1)
    task = TranslationTask(model, pruner, dm.tokenizer, beam_size=1, recipe=Recipe(warmup_steps=4))
    pruner.on_step_end(model, 1, 1)
    masks = {n: m.clone() for n, m in pruner.masks.items()}
    norms: list[float] = []
    clip = torch.nn.utils.clip_grad_norm_

    def spy(parameters: Any, max_norm: float, *args: Any, **kwargs: Any) -> torch.Tensor:
        total = clip(parameters, max_norm, *args, **kwargs)
        norms.append(float(total))
        return total

    recorder = Recorder()
    trainer = L.Trainer(
        max_steps=STEPS,
        limit_val_batches=0,
        gradient_clip_val=CLIP,
        gradient_clip_algorithm="norm",
        callbacks=[recorder],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path_factory.mktemp("fit"),
        max_epochs=-1,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
    )
    mp = pytest.MonkeyPatch()
    mp.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    try:
        trainer.fit(task, datamodule=dm)
    finally:
        mp.undo()
    assert trainer.global_step == STEPS
    return {"task": task, "trainer": trainer, "masks": masks, "norms": norms, "recorder": recorder, "model": model}


def test_adam_moments_are_exactly_zero_at_masked_positions(trained: dict[str, Any]) -> None:
    task, masks = trained["task"], trained["masks"]
    state = trained["trainer"].optimizers[0].state
    params = dict(task.model.named_parameters())
    assert masks and all(abs(float((m == 0).float().mean()) - SPARSITY) < 0.01 for m in masks.values())
    for name, mask in masks.items():
        s = state[params[name]]
        masked = mask == 0
        assert int(s["step"]) == STEPS
        assert bool((s["exp_avg"][masked] == 0).all()), name
        assert bool((s["exp_avg_sq"][masked] == 0).all()), name
        assert bool((params[name][masked] == 0).all()), name
        assert float((s["exp_avg_sq"][~masked] > 0).float().mean()) > 0.5, name  # guard: kept weights do learn
    assert torch.equal(task.pruner.masks[next(iter(masks))], masks[next(iter(masks))])  # the masks never moved


def test_gradient_clipping_sees_only_the_kept_weights(trained: dict[str, Any]) -> None:
    rec, masks, task = trained["recorder"], trained["masks"], trained["task"]
    # by hand: the first step's gradient on a copy of the model with the weights it had then
    model = copy.deepcopy(trained["model"]).train()
    model.load_state_dict(rec.weights)
    b = rec.batch
    logits = model(b["src"], b["tgt_in"])
    loss = F.cross_entropy(
        logits.flatten(0, 1).float(), b["tgt_out"].flatten(), ignore_index=task.tokenizer.pad_id, label_smoothing=0.1
    )
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    grads = dict(zip(names, torch.autograd.grad(loss, [dict(model.named_parameters())[n] for n in names]), strict=True))
    kept = {n: g * masks[n] if n in masks else g for n, g in grads.items()}
    norm_kept = torch.sqrt(sum((g.double() ** 2).sum() for g in kept.values()))
    norm_all = torch.sqrt(sum((g.double() ** 2).sum() for g in grads.values()))
    assert float(norm_all) > 1.1 * float(norm_kept) > 1.1 * CLIP  # guard: the norms differ, clipping acts
    # what clip_grad_norm_ measured at the first step: the norm over kept entries only
    assert trained["norms"][0] == pytest.approx(float(norm_kept), rel=1e-4)
    # and Adam's first moment after one step: (1 - beta1) * the kept gradient scaled by c / norm_kept
    coef = min(1.0, CLIP / (float(norm_kept) + 1e-6))
    for n, g in kept.items():
        torch.testing.assert_close(rec.exp_avg[n], (1 - 0.9) * coef * g, rtol=1e-3, atol=1e-8)
