"""AttendOut compares like arms (issue 24, defect 9), and D <- A:

- A-Net trains with the task's recipe: with every map kept and no dropout, A-Net trained by the pruner equals
  D-Net trained as Lightning trains it (the task's configure_optimizers, its scheduler, the Trainer's gradient
  clipping and precision context), for several recipes;
- the cycle compares A and D when both have stepped on the same batches: with A = D and every map kept, the
  margin reward is 0 and the sign reward is neutral (0, a tie), so G-Net learns nothing;
- G-Net's keep probabilities (the pruning decision, the report, the inputs of its training decisions) are
  computed without dropout: they do not depend on the random state;
- after a cycle D-Net holds A-Net's trained weights, and A-Net keeps them (not A <- D, not "no copy").
"""

from __future__ import annotations

import copy
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from prunelab.models.addressing import component
from prunelab.pruning.attendout import AttendOutPruner
from prunelab.tasks.classification import ClassificationTask
from tests.unit.attendout_task import LAYERS, batch, classifier, trainer_stub, with_task

KEEP_ALL = 1 - 1e-9  # G-Net's keep probability rounds to 1.0 in float32: every map is kept
NAMES = [f"enc.{i}.sa" for i in range(LAYERS)]


def train_d_as_lightning(task: ClassificationTask, trainer: SimpleNamespace, batches: list[dict[str, Any]]) -> None:
    """D-Net's training as Lightning runs it: on_train_batch_start (the pruner's on_batch: A-Net's step), then the
    task's loss in the precision's forward context, backward, gradient clipping, the optimizer and scheduler steps
    of configure_optimizers."""
    conf = task.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    params = [p for p in task.model.parameters() if p.requires_grad]
    for b in batches:
        task.on_train_batch_start(b, 0)
        opt.zero_grad(set_to_none=True)
        with trainer.precision_plugin.train_step_context():
            loss = task.loss(b)
        loss.backward()
        if trainer.gradient_clip_val:
            if trainer.gradient_clip_algorithm == "value":
                torch.nn.utils.clip_grad_value_(params, trainer.gradient_clip_val)
            else:
                torch.nn.utils.clip_grad_norm_(params, trainer.gradient_clip_val)
        opt.step()
        sched.step()


RECIPES = {
    "adam, inverse sqrt": ({"optimizer": "adam", "lr": 1e-2, "warmup_steps": 3}, {}),
    "adamw, linear, clipped by norm": (
        {
            "optimizer": "adamw",
            "lr": 5e-3,
            "betas": (0.9, 0.999),
            "weight_decay": 0.1,
            "schedule": "linear",
            "warmup_fraction": 0.25,
        },
        {"steps": 8, "clip": 0.05},
    ),
    "adafactor, bf16 autocast, clipped by value": (
        {"optimizer": "adafactor", "lr": 1e-2, "warmup_steps": 2},
        {"clip": 1e-3, "algorithm": "value", "autocast": torch.bfloat16},
    ),
}


