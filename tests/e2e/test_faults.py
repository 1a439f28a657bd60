"""Faults a long run meets, from the command line: a diverging job in a sweep, bad input files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from tests.e2e.conftest import Run, check_scores_from_files, train, write_corpus


def test_diverging_job_fails_clearly_and_the_sweep_goes_on(tmp_path: Path, smoke: list[str]) -> None:
    # the lr warms up over 200 steps: job 1 (peak 1e6) diverges a few steps after its step-5 checkpoint
    sweep = train(
        tmp_path / "sweep",
        *smoke,
        "task.lr=3e-3,1e6",
        "task.warmup_steps=200",
        "trainer.val_check_interval=5",
        multirun=True,
    )
    assert sweep.returncode == 1
    assert "Traceback" not in sweep.stderr
    errors = [line for line in sweep.stderr.splitlines() if line.startswith("error:")]
    diverged = (
        r"non-finite loss \((nan|inf|-inf)\) at step (\d+) of round 0: training diverged \(try a lower task\.lr\); "
        r"the last good checkpoint is kept: checkpoints/round_0/last\.ckpt"
    )
    assert len(errors) == 2, sweep.stderr[-3000:]
    assert re.fullmatch(rf"error: job 1 \({re.escape(str(tmp_path / 'sweep' / '1'))}\): {diverged}", errors[0])
    assert re.fullmatch(rf"error: 1 job\(s\) of the sweep failed \(.*sweep\): job 1: {diverged}", errors[1])

    ok, bad = (json.loads((sweep.dir / j / "results.json").read_text()) for j in ("0", "1"))
    assert ok["status"] == "completed"
    check_scores_from_files(Run(0, "", "", sweep.dir / "0"))
    assert bad["status"] == "failed" and bad["metrics"] == {} and "best_checkpoint" not in bad
    step = int(re.search(diverged, bad["error"]).group(2))  # type: ignore[union-attr]
    assert step > 5
    kept = torch.load(sweep.dir / "1" / "checkpoints" / "round_0" / "last.ckpt", weights_only=True)
    assert kept["global_step"] == 5  # the step-5 checkpoint, not overwritten with diverged weights
    assert all(v.isfinite().all() for v in kept["state_dict"].values() if v.is_floating_point())
    assert "1 job(s) did not complete: 1" in (sweep.dir / "summary.md").read_text()


def test_non_utf8_corpus_is_one_error_line_and_no_result(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    lines = (corpus / "train.de").read_bytes().split(b"\n")
    lines[2] += b" CAF\xc9"  # Latin-1 É in a UTF-8 corpus
    (corpus / "train.de").write_bytes(b"\n".join(lines))
    run = train(tmp_path / "run", "data=parallel_text", f"data.dir={corpus}", "logger=csv", "trainer.max_steps=2")
    assert run.returncode == 2
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: {corpus / 'train.de'}:3: not UTF-8 (byte 0xc9 at byte {len(lines[2])} of the line); "
        "convert the file (e.g. iconv -f latin1 -t utf-8) or set data.utf8_errors=replace"
    ]
    assert "Traceback" not in run.stderr
    assert run.results["status"] == "failed" and run.results["metrics"] == {}
    assert not (run.dir / "checkpoints").exists() and not (run.dir / "test.hyp.txt").exists()
