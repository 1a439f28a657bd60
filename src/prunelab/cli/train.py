"""`python train.py ...`: compose the config, train in rounds, test the best checkpoint, write results.json."""

from __future__ import annotations

import logging
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from prunelab.cli.results import ResultsWriter
from prunelab.errors import UserError
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
    if cfg.pruner._target_.endswith("NoPruner") and s > 0:
        log.warning("pruner=none ignores sparsity=%s: the model stays dense (pick e.g. pruner=mp)", s)


def build_trainer(cfg: DictConfig, round_dir: Path, logger: Any) -> tuple[L.Trainer, ModelCheckpoint]:
    ckpt = ModelCheckpoint(
        dirpath=round_dir,
        filename="best",
        monitor="val/bleu_at_target",
        mode="max",
        save_top_k=1,
        save_last=True,
        enable_version_counter=False,
    )
    kwargs = {**OmegaConf.to_container(cfg.trainer), **OmegaConf.to_container(cfg.hardware), **TRAINER_FIXED}
    trainer = L.Trainer(**kwargs, callbacks=[ckpt], logger=logger, default_root_dir=round_dir.parent.parent)
    return trainer, ckpt


def run(cfg: DictConfig, results: ResultsWriter) -> None:
    validate(cfg)
    out = Path(HydraConfig.get().runtime.output_dir)
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()  # e.g. train the subword model once, before any rank asks for it
    datamodule.setup("fit")  # read and check the data before anything trains
    tok = datamodule.tokenizer
    model = instantiate(cfg.model)(vocab_size=tok.vocab_size, pad_id=tok.pad_id)
    pruner = instantiate(cfg.pruner)
    task: TranslationTask = instantiate(cfg.task)(model=model, pruner=pruner, tokenizer=tok)
    logger = instantiate(cfg.logger) if "_target_" in cfg.logger else False
    if logger:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    fit_time, trainer, ckpt = 0.0, None, None
    for r in range(pruner.rounds):
        round_dir = out / "checkpoints" / f"round_{r}"
        done = round_dir / "round_end.ckpt"
        if done.exists():  # a resumed run skips finished rounds
            task.load_state_dict(torch.load(done, weights_only=True)["state_dict"])
            log.info("round %d already finished: loaded %s", r, done)
            continue
        trainer, ckpt = build_trainer(cfg, round_dir, logger)
        last = round_dir / "last.ckpt"
        if not last.exists():
            pruner.on_round_start(model, r)
        t0 = time.perf_counter()
        trainer.fit(task, datamodule=datamodule, ckpt_path=last if last.exists() else None, weights_only=True)
        fit_time += time.perf_counter() - t0
        if trainer.interrupted:
            raise KeyboardInterrupt
        pruner.on_round_end(model, r)
        trainer.save_checkpoint(done, weights_only=True)
        results.update(rounds_done=r + 1)

    if trainer is None:  # every round was already finished: evaluate the loaded state
        trainer, ckpt = build_trainer(cfg, out / "checkpoints" / f"round_{pruner.rounds - 1}", logger)
    best = ckpt.best_model_path or str(out / "checkpoints" / f"round_{pruner.rounds - 1}" / "best.ckpt")
    metrics: dict[str, float] = {}
    for stage in (trainer.validate, trainer.test):
        (scores,) = stage(task, datamodule=datamodule, ckpt_path=best, weights_only=True, verbose=False)
        metrics.update({k: float(v) for k, v in scores.items() if k != "val/bleu_at_target"})
    (out / "test.hyp.txt").write_text("\n".join(task.last_eval["test"]["hypotheses"]) + "\n", encoding="utf-8")
    tokens = task.train_tokens
    results.update(
        status="completed",
        metrics=metrics,
        bleu_signature=task.last_eval["test"]["scores"].bleu_signature,
        ter_signature=task.last_eval["test"]["scores"].ter_signature,
        best_checkpoint=str(best),
        train={  # tokens = real source + target tokens trained on; fit time includes validation
            "fit_time_s": fit_time,
            "tokens": tokens,
            "tokens_per_s": tokens / fit_time if fit_time else None,
        },
        **task.pruner.report(model),
    )


def resolved(cfg: DictConfig) -> dict[str, Any]:
    try:
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except Exception:  # a missing mandatory value: keep the config as written, the run reports the error
        return OmegaConf.to_container(cfg, resolve=False)  # type: ignore[return-value]


@hydra.main(config_path=CONF_DIR, config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    out = Path(HydraConfig.get().runtime.output_dir)
    results = ResultsWriter(out / "results.json", config=resolved(cfg))
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
    print(f"results: {out / 'results.json'}")
