"""`prunelab export RUN_DIR [--format bitmask|csc|hf|2:4] [--dtype fp32|fp16|bf16] [--out PATH]`: the pruned model of
a run in a compact sparse file (default `RUN_DIR/model.sparse.pt`; the formats: `prunelab.export`), or
(`--format hf`) as a Hugging Face folder, or (`--format 2:4`, runs with 2:4 masks) as fp16/bf16 weights that
`prunelab.export.load_2of4` runs with PyTorch's semi-structured sparse kernels on a GPU.

`--format hf` (runs of model=hf or its aliases hf_encoder / hf_marian / hf_causal_lm only; fp32 only; default
`RUN_DIR/hf`): the run's model written back as the Hugging Face folder it was imported from (`model.path`), masks,
zero gates and removed heads folded into dense fp32 weights, with the source's tokenizer files and the run's label
names (`prunelab.export.export_hf_run`): `from_pretrained` loads it with the logits of the run's model.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from prunelab.errors import exit_code
from prunelab.export import DTYPES, FORMATS, HF_FORMAT, SEMI_FORMAT, export


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path)
    parser.add_argument(
        "--format",
        choices=[*FORMATS, HF_FORMAT, SEMI_FORMAT],
        default="bitmask",
        help="bitmask (default), csc, hf (a Hugging Face folder, for runs of an imported model), or 2:4 (for GPU "
        "semi-structured kernels; fp16 unless --dtype bf16)",
    )
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp32", help="storage dtype of every float tensor")
    parser.add_argument("--out", type=Path, default=None, help="default: RUN_DIR/model.sparse.pt (hf: RUN_DIR/hf)")


def main(argv: list[str] | None = None) -> int:
    """`python -m prunelab.cli.export RUN_DIR ...`: the same as `prunelab export`; prints the stats as JSON."""
    parser = argparse.ArgumentParser(prog="prunelab export", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    return exit_code(lambda: run(args))


def run(args: argparse.Namespace) -> None:
    """Export the run the parsed arguments name; print what was written (sizes, format) as JSON."""
    _, stats = export(args.run_dir, args.out, fmt=args.format, dtype=args.dtype)
    print(json.dumps(stats, indent=2))


if __name__ == "__main__":
    sys.exit(main())
