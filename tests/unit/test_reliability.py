"""Reliability checks that need no training run: diverged weights, safe loading, W&B reachability, and the
reliability settings of the config."""

from __future__ import annotations

import ast
import re
import socket
from pathlib import Path

import pytest
import torch

from prunelab.errors import NonFiniteError, UserError
from prunelab.models import Transformer
from prunelab.pruning import MagnitudePruner
from prunelab.tasks.base import PrunableTask
from prunelab.training.build import build_trainer, validate, wandb_online_problem
from prunelab.training.io import read_state
from prunelab.training.load import load_trained_weights
from tests.integration.conftest import compose_cfg

ROOT = Path(__file__).resolve().parents[2]


# --- numerical faults ---------------------------------------------------------------------------------
def test_non_finite_error_names_step_round_and_kept_checkpoint() -> None:
    e = NonFiniteError("loss (nan)", 37)
    assert str(e) == (
        "non-finite loss (nan) at step 37: training diverged (try a lower task.lr); "
        "no checkpoint of the round was written before"
    )
    e.round, e.kept = 2, "checkpoints/round_2/last.ckpt"
    assert str(e) == (
        "non-finite loss (nan) at step 37 of round 2: training diverged (try a lower task.lr); "
        "the last good checkpoint is kept: checkpoints/round_2/last.ckpt"
    )
    assert isinstance(e, UserError)  # reported as one `error:` line, exit 2


def test_checkpoint_with_non_finite_weights_is_never_written(tiny_model: Transformer) -> None:
    task = PrunableTask(tiny_model, MagnitudePruner(sparsity=0.5))
    state = {k: v.clone() for k, v in task.state_dict().items()}
    task.on_save_checkpoint({"state_dict": state})  # finite: accepted
    state["pruner.scores"] = torch.full((3,), float("nan"))  # a pruner's placeholder is not a weight
    task.on_save_checkpoint({"state_dict": state})
    names = [k for k, v in state.items() if k.startswith("model.") and v.is_floating_point()]
    state[names[3]][0] = float("inf")
    state[names[5]].fill_(float("nan"))
    with pytest.raises(NonFiniteError) as err:
        task.on_save_checkpoint({"state_dict": state})
    assert str(err.value).startswith(f"non-finite weights ({names[3]} and 1 more) at step 0: training diverged")


def test_loss_check_names_the_first_bad_step_when_read_later(tiny_model: Transformer) -> None:
    """With the host reading the device-side record only every 5 steps (as on a GPU, every 50), the error
    still names the first non-finite step and its loss; a finite run never raises."""
    task = PrunableTask(tiny_model, MagnitudePruner(sparsity=0.5))
    task.finite_check_every = 5
    for step in range(1, 7):
        task.check_finite(torch.tensor(2.0), step)
    task.check_finite(torch.tensor(float("inf")), 7)  # not read yet
    task.check_finite(torch.tensor(float("nan")), 8)
    task.check_finite(torch.tensor(1.0), 9)
    with pytest.raises(NonFiniteError) as err:
        task.check_finite(torch.tensor(1.0), 10)
    assert str(err.value).startswith("non-finite loss (inf) at step 7: training diverged")
    with pytest.raises(NonFiniteError, match="at step 7"):  # and before any checkpoint is written
        task.on_save_checkpoint({"state_dict": {}})


