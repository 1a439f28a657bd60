"""T5 (v1.0, v1.1), mT5, BART, mBART and M2M100/NLLB checkpoints built by transformers (random weights, saved with
its own save_pretrained) import into prunelab's encoder-decoder with transformers' logits, decode token for token
as its beam-4 `generate` with the checkpoint's settings, and export (pruned) to folders transformers loads with
prunelab's logits. Planted errors these tests catch (each tried by hand): T5's bucket formula with the bidirectional
half dropped, the decoder's bias made bidirectional, the 1/sqrt(d_kv) scale kept, the d_model^-0.5 output rescale
missing; BART's position shift 0 instead of 2, one position table shared by both stacks, pre-norm for BART;
M2M100's positions from 0 instead of pad+1, Marian's sinusoid layout instead of fairseq's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers")

from prunelab.errors import UserError  # noqa: E402
from prunelab.hf.export import export_hf  # noqa: E402
from prunelab.hf.families import load_hf  # noqa: E402
from prunelab.hf.generation import checkpoint_generation, generate  # noqa: E402
from prunelab.models.positions import relative_buckets  # noqa: E402
from prunelab.models.transformer import Transformer  # noqa: E402

V = 60
T5_SHAPE = dict(vocab_size=V, d_model=32, d_kv=8, d_ff=48, num_layers=2, relative_attention_num_buckets=8)
BART_SHAPE = dict(
    vocab_size=V,
    d_model=32,
    encoder_layers=2,
    decoder_layers=2,
    encoder_attention_heads=4,
    decoder_attention_heads=4,
    encoder_ffn_dim=48,
    decoder_ffn_dim=48,
    max_position_embeddings=64,
    pad_token_id=1,
    bos_token_id=0,
    eos_token_id=2,
    decoder_start_token_id=2,
)


def variants() -> dict[str, tuple[Any, Any]]:
    """name -> (transformers class, its config): every family and variant issue 38 names."""
    t = transformers
    t5 = dict(T5_SHAPE, relative_attention_max_distance=20, decoder_start_token_id=0)
    return {
        "t5-v1.0": (t.T5ForConditionalGeneration, t.T5Config(num_heads=4, feed_forward_proj="relu", **t5)),
        # v1.1: gated-GELU, untied flag (no output rescale), heads x d_kv = 24 != d_model
        "t5-v1.1": (
            t.T5ForConditionalGeneration,
            t.T5Config(num_heads=3, feed_forward_proj="gated-gelu", tie_word_embeddings=False, **t5),
        ),
        "mt5": (t.MT5ForConditionalGeneration, t.MT5Config(num_heads=4, **t5)),
        "bart": (t.BartForConditionalGeneration, t.BartConfig(**BART_SHAPE)),
        "mbart": (t.MBartForConditionalGeneration, t.MBartConfig(scale_embedding=True, **BART_SHAPE)),
        "m2m100": (t.M2M100ForConditionalGeneration, t.M2M100Config(scale_embedding=True, **BART_SHAPE)),
    }


def spread(model: Any) -> None:
    """Weights far from their init (std 0.3, norms off 1, a logit bias), so that positions, norms and scales all
    move the logits by more than the tolerance and beams do not tie."""
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n:
                p.add_(torch.randn_like(p) * 0.1)
            elif p.dim() == 2:
                p.normal_(0.0, 0.5 if "relative_attention_bias" in n else 0.3)
        if hasattr(model, "final_logits_bias"):
            model.final_logits_bias.normal_()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Any, Path]]:
    torch.manual_seed(0)
    out = {}
    for name, (cls, config) in variants().items():
        config.dropout_rate = config.dropout = 0.0
        model = cls(config).eval()
        spread(model)
        folder = tmp_path_factory.mktemp(name)
        model.save_pretrained(folder)
        transformers.GenerationConfig(
            num_beams=4, max_length=15, decoder_start_token_id=config.decoder_start_token_id,
            eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id,
            forced_eos_token_id=getattr(config, "forced_eos_token_id", None),
        ).save_pretrained(folder)  # fmt: skip
        out[name] = (model, folder)
    return out


def batch(pad: int, start: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Sources of 30, 20 and 5 real tokens (right-padded: key masks matter) and 12-token decoder inputs."""
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(3, V, (3, 30), generator=g)
    src[1, 20:] = pad
    src[2, 5:] = pad
    tgt = torch.randint(3, V, (3, 12), generator=g)
    tgt[:, 0] = start
    return src, tgt


