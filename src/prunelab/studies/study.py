"""What the head and component studies (`prunelab heads|components`) share: the evaluation sets they score on,
capped to a seeded sample of examples, how their reports state that cap, one progress bar over every
evaluation of a study, and the W&B upload of their figures.

A study scores its evaluation set hundreds of times (the head study of a 6-layer, 12-head encoder runs 218
evaluations), so the set's size sets its cost: studies take at most `DEFAULT_MAX_EXAMPLES` examples of each
split unless asked otherwise, as training can validate on a sample (`data.valid_max_sentences`, which the
run's data module has already applied to its validation split). Studies floor: what reads finished runs, beside cli/.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from prunelab.errors import UserError
from prunelab.loggers import is_wandb_config

Batch = dict[str, Any]
DEFAULT_MAX_EXAMPLES = 1000  # per split; a BLEU or an accuracy on 1,000 examples is steady to a few tenths


@dataclass
class EvaluationSet:
    """The batches a study scores one split on, and how they were drawn from it."""

    split: str
    batches: list[Batch]
    available: int  # examples of the split in the run's data module
    max_examples: int | None  # the cap asked for (None: no cap)
    seed: int
    indices: list[int]  # the examples used: their `idx` in the split, ascending

    @property
    def drawn(self) -> str:
        return "all" if len(self.indices) == self.available else "seeded random sample"

    def report(self) -> dict[str, Any]:
        """What a study's JSON says about this split."""
        return {
            "available": self.available,
            "max_examples": self.max_examples,
            "used": len(self.indices),
            "drawn": self.drawn,
            "seed": self.seed if self.drawn != "all" else None,
            "indices": self.indices,
        }


def check_max_examples(max_examples: int | None) -> None:
    if max_examples is not None and max_examples < 1:
        raise UserError(f"--max-examples must be >= 1 (or 0 for every example), got {max_examples}")


def evaluation_set(datamodule: Any, split: str, max_examples: int | None, seed: int = 0) -> EvaluationSet:
    """`split` ("valid" or "test") of the run's data module, batched as its own loaders batch it, with at most
    `max_examples` examples (None: all): a random sample drawn from `seed` (the same seed, the same sample),
    kept in the split's order."""
    check_max_examples(max_examples)
    examples = datamodule.examples[split]
    chosen = examples
    if max_examples is not None and max_examples < len(examples):
        keep = sorted(random.Random(f"study-sample-{seed}-{split}").sample(range(len(examples)), max_examples))
        chosen = [examples[i] for i in keep]
    view = copy.copy(datamodule)  # the same data module with the split narrowed: its own batching and collation
    view.examples = {**datamodule.examples, split: chosen}
    batches = list(view.val_dataloader() if split == "valid" else view.test_dataloader())
    indices = sorted(int(i) for b in batches for i in b["idx"])
    return EvaluationSet(split, batches, len(examples), max_examples, seed, indices)


def evaluation_report(sets: list[EvaluationSet], run_config: dict[str, Any]) -> dict[str, Any]:
    """The `evaluation` entry of a study's JSON: each split's cap and the examples used, and the run's own
    validation sample (`data.valid_max_sentences`, already applied to the valid split it has)."""
    return {
        "splits": {s.split: s.report() for s in sets},
        "run_valid_max_sentences": (run_config.get("data") or {}).get("valid_max_sentences"),
    }


def progress_bar(total: int, desc: str) -> tqdm:
    """One bar over every evaluation of a study (`total` counted in advance): its rate and time estimate are
    in evaluations, each a full pass over the same evaluation set."""
    return tqdm(total=total, desc=desc, unit="eval", dynamic_ncols=True)


def log_analysis_to_wandb(
    res: dict[str, Any], out: Path, name: str, tables: dict[str, tuple[list[str], list[list[Any]]]]
) -> None:
    """Send an analysis folder's PNGs and the given tables to W&B, in the run's project, when the run used
    W&B (offline runs stay offline). {key: (columns, rows)}."""
    logger = res.get("config", {}).get("logger") or {}
    if not is_wandb_config(logger):
        return
    import wandb

    run = wandb.init(
        project=logger.get("project", "prunelab"),
        name=name,
        job_type="analysis",
        mode=logger.get("mode", "offline"),
        dir=str(out),
    )
    logged: dict[str, Any] = {k: wandb.Table(columns=c, data=rows) for k, (c, rows) in tables.items()}
    logged |= {f"{out.name}/{p.stem}": wandb.Image(str(p)) for p in sorted(out.glob("*.png"))}
    run.log(logged)
    run.finish()
