"""`python train.py ...`: compose the config, train in rounds, test the best checkpoint, write results.json."""

from __future__ import annotations

import inspect
import json
import logging
import os
import socket
import sys
import traceback
import warnings
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from prunelab.callbacks.importance import ComponentImportanceTracker
from prunelab.cli.results import ResultsWriter, is_rank_zero, read_state, write_state
from prunelab.cli.rounds import run_rounds
from prunelab.errors import UserError
from prunelab.models.surgery import load_state_dict_with_heads
from prunelab.tasks.classification import ClassificationTask
from prunelab.tasks.translation import TranslationTask

log = logging.getLogger("prunelab")
CONF_DIR = str(Path(__file__).resolve().parents[3] / "conf")

# Fixed Trainer settings: steps (not epochs) drive training; our batch samplers shard themselves for DDP.
TRAINER_FIXED = {
    "max_epochs": -1,
    "check_val_every_n_epoch": None,
    "num_sanity_val_steps": 0,
    "use_distributed_sampler": False,
}


def validate(cfg: DictConfig) -> None:
    s = cfg.sparsity
    if not isinstance(s, int | float) or not 0.0 <= float(s) < 1.0:
        raise UserError(f"sparsity must be in [0, 1), got {s}")
    if cfg.trainer.max_steps is None or cfg.trainer.max_steps < 1:
        raise UserError(f"trainer.max_steps must be a positive number of steps, got {cfg.trainer.max_steps}")
    keep = cfg.get("checkpoints", {}).get("keep_rounds")
    if keep is not None and (not isinstance(keep, int) or keep < 1):
        raise UserError(f"checkpoints.keep_rounds must be null (keep all) or a number >= 1, got {keep}")
    if cfg.get("deterministic", False) not in (True, False, "warn"):
        raise UserError(f"deterministic must be true, false or warn, got {cfg.deterministic!r}")
    if cfg.pruner._target_.endswith("NoPruner") and s > 0:
        log.warning("pruner=none ignores sparsity=%s: the model stays dense (pick e.g. pruner=mp)", s)


def build_trainer(
    cfg: DictConfig,
    round_dir: Path,
    logger: Any,
    max_steps: int | None = None,
    monitor: str = TranslationTask.monitor,
) -> tuple[L.Trainer, ModelCheckpoint]:
    ckpt = ModelCheckpoint(
        dirpath=round_dir,
        filename="best",
        monitor=monitor,
        mode="max",
        save_top_k=1,
        save_last=True,
        enable_version_counter=False,
    )
    kwargs = {**OmegaConf.to_container(cfg.trainer), **OmegaConf.to_container(cfg.hardware), **TRAINER_FIXED}
    kwargs.setdefault("deterministic", cfg.get("deterministic", False))  # trainer.deterministic=... wins
    if max_steps is not None:  # a round with its own budget (e.g. fine-tuning after head pruning)
        kwargs["max_steps"] = max_steps
        kwargs["val_check_interval"] = min(kwargs.get("val_check_interval") or max_steps, max_steps)
    callbacks: list[L.Callback] = [ckpt]
    track = cfg.get("track_importance") or {}
    if track.get("every_n_epochs", 0) > 0:  # Wang & Tu Figure 8: contribution heatmaps during training
        callbacks.append(
            ComponentImportanceTracker(
                round_dir.parent.parent / "importance" / round_dir.name,
                every_n_epochs=track.every_n_epochs,
                max_batches=track.get("max_batches"),
                beam_size=track.get("beam_size", 1),
            )
        )
    trainer = L.Trainer(**kwargs, callbacks=callbacks, logger=logger, default_root_dir=round_dir.parent.parent)
    return trainer, ckpt


MODEL_KINDS = {"prunelab.models.build_transformer": "translation", "prunelab.models.build_classifier": "classification"}


def build_model(cfg: DictConfig, datamodule: Any) -> Any:
    """The model for the data: its vocabulary (and classes) come from the data; a translation model on
    classification data, or the reverse, is a config error."""
    data_kind = getattr(datamodule, "kind", "translation")
    model_kind = MODEL_KINDS.get(cfg.model.get("_target_", ""), data_kind)
    if model_kind != data_kind:
        choices = HydraConfig.get().runtime.choices
        hint = "model=classifier_tiny" if data_kind == "classification" else "model=transformer_tiny"
        raise UserError(
            f"model={choices.get('model')} is a {model_kind} model but data={choices.get('data')} is "
            f"{data_kind} data (e.g. {hint})"
        )
    tok = datamodule.tokenizer
    extra = datamodule.model_kwargs() if hasattr(datamodule, "model_kwargs") else {}
    return instantiate(cfg.model)(vocab_size=tok.vocab_size, pad_id=tok.pad_id, **extra)


