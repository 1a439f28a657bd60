"""An exported decoder-only folder names its tensors exactly as transformers' own `save_pretrained` does: the same
names, shapes and (unpruned) values in model.safetensors. transformers' loader forgives some differences (it strips
a stray `model.` prefix, ignores a tied head written out), a stricter loader would not: an untied Llama's head is
`lm_head.weight`, never `model.lm_head.weight`, and a tied head (Llama's or GPT-2's) is not in the file at all."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

from prunelab.hf.causal_lm import load_hf_causal_lm  # noqa: E402
from prunelab.hf.export import export_hf  # noqa: E402
from tests.unit.test_hf_causal_lm import CLASSES, LLAMA_LIKE, _configs  # noqa: E402


def hf_model(family: str) -> torch.nn.Module:
    """A random transformers model: the import tests' GPT-2 (tied head), Llama (untied, GQA, llama3 rope scaling)
    and Qwen2 (untied, Q/K/V biases), and a tied Llama and Qwen3."""
    torch.manual_seed(0)
    if family == "llama_tied":
        config = transformers.LlamaConfig(**LLAMA_LIKE, num_key_value_heads=2, tie_word_embeddings=True)
        return transformers.LlamaForCausalLM(config).eval()
    if family == "qwen3_tied":
        config = transformers.Qwen3Config(**LLAMA_LIKE, num_key_value_heads=2, head_dim=16, tie_word_embeddings=True)
        return transformers.Qwen3ForCausalLM(config).eval()
    return getattr(transformers, CLASSES[family])(_configs()[family]).eval()


@pytest.mark.parametrize("family", ["llama", "qwen2", "llama_tied", "qwen3_tied", "gpt2"])
def test_exported_tensor_names_are_save_pretrained_names(family: str, tmp_path: Path) -> None:
    theirs = hf_model(family)
    tied = theirs.config.tie_word_embeddings
    assert tied == (family in ("llama_tied", "qwen3_tied", "gpt2"))
    theirs.save_pretrained(tmp_path / "hf")
    ours = load_hf_causal_lm(tmp_path / "hf").eval()
    out = export_hf(ours, tmp_path / "hf", tmp_path / "export")
    want = safetensors_torch.load_file(tmp_path / "hf" / "model.safetensors")
    got = safetensors_torch.load_file(out / "model.safetensors")
    assert ("lm_head.weight" in want) is not tied  # what save_pretrained writes: a separate head only
    assert sorted(got) == sorted(want)
    for name, tensor in want.items():
        assert got[name].shape == tensor.shape, name
        assert torch.equal(got[name], tensor), name  # nothing pruned: the export is the checkpoint
    # and transformers loads the folder with no key missing or left over
    _, info = transformers.AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
