"""Training to a budget: `trainer.max_time` stops a run in time to test its best checkpoint, the lr schedule and
gradual pruning end with the budget, and early stopping ends a round after `patience` validations without a better
score. The clock's arithmetic is checked against hand computations with a fake clock."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from prunelab.errors import UserError
from prunelab.training import budget, train
from prunelab.training.budget import PatienceStop, StageClock, StepBudget, seconds
from prunelab.training.rounds import Rounds
from tests.integration.conftest import run_cfg

SMOKE = ["experiment=smoke", "logger=csv"]


@pytest.mark.parametrize(
    ("given", "want"),
    [("00:00:25:00", 1500.0), ("01:02:03:04", 93784.0), (90, 90.0), (2.5, 2.5), ({"minutes": 2}, 120.0), (None, None)],
)
def test_max_time_formats(given: object, want: float | None) -> None:
    assert seconds(given) == want


@pytest.mark.parametrize("bad", ["25:00", "00:00:xx:00", 0, -3])
def test_bad_max_time_is_a_clear_error(bad: object) -> None:
    with pytest.raises(UserError, match=r"trainer\.max_time must be"):
        seconds(bad)


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def clock_after_ten_steps(
    monkeypatch: pytest.MonkeyPatch, budget_s: float, eval_factor: float
) -> tuple[FakeTime, StageClock, SimpleNamespace]:
    """A StageClock on a fake clock, after 10 training steps of 1 s each."""
    fake = FakeTime()
    monkeypatch.setattr(budget.time, "monotonic", fake)
    clock = StageClock(budget_s=budget_s, eval_factor=eval_factor)
    trainer = FakeTrainer()
    clock.on_train_start(trainer, None)
    for _ in range(10):
        fake.now += 1.0
        trainer.global_step += 1
        clock.on_train_batch_end(trainer, None)
    return fake, clock, trainer


class FakeTrainer(SimpleNamespace):
    def __init__(self, global_step: int = 0) -> None:
        super().__init__(should_stop=False, state=SimpleNamespace(fn="fit"), global_step=global_step)


def test_clock_stops_when_the_evaluation_would_not_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Budget 100 s, test twice a validation's cost: a validation of 10 s reserves 10 * (2 + 2) s plus a step."""
    fake, clock, trainer = clock_after_ten_steps(monkeypatch, 100.0, 2.0)  # 10 steps of 1 s
    assert clock.reserve() == pytest.approx(1.0 + 0.2 * 100.0)  # no validation timed yet: a fifth of the budget
    clock.on_validation_start(trainer, None)
    fake.now += 10.0
    clock.on_validation_end(trainer, None)
    assert (clock.validate_s, clock.train_s(), clock.reserve()) == pytest.approx((10.0, 10.0, 1.0 + 40.0))
    # 1 step/s; time left: 100 - 20 elapsed - 41 reserved = 39 s, of which training gets its share so far, 10/20
    assert clock.estimated_total_steps(10) == pytest.approx(10 + 1.0 * 39.0 * 0.5)
    while not trainer.should_stop:
        fake.now += 1.0
        trainer.global_step += 1
        clock.on_train_batch_end(trainer, None)
    assert fake.now - 100.0 == pytest.approx(59.0)  # 59 + 41 reaches the budget
    assert clock.stopped_by_budget and clock.report()["budget_s"] == 100.0
    assert StageClock().estimated_total_steps(10) == math.inf  # no budget: max_steps rules


def test_budget_is_the_reason_when_less_than_a_step_is_left(monkeypatch: pytest.MonkeyPatch) -> None:
    """The task stops at int(total_steps): an estimate of 10.77 at step 10 ends the round, so the clock says why."""
    # 10 steps of 1 s, then a validation of 3 s: reserve 1 + 3 * 3 = 10 s
    fake, clock, trainer = clock_after_ten_steps(monkeypatch, 24.0, 1.0)
    clock.on_validation_start(trainer, None)
    fake.now += 3.0
    clock.on_validation_end(trainer, None)
    # elapsed 13 s of 24, 10 reserved: 1 s left, of which training gets its share so far (10/13) at 1 step/s
    total = clock.estimated_total_steps(10)
    assert total == pytest.approx(10 + 10 / 13)
    assert clock.stopped_by_budget


