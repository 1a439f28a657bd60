"""The causal_lm section of `make bench` at its smallest setting (`bench/run.py --smoke --sections causal_lm`): a row
set per model shape (Llama-100M, OPT-125M, Gemma-2-140M), each imported by prunelab.hf.families.load_hf from the folder
transformers saved. Beyond running, the rows compare like with like: the imported model's logits equal transformers'
and its greedy generation decodes the tokens `generate` decodes (both recorded in the rows' notes)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KERNELS = "torch ops / prunelab.models.kernels time"
MODELS = {"Llama-100M": "LlamaForCausalLM", "OPT-125M": "OPTForCausalLM", "Gemma-2-140M": "Gemma2ForCausalLM"}


def test_causal_lm_section_has_llama_opt_and_gemma2_rows_of_equal_models(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "bench/run.py", "--smoke", "--sections", "causal_lm", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    figures = json.loads((tmp_path / "results.json").read_text())["figures"]
    # the Llama rows keep their names (RESULTS_causal_lm.md and the README quote them); the others follow their pattern
    assert [f["name"] for f in figures] == [
        name
        for label, cls in MODELS.items()
        for name in (
            f"{label} perplexity forward tok/s: prunelab / {cls}",
            f"{label} training tok/s: prunelab / {cls}",
            f"{label} greedy generation tok/s: prunelab / {cls}.generate",
        )
    ] + [  # then what prunelab.models.kernels saves, at the smoke sizes (70 rows, 50 classes, width 16)
        f"next-token loss without gradients, 70 x 50 fp32 logits: {KERNELS}",
        f"next-token loss forward + backward, 70 x 50 fp32 logits: {KERNELS}",
        f"RMSNorm forward + backward, 70 x 16 fp32: {KERNELS}",
    ]
    for f in figures:
        assert f["section"] == "causal_lm" and f["goal"] == 1.0 and f["lo"] <= f["value"] <= f["hi"], f
    for label in MODELS:
        forward, _, generation = (f for f in figures if f["name"].startswith(label + " "))
        diff = re.search(r"max \|logit diff\| (\S+)$", forward["note"])
        assert diff and float(diff.group(1)) < 1e-4, forward["note"]
        assert "1/1 sequences token-for-token equal to generate" in generation["note"], generation["note"]
    for f in figures[-3:]:  # the kernels' outputs equal the torch ops' they replace, measured in the bench run
        assert f["note"].endswith("outputs torch.equal: True"), f["note"]
