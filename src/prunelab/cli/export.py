"""`prunelab export RUN_DIR [--format bitmask|csc|hf] [--dtype fp32|fp16|bf16] [--out PATH]`: the pruned model of a
run in a compact sparse file (default `RUN_DIR/model.sparse.pt`; the formats: `prunelab.export`), or
(`--format hf`) as a Hugging Face folder.

`--format hf` (runs of model=hf_encoder / model=hf_marian only, fp32 only; default `RUN_DIR/hf`): the run's model
written back as the Hugging Face folder it was imported from (`model.path`), masks, zero gates and removed heads
folded into dense fp32 weights, with the source's tokenizer files and the run's label names
(`prunelab.hf.export`): `from_pretrained` loads it with the logits of the run's model.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from prunelab.errors import UserError
from prunelab.export import DTYPES, FORMATS, export_run
from prunelab.hf.export import export_hf
from prunelab.models.sparse_format import dense_bytes
from prunelab.training import load_run
from prunelab.training.load import checkpoint_masks

HF_FORMAT = "hf"  # a Hugging Face folder, not a prunelab file (export_hf_run)


def export(
    run_dir: Path, out: Path | None = None, fmt: str = "bitmask", dtype: str = "fp32"
) -> tuple[Path, dict[str, Any]]:
    """What `prunelab export` writes: `prunelab.export.export_run`, or export_hf_run for fmt="hf"."""
    if fmt == HF_FORMAT:
        return export_hf_run(run_dir, out, dtype)
    return export_run(run_dir, out, fmt=fmt, dtype=dtype)


def export_hf_run(run_dir: Path, out: Path | None = None, dtype: str = "fp32") -> tuple[Path, dict[str, Any]]:
    """`--format hf`: a run whose model was imported from Hugging Face (`model.path`, model=hf_encoder or
    hf_marian) -> that folder's format again, in `out` (default `RUN_DIR/hf`): the run's tested model with its masks
    (`checkpoint_masks`) as weight * mask, gates at 0 and removed heads as zeros, fp32; a classifier's label names
    from results.json (`labels`). Stats: file (the folder), format, dtype, source, file_bytes (its
    model.safetensors), dense_bytes, ratio, sparse_matrices (masks folded in), nonzeros (their kept entries)."""
    if dtype != "fp32":
        raise UserError(f"--format hf writes fp32 weights (--dtype {dtype} is for the bitmask and csc formats)")
    run = load_run(run_dir)
    source = OmegaConf.select(run.config, "model.path", default=None)
    if not source:
        raise UserError(
            f"{run_dir}: the run's model was not imported from Hugging Face (no model.path; --format hf is for "
            "model=hf_encoder and model=hf_marian runs): use --format bitmask or csc"
        )
    if not (Path(source) / "config.json").is_file():
        raise UserError(f"{run_dir}: the run's model.path={source} is no longer a Hugging Face model folder")
    state = run.model.state_dict()
    masks = {n: m for n, m in checkpoint_masks(run.state).items() if n in state}
    labels = run.results.get("labels")  # a classification run's label names (translation runs have none)
    out = export_hf(run.model, source, out or run.dir / "hf", masks=masks, labels=labels)
    file_bytes = (out / "model.safetensors").stat().st_size
    dense = dense_bytes(state)
    stats = {
        "file": str(out),
        "format": HF_FORMAT,
        "dtype": dtype,
        "source": str(source),
        "file_bytes": file_bytes,
        "dense_bytes": dense,
        "ratio": file_bytes / dense,
        "sparse_matrices": len(masks),
        "nonzeros": sum(int(m.count_nonzero()) for m in masks.values()),
    }
    return out, stats


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path)
    parser.add_argument(
        "--format",
        choices=[*FORMATS, HF_FORMAT],
        default="bitmask",
        help="bitmask (default), csc, or hf (a Hugging Face folder, for runs of an imported model)",
    )
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp32", help="storage dtype of every float tensor")
    parser.add_argument("--out", type=Path, default=None, help="default: RUN_DIR/model.sparse.pt (hf: RUN_DIR/hf)")


def main(argv: list[str] | None = None) -> int:
    """`python -m prunelab.cli.export RUN_DIR ...`: the same as `prunelab export`; prints the stats as JSON."""
    parser = argparse.ArgumentParser(prog="prunelab export", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        _, stats = export(args.run_dir, args.out, fmt=args.format, dtype=args.dtype)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(stats, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