def test_steps_are_optimizer_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    """Gradient accumulation over 4 batches: 40 batches of 0.25 s are 10 optimizer steps of 1 s each; the rate and
    the estimate are in optimizer steps (batches would stretch the lr and pruning horizon 4x)."""
    fake = FakeTime()
    monkeypatch.setattr(budget.time, "monotonic", fake)
    clock, trainer = StageClock(budget_s=100.0), FakeTrainer()
    clock.on_train_start(trainer, None)
    for batch in range(40):
        fake.now += 0.25
        trainer.global_step += batch % 4 == 3
        clock.on_train_batch_end(trainer, None)
    assert clock.report()["steps"] == 10
    # 1 step/s, 10 s elapsed, reserve 1 s + 20 s (no validation timed): 69 s left -> 69 more steps
    assert clock.estimated_total_steps(10) == pytest.approx(10 + 69.0)


def test_a_resumed_round_counts_its_earlier_steps_and_rates_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """Resumed at global step 30: the round reports 30 + the steps trained now; the rate is this process's."""
    fake = FakeTime()
    monkeypatch.setattr(budget.time, "monotonic", fake)
    clock, trainer = StageClock(budget_s=50.0), FakeTrainer(global_step=30)
    clock.on_train_start(trainer, None)
    for _ in range(10):  # 2 s a step now
        fake.now += 2.0
        trainer.global_step += 1
        clock.on_train_batch_end(trainer, None)
    assert clock.report()["steps"] == 40 and clock.steps_here == 10
    # 0.5 step/s; 50 - 20 elapsed - (2 + 10 reserve) = 18 s left -> 9 more steps
    assert clock.estimated_total_steps(40) == pytest.approx(40 + 9.0)


