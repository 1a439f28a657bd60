"""Raw (not per-layer normalised) importance of SmolLM2's 90 K/V groups, to compare layers with each other.

`pruner=heads pruner.unit=group` ranks groups by Michel et al.'s I, normalised per layer (each layer's vector divided
by its L2 norm), which says how unevenly a layer's groups matter but not which layers matter least. This script
takes the same I (prunelab.criteria.heads.head_importance, groups=True: E_x |∂L(x)/∂ξ_g| with one gate per group)
on the same batches as the run (the data module's first `--batches` training batches, data.max_tokens=4096 and the
run's seed), once with normalize=False, and checks that normalising it gives the run's scores.

    OMP_NUM_THREADS=2 .venv/bin/python experiments/smollm2/group_importance.py --model /work/ext/smollm2_135m_q4_1 \
        --data /work/ext/lm_wikitext2 --run outputs/smollm2/heads_group33 \
        --out experiments/smollm2/results/group_importance.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--run", type=Path, required=True, help="the pruner=heads pruner.unit=group run")
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--max-tokens", type=int, default=4096)
    ap.add_argument("--batches", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1234, help="the run's seed (its training order)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    import lightning as L

    from prunelab.criteria.heads import head_importance
    from prunelab.data.language_modeling import LmTextDataModule
    from prunelab.hf.causal_lm import load_hf_causal_lm
    from prunelab.models.addressing import component

    t0 = time.perf_counter()
    L.seed_everything(args.seed)
    dm = LmTextDataModule(
        dir=str(args.data),
        tokenizer=str(args.model),
        seq_len=args.seq_len,
        documents="joined",  # as run.sh: each file tokenized whole
        max_tokens=args.max_tokens,
        seed=args.seed,
        shuffle_seed=args.seed,
    )
    dm.setup()
    model = load_hf_causal_lm(args.model)
    raw = head_importance(model, dm.train_dataloader(), normalize=False, max_batches=args.batches, groups=True)
    run = json.loads((args.run / "results.json").read_text())["heads"]["importance"]
    layers = []
    worst = 0.0
    for name, s in raw.items():  # dec.{i}.sa -> (3,) in kv_ids order
        ids = component(model, name).kv_ids.tolist()
        norm = s / s.norm()
        for g, v in zip(ids, norm.tolist(), strict=True):
            worst = max(worst, abs(v - run[f"{name}.h{3 * g}"]))
        layers.append({"layer": int(name.split(".")[1]), "raw": [float(x) for x in s], "sum": float(s.sum())})
    order = sorted(layers, key=lambda r: r["sum"])
    res = {
        "batches": args.batches,
        "tokens": args.batches * (args.max_tokens // args.seq_len) * args.seq_len,
        "normalised_equals_run": worst < 1e-4,
        "max_abs_diff_to_run": worst,
        "layers": layers,
        "least_important_layers": [r["layer"] for r in order[:5]],
        "most_important_layers": [r["layer"] for r in order[::-1][:5]],
        "groups_by_raw_importance": sorted(
            (f"dec.{r['layer']}.sa.g{g}" for r in layers for g in range(3)),
            key=lambda n: layers[int(n.split(".")[1])]["raw"][int(n[-1])],
        ),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    args.out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps({k: v for k, v in res.items() if k not in ("layers", "groups_by_raw_importance")}, indent=1))
    for r in layers:
        print(r["layer"], " ".join(f"{x:.4f}" for x in r["raw"]), f"{r['sum']:.4f}")


if __name__ == "__main__":
    main()