def build_task(cfg: DictConfig, datamodule: Any, model: Any, pruner: Any) -> Any:
    """The LightningModule for the data's kind, with the `task.` settings it takes (decoding settings only
    concern translation, `task.metric` only classification)."""
    if getattr(datamodule, "kind", "translation") == "classification":
        cls, given = ClassificationTask, {"labels": datamodule.labels}
    else:
        cls, given = TranslationTask, {"tokenizer": datamodule.tokenizer}
    accepted = inspect.signature(cls.__init__).parameters
    settings = {k: v for k, v in OmegaConf.to_container(cfg.task, resolve=True).items() if k in accepted}
    return cls(model=model, pruner=pruner, **given, **settings)


def load_trained_weights(model: Any, path: Path) -> Path:
    """`ckpt=PATH`: start from the model weights of a trained run (its folder, or any .ckpt it wrote).
    Only the model is taken (heads removed in it stay removed); masks and optimizer state are not."""
    if path.is_dir():
        results = path / "results.json"
        if not results.exists():
            raise UserError(f"ckpt={path}: a folder must be a run folder with results.json")
        best = json.loads(results.read_text()).get("best_checkpoint")
        if not best:
            raise UserError(f"ckpt={path}: the run has no tested checkpoint (status not completed?)")
        path = Path(best)
    if not path.is_file():
        raise UserError(f"ckpt={path}: no such file")
    try:
        state = read_state(path)["state_dict"]
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"ckpt={path}: not a prunelab checkpoint ({type(e).__name__}: {e})") from None
    try:
        load_state_dict_with_heads(model, state, "model.")
    except RuntimeError as e:
        first = str(e).split("\n\t")[1] if "\n\t" in str(e) else str(e)
        raise UserError(
            f"ckpt={path} does not fit this model (another model shape or vocabulary?): {first.strip()}"
        ) from None
    log.info("started from the weights of %s", path)
    return path


def wandb_online_problem(timeout: float = 3.0) -> str | None:
    """Why an online W&B run cannot start from here, or None: no API key (WANDB_API_KEY or the netrc file
    `wandb login` writes), or the server (WANDB_BASE_URL) does not answer within `timeout` seconds."""
    import netrc
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    host = url.hostname or "api.wandb.ai"
    if not os.environ.get("WANDB_API_KEY"):
        path = Path(os.environ.get("NETRC") or Path.home() / ".netrc")
        try:
            found = netrc.netrc(path).authenticators(host) if path.is_file() else None
        except (OSError, netrc.NetrcParseError):
            found = None
        if not found or not found[2]:
            return f"no API key (set WANDB_API_KEY or run `wandb login`; none for {host} in {path})"
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        return f"cannot reach {host}:{port} ({e.strerror or type(e).__name__})"
    return None


def make_logger(cfg: DictConfig, out: Path) -> Any:
    if "_target_" not in cfg.logger:
        return False
    hc = HydraConfig.get()
    extra: dict[str, Any] = {}
    if cfg.logger._target_.endswith("WandbLogger"):
        if cfg.logger.get("mode") == "online" and (problem := wandb_online_problem()):
            if is_rank_zero():
                log.warning(
                    "W&B: %s; logging offline instead (upload later: wandb sync %s)",
                    problem,
                    out / "wandb" / "offline-run-*",
                )
            extra["mode"] = "offline"  # a missing network never fails a run
        if hc.mode == RunMode.MULTIRUN and not cfg.logger.get("group"):
            # the jobs of one sweep form one W&B group, named after the sweep folder
            extra.update(group=Path(hc.sweep.dir).name, name=f"job{hc.job.num}")
    return instantiate(cfg.logger, **extra)