def test_the_run_clock_counts_earlier_processes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run killed at 50 of 60 minutes has 10 left when resumed, not 60 (and its wall time is both processes')."""
    fake = FakeTime()
    monkeypatch.setattr(budget.time, "monotonic", fake)
    first = budget.RunClock(tmp_path / "run_time.json", every_s=5.0)
    fake.now += 3000.0
    first.save()  # while training: at most every 5 s; then the process is killed (nothing more written)
    fake.now += 2.0
    first.save()  # within 5 s of the last write: not written
    again = budget.RunClock(tmp_path / "run_time.json")
    assert again.elapsed() == pytest.approx(3000.0) and again.processes == 2
    fake.now += 60.0
    assert again.elapsed() == pytest.approx(3060.0)
    rounds = Rounds.__new__(Rounds)
    rounds.cfg = run_cfg([*SMOKE, "trainer.max_time=00:01:00:00"])
    rounds.task, rounds.pretrained, rounds.run_clock = SimpleNamespace(pruner=SimpleNamespace(rounds=1)), False, again
    rounds.task.pruner.round_steps = lambda r, max_steps, pretrained: max_steps
    assert rounds.round_budget(0) == pytest.approx(3600.0 - 3060.0)


class BudgetStub:
    """A round clock whose time budget allows `steps` steps."""

    def __init__(self, steps: float) -> None:
        self.steps = steps

    def estimated_total_steps(self, step: int) -> float:
        return self.steps


def test_warmup_follows_the_handed_budget_from_the_first_step(tiny_model: torch.nn.Module) -> None:
    """warmup_fraction 0.1 with max_steps 100,000 and a time budget worth 1,500 steps: 150 warm-up steps (the
    issue's failing input: 10,000, the lr never at its peak); a later round reads its own budget, not the last."""
    from prunelab.pruning import NoPruner
    from prunelab.tasks import TranslationTask
    from prunelab.tasks.recipe import Recipe

    recipe = Recipe(lr=1e-3, schedule="linear", warmup_fraction=0.1, optimizer="adamw")
    task = TranslationTask(tiny_model, NoPruner(), None, recipe=recipe)  # type: ignore[arg-type]
    task.use_step_budget(StepBudget(100_000, BudgetStub(1500.0)))  # type: ignore[arg-type]
    assert (task.total_steps, task.warmup) == (1500, 150)
    sched = task.configure_optimizers()["lr_scheduler"]["scheduler"]
    lrs = []
    for _ in range(1500):
        sched.optimizer.step()
        sched.step()
        lrs.append(sched.get_last_lr()[0])
    assert max(lrs) == pytest.approx(1e-3) and lrs.index(max(lrs)) == 148  # factor 1 after 149 scheduler steps
    assert task.peak_lr_factor == pytest.approx(1.0)
    task.use_step_budget(StepBudget(100_000, BudgetStub(300.0)))  # the next round: its own clock
    assert (task.total_steps, task.warmup, task.peak_lr_factor) == (300, 30, 0.0)


def test_a_resumed_round_reports_the_peak_its_earlier_steps_reached(tiny_model: torch.nn.Module) -> None:
    """A round resumed at step 600 of 1,000 (warm-up 100, linear decay) trained through its peak before the restart:
    the schedule report says 1.0, not the 0.44 of the steps this process ran (which would warn 'ended in warm-up')."""
    from prunelab.pruning import NoPruner
    from prunelab.tasks import TranslationTask
    from prunelab.tasks.recipe import Recipe

    recipe = Recipe(lr=1e-3, schedule="linear", warmup_fraction=0.1, optimizer="adamw")
    task = TranslationTask(tiny_model, NoPruner(), None, recipe=recipe)  # type: ignore[arg-type]
    task.use_step_budget(StepBudget(1000, BudgetStub(1000.0)))  # type: ignore[arg-type]
    sched = task.configure_optimizers()["lr_scheduler"]["scheduler"]
    sched.load_state_dict({**sched.state_dict(), "last_epoch": 599})  # what Lightning restores on resume
    for _ in range(10):
        sched.optimizer.step()
        sched.step()
    assert sched.get_last_lr()[0] < 0.45e-3  # this process only ever ran at under half the peak lr
    assert task.peak_lr_factor == pytest.approx(1.0)
    task.use_step_budget(StepBudget(1000, BudgetStub(1000.0)))  # a fresh round from step 0: reset
    assert (task.peak_lr_factor, task.last_lr_step) == (0.0, -1)


def test_patience_skips_nan_scores() -> None:
    stop = PatienceStop("val/bleu_at_target", patience=2)
    trainer = SimpleNamespace(callback_metrics={}, should_stop=False, global_step=0)
    stopped = []
    stop._evaluate_stopping_criteria = lambda current: (stopped.append(float(current)) or False, None)
    for value in (float("nan"), float("nan")):
        trainer.callback_metrics = {"val/bleu_at_target": torch.tensor(value)}
        stop._run_early_stopping_check(trainer)
    assert stopped == []  # a mask not final yet is no score, not a worse one


def test_a_budget_run_stops_early_and_tests_its_best_checkpoint(tmp_path: Path) -> None:
    res = train(
        run_cfg(
            [
                *SMOKE,
                "trainer.max_steps=100000",
                "trainer.max_time=12",
                "trainer.val_check_interval=5",
                "task.warmup_fraction=0.1",
            ]
        ),
        tmp_path,
    )
    assert res["status"] == "completed" and "test/bleu" in res["metrics"]
    lr = res["levels"][-1]["lr"]  # the warm-up was a tenth of the budget's steps (at the last step), not of max_steps
    steps = res["levels"][-1]["time"]["steps"]
    assert lr["total_steps"] <= steps + 1 and lr["warmup_steps"] == max(1, round(0.1 * lr["total_steps"])), lr
    t = res["time"]
    assert t["stopped_by_budget"] and 0 < t["first_round_budget_s"] <= 12, (t, res["levels"])
    level = res["levels"][-1]["time"]
    assert 5 <= level["steps"] < 100000
    assert level["train_s"] + level["validate_s"] <= 12 + 1.0  # training stopped within its budget (one step over)
    assert t["shares"]["train"] + t["shares"]["validate"] + t["shares"]["evaluate"] <= 1.0


def test_early_stopping_ends_a_round_on_a_plateau(tmp_path: Path) -> None:
    """lr 0: the score never improves after the first validation, so patience=2 stops after the third."""
    res = train(
        run_cfg(
            [*SMOKE, "task.lr=0", "trainer.max_steps=60", "trainer.val_check_interval=4", "early_stopping.patience=2"]
        ),
        tmp_path,
    )
    assert res["status"] == "completed"
    assert res["levels"][-1]["time"]["validations"] == 3
    assert res["levels"][-1]["time"]["steps"] == 12


def test_gradient_accumulation_counts_optimizer_steps(tmp_path: Path) -> None:
    """accumulate_grad_batches=2: 6 optimizer steps are 12 batches; the level reports 6 steps (not 12) and
    validates every 3 steps (not every 3 batches)."""
    res = train(
        run_cfg([*SMOKE, "trainer.max_steps=6", "trainer.val_check_interval=3", "trainer.accumulate_grad_batches=2"]),
        tmp_path,
    )
    assert res["status"] == "completed"
    level = res["levels"][-1]
    assert (level["time"]["steps"], level["time"]["validations"]) == (6, 2), level["time"]
    assert level["lr"]["total_steps"] == 6


def test_bad_patience_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"early_stopping\.patience must be"):
        train(run_cfg([*SMOKE, "early_stopping.patience=0"]), tmp_path)


