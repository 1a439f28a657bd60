"""The head studies of Michel, Levy & Neubig (2019) on a trained run (`prunelab heads RUN_DIR`).

Loads the run's tested checkpoint with the run's own data and model config, then writes to RUN_DIR/heads/:
heads.json (everything), importance.csv / ablation.csv / keep_one.csv / curves.csv, and the figures
importance.png and ablation.png (layer x head heatmaps per attention type) and curves.png (BLEU vs
fraction of heads pruned: by I_h, globally and per attention type; globally by single-head ablation
score and in random orders). With speed batch sizes, speed.csv: examples/s of the model with half its heads
(the least important by I_h) cut out against the unpruned one, by batch size (Table 4). With a W&B logger in
the run's config the figures and tables also go to W&B, in the run's project.

Every score is taken on at most `max_examples` examples of valid and test (a seeded sample, `study.evaluation_set`),
stated in heads.json under `evaluation`; one progress bar counts every evaluation of the study. Studies floor: above
training/ (load_run), beside cli/.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prunelab.callbacks.curves import write_csv
from prunelab.callbacks.heatmaps import plot_fraction_curves, plot_head_heatmaps
from prunelab.criteria.ablation import (
    ATTENTION_TYPES,
    iterative_pruning,
    keep_one_head,
    order_by_score,
    pruning_counts,
    scores_by_group,
    scores_by_head,
    single_head_ablation,
)
from prunelab.criteria.heads import head_importance
from prunelab.errors import UserError
from prunelab.models.addressing import attention_names, component_type, group_names, head_names
from prunelab.scoring.variants import decode_settings, decoding_report
from prunelab.studies.speed import speed_by_batch_size, without_heads
from prunelab.studies.study import (
    DEFAULT_MAX_EXAMPLES,
    check_max_examples,
    evaluation_report,
    evaluation_set,
    log_analysis_to_wandb,
    progress_bar,
)
from prunelab.training import load_run
from prunelab.training.io import write_json


def analyse_heads(
    run_dir: Path,
    importance_batches: int = 20,
    beam_size: int = 1,
    step: float = 0.1,
    out_dir: Path | None = None,
    ablation_order: bool = True,
    random_orders: int = 3,
    seed: int = 0,
    speed_batch_sizes: Sequence[int] = (),
    speed_fraction: float = 0.5,
    speed_sentences: int = 128,
    max_examples: int | None = DEFAULT_MAX_EXAMPLES,
) -> dict[str, Any]:
    """`random_orders`: that many pruning curves along random head orders (Michel et al.'s baseline for I_h),
    drawn from `seed`. `speed_batch_sizes`: also time the model with the `speed_fraction` least important heads
    (by I_h) cut out against the unpruned one, decoding `speed_sentences` test sentences at each batch size.
    `max_examples`: every score on at most that many examples of valid and of test, a sample drawn from `seed`
    (None: all of them)."""
    if speed_batch_sizes and not 0.0 < speed_fraction < 1.0:
        raise UserError(f"--speed-fraction must be between 0 and 1 (exclusive), got {speed_fraction}")
    if any(b < 1 for b in speed_batch_sizes) or speed_sentences < 1:
        raise UserError("--speed-batch-sizes and --speed-sentences must be positive")
    check_max_examples(max_examples)
    run = load_run(run_dir, data=True)
    res, dm, model = run.results, run.datamodule, run.model
    settings = decode_settings(res["config"], beam_size, model, dm.tokenizer)  # the run's own decoding, this beam
    scorer = run.task_class.scorer(dm, settings)
    out = out_dir or run_dir / "heads"
    out.mkdir(parents=True, exist_ok=True)
    sets = [evaluation_set(dm, split, max_examples, seed) for split in ("valid", "test")]
    valid, test = sets[0].batches, sets[1].batches

    # I_h on training data, normalised per layer (Michel et al. section 4.1)
    importance = scores_by_head(model, head_importance(model, dm.train_dataloader(), max_batches=importance_batches))
    groups = None  # under grouped-query attention, the K/V groups' importance too (the gradient of one gate each)
    if group_names(model):
        raw = head_importance(model, dm.train_dataloader(), max_batches=importance_batches, groups=True)
        groups = scores_by_group(model, raw)
    # one progress bar over every evaluation of the study (each a full decode of valid or test), counted exactly
    heads = head_names(model)
    n_heads, n_layers = len(heads), len(attention_names(model))
    per_type = [sum(component_type(h) == kind for h in heads) for kind in ATTENTION_TYPES]
    curve_sizes = [n_heads] * (1 + int(ablation_order) + random_orders) + [n for n in per_type if n]
    curves_n = sum(1 + len(pruning_counts(n, step)) for n in curve_sizes)
    bar = progress_bar((1 + n_heads) + (1 + n_heads + n_layers) + curves_n, "heads study")

    def score_valid() -> float:
        score = scorer.score(model, valid)
        bar.update()
        return score

    def score_test() -> float:
        score = scorer.score(model, test)
        bar.update()
        return score

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
    rng = random.Random(seed)
    for r in range(random_orders):
        shuffled = sorted(importance)
        rng.shuffle(shuffled)
        curves[f"all heads, random order {r + 1}"] = iterative_pruning(model, shuffled, score_test, step)
    bar.close()
    speed = []
    if speed_batch_sizes:
        order = order_by_score(importance)
        removed = order[: round(speed_fraction * len(order))]
        pruned = without_heads(model, removed)
        speed = speed_by_batch_size(model, pruned, dm, scorer, speed_batch_sizes, speed_sentences)

    report = {
        "run": str(run_dir),
        "checkpoint": res["best_checkpoint"],
        "score": scorer.name,
        "decoding": {**decoding_report(settings), "split": "test", "choice_split": "valid"},
        "baseline_bleu": base,
        "unit": "query head",  # what the curves, ablations and `importance` remove: query heads (dec.{i}.sa.h{j})
        "importance": importance,
        "group_importance": groups,  # K/V groups (dec.{i}.sa.g{k}) under grouped-query attention, else null
        "ablation_delta_bleu": deltas,
        "keep_one_head": keep_one,
        "pruning_curves": {k: [{"fraction": f, "bleu": b} for f, b in v] for k, v in curves.items()},
        "random_orders": {"count": random_orders, "seed": seed},
        "evaluation": {**evaluation_report(sets, res.get("config", {})), "evaluations": bar.n},
        "speed": {"fraction_pruned": speed_fraction, "by_batch_size": speed} if speed else None,
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
    if speed:
        write_csv(out / "speed.csv", list(speed[0]), [list(r.values()) for r in speed])
    plot_head_heatmaps(out / "importance.png", importance, "head importance I_h (normalised per layer)")
    plot_head_heatmaps(
        out / "ablation.png", deltas, f"BLEU change when one head is masked (base {base:.1f})", cmap="RdBu"
    )
    plotted = {k: v for k, v in curves.items() if "random order" not in k}
    if random_orders:  # one line, the mean over the random orders (they share their fractions)
        runs = [v for k, v in curves.items() if "random order" in k]
        plotted[f"all heads, random order (mean of {random_orders})"] = [
            (f, sum(r[i][1] for r in runs) / len(runs)) for i, (f, _) in enumerate(runs[0])
        ]
    plot_fraction_curves(
        out / "curves.png", plotted, "heads pruned by increasing I_h (or ablation score)", ylabel=report["score"]
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
