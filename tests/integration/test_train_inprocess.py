"""`prunelab.training.train(cfg, out)` in-process: what `python train.py` does, without a subprocess."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import DictConfig

from prunelab.cli.train import CONF_DIR
from prunelab.errors import UserError
from prunelab.pruning.rounds import RoundPruner
from prunelab.training import train
from prunelab.training.io import PRUNER_PREFIX, read_state
from tests.integration.conftest import run_cfg

SMOKE = ["experiment=smoke", "logger=csv"]
CLASSIFY = ["model=classifier_tiny", "data=synthetic_classification"]


def preset(name: str) -> dict:
    return yaml.safe_load((Path(CONF_DIR) / "hardware" / f"{name}.yaml").read_text())


# --- hardware presets run real steps with their precision and strategy, on the CPU -----------------------------
@pytest.mark.parametrize("name", ["cpu", "gpu", "tpu"])
def test_hardware_preset_trains_with_its_precision(tmp_path: Path, name: str) -> None:
    """`hardware=gpu` (bf16-mixed, fused Adam, gradient clipping) crashed at the first optimizer step; every
    preset must train: only the accelerator is swapped for the CPU (DDP: tests/e2e/test_train.py)."""
    res = train(run_cfg([*SMOKE, f"hardware={name}", "hardware.accelerator=cpu"]), tmp_path)
    assert res["status"] == "completed"
    assert res["trainer"]["precision"] == preset(name)["precision"]
    assert res["trainer"]["gradient_clip_val"] == 1.0
    ckpt = read_state(Path(res["best_checkpoint"]).with_name("last.ckpt"))
    assert ckpt["global_step"] == 20  # every step ran (smoke: trainer.max_steps=20)


def test_bf16_mixed_clips_the_kept_gradients_to_the_norm(tmp_path: Path) -> None:
    """Under bf16-mixed with the fused Adam, the gradients reaching the optimizer step have the clipped total
    norm (trainer.gradient_clip_val), computed by hand here, and the masked entries carry none of it."""
    from prunelab.pruning import MagnitudePruner
    from prunelab.training.build import build_data, build_model, build_trainer, model_args
    from prunelab.training.task import build_task

    cfg = run_cfg([*SMOKE, "hardware=gpu", "hardware.accelerator=cpu", "trainer.gradient_clip_val=0.01"])
    dm = build_data(cfg)
    model = build_model(cfg.model, model_args(dm))
    pruner = MagnitudePruner(sparsity=0.5, initial_sparsity=0.5, start_step=0, end_step=0)
    task = build_task(cfg, dm, model, pruner)
    pruner.prune_to(model, 0.5)
    seen: list[float] = []

    def record(opt: torch.optim.Optimizer, *args: object) -> None:
        grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
        seen.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))
        for name, w in pruner._weights.items():  # masked entries carry no gradient into the step
            assert bool((w.grad[pruner.masks[name] == 0] == 0).all()), name

    trainer, _, _ = build_trainer(cfg, tmp_path / "round_0", False, 3, task.monitor)
    orig = task.configure_optimizers

    def configure() -> dict:
        out = orig()
        out["optimizer"].register_step_post_hook(record)
        return out

    task.configure_optimizers = configure  # type: ignore[method-assign]
    trainer.fit(task, datamodule=dm)
    assert len(seen) == 3 and all(n == pytest.approx(0.01, rel=1e-3) for n in seen)


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "adafactor"])
def test_every_optimizer_trains_alike_under_bf16_mixed(tmp_path: Path, optimizer: str) -> None:
    """bf16-mixed on the CPU with each optimizer: from the same seed and batches, the validation loss after 30
    steps is within 3% of fp32's and below that of uniform logits (ln V); the master weights stay fp32."""
    from prunelab.training.build import build_data

    losses = {}
    for precision in ("32-true", "bf16-mixed"):
        over = [f"task.optimizer={optimizer}", f"trainer.precision={precision}", "trainer.max_steps=30"]
        cfg = run_cfg([*SMOKE, *over, "trainer.val_check_interval=30"])  # one validation: the best is the last
        res = train(cfg, tmp_path / precision)
        assert res["status"] == "completed" and res["trainer"]["precision"] == precision
        losses[precision] = res["metrics"]["val/loss"]
        weights = read_state(Path(res["best_checkpoint"]))["state_dict"]
        assert all(w.dtype == torch.float32 for w in weights.values() if w.is_floating_point())
    assert losses["bf16-mixed"] == pytest.approx(losses["32-true"], rel=0.03)
    assert losses["bf16-mixed"] < math.log(build_data(cfg).tokenizer.vocab_size)