def test_checkpoint_averaging_follows_best_checkpoint_selection(tmp_path: Path) -> None:
    """checkpoints.average_last=3 with gradual MP (mask final from step 12 of 24): only final-mask validation
    checkpoints are averaged, the window ends at the best validation, the average's weights are the mean of those
    files (recomputed here) under the last mask, and the round keeps whichever of average and best validates
    better, saying which."""
    res = train(
        run_cfg(
            [
                *SMOKE,
                "pruner=mp",
                "sparsity=0.5",
                "pruner.end_fraction=0.5",
                "trainer.max_steps=24",
                "trainer.val_check_interval=4",
                "checkpoints.average_last=3",
            ]
        ),
        tmp_path,
    )
    assert res["status"] == "completed"
    from prunelab.training.io import read_state

    level = res["levels"][-1]
    avg = level["averaging"]
    steps = [int(Path(c).stem.removeprefix("step")) for c in avg["checkpoints"]]
    assert steps and all(s >= 12 for s in steps) and steps == sorted(steps), avg  # never before the mask was final
    folder = tmp_path / "checkpoints" / "round_0" / "average"
    scores = {int(k): v for k, v in json.loads((folder / "scores.json").read_text()).items()}
    assert scores[steps[-1]] == max(scores.values()) == pytest.approx(avg["val_score_best"])  # ends at the best
    if len(steps) >= 2:
        chosen = "average" if avg["val_score_average"] > avg["val_score_best"] else "best"
        assert avg["chosen"] == chosen and res["best_checkpoint"].endswith(
            "averaged.ckpt" if chosen == "average" else "best.ckpt"
        )
        states = [read_state(folder / c)["state_dict"] for c in avg["checkpoints"]]
        averaged = read_state(tmp_path / "checkpoints" / "round_0" / "averaged.ckpt")["state_dict"]
        name = "model.enc.0.ff.fc1.weight"
        mask = states[-1]["pruner.mask__enc__0__ff__fc1__weight"]
        want = sum(s[name].double() for s in states) / len(states) * mask
        torch.testing.assert_close(averaged[name].double(), want)
    assert res["sparsity"]["overall"] == pytest.approx(0.5, abs=0.01)


@pytest.mark.parametrize(
    ("scores", "n", "want"),
    [
        ({12: 5.0, 16: 7.0, 20: 6.0, 24: 6.5}, 3, [12, 16]),  # early stopping: the best and those before, not after
        ({4: 1.0, 8: 2.0, 12: 3.0, 16: 4.0}, 3, [8, 12, 16]),  # still rising: the latest N (fairseq's recipe)
        ({4: 2.0, 8: 2.0, 12: 1.0}, 2, [4]),  # equal bests: the first, as the best checkpoint keeps it
        ({}, 3, []),
    ],
)
def test_the_averaging_window_ends_at_the_best(scores: dict[int, float], n: int, want: list[int]) -> None:
    from prunelab.training.averaging import averaging_window

    assert averaging_window(scores, n) == want
