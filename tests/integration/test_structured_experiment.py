"""experiments/structured end to end at the smallest scale: a dense start, width pruning recovered with distillation,
plain fine-tuning and from scratch at the distil run's compute (run.sh's formula), the speed script and the report,
whose table and verdicts read those runs."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import load_experiment_report, train_here


def test_grid_speed_and_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    smoke = ["experiment=smoke", "logger=csv"]
    runs, results = tmp_path / "runs", tmp_path / "results"
    results.mkdir()
    base = train_here(runs / "nmt_base", *smoke)
    assert base.returncode == 0, base.stderr[-3000:]
    common = [*smoke, "pruner=structured", "sparsity=0.3", "pruner.budget=stack_params", f"ckpt={base.dir}"]
    steps = 6
    for name, extra in (
        ("nmt_width_0.3_distil", [f"pruner.finetune_steps={steps}", f"task.distill.teacher={base.dir}"]),
        ("nmt_width_0.3_finetune", [f"pruner.finetune_steps={steps}"]),
    ):
        run = train_here(runs / name, *common, *extra)
        assert run.returncode == 0, run.stderr[-3000:]
    flops = json.loads((runs / "nmt_width_0.3_distil/results.json").read_text())["structured"]["flops_per_token"]
    scratch_steps = round(steps * (3 * flops["after"] + flops["before"]) / (3 * flops["after"]))  # run.sh's formula
    assert scratch_steps > steps
    run = train_here(
        runs / "nmt_width_0.3_scratch", *common, f"pruner.finetune_steps={scratch_steps}", "pruner.recovery=scratch"
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert [lv["stage"] for lv in run.results["levels"]] == ["dense", "pruned", "from scratch"]
    for d in runs.iterdir():
        if (d / "results.json").is_file():
            shutil.copy(d / "results.json", results / f"{d.name}.results.json")
    by_run = {d.name: json.loads((d / "results.json").read_text()) for d in runs.iterdir() if d.is_dir()}

    import experiments.structured.speed as speed

    args = ["speed", str(runs / "nmt_base"), str(runs / "nmt_width_0.3_distil"), "--batch-sizes", "1", "4"]
    monkeypatch.setattr(
        sys, "argv", [*args, "--sentences", "8", "--repeats", "1", "--out", str(results / "speed_nmt.json")]
    )
    speed.main()
    rows = json.loads((results / "speed_nmt.json").read_text())["nmt_width_0.3_distil"]["rows"]
    assert [r["batch_size"] for r in rows] == [1, 4] and all(r["speedup"] > 0 for r in rows)
    # --teacher-forced: the model's forward pass over the references, every test batch through it once per timing
    model_class = type(speed.load_run(runs / "nmt_width_0.3_distil").model)
    real_forward = model_class.forward
    calls: list[tuple[int, int]] = []  # (sentences, reference length) per forward

    def counted(self: object, src: object, tgt: object = None, *a: object, **k: object) -> object:
        calls.append((len(src), 0 if tgt is None else tgt.shape[1]))  # type: ignore[arg-type, union-attr]
        return real_forward(self, src, tgt, *a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(model_class, "forward", counted)
    forward_out = results / "forward_nmt.json"
    forward_args = [*args, "--sentences", "8", "--repeats", "1", "--teacher-forced", "--out", str(forward_out)]
    monkeypatch.setattr(sys, "argv", forward_args)
    speed.main()
    forward = json.loads(forward_out.read_text())["nmt_width_0.3_distil"]
    assert forward["measures"] == "teacher-forced" and forward["beam_size"] is None
    # batch 1: 8 passes each for dense and pruned, then batch 4: 2 each; every one reads the references (length > 0)
    assert [n for n, _ in calls] == [1] * 16 + [4] * 4 and all(t > 0 for _, t in calls)
    assert all(r["speedup"] > 0 and r["dense_score"] == 0.0 for r in forward["rows"])

    # a second recovery budget (run.sh's _1000 runs), here the finetune run relabelled as that budget's distil run:
    # runs are compared within their budget only, so it has no scratch or finetune partner
    shutil.copy(results / "nmt_width_0.3_finetune.results.json", results / "nmt_width_0.3_distil_12.results.json")
    report = load_experiment_report("structured")
    report.main(results)
    verdicts = json.loads((results / "verdicts.json").read_text())["nmt"]
    assert [c["distil"] for c in verdicts["distil_vs_dense"]] == pytest.approx(
        [by_run[n]["metrics"]["test/bleu"] for n in ("nmt_width_0.3_distil", "nmt_width_0.3_finetune")]
    )
    (v,) = verdicts["distil_vs_scratch"]
    assert v["structure"] == "width" and v["fraction"] == 0.3
    # equal compute by construction, up to the tokens of each step (batches are cut by tokens, not exactly equal)
    assert v["compute_ratio_scratch_over_distil"] == pytest.approx(1.0, abs=0.15)
    close = verdicts["distil_vs_dense"][0]  # the dense score and the speed-up come from their own files
    assert close["gap"] == pytest.approx(base.results["metrics"]["test/bleu"] - v["distil"])
    assert close["speedup_b64"] is None  # measured at batch 1 and 4 only
    (gain,) = verdicts["distillation_gain"]
    by_name = {p.name.removesuffix(".results.json"): json.loads(p.read_text()) for p in results.glob("*.results.json")}
    assert gain["gain"] == pytest.approx(
        by_name["nmt_width_0.3_distil"]["metrics"]["test/bleu"]
        - by_name["nmt_width_0.3_finetune"]["metrics"]["test/bleu"]
    )
    assert (results / "structured.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (results / "tables.md").read_text()
    assert "nmt_width_0.3_scratch" in table and "nmt_base" in table
    distil_row = next(line for line in table.splitlines() if line.startswith("| nmt_width_0.3_distil "))
    assert f"{rows[0]['speedup']:.2f}x / -" in distil_row  # speed_nmt.json's batch-1 figure reaches the table


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a GPU machine has the device")
def test_speed_on_a_device_the_machine_lacks_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import experiments.structured.speed as speed

    monkeypatch.setattr(sys, "argv", ["speed", "dense", "run", "--device", "cuda", "--out", "speed.json"])
    with pytest.raises(SystemExit, match="--device cuda: this machine has no such device"):
        speed.main()