def run(cfg: DictConfig, results: ResultsWriter) -> None:
    validate(cfg)
    out = Path(HydraConfig.get().runtime.output_dir)
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()  # e.g. train the subword model once, before any rank asks for it
    datamodule.setup("fit")  # read and check the data before anything trains
    model = build_model(cfg, datamodule)
    pruner = instantiate(cfg.pruner)
    task = build_task(cfg, datamodule, model, pruner)
    if cfg.get("ckpt"):
        source = load_trained_weights(model, Path(cfg.ckpt))
        init = next((d / "init.pt" for d in (source.parent, *source.parents) if (d / "init.pt").exists()), None)
        if init is not None:
            pruner.use_initial_weights(read_state(init))
    else:
        init = out / "init.pt"  # θ_0, for analyses that need it (Wang & Tu's criticality, rewinding)
        if not init.exists():
            write_state(init, {k: v.detach().cpu() for k, v in model.state_dict().items()})
    results.update(init_weights=str(init) if init else None)
    logger = make_logger(cfg, out)
    if logger:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    name = HydraConfig.get().runtime.choices.get("pruner", "run")
    levels, fit_time = run_rounds(
        out,
        task,
        datamodule,
        lambda d, steps: build_trainer(cfg, d, logger, steps, monitor=task.monitor),
        logger,
        name,
        on_level=lambda lv: (results.update(levels=lv), results.write()),  # progress survives a kill
        max_steps=cfg.trainer.max_steps,
        pretrained=bool(cfg.get("ckpt")),
        keep_rounds=cfg.get("checkpoints", {}).get("keep_rounds"),
    )
    final = levels[-1]
    last_dir = out / "checkpoints" / f"round_{final['round']}"
    if is_rank_zero():
        (out / "test.hyp.txt").write_text((last_dir / "test.hyp.txt").read_text(encoding="utf-8"), encoding="utf-8")
    tokens = task.train_tokens
    results.update(
        status="completed",
        metrics=final["metrics"],
        best_checkpoint=final["best_checkpoint"],
        levels=levels,
        train={  # tokens = real source + target tokens trained on; fit time includes validation
            "fit_time_s": fit_time,
            "tokens": tokens,
            "tokens_per_s": tokens / fit_time if fit_time else None,
        },
        **task.pruner.report(model),
    )
    scores = task.last_eval.get("test", {}).get("scores")  # none when every round was loaded from a finished run
    if hasattr(scores, "bleu_signature"):
        results.update(bleu_signature=scores.bleu_signature, ter_signature=scores.ter_signature)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # every pruning step compared the masks of all processes (pruning.base.check_ranks_agree)
        results.update(ddp={"world_size": torch.distributed.get_world_size(), "mask_checks": task.pruner.rank_checks})
    if getattr(datamodule, "kind", "translation") == "classification":
        results.update(labels=datamodule.labels)  # class index -> label name, as the model predicts them


def resolved(cfg: DictConfig) -> dict[str, Any]:
    try:
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except Exception:  # a missing mandatory value: keep the config as written, the run reports the error
        return OmegaConf.to_container(cfg, resolve=False)  # type: ignore[return-value]


@hydra.main(config_path=CONF_DIR, config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    # PrunableTask moves batches itself (flat dicts; see transfer_batch_to_device), on purpose
    warnings.filterwarnings("ignore", message=r".*overridden `transfer_batch_to_device` in `LightningModule`.*")
    out = Path(HydraConfig.get().runtime.output_dir)
    results = ResultsWriter(out / "results.json", config=resolved(cfg))
    results.update(choices=dict(HydraConfig.get().runtime.choices))  # e.g. {"pruner": "slt_mp", ...}
    try:
        try:
            run(cfg, results)
        except MissingMandatoryValue as e:
            raise UserError(f"{e.full_key} must be set (e.g. {e.full_key}=...)") from None
        except InstantiationException as e:  # Hydra wraps errors raised in constructors
            if isinstance(e.__cause__, UserError):
                raise e.__cause__ from None
            raise
    except UserError as e:
        results.fail(str(e))
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            # the sweep goes on with its other jobs; at its end it names the failed ones and exits non-zero
            if is_rank_zero():
                print(f"error: job {HydraConfig.get().job.num} ({out}): {e}", file=sys.stderr)
            return
        if is_rank_zero():
            print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        results.fail("interrupted", status="interrupted")
        print(f"interrupted: partial state kept in {out} (re-run with hydra.run.dir={out} to resume)", file=sys.stderr)
        raise SystemExit(130) from None
    except Exception as e:
        results.fail(f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
        raise
    finally:
        results.write()
    if is_rank_zero():
        print(f"results: {out / 'results.json'}")
