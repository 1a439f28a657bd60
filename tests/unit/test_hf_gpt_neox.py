"""GPT-NeoX / Pythia (model_type "gpt_neox") imported from tiny checkpoints transformers builds (random weights spread
away from their init): logits, the perplexity windows' loss, cached positions and greedy generation equal
transformers', for the parallel residual with partial rotary (Pythia) and the sequential layer with full rotary;
a pruned export (heads, neurons, a whole layer, one sub-layer) reloads with equal logits. Planted errors that fail
the logits test (tried by hand): the fused query_key_value split as [all q | all k | all v] instead of per head,
rotary on every feature, the sequential layer for a parallel one."""

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
    vocab_size=V, hidden_size=32, num_attention_heads=4, intermediate_size=48, num_hidden_layers=3,
    max_position_embeddings=64, bos_token_id=0, eos_token_id=0, hidden_dropout=0.0, attention_dropout=0.0,
)  # fmt: skip
VARIANTS = {
    "pythia": {"use_parallel_residual": True, "rotary_pct": 0.25},  # 2 of each head's 8 features rotated
    "sequential": {"use_parallel_residual": False, "rotary_pct": 1.0, "rotary_emb_base": 500},
}


@pytest.fixture(scope="module", params=list(VARIANTS))
def checkpoint(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    torch.manual_seed(0)
    model = transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(**SHAPE, **VARIANTS[request.param])).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "layernorm" in n or "layer_norm" in n:
                p.add_(torch.randn_like(p) * 0.1)
            else:
                p.normal_(0.0, 0.3)
    folder = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(folder)
    return folder, model


def test_logits_loss_cache_and_greedy_generation_equal_transformers(checkpoint: tuple[Path, object]) -> None:
    folder, theirs = checkpoint
    ours = load_hf(folder).eval()
    assert isinstance(ours, CausalLM) and ours.cfg.parallel_residual == theirs.config.use_parallel_residual
    x = torch.randint(1, V, (3, 30))
    with torch.no_grad():
        want = theirs(x).logits
        assert want.abs().max() > 1.0
        torch.testing.assert_close(ours(x), want, atol=5e-5, rtol=1e-5)
        batch = {"src": x[:, :-1], "target": x[:, 1:]}
        loss = torch.stack([theirs(w[None], labels=w[None]).loss for w in x])
        torch.testing.assert_close(ours.example_losses(batch), loss, atol=1e-5, rtol=1e-5)
        cache = ours.new_cache()
        steps = [ours(x[:, :7], cache, 0)] + [ours(x[:, t : t + 1], cache, t) for t in range(7, 30)]
        torch.testing.assert_close(torch.cat(steps, 1), want, atol=5e-5, rtol=1e-5)
        out = theirs.generate(x[:, :6], max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert generate_lm(ours, x[:, :6], 8) == out[:, 6:].tolist()


def test_pruned_export_reloads_with_equal_logits(checkpoint: tuple[Path, object], tmp_path: Path) -> None:
    folder, _ = checkpoint
    ours = load_hf(folder).eval()
    ours.dec[0].sa.prune_heads([1, 2])
    for layer in ours.dec:
        layer.ff.prune_neurons(range(8))
    for kind in ours.dec[1].kinds:
        ours.dec[1].remove(kind)
    ours.dec[2].remove("ff")
    out = export_hf(ours, folder, tmp_path / "out")
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 2 and config["intermediate_size"] == 40
    back = transformers.GPTNeoXForCausalLM.from_pretrained(out).eval()
    x = torch.randint(1, V, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(back(x).logits, ours(x), atol=5e-5, rtol=1e-5)


def test_tied_or_scaled_rotary_is_one_error(checkpoint: tuple[Path, object], tmp_path: Path) -> None:
    folder, _ = checkpoint
    config = json.loads((folder / "config.json").read_text())
    for change, message in (
        ({"tie_word_embeddings": True}, "tie_word_embeddings=true"),
        ({"rope_parameters": {"rope_type": "dynamic", "factor": 2.0}}, "rope scaling 'dynamic'"),
    ):
        (tmp_path / "config.json").write_text(json.dumps({**config, **change}))
        with pytest.raises(UserError, match=message):
            load_hf(tmp_path, weights=False)
