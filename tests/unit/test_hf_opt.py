"""OPT (model_type "opt") imported from tiny checkpoints transformers builds (random weights spread away from their
init, saved with save_pretrained): logits, the perplexity windows' loss and greedy generation equal transformers',
and a pruned export reloads with equal logits, for OPT-125M's pre-norm layout and OPT-350M's post-norm layers with
project_in / project_out. A planted position shift of 0 instead of OPT's 2, or the norm placement swapped, fail the
logits test (tried by hand)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from prunelab.errors import UserError
from prunelab.hf.export import export_hf
from prunelab.hf.families import load_hf
from prunelab.models.causal_lm import CausalLM
from prunelab.models.lm_generation import generate_lm

transformers = pytest.importorskip("transformers")

V = 64
SHAPE = dict(
    vocab_size=V, hidden_size=32, num_attention_heads=4, ffn_dim=48, num_hidden_layers=3, max_position_embeddings=40,
    word_embed_proj_dim=32, pad_token_id=1, bos_token_id=2, eos_token_id=2, dropout=0.0,
)  # fmt: skip


VARIANTS = {
    "opt-125m": {},  # pre-norm, a final LayerNorm
    "opt-350m": {"do_layer_norm_before": False, "word_embed_proj_dim": 16},  # post-norm, project_in / project_out
}


@pytest.fixture(scope="module", params=list(VARIANTS))
def checkpoint(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    torch.manual_seed(0)
    model = transformers.OPTForCausalLM(transformers.OPTConfig(**{**SHAPE, **VARIANTS[request.param]})).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "layer_norm" in n:
                p.add_(torch.randn_like(p) * 0.1)
            else:
                p.normal_(0.0, 0.3)
    folder = tmp_path_factory.mktemp("opt")
    model.save_pretrained(folder)
    return folder, model


def test_logits_loss_and_greedy_generation_equal_transformers(checkpoint: tuple[Path, object]) -> None:
    folder, theirs = checkpoint
    ours = load_hf(folder).eval()
    assert isinstance(ours, CausalLM) and ours.cfg.position_shift == 2 and ours.max_positions == 40
    assert ours.cfg.pre_norm == theirs.config.do_layer_norm_before
    x = torch.randint(3, V, (3, 30))
    with torch.no_grad():
        want = theirs(x).logits
        torch.testing.assert_close(ours(x), want, atol=5e-5, rtol=1e-5)
        assert want.abs().max() > 1.0
        batch = {"src": x[:, :-1], "target": x[:, 1:]}
        loss = torch.stack([theirs(w[None], labels=w[None]).loss for w in x])
        torch.testing.assert_close(ours.example_losses(batch), loss, atol=1e-5, rtol=1e-5)
        out = theirs.generate(x[:, :6], max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=1)
    assert generate_lm(ours, x[:, :6], 8) == out[:, 6:].tolist()


def test_pruned_export_reloads_with_equal_logits(checkpoint: tuple[Path, object], tmp_path: Path) -> None:
    folder, _ = checkpoint
    ours = load_hf(folder).eval()
    ours.dec[0].sa.prune_heads([1, 2])
    for layer in ours.dec:
        layer.ff.prune_neurons(range(8))
    for kind in ours.dec[1].kinds:
        ours.dec[1].remove(kind)
    if ours.cfg.pre_norm:
        ours.dec[2].remove("ff")  # pre-norm: one sub-layer may go
    out = export_hf(ours, folder, tmp_path / "out")
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 2 and config["ffn_dim"] == 40
    back = transformers.OPTForCausalLM.from_pretrained(out).eval()
    x = torch.randint(3, V, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(back(x).logits, ours(x), atol=5e-5, rtol=1e-5)


def test_what_prunelab_cannot_represent_is_one_error(checkpoint: tuple[Path, object], tmp_path: Path) -> None:
    folder, _ = checkpoint
    config = json.loads((folder / "config.json").read_text())
    for key, value, message in (
        ("layer_norm_elementwise_affine", False, "without weights"),
        ("_remove_final_layer_norm", True, "no final LayerNorm"),
        ("tie_word_embeddings", False, "tie_word_embeddings=false"),
    ):
        (tmp_path / "config.json").write_text(json.dumps({**config, key: value}))
        with pytest.raises(UserError, match=message):
            load_hf(tmp_path, weights=False)