# --- safe loading -------------------------------------------------------------------------------------
class Payload:
    """Unpickling this runs code: it creates the file named in `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


def test_checkpoint_with_pickled_code_is_refused_without_running_it(tmp_path: Path, tiny_model: Transformer) -> None:
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hook": Payload(marker)}, path)
    with pytest.raises(UserError) as err:
        read_state(path)
    assert re.fullmatch(
        rf"refusing to load {re.escape(str(path))}: it holds pickled Python objects, not only tensors "
        r"\(checkpoints load with weights_only=True\): .*unsupported.*",
        str(err.value),
        flags=re.IGNORECASE,
    ), err.value
    with pytest.raises(UserError, match="refusing to load"):  # `ckpt=evil.ckpt` goes through the same check
        load_trained_weights(tiny_model, path)
    assert not marker.exists()


def called_name(call: ast.Call) -> tuple[str | None, str]:
    """(owner, name) of `owner.name(...)` or (None, name) of `name(...)`."""
    f = call.func
    if isinstance(f, ast.Attribute):
        return (f.value.id if isinstance(f.value, ast.Name) else None), f.attr
    return None, f.id if isinstance(f, ast.Name) else ""


def weights_only(call: ast.Call) -> bool:
    return any(
        k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True for k in call.keywords
    )


def test_every_checkpoint_load_in_the_sources_is_weights_only() -> None:
    """torch.load, and every Lightning call given a ckpt_path (fit, validate, test), pass weights_only=True;
    nothing loads a Lightning checkpoint through load_from_checkpoint (which would unpickle hparams)."""
    files = [*sorted((ROOT / "src").rglob("*.py")), ROOT / "train.py", *sorted((ROOT / "experiments").rglob("*.py"))]
    loads, bad = 0, []
    for f in files:
        for call in (n for n in ast.walk(ast.parse(f.read_text(), str(f))) if isinstance(n, ast.Call)):
            owner, name = called_name(call)
            # any call given a ckpt_path: trainer.fit/validate/test, also through a variable (`stage(...)`)
            if (owner, name) == ("torch", "load") or any(k.arg == "ckpt_path" for k in call.keywords):
                loads += 1
                if not weights_only(call):
                    bad.append(f"{f.relative_to(ROOT)}:{call.lineno}")
            if name == "load_from_checkpoint":
                bad.append(f"{f.relative_to(ROOT)}:{call.lineno} (load_from_checkpoint)")
    assert loads >= 3, "the scan found the loads it should (read_state, fit, validate/test)"
    assert bad == []


# --- W&B ----------------------------------------------------------------------------------------------
def test_wandb_problem_no_key_then_unreachable_then_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    netrc = tmp_path / "netrc"
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(netrc))
    with socket.socket() as s:  # a local port nobody listens on: refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
    assert wandb_online_problem() == (
        f"no API key (set WANDB_API_KEY or run `wandb login`; none for 127.0.0.1 in {netrc})"
    )
    netrc.write_text("machine 127.0.0.1\n  login user\n  password 0123456789abcdef\n")
    netrc.chmod(0o600)
    assert wandb_online_problem(timeout=1.0) == f"cannot reach 127.0.0.1:{port} (Connection refused)"
    with socket.socket() as server:  # now something listens there
        server.bind(("127.0.0.1", 0))
        server.listen()
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert wandb_online_problem(timeout=1.0) is None


# --- config -------------------------------------------------------------------------------------------
def test_deterministic_reaches_the_trainer(tmp_path: Path) -> None:
    before = torch.are_deterministic_algorithms_enabled()
    try:
        cfg = compose_cfg(tmp_path, ["experiment=smoke", "deterministic=true"])
        build_trainer(cfg, tmp_path / "checkpoints" / "round_0", False, 20, "val/bleu_at_target")
        assert torch.are_deterministic_algorithms_enabled()
        cfg = compose_cfg(tmp_path, ["experiment=smoke"])
        build_trainer(cfg, tmp_path / "checkpoints" / "round_0", False, 20, "val/bleu_at_target")
        assert not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(before)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("checkpoints.keep_rounds=0", "checkpoints.keep_rounds must be null (keep all) or a number >= 1, got 0"),
        ("deterministic=maybe", "deterministic must be true, false or warn, got 'maybe'"),
    ],
)
def test_bad_reliability_settings(tmp_path: Path, override: str, message: str) -> None:
    with pytest.raises(UserError) as err:
        validate(compose_cfg(tmp_path, [override]))
    assert str(err.value) == message
