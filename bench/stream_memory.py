"""Peak resident memory of layer-streamed one-shot pruning (`pruner.stream=true`, prunelab.pruning.stream) against
the in-memory pruning of the same checkpoint, on random Llama-shaped checkpoints of ~0.1B, ~0.5B and ~1B parameters
(and on a real checkpoint folder with --checkpoint), each run in a fresh process of its own so that one run's freed
memory cannot hide the next one's.

    python bench/stream_memory.py                       # the three random sizes, both ways -> bench/RESULTS_stream.md
    python bench/stream_memory.py --sizes 0.1 --modes stream
    python bench/stream_memory.py --checkpoint /work/ext/smollm2_135m_q4_1 --modes stream,memory
    python bench/stream_memory.py --modes score         # stream_nll: scoring a checkpoint one part at a time

What is measured: the process's resident memory (RSS, /proc, sampled every 5 ms by pruning.memory.peak_memory)
from just before the checkpoint is read (torch and prunelab imported, the calibration windows made) to the end of
the pruning, and what it rose by (`extra`). The in-memory way is what a run does: prunelab.hf.families.load_hf (the
whole state dict read, then copied into the network), then OneShotPruner.prune. The streamed way is
pruning.stream.stream_prune into a folder. Both use the same method and calibration windows.

The random checkpoints are written here with safetensors (N(0, 0.02) weights, norms at 1), Llama's keys and
config.json, then deleted; they take the disk their size says (fp32 by default: 4 GB at 1B parameters).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
# ~0.1B / 0.5B / 1B parameters: (hidden, intermediate, layers, heads, kv heads, vocab); untied head
SIZES: dict[str, tuple[int, int, int, int, int, int]] = {
    "0.1": (768, 2048, 12, 12, 4, 32000),
    "0.5": (1280, 3584, 24, 20, 4, 32000),
    "1": (2048, 5632, 22, 32, 4, 32000),  # TinyLlama-1.1B's shape
}


def llama_parameters(d: int, ff: int, layers: int, heads: int, kv: int, vocab: int) -> int:
    hd = d // heads
    per_layer = 2 * d * d + 2 * d * kv * hd + 3 * d * ff + 2 * d
    return layers * per_layer + 2 * vocab * d + d


def write_random_llama(
    folder: Path,
    d: int,
    ff: int,
    layers: int,
    heads: int,
    kv: int,
    vocab: int,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    tied: bool = False,
) -> Path:
    """A random Llama checkpoint as transformers saves one (config.json, one model.safetensors with its keys), written
    a layer at a time into memory: the whole state is held once (the bench's writer runs in its own process)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    hd = d // heads

    def w(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * 0.02).to(dtype)

    state = {"model.embed_tokens.weight": w(vocab, d), "model.norm.weight": torch.ones(d, dtype=dtype)}
    if not tied:
        state["lm_head.weight"] = w(vocab, d)
    for i in range(layers):
        p = f"model.layers.{i}"
        state.update(
            {
                f"{p}.self_attn.q_proj.weight": w(heads * hd, d),
                f"{p}.self_attn.k_proj.weight": w(kv * hd, d),
                f"{p}.self_attn.v_proj.weight": w(kv * hd, d),
                f"{p}.self_attn.o_proj.weight": w(d, heads * hd),
                f"{p}.mlp.gate_proj.weight": w(ff, d),
                f"{p}.mlp.up_proj.weight": w(ff, d),
                f"{p}.mlp.down_proj.weight": w(d, ff),
                f"{p}.input_layernorm.weight": torch.ones(d, dtype=dtype),
                f"{p}.post_attention_layernorm.weight": torch.ones(d, dtype=dtype),
            }
        )
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": d,
        "intermediate_size": ff,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "vocab_size": vocab,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": tied,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return folder


def windows(vocab: int, n: int, length: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """`n` random language-model windows of `length` tokens, one a batch, as the data collates them."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        w = torch.randint(0, vocab, (1, length + 1), generator=g)
        out.append({"src": w[:, :-1], "target": w[:, 1:], "real": torch.ones(1, length, dtype=torch.bool)})
    return out


def measure(checkpoint: Path, mode: str, method: str, n: int, length: int, sparsity: float) -> dict[str, Any]:
    """One pruning of `checkpoint` in this process, `mode` stream or memory -> its figures."""
    from prunelab.hf.checkpoint import read_config
    from prunelab.pruning.calibration import CalibrationSet
    from prunelab.pruning.memory import peak_memory, rss_bytes
    from prunelab.pruning.oneshot import OneShotPruner
    from prunelab.pruning.stream import stream_prune

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    vocab = read_config(checkpoint)[1]["vocab_size"]
    batches = windows(vocab, n, length)
    # memory mode measures the in-memory path: stream=False, not auto (which would stream where memory is short)
    pruner = OneShotPruner(sparsity=sparsity, method=method, device="cpu", stream=False)
    baseline = rss_bytes()
    t0 = time.perf_counter()
    if mode == "score":  # stream_nll: the checkpoint scored one part at a time, nothing pruned
        from prunelab.pruning.stream import stream_nll, streamable, streamed_network

        with peak_memory(torch.device("cpu")) as memory:
            stream_nll(checkpoint, batches, torch.device("cpu"))
        network, _ = streamed_network(*streamable(checkpoint))  # on the meta device: the shapes alone
        model_bytes = sum(p.numel() * 4 for p in network.parameters())  # fp32, as the in-memory model holds it
    elif mode == "stream":
        out = Path(tempfile.mkdtemp(prefix="stream-bench-", dir=checkpoint.parent))
        try:
            report = stream_prune(pruner, checkpoint, out, batches, torch.device("cpu"))
        finally:
            shutil.rmtree(out, ignore_errors=True)
        memory, model_bytes = report["memory"], report["memory"]["model_bytes"]
    else:
        from prunelab.hf.families import load_hf

        with peak_memory(torch.device("cpu")) as memory:
            model = load_hf(checkpoint).eval()
            pruner.attach(model)
            pruner.calibration_data = lambda: CalibrationSet(batches, {"examples": n, "tokens": n * length})
            pruner.use_data(object())
            pruner.prune(model)
        model_bytes = sum(p.numel() * 4 for p in model.parameters())
    return {
        "mode": mode,
        "method": method,
        "calibration": f"{n} x {length} tokens",
        "seconds": time.perf_counter() - t0,
        "model_bytes": model_bytes,
        "baseline_rss_bytes": baseline,
        "peak_rss_bytes": memory["peak_bytes"],
        "extra_bytes": memory["extra_bytes"],
        "extra_over_model": memory["extra_bytes"] / model_bytes,
    }


def child(args: argparse.Namespace) -> None:
    res = measure(Path(args.checkpoint), args.child, args.method, args.n, args.length, args.sparsity)
    print("RESULT " + json.dumps(res))


def run_child(checkpoint: Path, mode: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", mode, "--checkpoint", str(checkpoint), "--method", args.method]
    cmd += ["--n", str(args.n), "--length", str(args.length), "--sparsity", str(args.sparsity)]
    env = {**os.environ, "PYTHONPATH": str(HERE.parent / "src")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode or line is None:
        return {"mode": mode, "error": (proc.stderr or proc.stdout)[-500:]}
    return json.loads(line.removeprefix("RESULT "))


def mb(x: float) -> str:
    return f"{x / 2**20:,.0f}"


def table(rows: list[dict[str, Any]]) -> str:
    head = "| checkpoint | params | model (fp32) MB | mode | peak RSS MB | rise MB | rise / model | s |\n"
    head += "|---|---:|---:|---|---:|---:|---:|---:|\n"
    lines = []
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['name']} | | | {r['mode']} | error: {r['error'][-120:]!r} | | | |")
            continue
        lines.append(
            f"| {r['name']} | {r['params'] / 1e9:.2f}B | {mb(r['model_bytes'])} | {r['mode']} | "
            f"{mb(r['peak_rss_bytes'])} | {mb(r['extra_bytes'])} | {r['extra_over_model']:.2f} | {r['seconds']:.0f} |"
        )
    return head + "\n".join(lines) + "\n"


HEADER = """# Layer-streamed one-shot pruning: peak resident memory

`python bench/stream_memory.py` (`pruner.stream=true`, prunelab.pruning.stream): the peak resident memory (RSS) of
one-shot pruning, streamed one layer at a time from the checkpoint's safetensors files against in memory (the
checkpoint imported whole, then pruned), each run in a fresh process on the CPU. "rise" is what the resident memory
rose by from just before the checkpoint was first read (torch and prunelab imported, the calibration windows made)
to the end of the pruning; "peak RSS" is the process's whole resident memory at its peak, torch's own ~0.3 GB
included. Model sizes are fp32, as prunelab computes.

"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="0.1,0.5,1", help=f"random checkpoints among {', '.join(SIZES)} (B params)")
    p.add_argument("--checkpoint", default=None, help="a real checkpoint folder instead of the random ones")
    p.add_argument("--modes", default="stream,memory")
    p.add_argument("--method", default="wanda")
    p.add_argument("--n", type=int, default=4, help="calibration windows")
    p.add_argument("--length", type=int, default=128, help="tokens a window")
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--dtype", default="float32", help="of the random checkpoints on disk")
    p.add_argument("--dir", default=tempfile.gettempdir(), help="where the random checkpoints are written")
    p.add_argument("--json", default=str(HERE / "results_stream.json"), help="rows kept across invocations")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return
    rows: list[dict[str, Any]] = []
    modes = args.modes.split(",")
    if args.checkpoint:
        folder = Path(args.checkpoint)
        from safetensors import safe_open

        with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
            params = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
        for mode in modes:
            rows.append({"name": folder.name, "params": params, **run_child(folder, mode, args)})
            print(rows[-1], flush=True)
    for size in [] if args.checkpoint else args.sizes.split(","):
        shape = SIZES[size]
        folder = Path(tempfile.mkdtemp(prefix=f"llama-{size}B-", dir=args.dir))
        try:
            code = (
                "import sys; sys.path[:0] = sys.argv[1:3]; import torch, stream_memory as s; a = sys.argv; "
                "s.write_random_llama(s.Path(a[3]), *map(int, a[4:10]), dtype=getattr(torch, a[10]))"
            )
            where = [str(HERE), str(HERE.parent / "src"), str(folder)]
            # in a process of its own: the writer's memory is not the runs'
            subprocess.run([sys.executable, "-c", code, *where, *map(str, shape), args.dtype], check=True)
            for mode in modes:
                name = f"random Llama {size}B ({args.dtype} on disk)"
                rows.append({"name": name, "params": llama_parameters(*shape), **run_child(folder, mode, args)})
                print(rows[-1], flush=True)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    path = Path(args.json)
    kept = json.loads(path.read_text()) if path.is_file() else []
    new = {(r["name"], r["mode"]) for r in rows}
    kept = [r for r in kept if (r["name"], r["mode"]) not in new] + rows
    path.write_text(json.dumps(kept, indent=2) + "\n")
    print(HEADER + table(kept))


if __name__ == "__main__":
    main()
