"""Gemma ("gemma"), Gemma 2 ("gemma2") and Gemma 3 text ("gemma3_text") imported from tiny checkpoints transformers
builds (random weights spread away from their init): logits, the perplexity windows' loss, cached positions and
greedy generation equal transformers', and a pruned export reloads with equal logits, for

- gemma: (1 + w) RMSNorms, embeddings x sqrt(hidden), GeGLU, grouped-query attention with a head_dim (16) that is
  not hidden / heads (8);
- gemma2: pre- and post-norms around both sub-layers, attention and final logits soft-capped (caps small enough
  that tanh bends the spread model's logits), query_pre_attn_scalar, sliding windows of 8 positions in every other
  layer under sequences of 30;
- gemma3_text: q/k norms, sliding windows of 8 in two of three layers with their own rotary base (100) and the
  global layer's base with a linear scaling.

Planted errors that fail the logits test (tried by hand on the gemma2 and gemma3 checkpoints): the norms' 1 + w read
as w, the attention or the final soft-cap left out, the local rotary base used in every layer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from prunelab.errors import UserError
from prunelab.hf.families import load_hf
from prunelab.models.causal_lm import CausalLM
from tests.lm_parity import assert_pruned_export_reloads, assert_same_lm, spread

transformers = pytest.importorskip("transformers")

V = 64
SHAPE = dict(
    vocab_size=V, hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=16, intermediate_size=48,
    num_hidden_layers=3, max_position_embeddings=64, bos_token_id=0, eos_token_id=0, pad_token_id=0,
)  # fmt: skip
VARIANTS = {
    "gemma": ("gemma", {"head_dim": 8}),
    "gemma2": ("gemma2", {"sliding_window": 8, "attn_logit_softcapping": 2.0, "final_logit_softcapping": 3.0,
                          "query_pre_attn_scalar": 12}),
    "gemma3": ("gemma3_text", {"sliding_window": 8, "sliding_window_pattern": 3, "rope_parameters": {
        "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0},
        "sliding_attention": {"rope_type": "default", "rope_theta": 100.0}}}),
}  # fmt: skip
CLASSES = {
    "gemma": ("GemmaConfig", "GemmaForCausalLM"),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM"),
    "gemma3_text": ("Gemma3TextConfig", "Gemma3ForCausalLM"),
}


@pytest.fixture(scope="module", params=list(VARIANTS))
def checkpoint(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object, str]:
    kind, changes = VARIANTS[request.param]
    config_class, model_class = (getattr(transformers, name) for name in CLASSES[kind])
    torch.manual_seed(0)
    model = spread(model_class(config_class(**{**SHAPE, **changes})), ("norm",))
    folder = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(folder)
    return folder, model, kind


def test_logits_loss_cache_and_greedy_generation_equal_transformers(checkpoint: tuple[Path, object, str]) -> None:
    folder, theirs, kind = checkpoint
    ours = load_hf(folder).eval()
    assert isinstance(ours, CausalLM) and ours.cfg.norm == "gemma_rms" and ours.cfg.embed_scale
    windows = [layer.window for layer in ours.dec]
    assert windows == {"gemma": [None] * 3, "gemma2": [8, None, 8], "gemma3_text": [8, 8, None]}[kind]
    assert [layer.local_rope for layer in ours.dec] == [kind == "gemma3_text" and w is not None for w in windows]
    assert_same_lm(ours, theirs, V)


def test_pruned_export_reloads_with_equal_logits(checkpoint: tuple[Path, object, str], tmp_path: Path) -> None:
    folder, theirs, _ = checkpoint
    config = assert_pruned_export_reloads(folder, tmp_path / "out", type(theirs), V)
    assert config["model_type"] == theirs.config.model_type


def test_unrepresentable_settings_are_one_error(checkpoint: tuple[Path, object, str], tmp_path: Path) -> None:
    folder, _, kind = checkpoint
    config = json.loads((folder / "config.json").read_text())
    changes = [({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}}, "rope scaling 'yarn'")]
    if kind == "gemma3_text":
        local = {"rope_type": "linear", "factor": 2.0, "rope_theta": 100.0}
        changes = [
            ({"use_bidirectional_attention": True}, "use_bidirectional_attention"),
            ({"rope_parameters": {**config["rope_parameters"], "sliding_attention": local}}, "local .sliding. layers"),
        ]
    elif kind == "gemma2":
        changes.append(({"layer_types": ["sliding_attention", "chunked_attention", "full_attention"]}, "layer_types"))
    for change, message in changes:
        (tmp_path / "config.json").write_text(json.dumps({**config, **change}))
        with pytest.raises(UserError, match=message):
            load_hf(tmp_path, weights=False)
