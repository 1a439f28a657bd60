"""`prunelab heads RUN_DIR`: the head studies of Michel, Levy & Neubig (2019) on a trained run.

Loads the run's tested checkpoint with the run's own data and model config, then writes to RUN_DIR/heads/:
heads.json (everything), importance.csv / ablation.csv / keep_one.csv / curves.csv, and the figures
importance.png and ablation.png (layer x head heatmaps per attention type) and curves.png (BLEU vs
fraction of heads pruned: by I_h, globally and per attention type; globally by single-head ablation
score). With a W&B logger in the run's config the figures and tables also go to W&B, in the run's project.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prunelab.callbacks.curves import write_csv
from prunelab.callbacks.heatmaps import plot_fraction_curves, plot_head_heatmaps
from prunelab.importance.ablation import (
    ATTENTION_TYPES,
    iterative_pruning,
    keep_one_head,
    order_by_score,
    scores_by_head,
    single_head_ablation,
)
from prunelab.importance.components import DecodeSettings
from prunelab.importance.heads import head_importance
from prunelab.loggers import is_wandb_config
from prunelab.training import load_run
from prunelab.training.io import write_json


def analyse_heads(
    run_dir: Path,
    importance_batches: int = 20,
    beam_size: int = 1,
    step: float = 0.1,
    out_dir: Path | None = None,
    ablation_order: bool = True,
) -> dict[str, Any]:
    run = load_run(run_dir, data=True)
    res, dm, model = run.results, run.datamodule, run.model
    scorer = run.task_class.scorer(dm, DecodeSettings(beam_size=beam_size))
    out = out_dir or run_dir / "heads"
    out.mkdir(parents=True, exist_ok=True)
    valid, test = list(dm.val_dataloader()), list(dm.test_dataloader())

    def score_valid() -> float:
        return scorer.score(model, valid)

    def score_test() -> float:
        return scorer.score(model, test)

    # I_h on training data, normalised per layer (Michel et al. section 4.1)
    importance = scores_by_head(model, head_importance(model, dm.train_dataloader(), max_batches=importance_batches))
    base, deltas = single_head_ablation(model, score_test)
    keep_one = keep_one_head(model, score_valid, score_test)
    curves = {"all heads": iterative_pruning(model, order_by_score(importance), score_test, step)}
    for kind in ATTENTION_TYPES:
        order = order_by_score(importance, [kind])
        if order:  # a classifier has encoder self-attention only
            curves[kind] = iterative_pruning(model, order, score_test, step)
    if ablation_order:  # for comparison: least harmful single-head ablation first (largest BLEU change)
        by_ablation = order_by_score({h: -d for h, d in deltas.items()})
        curves["all heads, by ablation"] = iterative_pruning(model, by_ablation, score_test, step)

    report = {
        "run": str(run_dir),
        "checkpoint": res["best_checkpoint"],
        "score": scorer.name,
        "decoding": {"beam_size": beam_size, "split": "test", "choice_split": "valid"},
        "baseline_bleu": base,
        "importance": importance,
        "ablation_delta_bleu": deltas,
        "keep_one_head": keep_one,
        "pruning_curves": {k: [{"fraction": f, "bleu": b} for f, b in v] for k, v in curves.items()},
    }
    write_json(out / "heads.json", report)
    write_csv(out / "importance.csv", ["head", "importance"], sorted(importance.items()))
    write_csv(out / "ablation.csv", ["head", "delta_bleu"], sorted(deltas.items()))
    write_csv(
        out / "keep_one.csv",
        ["component", "head", "valid_bleu", "test_bleu", "delta_test_bleu"],
        [[c, r["head"], r["valid"], r["test"], r["delta_test"]] for c, r in keep_one.items()],
    )
    write_csv(
        out / "curves.csv", ["order", "fraction_pruned", "bleu"], [[k, f, b] for k, v in curves.items() for f, b in v]
    )
    plot_head_heatmaps(out / "importance.png", importance, "head importance I_h (normalised per layer)")
    plot_head_heatmaps(
        out / "ablation.png", deltas, f"BLEU change when one head is masked (base {base:.1f})", cmap="RdBu"
    )
    plot_fraction_curves(
        out / "curves.png", curves, "heads pruned by increasing I_h (or ablation score)", ylabel=report["score"]
    )
    log_analysis_to_wandb(
        res,
        out,
        "heads-analysis",
        {
            "heads/importance": (["head", "importance"], [list(x) for x in sorted(importance.items())]),
            "heads/ablation": (["head", "delta_bleu"], [list(x) for x in sorted(deltas.items())]),
        },
    )
    return report


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
