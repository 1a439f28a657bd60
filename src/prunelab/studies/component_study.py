"""Wang & Tu (2020) component importance of a trained run (`prunelab components RUN_DIR`).

Contribution: every ablation is decoded side by side with the others, and one whose BLEU provably ends
more than C below the baseline stops early (its drop is then a lower bound, marked so; Eq. 1 clips it to C
regardless). `--exact-drops` decodes every ablation to the end.

Writes to RUN_DIR/components/: components.json (everything, with the analysis cost), drops.csv (the BLEU
drop table: baseline, BLEU with each component zeroed, drop, contribution, criticality), heatmaps.png
(contribution and criticality, component type x layer, darker = more important), group_ablation.csv/.png
(components zeroed cumulatively from the least important, Figure 9). With a W&B logger in the run's
config, the figures and tables also go to W&B.

Every score is taken on at most `max_examples` examples of the split (a seeded sample, `study.evaluation_set`),
stated in components.json under `evaluation`; one progress bar counts every evaluation (a scoring of the split
under one variant of the model) of the study. Studies floor: above training/ (load_run), beside cli/.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from prunelab.callbacks.curves import write_csv
from prunelab.callbacks.heatmaps import plot_component_heatmaps, plot_fraction_curves
from prunelab.criteria.components import (
    contribution_scores,
    criticality_scores,
    order_by_importance,
    smallest_alpha_evaluations,
    spearman,
)
from prunelab.errors import UserError
from prunelab.models.addressing import component_names
from prunelab.scoring.scoring import greedy_group_ablation, group_ablation
from prunelab.scoring.variants import decode_settings, decoding_report
from prunelab.studies.study import (
    DEFAULT_MAX_EXAMPLES,
    check_max_examples,
    evaluation_report,
    evaluation_set,
    log_analysis_to_wandb,
    progress_bar,
)
from prunelab.training import load_run
from prunelab.training.io import read_state, write_json

log = logging.getLogger("prunelab")


def analyse_components(
    run_dir: Path,
    split: str = "valid",
    beam_size: int | None = None,
    criticality: bool = True,
    epsilon: float = 0.5,
    grid: int = 4,
    tolerance: float = 0.02,
    rescore: bool = False,
    out_dir: Path | None = None,
    exact_drops: bool = False,
    max_examples: int | None = DEFAULT_MAX_EXAMPLES,
    seed: int = 0,
) -> dict[str, Any]:
    """`max_examples`: every score on at most that many examples of `split`, a sample drawn from `seed` (None:
    all of them)."""
    check_max_examples(max_examples)
    run = load_run(run_dir, data=True)
    res, dm, model = run.results, run.datamodule, run.model
    settings = decode_settings(res["config"], beam_size, model, dm.tokenizer)
    scorer = run.task_class.scorer(dm, settings)
    score_name = scorer.name
    init = res.get("init_weights")
    if criticality and (not init or not Path(init).is_file()):
        raise UserError(f"{run_dir}: no θ_0 saved (init.pt) for criticality; pass --no-criticality")
    evaluated = evaluation_set(dm, split, max_examples, seed)
    batches = evaluated.batches
    out = out_dir or run_dir / "components"
    out.mkdir(parents=True, exist_ok=True)
    names = component_names(model)

    # one progress bar over every evaluation: the contribution's N + 1 variants, criticality's search (at most
    # `smallest_alpha_evaluations` per component; the total drops as each search ends), the group ablation's
    # N + 1 prefixes and, with `rescore`, the N + 1 - k variants of each greedy step k
    count = len(names)
    alpha_max = smallest_alpha_evaluations(grid, tolerance)
    greedy = sum(count + 1 - k for k in range(count))
    total = 2 * (count + 1) + (1 + count * alpha_max if criticality else 0) + (greedy if rescore else 0)
    bar = progress_bar(total, "components study")

    def contribution_progress(done: int, of: int) -> None:  # batches of the split done: their share of N + 1
        bar.update(round((count + 1) * done / of) - round((count + 1) * (done - 1) / of))

    log.info("contribution: %d components, ablations decoded side by side", len(names))
    abl = scorer.ablation(
        model, batches, names, stop_below=None if exact_drops else 0.1, progress=contribution_progress
    )
    bar.update(count + 1 - bar.n)  # a scorer that reports no progress (accuracy), or ablations that all stopped early
    drops = abl.drops
    contribution = contribution_scores(drops, abl.baseline)
    full_decode_s = abl.baseline_seconds  # the unablated decode of the split: one ordinary full decode
    cost = {
        "contribution_seconds": abl.seconds,
        "contribution_passes": abl.passes,
        "full_decode_seconds": full_decode_s,
        "contribution_in_full_decodes": abl.seconds / full_decode_s,
        "ratio_to_separate_decodes": abl.seconds / ((len(names) + 1) * full_decode_s),  # (N+1) full decodes
        "sentences_decoded": abl.sentences_decoded,
        "sentences_without_early_stop": abl.sentences_total,
        "stopped_early": abl.stopped,  # their drop is a lower bound >= C: Eq. 1 clips it to C anyway
    }

    crit: dict[str, Any] = {}
    if criticality:
        theta0 = {k.removeprefix("model."): v for k, v in read_state(init).items()}
        t0 = time.perf_counter()
        searched = [-1]  # evaluations of the search under way (the first evaluation is the baseline's)

        def evaluate() -> float:
            score = scorer.score(model, batches)
            bar.update()
            searched[0] += 1
            return score

        def searched_one(name: str) -> None:  # the search ended: the bar loses the evaluations it did not need
            bar.total -= alpha_max - searched[0]
            bar.refresh()
            searched[0] = 0

        crit_base, found = criticality_scores(
            model, theta0, evaluate, names, epsilon, grid, tolerance, progress=searched_one
        )
        cost["criticality_seconds"] = time.perf_counter() - t0
        cost["criticality_evaluations"] = 1 + sum(c.evaluations for c in found.values())
        crit = {
            "baseline_bleu": crit_base,
            "epsilon": epsilon,
            "tolerance": tolerance,
            "grid": grid,
            "alpha": {n: c.alpha for n, c in found.items()},
            "evaluations": {n: c.evaluations for n, c in found.items()},
            "trace": {n: c.trace for n, c in found.items()},
        }

    order = order_by_importance(contribution)
    t0 = time.perf_counter()
    group = group_ablation(model, batches, scorer, order)
    bar.update(count + 1)
    curves = {"by contribution": group}
    if rescore:
        curves["re-scored after each step"] = greedy_group_ablation(model, batches, scorer)
        bar.update(greedy)
    cost["group_ablation_seconds"] = time.perf_counter() - t0
    bar.close()

    report = {
        "run": str(run_dir),
        "checkpoint": res["best_checkpoint"],
        "split": split,
        "score": score_name,  # what the *_bleu fields hold: BLEU, or accuracy (%) for a classifier
        "decoding": decoding_report(settings),
        "baseline_bleu": abl.baseline,
        "bleu_zeroed": abl.bleu,
        "drop": drops,
        "drop_is_lower_bound": abl.stopped,
        "contribution": contribution,
        "contribution_clip": 0.1 * abs(abl.baseline),  # a negated perplexity: 10% of the perplexity
        "criticality": crit,
        # do the two measures rank the components alike? (Wang & Tu compare their heatmaps)
        "rank_agreement": {"spearman_contribution_criticality": spearman(contribution, crit["alpha"])}
        if crit
        else None,
        "group_ablation": {k: [{"zeroed": c, "component": n, "bleu": b} for c, n, b in v] for k, v in curves.items()},
        "cost": cost,
        "evaluation": {**evaluation_report([evaluated], res.get("config", {})), "evaluations": bar.n},
    }
    write_json(out / "components.json", report)
    alpha = crit.get("alpha", {})
    write_csv(
        out / "drops.csv",
        ["component", "bleu_zeroed", "drop", "drop_exact", "contribution", "criticality_alpha"],
        [
            [
                n,
                "" if abl.bleu[n] is None else abl.bleu[n],
                drops[n],
                n not in abl.stopped,
                contribution[n],
                alpha.get(n, ""),
            ]
            for n in names
        ],
    )
    write_csv(
        out / "group_ablation.csv",
        ["order", "zeroed", "component", "bleu"],
        [[k, c, n or "", b] for k, v in curves.items() for c, n, b in v],
    )
    panels = {"contribution (Eq. 1)": contribution}
    if alpha:
        panels["criticality α (Eq. 2)"] = alpha
    plot_component_heatmaps(out / "heatmaps.png", panels, f"component importance ({split}, base {abl.baseline:.1f})")
    plot_fraction_curves(
        out / "group_ablation.png",
        {k: [(c, b) for c, _, b in v] for k, v in curves.items()},
        "components zeroed from the least important",
        xlabel="components zeroed",
        x_scale=1.0,
        ylabel=score_name,
    )
    tables = {
        "components/drops": (
            ["component", "drop", "drop_exact", "contribution"],
            [[n, drops[n], n not in abl.stopped, contribution[n]] for n in names],
        ),
    }
    log_analysis_to_wandb(res, out, "components-analysis", tables)
    return report
