"""What a decoder-only import assumes when config.json leaves a key out must be what transformers assumes: a
config.json written by hand or by another tool may lack `tie_word_embeddings`, and transformers' Llama, Mistral,
Qwen2 and Qwen3 configs then have a separate lm_head (GPT-2's a tied one)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from prunelab.hf.causal_lm import causal_lm_config, load_hf_causal_lm  # noqa: E402
from tests.unit.test_hf_causal_lm import V, make_checkpoint  # noqa: E402

CONFIG_CLASSES = {
    "gpt2": "GPT2Config",
    "llama": "LlamaConfig",
    "mistral": "MistralConfig",
    "qwen2": "Qwen2Config",
    "qwen3": "Qwen3Config",
}


@pytest.mark.parametrize("family", list(CONFIG_CLASSES))
def test_tie_default_is_transformers_default(family: str) -> None:
    """A config.json of the family's config class without `tie_word_embeddings` is read as the class reads it."""
    config_class = getattr(transformers, CONFIG_CLASSES[family])
    config = config_class(sliding_window=None) if family == "mistral" else config_class()
    hf = config.to_dict()
    del hf["tie_word_embeddings"]
    assert causal_lm_config(hf).tie_embeddings is config_class.from_dict(hf).tie_word_embeddings


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "qwen3"])
def test_untied_checkpoint_without_the_key_imports_untied(family: str, tmp_path: Path) -> None:
    """An untied checkpoint saved by transformers, `tie_word_embeddings` deleted from its config.json: transformers
    loads it with its separate lm_head, and so must the import (tied, it would refuse the differing lm_head or, had
    it been dropped, score with the embedding)."""
    theirs = make_checkpoint(family, tmp_path)
    head, table = theirs.lm_head.weight, theirs.get_input_embeddings().weight
    assert not torch.equal(head, table)  # really untied
    config = json.loads((tmp_path / "config.json").read_text())
    del config["tie_word_embeddings"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert not reloaded.config.tie_word_embeddings  # transformers' own reading of the file without the key
    ours = load_hf_causal_lm(tmp_path).eval()
    assert not ours.cfg.tie_embeddings and ours.lm_head is not None
    assert torch.equal(ours.lm_head.weight, head)
    x = torch.randint(0, V, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reloaded(x).logits, atol=1e-5, rtol=1e-5)
