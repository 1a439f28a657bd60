"""`prunelab <command>`: tools that work on run and sweep folders (training is `python train.py`)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from prunelab.cli import export
from prunelab.compare import compare
from prunelab.errors import exit_code
from prunelab.studies.component_study import analyse_components
from prunelab.studies.head_study import analyse_heads
from prunelab.studies.study import DEFAULT_MAX_EXAMPLES
from prunelab.summary import summarize


def add_max_examples(parser: argparse.ArgumentParser, splits: str) -> None:
    parser.add_argument(
        "--max-examples",
        type=int,
        default=DEFAULT_MAX_EXAMPLES,
        help=f"score on at most N examples of {splits} (default {DEFAULT_MAX_EXAMPLES}): a random sample drawn from "
        "--seed, stated in the JSON with the examples used; 0: every example. The run's data.valid_max_sentences "
        "has already sampled its validation split",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="prunelab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_export = sub.add_parser(
        "export",
        help="write a run's pruned model: a compact sparse file (bitmask or CSC) or a Hugging Face folder (hf)",
    )
    export.add_arguments(p_export)
    p_sum = sub.add_parser("summarize", help="table + plot of a sweep folder's results.json files")
    p_sum.add_argument("sweep_dir", type=Path)
    p_sum.add_argument(
        "--no-levels",
        action="store_true",
        help="one row per job only (by default equivalent levels of iterative runs fill the table)",
    )
    p_cmp = sub.add_parser("compare", help="runs side by side: method, sparsity, dense and pruned score, cost")
    p_cmp.add_argument("run_dirs", type=Path, nargs="+")
    p_cmp.add_argument("--out", type=Path, default=None, help="also write compare.md and compare.csv here")
    p_heads = sub.add_parser("heads", help="head importance, ablation and pruning curves of a trained run")
    p_heads.add_argument("run_dir", type=Path)
    p_heads.add_argument("--importance-batches", type=int, default=20, help="training batches for I_h")
    p_heads.add_argument("--beam-size", type=int, default=1, help="decoding for every BLEU in the study")
    p_heads.add_argument("--step", type=float, default=0.1, help="fraction of heads pruned per curve step")
    p_heads.add_argument(
        "--no-ablation-order", action="store_true", help="skip the comparison curve ordered by ablation score"
    )
    p_heads.add_argument("--random-orders", type=int, default=3, help="pruning curves along random head orders")
    p_heads.add_argument("--seed", type=int, default=0, help="seed of the random orders and of --max-examples")
    add_max_examples(p_heads, "valid and of test")
    p_heads.add_argument("--out", type=Path, default=None, help="folder for the study (default: RUN_DIR/heads)")
    p_heads.add_argument(
        "--speed-batch-sizes",
        type=lambda v: [int(x) for x in v.split(",") if x],
        default=[],
        help="e.g. 1,4,16,64: time the model with --speed-fraction of its heads cut out at these batch sizes",
    )
    p_heads.add_argument("--speed-fraction", type=float, default=0.5, help="fraction of heads cut out (by I_h)")
    p_heads.add_argument("--speed-sentences", type=int, default=128, help="test sentences decoded per timing")
    p_comp = sub.add_parser("components", help="Wang & Tu component importance of a trained run")
    p_comp.add_argument("run_dir", type=Path)
    p_comp.add_argument("--split", choices=["valid", "test"], default="valid", help="data every BLEU is taken on")
    p_comp.add_argument("--beam-size", type=int, default=None, help="default: the run's validation beam")
    p_comp.add_argument("--no-criticality", action="store_true", help="skip Eq. 2 (it needs about 8 decodes each)")
    p_comp.add_argument("--epsilon", type=float, default=0.5, help="criticality: allowed BLEU drop")
    p_comp.add_argument("--tolerance", type=float, default=0.02, help="criticality: precision of α")
    p_comp.add_argument("--grid", type=int, default=4, help="criticality: coarse α grid before bisection")
    p_comp.add_argument("--rescore", action="store_true", help="group ablation also re-scored after each step")
    p_comp.add_argument("--exact-drops", action="store_true", help="no early stop: exact BLEU drop for every one")
    add_max_examples(p_comp, "--split")
    p_comp.add_argument("--seed", type=int, default=0, help="seed of the --max-examples sample")
    p_comp.add_argument("--out", type=Path, default=None, help="folder for the study (default: RUN_DIR/components)")
    args = parser.parse_args(argv)
    log = logging.getLogger("prunelab")  # the analyses' progress lines, to stderr (other libraries stay quiet)
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    return exit_code(lambda: run(args))


def run(args: argparse.Namespace) -> None:
    """One parsed `prunelab` command, its result printed."""
    if args.command == "heads":
        report = analyse_heads(
            args.run_dir,
            args.importance_batches,
            args.beam_size,
            args.step,
            out_dir=args.out,
            ablation_order=not args.no_ablation_order,
            random_orders=args.random_orders,
            seed=args.seed,
            speed_batch_sizes=args.speed_batch_sizes,
            speed_fraction=args.speed_fraction,
            speed_sentences=args.speed_sentences,
            max_examples=args.max_examples or None,
        )
        out = args.out or args.run_dir / "heads"
        print(f"baseline {report['score']} {report['baseline_bleu']:.2f}; written to {out}")
    elif args.command == "components":
        report = analyse_components(
            args.run_dir,
            split=args.split,
            beam_size=args.beam_size,
            criticality=not args.no_criticality,
            epsilon=args.epsilon,
            grid=args.grid,
            tolerance=args.tolerance,
            rescore=args.rescore,
            out_dir=args.out,
            exact_drops=args.exact_drops,
            max_examples=args.max_examples or None,
            seed=args.seed,
        )
        c = report["cost"]
        print(
            f"baseline {report['score']} {report['baseline_bleu']:.2f}; contribution of "
            f"{len(report['contribution'])} components in {c['contribution_seconds']:.1f} s, "
            f"{c['contribution_passes']} batched passes "
            f"= {c['contribution_in_full_decodes']:.2f} full decodes of {args.split}"
            + (
                f"; criticality {c['criticality_evaluations']} decodes in {c['criticality_seconds']:.1f} s"
                if "criticality_seconds" in c
                else ""
            )
            + f"; written to {args.out or args.run_dir / 'components'}"
        )
    elif args.command == "compare":
        print(compare(args.run_dirs, args.out), end="")
    elif args.command == "export":
        export.run(args)
    else:
        for path in summarize(args.sweep_dir, from_levels=not args.no_levels):
            print(path)


if __name__ == "__main__":
    sys.exit(main())
