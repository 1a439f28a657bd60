"""Phi (model_type "phi") and Phi-3 ("phi3") imported from tiny checkpoints transformers builds (random weights spread
away from their init): logits, the perplexity windows' loss, cached positions and greedy generation equal
transformers', and a pruned export reloads with equal logits, for

- phi: one shared LayerNorm read by the parallel attention and MLP, half of each head rotated, biases everywhere
  with the lm_head's; and the same with qk_layernorm and grouped-query attention;
- phi3: fused qkv_proj / gate_up_proj, grouped-query attention, partial rotary, and a sliding window of 8 positions
  under sequences of 30 (the cache and generation run past it).

Planted errors that fail the logits test (tried by hand on the phi3 checkpoint): the sliding window ignored,
gate_up_proj read as [up | gate]."""

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
    vocab_size=V, hidden_size=32, num_attention_heads=4, intermediate_size=48, num_hidden_layers=3,
    max_position_embeddings=64, bos_token_id=0, eos_token_id=0, pad_token_id=0,
)  # fmt: skip
VARIANTS = {
    "phi": ("phi", {"partial_rotary_factor": 0.5}),
    "phi-qk-norm-gqa": ("phi", {"qk_layernorm": True, "num_key_value_heads": 2, "rope_theta": 500.0}),
    "phi3": ("phi3", {"num_key_value_heads": 2, "partial_rotary_factor": 0.5, "sliding_window": 8}),
}
CLASSES = {
    "phi": (lambda: transformers.PhiConfig, lambda: transformers.PhiForCausalLM),
    "phi3": (lambda: transformers.Phi3Config, lambda: transformers.Phi3ForCausalLM),
}


@pytest.fixture(scope="module", params=list(VARIANTS))
def checkpoint(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object, str]:
    kind, changes = VARIANTS[request.param]
    config_class, model_class = (make() for make in CLASSES[kind])
    torch.manual_seed(0)
    model = spread(model_class(config_class(**SHAPE, **changes)), ("layernorm", "norm"))
    folder = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(folder)
    return folder, model, kind


def test_logits_loss_cache_and_greedy_generation_equal_transformers(checkpoint: tuple[Path, object, str]) -> None:
    folder, theirs, kind = checkpoint
    ours = load_hf(folder).eval()
    assert isinstance(ours, CausalLM) and ours.cfg.rotary_width == 4  # half of each 8-wide head rotated
    assert ours.cfg.shared_norm == (kind == "phi") and ours.cfg.lm_head_bias == (kind == "phi")
    if kind == "phi3":
        assert ours.dec[0].window == 8
    assert_same_lm(ours, theirs, V)


def test_pruned_export_reloads_with_equal_logits(checkpoint: tuple[Path, object, str], tmp_path: Path) -> None:
    folder, theirs, _ = checkpoint
    config = assert_pruned_export_reloads(folder, tmp_path / "out", type(theirs), V)
    assert config["model_type"] == theirs.config.model_type


def test_phi_keeps_its_shared_norm_when_a_sub_layer_goes(checkpoint: tuple[Path, object, str]) -> None:
    """Removing the attention of a Phi layer leaves x + mlp(LN x) with the layer's one LayerNorm: equal to the
    transformers model with that layer's attention output projection at zero."""
    folder, theirs, kind = checkpoint
    if kind != "phi":
        pytest.skip("the shared norm is Phi's")
    ours = load_hf(folder).eval()
    ours.dec[1].remove("sa")
    ref = type(theirs)(theirs.config).eval()
    ref.load_state_dict(theirs.state_dict())
    with torch.no_grad():
        ref.model.layers[1].self_attn.dense.weight.zero_()
        ref.model.layers[1].self_attn.dense.bias.zero_()
        x = torch.randint(1, V, (2, 12))
        torch.testing.assert_close(ours(x), ref(x).logits, atol=5e-5, rtol=1e-5)


def test_unrepresentable_settings_are_one_error(checkpoint: tuple[Path, object, str], tmp_path: Path) -> None:
    folder, _, kind = checkpoint
    config = json.loads((folder / "config.json").read_text())
    changes = {
        "phi": [({"tie_word_embeddings": True}, "bias of its own")],
        "phi3": [
            ({"rope_parameters": {"rope_type": "longrope", "rope_theta": 1e4}}, "rope scaling 'longrope'"),
            ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}}, "rope scaling 'yarn'"),
        ],
    }[kind]
    for change, message in changes:
        (tmp_path / "config.json").write_text(json.dumps({**config, **change}))
        with pytest.raises(UserError, match=message):
            load_hf(tmp_path, weights=False)