@pytest.mark.parametrize("recipe", RECIPES.values(), ids=RECIPES.keys())
def test_a_net_trains_with_the_tasks_optimizer_schedule_clipping_and_precision(
    recipe: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    task_settings, trainer_settings = recipe
    d = classifier()
    pruner = AttendOutPruner(every=100, initial_keep=KEEP_ALL, seed=0)  # no cycle: the two arms train apart
    trainer = trainer_stub(**trainer_settings)
    task = with_task(d, pruner, trainer=trainer, **task_settings)
    start = [p.detach().clone() for p in d.parameters()]
    train_d_as_lightning(task, trainer, [batch(s) for s in range(6)])
    assert all(bool(k.all()) for _, k, _ in pruner._cache)  # guard: A-Net kept every map
    assert type(pruner._opts["a"]) is type(task.configure_optimizers()["optimizer"])
    moved = max(float((p.detach() - p0).abs().max()) for p, p0 in zip(d.parameters(), start, strict=True))
    assert moved > 1e-3  # guard: D-Net trained
    for a, p in zip(pruner.a_net.parameters(), d.parameters(), strict=True):
        torch.testing.assert_close(a, p, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("reward", ["margin", "sign"])
def test_a_equal_to_d_with_every_map_kept_gets_a_neutral_reward(reward: str) -> None:
    """A cycle compares A and D when both have stepped on the same batches; A = D then, so each example's margin
    is 0, the sign reward is a tie (0) and G-Net's REINFORCE step has nothing to learn."""
    d = classifier()
    pruner = AttendOutPruner(every=3, initial_keep=KEEP_ALL, reward=reward, g_lr=1e-2, seed=0)
    trainer = trainer_stub()
    task = with_task(d, pruner, trainer=trainer, lr=1e-2, warmup_steps=2)
    g0 = [p.detach().clone() for p in pruner.g_net.parameters()]
    train_d_as_lightning(task, trainer, [batch(s) for s in range(9)])
    assert len(pruner.rewards) == 3
    assert pruner.mean_rewards == pytest.approx([0.0] * 3, abs=1e-7)
    if reward == "sign":
        assert pruner.rewards == [0.0] * 3
        assert pruner.report(d)["attendout"]["rewards"] == {"a_wins": 0, "d_wins": 0, "ties": 3}
    for p, p0 in zip(pruner.g_net.parameters(), g0, strict=True):
        assert torch.equal(p, p0)  # a neutral reward moves nothing


def val_batches() -> list[dict[str, torch.Tensor]]:
    return [batch(10 + s, size=4, length=6) for s in range(2)]


def test_keep_probabilities_and_the_decision_do_not_depend_on_the_random_state() -> None:
    """At the round's end (the model in training mode, as Lightning leaves it, with dropout): the keep
    probabilities are the mean over the validation examples of G-Net's probabilities on the input embeddings
    without dropout, whatever the random state."""
    d = classifier(dropout=0.3)
    pruner = AttendOutPruner(initial_keep=0.5)
    with_task(d, pruner, datamodule=SimpleNamespace(val_dataloader=val_batches))
    with torch.no_grad():  # G-Net as trained: the layers' keep probabilities spread apart
        pruner.g_net.readout.weight.normal_(0.0, 3.0)
        clean = copy.deepcopy(d).eval()  # by definition, computed apart
        probs = [
            torch.sigmoid(pruner.g_net.keep_logits(clean.embed_tokens(b["src"]), b["src"] != clean.cfg.pad_id))
            for b in val_batches()
        ]
    expected = torch.cat(probs).mean(0)
    low, mid, high = sorted(expected.tolist())
    assert high - low > 1e-3  # guard: the threshold below separates the layers
    pruner.threshold = mid  # the middle layer is kept, the lowest pruned: any drift in its probability shows
    outcomes = []
    for seed in (1, 2):
        model = copy.deepcopy(d).train()
        torch.manual_seed(seed)
        pruner.on_round_end(model, 0)
        outcomes.append((pruner.keep_probability.clone(), [n for n in NAMES if component(model, n).uniform]))
    (p1, pruned1), (p2, pruned2) = outcomes
    assert torch.equal(p1, p2) and pruned1 == pruned2
    torch.testing.assert_close(p1, expected, rtol=1e-6, atol=1e-7)
    assert pruned1 == [n for n, p in zip(NAMES, p1.tolist(), strict=True) if p < mid]
    assert len(pruned1) == 1  # guard: the decision is not trivial


def test_g_nets_training_inputs_are_the_embeddings_without_dropout() -> None:
    d = classifier(dropout=0.3)
    pruner = AttendOutPruner(every=100, initial_keep=0.5, seed=0)
    with_task(d, pruner)
    b = batch(0)
    before = copy.deepcopy(pruner.a_net).eval()  # A-Net as on_batch finds it (it steps afterwards)
    torch.manual_seed(123)
    pruner.on_batch(d, b)
    ((_, _, (x, mask)),) = pruner._cache
    with torch.no_grad():
        assert torch.equal(x, before.embed_tokens(b["src"]))
    assert torch.equal(mask, b["src"] != d.cfg.pad_id)
    assert pruner.a_net.training  # A-Net still trains with its dropout


def test_a_cycle_gives_d_net_a_nets_trained_weights_and_a_net_keeps_them() -> None:
    d = classifier()
    pruner = AttendOutPruner(every=100, initial_keep=0.5, seed=0)
    with_task(d, pruner, lr=5e-2)
    d_old = [p.detach().clone() for p in d.parameters()]
    for s in range(2):  # A trains; D is left alone here (Lightning trains it), so the two are distinguishable
        pruner.on_batch(d, batch(s))
    a_trained = [p.detach().clone() for p in pruner.a_net.parameters()]
    assert max(float((a - p).abs().max()) for a, p in zip(a_trained, d_old, strict=True)) > 1e-2  # guard
    pruner.cycle(d)
    for p, a in zip(d.parameters(), a_trained, strict=True):
        assert torch.equal(p, a)  # D <- A: D holds A's post-training weights
    for a, a0 in zip(pruner.a_net.parameters(), a_trained, strict=True):
        assert torch.equal(a, a0)  # A is not reset to D's old weights


def test_a_net_needs_the_task() -> None:
    d = classifier()
    pruner = AttendOutPruner(every=2)
    pruner.attach(d)
    with pytest.raises(RuntimeError, match="use_data"):
        pruner.on_batch(d, batch(0))


def test_the_task_handed_over_is_not_part_of_the_pruners_module_tree() -> None:
    """The task owns the pruner: were the task a submodule of the pruner, moving the task (Lightning's teardown
    calls .cpu()) or reading its state_dict would loop."""
    d = classifier()
    pruner = AttendOutPruner(every=2)
    task = with_task(d, pruner)
    task.cpu()
    assert not any(isinstance(m, ClassificationTask) for m in pruner.modules())
