"""`python train.py ...`: compose the config, call `prunelab.training.train`, turn errors into one line."""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

import prunelab.config  # noqa: F401 (registers the typed `trainer:` schema before Hydra composes)
from prunelab.errors import UserError
from prunelab.training import train
from prunelab.training.interrupt import Interrupted, install_handlers
from prunelab.training.io import is_rank_zero

log = logging.getLogger("prunelab")
CONF_DIR = str(Path(__file__).resolve().parents[3] / "conf")


@hydra.main(config_path=CONF_DIR, config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    # PrunableTask moves batches itself (flat dicts; see transfer_batch_to_device), on purpose
    warnings.filterwarnings("ignore", message=r".*overridden `transfer_batch_to_device` in `LightningModule`.*")
    hc = HydraConfig.get()
    out = Path(hc.runtime.output_dir)
    sweep = hc.mode == RunMode.MULTIRUN
    install_handlers()  # Ctrl-C / SIGTERM: save the step reached, status interrupted, non-zero exit
    try:
        train(
            cfg,
            out,
            choices=dict(hc.runtime.choices),
            group=Path(hc.sweep.dir).name if sweep else None,  # the jobs of a sweep: one W&B group
            job=f"job{hc.job.num}" if sweep else None,
        )
    except UserError as e:
        if sweep:  # the sweep goes on with its other jobs; at its end it names the failed ones and exits 1
            if is_rank_zero():
                print(f"error: job {hc.job.num} ({out}): {e}", file=sys.stderr)
            return
        if is_rank_zero():
            print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except Interrupted as e:
        if is_rank_zero():
            at = f" at step {e.step} ({e.checkpoint})" if e.step is not None else ""
            print(f"interrupted by {e}{at}: re-run with hydra.run.dir={out} to resume", file=sys.stderr)
        raise SystemExit(e.exit_code) from None
    if is_rank_zero():
        print(f"results: {out / 'results.json'}")
