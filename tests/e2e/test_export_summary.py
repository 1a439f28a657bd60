"""The sparse export reloads to identical outputs; the sweep summary reads a two-job sweep correctly."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from prunelab.export import load_sparse
from prunelab.models import Transformer, TransformerConfig
from prunelab.training.io import checkpoint_masks
from tests.e2e.conftest import ROOT, train, train_here


def test_sparse_export_reloads_to_identical_outputs(tmp_path: Path, smoke: list[str]) -> None:
    run = train_here(tmp_path / "run", *smoke, "pruner=mp", "sparsity=0.8", "pruner.frequency=2")
    assert run.returncode == 0, run.stderr[-3000:]
    proc = subprocess.run(
        [sys.executable, "-m", "prunelab.cli.main", "export", str(run.dir)], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(proc.stdout)
    exported = load_sparse(Path(stats["file"]))

    # the reference: the tested checkpoint's weights in a model built independently of the export
    res = run.results
    state = torch.load(res["best_checkpoint"], weights_only=True)["state_dict"]
    fields = {k: v for k, v in res["config"]["model"].items() if not k.startswith("_")}
    ref = Transformer(TransformerConfig(vocab_size=state["model.embed.weight"].shape[0], **fields)).eval()
    ref.load_state_dict({k[6:]: v for k, v in state.items() if k.startswith("model.")})
    src = torch.randint(4, ref.cfg.vocab_size, (4, 9))
    tgt = torch.randint(4, ref.cfg.vocab_size, (4, 7))
    with torch.no_grad():
        assert torch.equal(exported(src, tgt), ref(src, tgt))
    masks = checkpoint_masks(state)
    kept = sum(int((m != 0).sum()) for m in masks.values())
    assert stats["nonzeros"] == kept  # only the kept weights are stored for masked matrices
    assert stats["sparse_matrices"] == len(masks)


def test_export_rejects_a_folder_without_results(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "prunelab.cli.main", "export", str(tmp_path)], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 2 and "no results.json" in proc.stderr


def test_sweep_summary_table(tmp_path: Path, smoke: list[str]) -> None:
    sweep = tmp_path / "sweep"
    run = train(sweep, *smoke, "pruner=none,mp", "sparsity=0.5", multirun=True)
    assert run.returncode == 0, run.stderr[-3000:]
    jobs = {
        json.loads(p.read_text())["choices"]["pruner"]: json.loads(p.read_text()) for p in sweep.glob("*/results.json")
    }
    assert set(jobs) == {"none", "mp"}
    # written by the Hydra callback at the end of the multirun
    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    assert len(rows) == 2
    for row in rows:
        r = jobs[row["technique"]]
        assert float(row["test_bleu"]) == pytest.approx(r["metrics"]["test/bleu"])
        assert float(row["sparsity"]) == pytest.approx(r["sparsity"]["overall"])
        assert int(row["model_csc_bytes"]) == r["memory"]["model"]["csc_bytes"]
    md = (sweep / "summary.md").read_text()
    mp, none = jobs["mp"]["metrics"], jobs["none"]["metrics"]
    assert "| technique | 0% | 50% |" in md  # columns: the sparsity each job reached
    assert f"| mp | – | {mp['test/bleu']:.1f} / {mp['test/ter']:.1f} |" in md
    assert f"| none | {none['test/bleu']:.1f} / {none['test/ter']:.1f} | – |" in md
    assert (sweep / "summary.png").stat().st_size > 1000
    # the command does the same for any sweep folder
    (sweep / "summary.csv").unlink()
    proc = subprocess.run(
        [sys.executable, "-m", "prunelab.cli.main", "summarize", str(sweep)], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert len(list(csv.DictReader((sweep / "summary.csv").open()))) == 2
