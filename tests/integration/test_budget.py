"""Training to a budget: `trainer.max_time` stops a run in time to test its best checkpoint, the lr schedule and
gradual pruning end with the budget, and early stopping ends a round after `patience` validations without a better
score. The clock's arithmetic is checked against hand computations with a fake clock."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from prunelab.errors import UserError
from prunelab.training import budget, train
from prunelab.training.budget import PatienceStop, StageClock, seconds
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
    trainer = SimpleNamespace(should_stop=False, state=SimpleNamespace(fn="fit"))
    clock.on_train_start(trainer, None)
    for _ in range(10):
        fake.now += 1.0
        clock.on_train_batch_end(trainer, None)
    return fake, clock, trainer


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
        run_cfg([*SMOKE, "trainer.max_steps=100000", "trainer.max_time=12", "trainer.val_check_interval=5"]), tmp_path
    )
    assert res["status"] == "completed" and "test/bleu" in res["metrics"]
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


def test_bad_patience_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"early_stopping\.patience must be"):
        train(run_cfg([*SMOKE, "early_stopping.patience=0"]), tmp_path)


def test_checkpoint_averaging_tests_the_mean_of_the_last_validations(tmp_path: Path) -> None:
    """checkpoints.average_last=3: the round tests averaged.ckpt, whose weights are the mean of the three latest
    validation checkpoints (recomputed here from those files), with the masks of the latest one."""
    res = train(
        run_cfg(
            [
                *SMOKE,
                "pruner=mp",
                "sparsity=0.5",
                "trainer.max_steps=20",
                "trainer.val_check_interval=4",
                "checkpoints.average_last=3",
            ]
        ),
        tmp_path,
    )
    assert res["status"] == "completed" and res["best_checkpoint"].endswith("averaged.ckpt")
    from prunelab.training.io import read_state

    kept = sorted((tmp_path / "checkpoints" / "round_0" / "average").glob("step*.ckpt"))
    assert [p.name for p in kept] == ["step12.ckpt", "step16.ckpt", "step20.ckpt"]
    states = [read_state(p)["state_dict"] for p in kept]
    avg = read_state(Path(res["best_checkpoint"]))["state_dict"]
    name = "model.enc.0.ff.fc1.weight"
    mask = states[-1]["pruner.mask__enc__0__ff__fc1__weight"]
    want = sum(s[name].double() for s in states) / 3 * mask
    torch.testing.assert_close(avg[name].double(), want)
    assert (avg[name][mask == 0] == 0).all() and res["sparsity"]["overall"] == pytest.approx(0.5, abs=0.01)