def hf_logits(model: Any, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(
            input_ids=src, attention_mask=(src != model.config.pad_token_id).long(), decoder_input_ids=tgt
        ).logits


@pytest.mark.parametrize("name", list(variants()))
def test_logits_equal_transformers(checkpoints: dict, name: str) -> None:
    hf_model, folder = checkpoints[name]
    ours = load_hf(folder).eval()
    assert isinstance(ours, Transformer)
    src, tgt = batch(hf_model.config.pad_token_id, hf_model.config.decoder_start_token_id)
    ref = hf_logits(hf_model, src, tgt)
    with torch.no_grad():
        got = ours(src, tgt)
    assert ref.abs().max() > 1.0  # logits of a size that the positions and scales visibly move
    torch.testing.assert_close(got, ref, atol=5e-5, rtol=1e-5)


@pytest.mark.parametrize("name", list(variants()))
def test_beam4_generation_equals_generate(checkpoints: dict, name: str) -> None:
    hf_model, folder = checkpoints[name]
    ours = load_hf(folder).eval()
    c = hf_model.config
    src, _ = batch(c.pad_token_id, c.decoder_start_token_id, seed=2)
    g = checkpoint_generation(ours.generation)
    assert g.num_beams == 4 and g.max_new_tokens == 14
    with torch.no_grad():
        settings = transformers.GenerationConfig.from_pretrained(folder)  # the folder's, as from_pretrained reads it
        out = hf_model.generate(
            input_ids=src, attention_mask=(src != c.pad_token_id).long(), generation_config=settings
        )
    theirs = []
    for row in out.tolist():
        row = row[1:]
        row = row[: row.index(c.eos_token_id)] if c.eos_token_id in row else row
        theirs.append([t for t in row if t != c.pad_token_id])
    assert generate(ours, src, g) == theirs


def test_t5_buckets_match_the_definition() -> None:
    """Bucket of each relative position against a brute force of Raffel et al.'s rule (8 buckets, max distance 20):
    bidirectional: 4 per side, distances 0,1 exact, then log bins to 20; causal: 8 for the past, 0,1,2,3 exact."""
    import math

    def brute(rel: int, bidirectional: bool, n: int = 8, far: int = 20) -> int:
        out = 0
        if bidirectional:
            n //= 2
            out = n if rel > 0 else 0
            d = abs(rel)
        else:
            d = max(-rel, 0)
        exact = n // 2
        if d < exact:
            return out + d
        return out + min(n - 1, exact + int(math.log(d / exact) / math.log(far / exact) * (n - exact)))

    rel = torch.arange(-40, 41)
    for bidirectional in (True, False):
        got = relative_buckets(rel, bidirectional, 8, 20).tolist()
        assert got == [brute(r, bidirectional) for r in rel.tolist()]


def test_t5_untied_output_projection(tmp_path: Path) -> None:
    """A T5 v1.1 file as Google released it (tie_word_embeddings false, its own lm_head.weight): the logits are the
    decoder's final states (transformers' own) through that lm_head, unscaled."""
    from safetensors.torch import load_file, save_file

    torch.manual_seed(3)
    config = transformers.T5Config(num_heads=4, feed_forward_proj="gated-gelu", tie_word_embeddings=False, **T5_SHAPE)
    model = transformers.T5ForConditionalGeneration(config).eval()
    spread(model)
    model.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    head = torch.randn(V, 32)
    save_file({**state, "lm_head.weight": head}, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg.update(tie_word_embeddings=False)
    cfg.pop("scale_decoder_outputs", None)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    ours = load_hf(tmp_path).eval()
    assert ours.lm_head is not None and torch.equal(ours.lm_head.weight, head)
    src, tgt = batch(0, 0)
    with torch.no_grad():
        out = model(input_ids=src, attention_mask=(src != 0).long(), decoder_input_ids=tgt, output_hidden_states=True)
        want = out.decoder_hidden_states[-1] @ head.T
        torch.testing.assert_close(ours(src, tgt), want, atol=5e-5, rtol=1e-5)


def prune(model: Transformer, *, sublayer: bool) -> dict[str, torch.Tensor]:
    """Masks on two matrices, heads cut from three attentions (self, decoder self, cross), 8 neurons from every
    feed-forward, the encoder's last layer removed whole and (pre-norm) one feed-forward sub-layer; returns masks."""
    model.enc[0].sa.prune_heads([1])
    model.dec[0].sa.prune_heads([0, 2])
    model.dec[1].ea.prune_heads([3])
    for layer in [*model.enc, *model.dec]:
        layer.ff.prune_neurons(range(8))
    for kind in model.enc[1].kinds:
        model.enc[1].remove(kind)
    if sublayer:
        model.dec[1].remove("ff")
    g = torch.Generator().manual_seed(5)
    return {
        n: (torch.rand(p.shape, generator=g) > 0.5).float()
        for n, p in model.named_parameters()
        if n in ("enc.0.ff.fc1.weight", "dec.1.ea.v_proj.weight")
    }


@pytest.mark.parametrize("name", ["t5-v1.0", "t5-v1.1", "mbart", "bart", "m2m100"])
def test_pruned_export_reloads_with_equal_logits(checkpoints: dict, name: str, tmp_path: Path) -> None:
    hf_model, folder = checkpoints[name]
    ours = load_hf(folder).eval()
    masks = prune(ours, sublayer=ours.cfg.pre_norm)
    out = export_hf(ours, folder, tmp_path / "out", masks=masks)
    config = json.loads((out / "config.json").read_text())
    back = type(hf_model).from_pretrained(out).eval()
    assert back.config.num_hidden_layers if name.startswith("bart") else True
    src, tgt = batch(hf_model.config.pad_token_id, hf_model.config.decoder_start_token_id)
    with torch.no_grad():
        for n, m in masks.items():
            dict(ours.named_parameters())[n].mul_(m)
        want = ours(src, tgt)
    torch.testing.assert_close(hf_logits(back, src, tgt), want, atol=5e-5, rtol=1e-5)
    assert config["prunelab_kept_layers"]["enc"] == [0]  # the encoder's layer 1 left
    width = config.get("d_ff", config.get("encoder_ffn_dim"))
    assert width == 40  # every feed-forward lost 8 neurons: a narrower network
    assert load_hf(out).cfg.layer_numbers == {"enc": (0,), "dec": (0, 1)}


def test_bart_sublayer_removal_is_refused_on_export(checkpoints: dict, tmp_path: Path) -> None:
    """BART is post-norm: a layer without its feed-forward cannot be written as a BART layer."""
    _, folder = checkpoints["bart"]
    ours = load_hf(folder)
    ours.dec[0].remove("ff")
    with pytest.raises(UserError, match="post-norm"):
        export_hf(ours, folder, tmp_path / "out")


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("decoder_attention_heads", 2, "head count"),
        ("decoder_ffn_dim", 40, "feed-forward width"),
        ("tie_word_embeddings", False, "tie_word_embeddings=false"),
    ],
)
def test_unrepresentable_bart_configs_are_one_error(checkpoints: dict, tmp_path: Path, key, value, message) -> None:
    _, folder = checkpoints["mbart"]
    config = json.loads((folder / "config.json").read_text())
    config[key] = value
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match=message):
        load_hf(tmp_path, weights=False)


def test_unknown_model_type_names_the_supported_ones(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "umt5"}))
    with pytest.raises(UserError, match=r"umt5.*supported: .*m2m_100.*t5"):
        load_hf(tmp_path, weights=False)
