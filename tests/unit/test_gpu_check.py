"""`make gpu-check` (bench/gpu_check.py) in its dry run: every step on the CPU at the smallest size, in this process.
Every step runs or says why not, the results files hold each step's rows, a step that fails (a planted bug in the
code it checks) is reported with its error line while the steps after it still run, and the dry run never writes
over the committed bench/RESULTS_gpu.md."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import gpu_check  # noqa: E402
from harness import Figure  # noqa: E402

from prunelab.models.causal_lm import CausalLM  # noqa: E402
from prunelab.models.semi_structured import is_2of4  # noqa: E402

Results = tuple[int, dict[str, Any], str]


def run(out: Path, *args: str) -> Results:
    rc = gpu_check.main(["--dry-run", "--out", str(out), *args])
    return rc, json.loads((out / "results_gpu.json").read_text()), (out / "RESULTS_gpu.md").read_text()


def figures(results: dict[str, Any], step: str) -> dict[str, float]:
    (s,) = [s for s in results["steps"] if s["name"] == step]
    return {f["name"]: f["value"] for f in s["figures"]}


def test_the_dry_run_runs_every_step_or_says_why_and_writes_its_rows(tmp_path: Path) -> None:
    """One test for the whole dry run (about 10 s of 2 idle cores), so that it runs once whatever the xdist worker."""
    rc, results, md = run(tmp_path)
    steps = {s["name"]: s for s in results["steps"]}
    assert list(steps) == list(gpu_check.STEPS_ORDER)
    assert results["dry_run"] and results["machine"]["device"] == "CPU (dry run)"
    for s in steps.values():
        assert s["status"] in ("ok", "partial", "failed")
        assert (s["status"] == "ok") == (s["reason"] == ""), s  # every step not fully run says why
        assert s["figures"] or s["status"] == "failed", s
    assert steps["mfu"]["status"] == steps["rope"]["status"] == "ok"
    # the 2:4 kernels need a CUDA GPU: load_2of4 refuses the CPU with its one clear error, which is the reason
    assert steps["sparse24"]["status"] == "partial" and "CUDA GPUs only" in steps["sparse24"]["reason"]
    # with layer streaming in the tree the one-shot step runs both paths; without, it says streaming is missing
    one = steps["oneshot_1b"]
    missing = one["status"] == "partial" and one["reason"].startswith("layer streaming (pruner.stream) is not")
    assert one["status"] == "ok" or missing, one
    # hardware=fsdp runs, or (before that config exists) fails with train.py's error line
    assert steps["fsdp"]["status"] == "ok" or "train.py exited" in steps["fsdp"]["reason"]
    assert rc == (1 if any(s["status"] == "failed" for s in steps.values()) else 0)

    # the results files: the status table names every step, and the markdown has a row per figure of the json
    for name in gpu_check.STEPS_ORDER:
        assert f"| {name} | {gpu_check.TITLES[name]} |" in md
    table = [ln for ln in md.splitlines() if ln.count(" | ") == 6 and ln.split(" | ")[0][2:] in gpu_check.STEPS_ORDER]
    assert len(table) == sum(len(s["figures"]) for s in results["steps"])
    mfu = figures(results, "mfu")
    assert mfu["MFU: model FLOPs per step / (step time x peak bf16)"] > 0
    assert mfu["model FLOPs per step (real tokens)"] > 0 and mfu["step time"] > 0
    assert figures(results, "sparse24")["encoder Linear weights whose shape the 2:4 kernels take"] > 0
    rope = figures(results, "rope")
    tables = [v for k, v in rope.items() if "max abs difference to fp32's cast" in k]
    assert len(tables) == 2 and all(v == 0.0 for v in tables)  # bf16 and fp16 casts, bit-equal tables
    assert rope["bfloat16-cast model keeps inv_freq fp32 and equal"] == 1.0
    one_rows = figures(results, "oneshot_1b")
    assert one_rows["sparsity of the pruned matrices"] == pytest.approx(0.5, abs=1e-3)
    if not missing:
        assert one_rows["matrices whose streamed mask differs from in-memory's"] == 0
        assert one_rows["matrices whose streamed weights differ from in-memory's"] == 0


def test_a_step_that_fails_is_reported_and_the_next_still_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A planted bug in what the rope step checks: the rotary frequencies cast with the weights (nn.Module's own
    _apply instead of CausalLM's). The rope step must fail with its error line; sparse24 after it still runs."""
    monkeypatch.setattr(CausalLM, "_apply", nn.Module._apply)
    rc, results, md = run(tmp_path, "--steps", "rope,sparse24")
    rope, sparse24 = results["steps"]
    assert rope["name"] == "rope" and rope["status"] == "failed" and rc == 1
    assert rope["reason"].startswith("AssertionError: the cast model's rotary tables differ from fp32's")
    assert "bfloat16: inv_freq is torch.bfloat16" in rope["reason"]
    assert rope["figures"]  # the rows gathered before the failure are kept
    assert sparse24["name"] == "sparse24" and sparse24["status"] == "partial" and sparse24["figures"]
    assert "| rope | RoPE tables of a bf16-cast model vs fp32 | failed |" in md


