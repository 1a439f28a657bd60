"""Decoder-only imports against transformers itself: tiny random GPT-2, Llama (grouped-query attention, untied head,
llama3 rope scaling), Qwen2 (Q/K/V biases), Qwen3 (explicit head_dim, q/k norms) and Mistral models built from
configs here and saved with `save_pretrained`, then imported: the same logits (fp32, eval), the same loss on the
same windows, exports that reload with the same logits, real head and K/V-group removal equal to the masked model,
and one-line refusals of what prunelab cannot represent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from prunelab.errors import UserError  # noqa: E402
from prunelab.hf.causal_lm import load_hf_causal_lm  # noqa: E402
from prunelab.hf.export import export_hf  # noqa: E402
from prunelab.models.addressing import set_gate  # noqa: E402
from prunelab.models.causal_lm import IGNORE  # noqa: E402
from prunelab.models.lm_generation import generate_lm  # noqa: E402
from prunelab.models.surgery import prune_heads  # noqa: E402

V = 101
LLAMA_LIKE = dict(
    vocab_size=V,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=64,
)


def _configs() -> dict[str, object]:
    t = transformers
    return {
        "gpt2": t.GPT2Config(
            vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0
        ),
        "llama": t.LlamaConfig(
            **LLAMA_LIKE,
            num_key_value_heads=2,
            tie_word_embeddings=False,
            rms_norm_eps=1e-5,
            rope_scaling={
                "rope_type": "llama3",
                "rope_theta": 5000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8,
            },
        ),
        "qwen2": t.Qwen2Config(**LLAMA_LIKE, num_key_value_heads=1),
        "qwen3": t.Qwen3Config(**LLAMA_LIKE, num_key_value_heads=2, head_dim=16, rms_norm_eps=0.05),
        "mistral": t.MistralConfig(**LLAMA_LIKE, num_key_value_heads=2, sliding_window=None),
    }


CLASSES = {
    "gpt2": "GPT2LMHeadModel",
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "mistral": "MistralForCausalLM",
}


def make_checkpoint(family: str, folder: Path) -> torch.nn.Module:
    """A random model of `family`, every parameter (norm weights and biases too) moved off its initial value, saved
    with save_pretrained; returns the transformers model (eval)."""
    torch.manual_seed(hash(family) % 1000)
    model = getattr(transformers, CLASSES[family])(_configs()[family])
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.eval()
    model.save_pretrained(folder)
    return model


@pytest.fixture(scope="module", params=list(CLASSES))
def checkpoint(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, object]:
    folder = tmp_path_factory.mktemp(request.param)
    return request.param, folder, make_checkpoint(request.param, folder)


def test_logits_equal_transformers(checkpoint: tuple[str, Path, object]) -> None:
    _, folder, theirs = checkpoint
    ours = load_hf_causal_lm(folder).eval()
    x = torch.randint(0, V, (3, 40))
    with torch.no_grad():
        want, got = theirs(x).logits, ours(x)
    assert want.abs().max() > 0.5  # not a degenerate model
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_the_import_reads_what_makes_each_family_differ(checkpoint: tuple[str, Path, object]) -> None:
    family, folder, _ = checkpoint
    cfg = load_hf_causal_lm(folder).cfg
    expect = {
        "gpt2": dict(norm="layer", positions="learned", ffn="mlp", kv_heads=4, tie_embeddings=True, qkv_bias=True),
        "llama": dict(norm="rms", positions="rope", ffn="glu", kv_heads=2, tie_embeddings=False, qkv_bias=False),
        "qwen2": dict(norm="rms", positions="rope", ffn="glu", kv_heads=1, qkv_bias=True, out_bias=False),
        "qwen3": dict(hs=16, qk_norm=True, kv_heads=2, qkv_bias=False),
        "mistral": dict(norm="rms", ffn="glu", kv_heads=2, qkv_bias=False),
    }[family]
    for key, value in expect.items():
        assert getattr(cfg, key) == value, key
    if family == "llama":
        assert cfg.rope_theta == 5000.0 and cfg.rope_scaling["rope_type"] == "llama3" and cfg.norm_eps == 1e-5


def test_window_loss_equals_transformers_loss(checkpoint: tuple[str, Path, object]) -> None:
    """The perplexity protocol's windows: the model's mean NLL over a window's predicted tokens is transformers' own
    loss with labels = the window (it shifts them inside)."""
    _, folder, theirs = checkpoint
    ours = load_hf_causal_lm(folder).eval()
    windows = torch.randint(0, V, (4, 24))
    batch = {"src": windows[:, :-1], "target": windows[:, 1:]}
    with torch.no_grad():
        got = ours.example_losses(batch)
        want = torch.stack([theirs(w[None], labels=w[None]).loss for w in windows])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # IGNORE targets (a strided window's context) are left out of the mean
    batch["target"] = batch["target"].clone()
    batch["target"][:, :10] = IGNORE
    with torch.no_grad():
        got = ours.example_losses(batch)
        logp = theirs(windows[:, :-1]).logits.log_softmax(-1)
        nll = -logp.gather(-1, windows[:, 1:, None])[..., 0][:, 10:].mean(1)
    torch.testing.assert_close(got, nll, atol=1e-5, rtol=1e-5)


def test_cached_positions_equal_the_full_forward(checkpoint: tuple[str, Path, object]) -> None:
    _, folder, _ = checkpoint
    ours = load_hf_causal_lm(folder).eval()
    x = torch.randint(0, V, (2, 12))
    with torch.no_grad():
        full = ours(x)
        cache = ours.new_cache()
        steps = [ours(x[:, :5], cache, 0)]
        steps += [ours(x[:, t : t + 1], cache, t) for t in range(5, 12)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)


def test_masked_export_reloads_with_the_same_logits(checkpoint: tuple[str, Path, object], tmp_path: Path) -> None:
    """Masks, a sub-layer gated off, a head gated off and heads removed for real fold into a folder that
    transformers loads with the logits of the pruned prunelab model."""
    _, folder, _ = checkpoint
    ours = load_hf_causal_lm(folder).eval()
    torch.manual_seed(0)
    masks = {
        n: (torch.rand_like(p) > 0.5).float() for n, p in ours.named_parameters() if p.dim() == 2 and "embed" not in n
    }
    with torch.no_grad():
        for n, p in ours.named_parameters():
            if n in masks:
                p.mul_(masks[n])
    set_gate(ours, "dec.1.ff", 0.0)
    set_gate(ours, "dec.0.sa.h1", 0.0)
    prune_heads(ours, {"dec.1.sa": [0, 3]})
    masks = {
        n: m
        for n, m in masks.items()
        if n in dict(ours.named_parameters()) and m.shape == dict(ours.named_parameters())[n].shape
    }
    out = export_hf(ours, folder, tmp_path / "export", masks)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    x = torch.randint(0, V, (2, 30))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x).logits, ours(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_removing_a_kv_group_removes_its_heads_and_equals_the_masked_model(family: str, tmp_path: Path) -> None:
    make_checkpoint(family, tmp_path)
    model = load_hf_causal_lm(tmp_path).eval()
    attn = model.get_submodule("dec.0.sa")
    groups = attn.head_groups.tolist()
    heads = attn.heads_of_groups([0])
    assert heads == [h for h, g in enumerate(groups) if g == 0] and heads  # group 0's query heads, by the config
    x = torch.randint(0, V, (2, 16))
    for h in heads:
        set_gate(model, f"dec.0.sa.h{h}", 0.0)
    with torch.no_grad():
        masked = model(x)
    attn.prune_groups([0])
    assert attn.kv_ids.tolist() == sorted(set(groups) - {0})
    assert attn.k_proj.out_features == len(attn.kv_ids) * attn.head_dim
    assert attn.n_heads == 4 - len(heads) and 0 not in attn.head_groups.tolist()
    with torch.no_grad():
        torch.testing.assert_close(model(x), masked, atol=1e-5, rtol=1e-5)


def test_removing_some_heads_of_a_group_keeps_the_group(tmp_path: Path) -> None:
    make_checkpoint("llama", tmp_path)  # 4 query heads, 2 groups: heads 0,1 -> group 0, heads 2,3 -> group 1
    model = load_hf_causal_lm(tmp_path).eval()
    x = torch.randint(0, V, (2, 16))
    set_gate(model, "dec.1.sa.h2", 0.0)
    with torch.no_grad():
        masked = model(x)
    prune_heads(model, {"dec.1.sa": [2]})
    attn = model.get_submodule("dec.1.sa")
    assert attn.kv_ids.tolist() == [0, 1] and attn.head_groups.tolist() == [0, 0, 1]
    with torch.no_grad():
        torch.testing.assert_close(model(x), masked, atol=1e-5, rtol=1e-5)


def _write(folder: Path, family: str, **changes: object) -> Path:
    make_checkpoint(family, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize(
    ("family", "changes", "says"),
    [
        ("mistral", {"sliding_window": 8, "layer_types": ["chunked_attention"] * 2}, "full and sliding attention"),
        ("qwen2", {"layer_types": ["sliding_attention"] * 2}, "no sliding_window"),
        ("llama", {"model_type": "mixtral"}, "mixture of experts"),
        ("llama", {"rope_scaling": {"rope_type": "yarn", "factor": 4.0}, "rope_parameters": None}, "yarn"),
        ("gpt2", {"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx"),
        ("llama", {"model_type": "falcon"}, "not a supported causal language model"),
    ],
)
def test_what_cannot_be_represented_is_refused_in_one_line(
    family: str, changes: dict[str, object], says: str, tmp_path: Path
) -> None:
    folder = _write(tmp_path, family, **changes)
    with pytest.raises(UserError, match=says) as e:
        load_hf_causal_lm(folder)
    assert "\n" not in str(e.value)


def test_unexpected_and_missing_keys_are_named(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    make_checkpoint("llama", tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    state["model.layers.0.mlp.extra.weight"] = torch.zeros(2)
    del state["model.layers.1.mlp.up_proj.weight"]
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(UserError, match=r"unexpected key\(s\).*model\.layers\.0\.mlp\.extra\.weight"):
        load_hf_causal_lm(tmp_path)
    del state["model.layers.0.mlp.extra.weight"]
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(UserError, match=r"missing.*layers\.1\.mlp\.up_proj\.weight"):
        load_hf_causal_lm(tmp_path)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_depth_pruned_model_exports_with_fewer_layers(family: str, tmp_path: Path) -> None:
    """A whole layer removed for real leaves the exported network (config.json has one layer fewer); a lone removed
    sub-layer is written with zero weights, which a pre-norm layer adds as exactly nothing."""
    from prunelab.models.surgery import remove_components

    make_checkpoint(family, tmp_path / "src")
    ours = load_hf_causal_lm(tmp_path / "src").eval()
    remove_components(ours, ["dec.0.sa", "dec.0.ff", "dec.1.ff"])
    out = export_hf(ours, tmp_path / "src", tmp_path / "export")
    config = json.loads((out / "config.json").read_text())
    assert config["n_layer" if family == "gpt2" else "num_hidden_layers"] == 1
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    x = torch.randint(0, V, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x).logits, ours(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("uniform", [True, False])
def test_neuron_pruned_model_exports_narrower_or_padded(family: str, uniform: bool, tmp_path: Path) -> None:
    """Feed-forward neurons removed for real: with the same number left in every layer the folder's config has
    that width (a smaller model); otherwise the full width, the removed neurons as zeros. Logits equal either way."""
    from prunelab.models.surgery import prune_neurons, remaining_neurons, remove_components

    make_checkpoint(family, tmp_path / "src")
    ours = load_hf_causal_lm(tmp_path / "src").eval()
    d_ff = ours.cfg.d_ff
    prune_neurons(ours, {"dec.0.ff": list(range(0, d_ff, 2)), "dec.1.ff": list(range(d_ff // 2 if uniform else 3))})
    remove_components(ours, ["dec.1.sa"])  # a lone removed sub-layer is written as zeros at the exported width
    widths = {len(v) for v in remaining_neurons(ours).values()}
    assert (len(widths) == 1) == uniform
    out = export_hf(ours, tmp_path / "src", tmp_path / "export")
    config = json.loads((out / "config.json").read_text())
    key = "n_inner" if family == "gpt2" else "intermediate_size"
    assert config.get(key) == (
        d_ff // 2 if uniform else json.loads((tmp_path / "src/config.json").read_text()).get(key)
    )
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    x = torch.randint(0, V, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x).logits, ours(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("family", "changes", "windowed"),
    [
        ("mistral", {"sliding_window": 5}, (0, 1)),  # every layer
        ("qwen2", {"use_sliding_window": True, "sliding_window": 5, "max_window_layers": 1}, (1,)),  # layers 1..
    ],
)
def test_sliding_window_attention_equals_transformers_beyond_the_window(
    family: str, changes: dict[str, object], windowed: tuple[int, ...], tmp_path: Path
) -> None:
    """A window of 5 on sequences of 24: logits, the perplexity windows' loss, and greedy generation with the KV
    cache (prompt and new tokens past the window) equal transformers'; the layers that slide are the ones
    transformers makes slide. A model that ignored the window differs (checked: the full-prefix logits)."""
    cfg = _configs()[family].to_dict()
    cfg.pop("layer_types", None)  # derived from the window settings when the config is made
    cfg.update(changes)
    torch.manual_seed(7)
    theirs = getattr(transformers, CLASSES[family])(type(_configs()[family])(**cfg)).eval()
    with torch.no_grad():
        for p in theirs.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    theirs.save_pretrained(tmp_path)
    ours = load_hf_causal_lm(tmp_path).eval()
    assert [layer.window for layer in ours.dec] == [5 if i in windowed else None for i in range(len(ours.dec))]
    x = torch.randint(0, V, (2, 24))
    with torch.no_grad():
        want = theirs(x).logits
        torch.testing.assert_close(ours(x), want, atol=1e-5, rtol=1e-5)
        batch = {"src": x[:, :-1], "target": x[:, 1:]}
        loss = torch.stack([theirs(w[None], labels=w[None]).loss for w in x])
        torch.testing.assert_close(ours.example_losses(batch), loss, atol=1e-5, rtol=1e-5)
        out = theirs.generate(x[:, :9], max_new_tokens=10, do_sample=False, eos_token_id=None, pad_token_id=0)
        for layer in ours.dec:
            layer.window = None
        assert not torch.allclose(ours(x), want, atol=1e-3)
        for i, layer in enumerate(ours.dec):
            layer.window = 5 if i in windowed else None
    assert generate_lm(ours, x[:, :9], 10) == out[:, 9:].tolist()
