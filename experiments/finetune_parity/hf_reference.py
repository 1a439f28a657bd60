"""The transformers side of the fine-tuning comparison (issue 24): a `BertModel` folder fine-tuned by transformers'
own `BertForSequenceClassification` with prunelab's `experiment=finetune` recipe, to the same wall-clock budget.

Recipe: AdamW (lr 2e-5, betas 0.9/0.999, eps 1e-8, weight decay 0.01 on weight matrices only), linear warm-up over
the first 10% of the steps, then linear decay to 0, batches of 32 texts (at most 128 tokens), the checkpoint's own
dropout. A transformers user with a time budget picks the number of steps that fits it: a probe of `--probe-steps`
steps (on a throw-away copy of the model, not counted) measures the step rate, and the run then trains
steps = rate x (budget - the time its validations and test will take). The dev set is scored every
`--val-every` steps; the best dev checkpoint is tested, as prunelab does. Writes `results.json` in `--out`.

    python experiments/finetune_parity/hf_reference.py --model DIR --data DIR --out DIR --budget 900
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import random
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, BertForSequenceClassification, get_linear_schedule_with_warmup


def read_tsv(path: Path) -> tuple[list[str], list[int]]:
    """sentence<TAB>label with a header row (GLUE's SST-2 layout)."""
    with path.open(encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    rows = rows[1:] if rows and rows[0][-1] == "label" else rows
    return [r[0] for r in rows], [int(r[-1]) for r in rows]


def batches(tok, texts: list[str], labels: list[int], size: int, order: list[int]):
    for i in range(0, len(order), size):
        idx = order[i : i + size]
        enc = tok([texts[j] for j in idx], padding=True, truncation=True, max_length=128, return_tensors="pt")
        yield enc, torch.tensor([labels[j] for j in idx])


@torch.no_grad()
def accuracy(model, tok, texts: list[str], labels: list[int]) -> float:
    model.eval()
    right = 0
    for enc, y in batches(tok, texts, labels, 128, list(range(len(texts)))):
        right += int((model(**enc).logits.argmax(-1) == y).sum())
    model.train()
    return 100.0 * right / len(texts)


def optimizer_for(model, lr: float, wd: float) -> torch.optim.AdamW:
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": wd},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8)


def train_steps(model, tok, data, steps: int, lr: float, wd: float, seed: int, on_step=None) -> None:
    texts, labels = data
    opt = optimizer_for(model, lr, wd)
    sched = get_linear_schedule_with_warmup(opt, round(0.1 * steps), steps)
    rng = random.Random(seed)
    done = 0
    while done < steps:
        order = list(range(len(texts)))
        rng.shuffle(order)
        for enc, y in batches(tok, texts, labels, 32, order):
            loss = model(**enc, labels=y).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            done += 1
            if on_step is not None:
                on_step(done)
            if done >= steps:
                return


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--budget", type=float, default=900.0)
    ap.add_argument("--probe-steps", type=int, default=30)
    ap.add_argument("--val-every", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    torch.manual_seed(args.seed)
    tok = AutoTokenizer.from_pretrained(args.model)
    train, dev, test = (read_tsv(args.data / f) for f in ("train.tsv", "dev.tsv", "test.tsv"))
    model = BertForSequenceClassification.from_pretrained(args.model, num_labels=2)
    model.train()

    # the probe: the step rate and one dev evaluation's cost, on a copy that is thrown away
    probe = copy.deepcopy(model)
    t0 = time.monotonic()
    train_steps(probe, tok, train, args.probe_steps, args.lr, args.weight_decay, args.seed + 1)
    step_s = (time.monotonic() - t0) / args.probe_steps
    t0 = time.monotonic()
    accuracy(probe, tok, *dev)
    dev_s = time.monotonic() - t0
    del probe
    left = args.budget - (time.monotonic() - start)
    test_s = dev_s * len(test[0]) / len(dev[0])
    # steps n with n x step + (n / val_every) x dev + test <= left
    steps = math.floor((left - test_s) / (step_s + dev_s / args.val_every))
    print(f"probe: {step_s:.3f} s/step, dev {dev_s:.1f} s -> {steps} steps in the {left:.0f} s left", flush=True)

    best = {"acc": -1.0, "step": 0, "state": None}
    curve = []
    t_train = time.monotonic()

    def on_step(done: int) -> None:
        if done % args.val_every == 0 or done == steps:
            acc = accuracy(model, tok, *dev)
            curve.append({"step": done, "dev_acc": acc, "elapsed_s": time.monotonic() - start})
            print(f"step {done}: dev {acc:.2f}", flush=True)
            if acc > best["acc"]:
                best.update(acc=acc, step=done, state={k: v.clone() for k, v in model.state_dict().items()})

    torch.manual_seed(args.seed)
    train_steps(model, tok, train, steps, args.lr, args.weight_decay, args.seed, on_step)
    train_s = time.monotonic() - t_train
    model.load_state_dict(best["state"])
    test_acc = accuracy(model, tok, *test)
    results = {
        "what": "transformers BertForSequenceClassification, prunelab's finetune recipe, to a wall-clock budget",
        "model": str(args.model),
        "data": str(args.data),
        "budget_s": args.budget,
        "steps": steps,
        "probe": {"steps": args.probe_steps, "s_per_step": step_s, "dev_eval_s": dev_s},
        "best_dev": {"step": best["step"], "acc": best["acc"]},
        "test_acc": test_acc,
        "dev_curve": curve,
        "train_and_validate_s": train_s,
        "wall_time_s": time.monotonic() - start,
        "torch_threads": torch.get_num_threads(),
    }
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: results[k] for k in ("steps", "best_dev", "test_acc", "wall_time_s")}), flush=True)


if __name__ == "__main__":
    main()