def test_a_failing_streamed_pruning_still_lets_the_in_memory_one_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(hf: dict[str, Any]) -> dict[str, str]:
        raise KeyError("no key map")

    monkeypatch.setattr(gpu_check, "streaming", lambda: (SimpleNamespace(output_keys=broken), ""))
    _, results, _ = run(tmp_path, "--steps", "oneshot_1b")
    (step,) = results["steps"]
    assert step["status"] == "failed"
    assert step["reason"] == "RuntimeError: the streamed pruning failed: KeyError: 'no key map'"
    one = figures(results, "oneshot_1b")
    assert "in-memory SparseGPT 50%: seconds" in one and one["sparsity of the pruned matrices"] == pytest.approx(
        0.5, abs=1e-3
    )


def test_a_failing_sparse24_section_still_lets_load_2of4_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(**kwargs: Any) -> list[Figure]:
        raise IndexError("no batch")

    monkeypatch.setattr(gpu_check.semi_structured, "linear_and_encoder", broken)
    _, results, _ = run(tmp_path, "--steps", "sparse24")
    (step,) = results["steps"]
    assert step["status"] == "failed"
    assert step["reason"].startswith("RuntimeError: the sparse24 section failed: IndexError: no batch; ")
    assert "sparse24 timings and load_2of4 not run" in step["reason"]  # the load_2of4 part ran after it


def test_without_a_gpu_only_the_dry_run_runs_and_it_never_writes_over_the_committed_results(tmp_path: Path) -> None:
    if not torch.cuda.is_available():
        assert gpu_check.main(["--out", str(tmp_path)]) == 2
        assert not any(tmp_path.iterdir())
    with pytest.raises(SystemExit):
        gpu_check.main(["--dry-run", "--out", str(ROOT / "bench"), "--steps", "rope"])


def test_the_crossover_is_the_first_batch_whose_median_ratio_is_above_1() -> None:
    def f(what: str, b: int, v: float) -> Figure:
        return Figure("sparse24", f"{what}, batch {b} x 128: dense / 2:4 time", v)

    figs = [f("Linear", 1, 0.7), f("Linear", 4, 1.0), f("Linear", 16, 1.3), f("Linear", 64, 0.9)]
    figs += [f("encoder", 1, 0.5), f("encoder", 4, 0.9), Figure("sparse24", "something else", 5.0)]
    assert gpu_check.crossover(figs) == {"Linear": 16, "encoder": None}


def test_the_2of4_mask_keeps_the_two_largest_of_every_four() -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(8, 16, generator=g)
    keep = gpu_check.magnitude_2of4(w)
    assert is_2of4(keep) and int(keep.sum()) == w.numel() // 2
    for r in range(8):  # brute force: each kept entry beats each dropped one of its group
        for c in range(0, 16, 4):
            kept, dropped = w[r, c : c + 4].abs()[keep[r, c : c + 4]], w[r, c : c + 4].abs()[~keep[r, c : c + 4]]
            assert kept.min() >= dropped.max()


def test_the_fsdp_step_reads_each_steps_loss_and_the_error_line(tmp_path: Path) -> None:
    logs = tmp_path / "csv" / "version_0"
    logs.mkdir(parents=True)
    (logs / "metrics.csv").write_text("epoch,step,train/loss,val/loss\n0,0,7.5,\n0,1,7.25,\n0,1,,6.0\n")
    assert gpu_check.step_losses(tmp_path) == {0: 7.5, 1: 7.25}
    err = "Traceback (most recent call last):\n  File x\nValueError: bad strategy\n\n[rank0] exiting\n"
    assert gpu_check.error_line(err) == "ValueError: bad strategy"
    assert gpu_check.error_line("just a line\n") == "just a line"