# --- every Trainer argument is honoured; what prunelab fixes is refused -------------------------------------
def test_trainer_arguments_are_honoured(tmp_path: Path) -> None:
    res = train(run_cfg([*SMOKE, "trainer.precision=bf16-mixed", "trainer.max_epochs=1"]), tmp_path)
    assert res["trainer"]["precision"] == "bf16-mixed" and res["trainer"]["max_epochs"] == 1
    steps = read_state(Path(res["best_checkpoint"]).with_name("last.ckpt"))["global_step"]
    assert 0 < steps < 20  # one epoch of the smoke data is fewer than max_steps=20 steps
    assert res["status"] == "completed" and "test/bleu" in res["metrics"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["+trainer.foo=1"], "trainer.foo is not a lightning.Trainer argument"),
        (["trainer.logger=true"], "trainer.logger is set by prunelab; use the logger group"),
        (["trainer.use_distributed_sampler=true"], "trainer.use_distributed_sampler must stay False"),
        (["+task.foo=1"], "unexpected keyword argument 'foo'"),
        (["pruner=mp", "+pruner.bar=2"], "unexpected keyword argument 'bar'"),
        (["task=classification"], "is a classification task but data=? is translation data"),
        (["model=transformer_tiny", "data=synthetic_classification"], "cannot be built for classification data"),
        (["pruner=attendout"], "prunes classification models, but data="),
    ],
)
def test_bad_settings_are_one_clear_error(tmp_path: Path, overrides: list[str], message: str) -> None:
    with pytest.raises(UserError, match=re.escape(message)):
        train(run_cfg([*SMOKE, *overrides]), tmp_path)
    assert json.loads((tmp_path / "results.json").read_text())["status"] == "failed"


def test_defaults_live_in_one_place() -> None:
    """Every literal in a task or pruner YAML equals the class signature's default (interpolations and keys
    the class requires excepted), so the YAML and the code cannot disagree."""
    import inspect

    from hydra.utils import get_class

    from prunelab.tasks import distill
    from prunelab.tasks.recipe import Recipe

    cfgs = [("task", p) for p in (Path(CONF_DIR) / "task").glob("*.yaml")]
    cfgs += [("pruner", p) for p in (Path(CONF_DIR) / "pruner").glob("*.yaml")]
    checked = 0
    for group, path in cfgs:
        cfg = run_cfg([f"{group}={path.stem}", "sparsity=0.5"] + (CLASSIFY if path.stem == "attendout" else []))
        node = cfg[group]
        cls = get_class(node._target_)
        params = dict(inspect.signature(cls.__init__).parameters)
        if group == "task":  # the trunk builds the Recipe and the Distiller from these keys (training.task.build_task)
            params |= inspect.signature(Recipe).parameters
            params["distill"] = inspect.Parameter("distill", inspect.Parameter.KEYWORD_ONLY, default=distill.DEFAULTS)
        for key in node:
            if key.startswith("_"):
                continue
            raw = node._get_node(key)._value()
            if isinstance(raw, str) and raw.startswith("${"):
                continue
            if key in params and params[key].default is not inspect.Parameter.empty:
                default = params[key].default
                value = (
                    list(node[key]) if hasattr(node[key], "__iter__") and not isinstance(node[key], str) else node[key]
                )
                default = list(default) if isinstance(default, tuple) else default
                if isinstance(node[key], DictConfig):  # a mapping of overrides: None in the code is {} in the YAML
                    value, default = dict(node[key]), dict(default or {})
                assert value == default, f"{group}/{path.name}: {key} = {value!r} but {cls.__name__} has {default!r}"
                checked += 1
    assert checked > 30


def test_seed_varies_the_model_not_the_data() -> None:
    from prunelab.training.build import build_data

    a = build_data(run_cfg([*SMOKE, "seed=1"]))
    b = build_data(run_cfg([*SMOKE, "seed=2"]))
    assert a.examples["train"] == b.examples["train"]  # the same sentences and vocabulary
    assert a.tokenizer.vocab_size == b.tokenizer.vocab_size
    assert a.shuffle_seed == 1 and b.shuffle_seed == 2  # training order follows the run's seed


# --- ckpt=: rewinding methods use the source run's θ_0 -------------------------------------------------------------
def test_lt_from_a_trained_run_rewinds_to_the_source_init(tmp_path: Path) -> None:
    source = train(run_cfg([*SMOKE, "seed=1"]), tmp_path / "source")
    init = read_state(Path(source["init_weights"]))
    res = train(
        run_cfg([*SMOKE, "seed=7", "pruner=lt", "sparsity=0.5", "pruner.levels=[0.5]", f"ckpt={tmp_path / 'source'}"]),
        tmp_path / "lt",
    )
    assert res["init_weights"] == source["init_weights"]
    assert source["start_weights"] == {"kind": "scratch", "source": None, "init": source["init_weights"]}
    assert res["start_weights"]["kind"] == "run" and res["start_weights"]["source"] == source["best_checkpoint"]
    assert res["levels"][0]["stage"] == "pretrained"  # a trained start is scored as the first level
    state = read_state(tmp_path / "lt" / "checkpoints" / "round_0" / "round_end.ckpt")["state_dict"]
    params = [k for k in init if init[k].is_floating_point() and not k.endswith("gate")]
    checked = 0
    for name in params:
        key = PRUNER_PREFIX + RoundPruner.snapshot_buffer("init", name)
        if key in state:
            assert torch.equal(state[key], init[name]), name  # the source's initialisation, not this run's (seed 7)
            checked += 1
    assert checked == len([k for k in state if k.startswith(PRUNER_PREFIX + "theta_0__")]) > 10
