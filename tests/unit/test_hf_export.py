"""Exporting a pruned imported model back to Hugging Face: tiny random BERT/RoBERTa/ELECTRA/DistilBERT classifiers
and a MarianMT model (built offline by the import tests' builders), imported, pruned (random ~50% masks on every
Linear weight, head gates and a sub-layer gate at 0, a head removed structurally, a uniform attention map),
exported with export_hf, reloaded with transformers' own `from_pretrained`, and held to prunelab's logits (fp32,
eval mode, atol 1e-5)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from prunelab.errors import UserError
from prunelab.hf.encoders import load_hf_encoder
from prunelab.hf.export import export_hf
from prunelab.hf.marian import load_hf_marian
from prunelab.models.addressing import set_gate
from prunelab.models.surgery import make_uniform, prune_heads, remove_components
from prunelab.models.transformer import TransformerConfig
from prunelab.pruning.masks import prunable_weights
from tests.unit.test_hf_encoder_import import CLASSIFICATION_LAYERS, SHAPE, bare_body, batch, hf_classifier, hf_logits
from tests.unit.test_hf_marian_import import PAD, V, hf_marian
from tests.unit.test_hf_marian_import import batch as marian_batch

transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

HS = SHAPE["hidden_size"] // SHAPE["num_attention_heads"]  # head size, 8
TOKENIZER_FILES = {"vocab.txt": "[PAD]\n[UNK]\n", "tokenizer_config.json": '{"do_lower_case": true}'}
# HF names of what the tests look at in the file, per family: (prefix, layers, Q, attention output, fc1); the head
NAMES = {
    "bert": ("bert.", "encoder.layer", "attention.self.query", "attention.output.dense", "intermediate.dense"),
    "roberta": ("roberta.", "encoder.layer", "attention.self.query", "attention.output.dense", "intermediate.dense"),
    "electra": ("electra.", "encoder.layer", "attention.self.query", "attention.output.dense", "intermediate.dense"),
    "distilbert": ("distilbert.", "transformer.layer", "attention.q_lin", "attention.out_lin", "ffn.lin1"),
}
HEADS = {
    "bert": "classifier",
    "roberta": "classifier.out_proj",
    "electra": "classifier.out_proj",
    "distilbert": "classifier",
}


def random_masks(model: torch.nn.Module, seed: int, embeddings: bool = False) -> dict[str, torch.Tensor]:
    """A random ~50% mask for every Linear weight (and the embedding if asked)."""
    g = torch.Generator().manual_seed(seed)
    return {
        n: (torch.rand(w.shape, generator=g) > 0.5).float()
        for n, w in prunable_weights(model, include_embeddings=embeddings).items()
    }


@torch.no_grad()
def apply_masks(model: torch.nn.Module, masks: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    for n, m in masks.items():
        params[n].mul_(m)


@torch.no_grad()
def unapply_masks(model: torch.nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Put nonzero values back into the masked entries (a checkpoint written before the masks were applied): the
    export must write weight * mask, whatever the weights hold."""
    params = dict(model.named_parameters())
    for n, m in masks.items():
        params[n].add_((1 - m) * torch.randn_like(m))


def source_folder(hf_model, path: Path) -> Path:
    hf_model.save_pretrained(path)
    for name, text in TOKENIZER_FILES.items():
        (path / name).write_text(text)
    return path


def reload(cls, out: Path):
    model, info = cls.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return model.eval()


def assert_file_has_mask_zeros(tensors: dict, key: str, mask: torch.Tensor) -> None:
    w = tensors[key]
    assert w.shape == mask.shape
    assert torch.all(w[mask == 0] == 0), f"{key}: masked entries are not zero"
    assert torch.all(w[mask == 1] != 0), f"{key}: kept entries were zeroed"


@pytest.mark.parametrize("family", ["bert", "roberta", "electra", "electra_small", "distilbert"])
def test_pruned_classifier_round_trips(family: str, tmp_path: Path) -> None:
    hf = hf_classifier(family)
    src = source_folder(hf, tmp_path / "src")
    base = family.removesuffix("_small")
    prefix, layer, q, attn_out, fc1 = NAMES[base]
    ours = load_hf_encoder(src).eval()
    prune_heads(ours, {"enc.0.sa": [0]})  # structurally removed: comes back as zero rows / columns
    set_gate(ours, "enc.0.sa.h2", 0.0)  # slot 1 of the compact weights, head 2 of the file
    set_gate(ours, "enc.1.sa.h3", 0.0)
    set_gate(ours, "enc.1.ff", 0.0)  # the whole feed-forward adds 0: LN(x + 0)
    if family == "bert":
        make_uniform(ours, ["enc.1.sa"])  # AttendOut: no Q or K, a constant 1/n map
    masks = random_masks(ours, seed=2)
    apply_masks(ours, masks)
    pad = hf.config.pad_token_id
    ids, types = batch(pad, with_types=base != "distilbert")
    with torch.no_grad():
        want = ours(ids, types=types)
        assert not torch.allclose(want, hf_logits(hf, ids, types, pad), atol=1e-2)  # the pruning shows
    unapply_masks(ours, masks)

    labels = ["neg", "neu", "pos"] if family == "bert" else None
    out = export_hf(ours, src, tmp_path / "hf", masks=masks, labels=labels)
    back = reload(transformers.AutoModelForSequenceClassification, out)
    assert type(back).__name__ == json.loads((out / "config.json").read_text())["architectures"][0]
    assert type(back).__name__.lower().startswith(base)
    torch.testing.assert_close(hf_logits(back, ids, types, pad), want, atol=1e-5, rtol=1e-5)

    tensors = safetensors_torch.load_file(str(out / "model.safetensors"))
    assert all(t.dtype == torch.float32 for t in tensors.values())
    L = f"{prefix}{layer}"
    assert_file_has_mask_zeros(tensors, f"{L}.0.{fc1}.weight", masks["enc.0.ff.fc1.weight"])
    assert_file_has_mask_zeros(tensors, f"{HEADS[base]}.weight", masks["head.weight"])
    # removed head 0 of layer 0: zero Q rows and output columns; head 1 kept (both nonzero); head 2 gated off:
    # its Q rows stay (its output is cut by the out_proj columns), its out_proj columns are zero
    q0, o0 = tensors[f"{L}.0.{q}.weight"], tensors[f"{L}.0.{attn_out}.weight"]
    assert torch.all(q0[:HS] == 0) and torch.all(o0[:, :HS] == 0)
    assert torch.all(o0[:, 2 * HS : 3 * HS] == 0) and q0[2 * HS : 3 * HS].abs().sum() > 0
    for h in (1, 3):
        assert o0[:, h * HS : (h + 1) * HS].abs().sum() > 0 and q0[h * HS : (h + 1) * HS].abs().sum() > 0
    o1 = tensors[f"{L}.1.{attn_out}.weight"]
    assert torch.all(o1[:, 3 * HS :] == 0) and o1[:, : 3 * HS].abs().sum() > 0
    fc2 = f"{L}.1.{'ffn.lin2' if base == 'distilbert' else 'output.dense'}"
    assert torch.all(tensors[f"{fc2}.weight"] == 0) and torch.all(tensors[f"{fc2}.bias"] == 0)

    for name, text in TOKENIZER_FILES.items():  # self-contained: the tokenizer files travel along
        assert (out / name).read_text() == text
    if labels:
        assert back.config.id2label == dict(enumerate(labels)) and back.config.label2id == {
            "neg": 0,
            "neu": 1,
            "pos": 2,
        }
    else:
        assert back.config.num_labels == 3


@pytest.mark.parametrize("family", list(CLASSIFICATION_LAYERS))
def test_fresh_head_on_a_bare_encoder_round_trips(family: str, tmp_path: Path) -> None:
    """A bare body (no classification layers, BERT with or without its pooler): the classification layers the
    import built for it (the family's dense + activation and the head) are exactly *ForSequenceClassification's,
    so the fine-tuned, pruned model is written as one and transformers computes its logits."""
    src = source_folder(bare_body(family), tmp_path / "src")
    ours = load_hf_encoder(src, num_labels=2).eval()
    torch.nn.init.normal_(ours.head.weight)  # a trained head: logits of O(1)
    torch.nn.init.normal_(ours.pooler.weight, std=0.3)
    masks = random_masks(ours, seed=3)
    apply_masks(ours, masks)
    pad = ours.cfg.pad_id
    ids, types = batch(pad, with_types=family != "distilbert")
    with torch.no_grad():
        want = ours(ids, types=types)
    out = export_hf(ours, src, tmp_path / "hf", masks=masks, labels=["no", "yes"])
    back = reload(transformers.AutoModelForSequenceClassification, out)
    torch.testing.assert_close(hf_logits(back, ids, types, pad), want, atol=1e-5, rtol=1e-5)
    assert back.config.id2label == {0: "no", 1: "yes"}
    _, dense, head = CLASSIFICATION_LAYERS[family]
    tensors = safetensors_torch.load_file(str(out / "model.safetensors"))
    assert torch.equal(tensors[f"{dense}.weight"], ours.pooler.weight * masks["pooler.weight"])
    assert torch.equal(tensors[f"{head}.weight"], ours.head.weight * masks["head.weight"])


def test_pruned_marian_round_trips(tmp_path: Path) -> None:
    hf = hf_marian(tame=False)
    src = source_folder(hf, tmp_path / "src")
    (src / "source.spm").write_bytes(b"\x00spm")
    ours = load_hf_marian(src).eval()
    prune_heads(ours, {"dec.1.ea": [1]})
    set_gate(ours, "enc.0.sa.h1", 0.0)
    set_gate(ours, "dec.0.ea.h2", 0.0)
    set_gate(ours, "dec.1.ea.h3", 0.0)  # slot 2 after head 1 went
    set_gate(ours, "dec.1.sa", 0.0)
    make_uniform(ours, ["dec.0.sa"])  # causal uniform map: Q = K = 0 under HF's causal mask
    masks = random_masks(ours, seed=4, embeddings=True)  # the embedding too: lm_head is the same masked table
    apply_masks(ours, masks)
    src_ids = marian_batch()
    tgt_in = torch.randint(1, PAD, (src_ids.size(0), 7), generator=torch.Generator().manual_seed(5))
    tgt_in[:, 0] = PAD  # the decoder starts from pad
    with torch.no_grad():
        want = ours(src_ids, tgt_in)
    unapply_masks(ours, masks)

    out = export_hf(ours, src, tmp_path / "hf", masks=masks)
    back = reload(transformers.MarianMTModel, out)
    with torch.no_grad():
        got = back(input_ids=src_ids, attention_mask=(src_ids != PAD).long(), decoder_input_ids=tgt_in).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)

    tensors = safetensors_torch.load_file(str(out / "model.safetensors"))
    assert tensors["final_logits_bias"].shape == (1, V)
    assert torch.equal(tensors["lm_head.weight"], tensors["model.shared.weight"])
    assert_file_has_mask_zeros(tensors, "model.shared.weight", masks["embed.weight"])
    assert_file_has_mask_zeros(tensors, "model.decoder.layers.1.fc1.weight", masks["dec.1.ff.fc1.weight"])
    o = tensors["model.decoder.layers.1.encoder_attn.out_proj.weight"]
    assert torch.all(o[:, HS : 2 * HS] == 0) and torch.all(o[:, 3 * HS :] == 0)
    assert o[:, :HS].abs().sum() > 0 and o[:, 2 * HS : 3 * HS].abs().sum() > 0
    assert torch.all(tensors["model.decoder.layers.0.self_attn.q_proj.weight"] == 0)
    assert (out / "source.spm").read_bytes() == b"\x00spm" and (out / "generation_config.json").is_file()
    assert json.loads((out / "config.json").read_text())["architectures"] == ["MarianMTModel"]


@pytest.fixture(scope="module")
def bert_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return source_folder(hf_classifier("bert"), tmp_path_factory.mktemp("bert"))


@pytest.mark.parametrize("where", ["enc.1.sa", "enc.0.sa.h2"])
def test_gates_other_than_0_or_1_are_refused(bert_src: Path, tmp_path: Path, where: str) -> None:
    ours = load_hf_encoder(bert_src).eval()
    set_gate(ours, where, 0.5)
    with pytest.raises(UserError, match=r"gate value\(s\) \[0\.5\].*--format bitmask"):
        export_hf(ours, bert_src, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_models_that_are_not_the_checkpoint_are_refused(bert_src: Path, tmp_path: Path) -> None:
    from prunelab.models.classifier import TransformerClassifier
    from prunelab.models.transformer import Transformer

    native = TransformerClassifier(
        TransformerConfig(vocab_size=99, d_model=32, n_heads=4, d_ff=37, enc_layers=2, dec_layers=0), 3
    )
    with pytest.raises(UserError, match="not the network of"):
        export_hf(native, bert_src, tmp_path / "hf")
    with pytest.raises(UserError, match="cannot export a Linear"):
        export_hf(torch.nn.Linear(2, 2), bert_src, tmp_path / "hf")
    with pytest.raises(UserError, match="cannot export a Transformer"):
        export_hf(Transformer(TransformerConfig(vocab_size=99, d_model=32, n_heads=4)), bert_src, tmp_path / "hf")
    with pytest.raises(UserError, match=r"no config\.json"):
        export_hf(native, tmp_path / "nowhere", tmp_path / "hf")


def test_unexportable_structure_and_arguments_are_refused(bert_src: Path, tmp_path: Path) -> None:
    ours = load_hf_encoder(bert_src).eval()
    with pytest.raises(UserError, match="2 label names for a classifier with 3 classes"):
        export_hf(ours, bert_src, tmp_path / "hf", labels=["a", "b"])
    with pytest.raises(UserError, match=r"mask for 'enc\.9\.ff\.fc1\.weight'"):
        export_hf(ours, bert_src, tmp_path / "hf", masks={"enc.9.ff.fc1.weight": torch.ones(3)})
    with pytest.raises(UserError, match="overwrite the source"):
        export_hf(ours, bert_src, bert_src)
    remove_components(ours, ["enc.1.ff"])
    with pytest.raises(UserError, match=r"enc\.1\.ff was removed structurally.*--format bitmask"):
        export_hf(ours, bert_src, tmp_path / "hf")


@pytest.mark.parametrize("family", ["bert", "distilbert"])
def test_width_pruned_classifier_exports_narrower(family: str, tmp_path: Path) -> None:
    """Heads and feed-forward neurons removed for real from an imported encoder equal the masked model, and export:
    the same number of neurons left in every layer gives a config with that feed-forward width, and the logits of
    the prunelab model."""
    from prunelab.models.surgery import prune_neurons

    hf = hf_classifier(family)
    src = source_folder(hf, tmp_path / "src")
    ours = load_hf_encoder(src).eval()
    masked = load_hf_encoder(src).eval()
    d_ff = ours.cfg.d_ff
    gone = {"enc.0.ff": list(range(0, d_ff, 3)), "enc.1.ff": list(range(len(range(0, d_ff, 3))))}
    with torch.no_grad():
        for name, ns in gone.items():
            masked.get_submodule(name).fc2.weight[:, ns] = 0.0
    set_gate(masked, "enc.1.sa.h2", 0.0)
    prune_neurons(ours, gone)
    prune_heads(ours, {"enc.1.sa": [2]})
    pad = hf.config.pad_token_id
    ids, types = batch(pad, with_types=family != "distilbert")
    with torch.no_grad():
        want = ours(ids, types=types)
        torch.testing.assert_close(want, masked(ids, types=types), atol=1e-5, rtol=1e-5)
    out = export_hf(ours, src, tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    assert config["hidden_dim" if family == "distilbert" else "intermediate_size"] == d_ff - len(gone["enc.0.ff"])
    back = reload(transformers.AutoModelForSequenceClassification, out)
    torch.testing.assert_close(hf_logits(back, ids, types, pad), want, atol=1e-5, rtol=1e-5)


def hf_without_layers(stack: torch.nn.ModuleList, gone: list[int]) -> torch.nn.ModuleList:
    """transformers' own layer list with the layers `gone` taken out: what depth pruning should compute."""
    return torch.nn.ModuleList([layer for i, layer in enumerate(stack) if i not in gone])


@pytest.mark.parametrize("family", ["bert", "distilbert"])
def test_depth_pruned_classifier_exports_with_fewer_layers(family: str, tmp_path: Path) -> None:
    """A whole layer removed for real from a post-norm encoder passes x on unchanged: the same as transformers' own
    model with that layer deleted from its list, and it exports as a network with one layer fewer."""
    hf = hf_classifier(family)
    src = source_folder(hf, tmp_path / "src")
    ours = load_hf_encoder(src).eval()
    remove_components(ours, ["enc.0.sa", "enc.0.ff"])
    body = hf.distilbert.transformer if family == "distilbert" else hf.bert.encoder
    body.layer = hf_without_layers(body.layer, [0])
    pad = hf.config.pad_token_id
    ids, types = batch(pad, with_types=family != "distilbert")
    with torch.no_grad():
        want = ours(ids, types=types)
    torch.testing.assert_close(want, hf_logits(hf, ids, types, pad), atol=1e-5, rtol=1e-5)
    out = export_hf(ours, src, tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    assert config["n_layers" if family == "distilbert" else "num_hidden_layers"] == 1
    back = reload(transformers.AutoModelForSequenceClassification, out)
    assert len(back.distilbert.transformer.layer if family == "distilbert" else back.bert.encoder.layer) == 1
    torch.testing.assert_close(hf_logits(back, ids, types, pad), want, atol=1e-5, rtol=1e-5)


def test_depth_pruned_marian_exports_with_fewer_layers(tmp_path: Path) -> None:
    """Encoder layer 1 and decoder layer 0 removed for real: transformers' MarianMTModel with those layers deleted
    computes the same logits, and so does the exported folder, whose config counts one layer fewer on each side."""
    hf = hf_marian(tame=False)
    src = source_folder(hf, tmp_path / "src")
    ours = load_hf_marian(src).eval()
    remove_components(ours, ["enc.1.sa", "enc.1.ff", "dec.0.sa", "dec.0.ea", "dec.0.ff"])
    hf.model.encoder.layers = hf_without_layers(hf.model.encoder.layers, [1])
    hf.model.decoder.layers = hf_without_layers(hf.model.decoder.layers, [0])
    src_ids = marian_batch()
    tgt_in = torch.randint(1, PAD, (src_ids.size(0), 7), generator=torch.Generator().manual_seed(5))
    tgt_in[:, 0] = PAD
    mask = (src_ids != PAD).long()
    with torch.no_grad():
        want = ours(src_ids, tgt_in)
        torch.testing.assert_close(
            hf(input_ids=src_ids, attention_mask=mask, decoder_input_ids=tgt_in).logits, want, atol=1e-5, rtol=1e-5
        )
    out = export_hf(ours, src, tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    assert (config["encoder_layers"], config["decoder_layers"]) == (1, 1)
    back = reload(transformers.MarianMTModel, out)
    assert (len(back.model.encoder.layers), len(back.model.decoder.layers)) == (1, 1)
    with torch.no_grad():
        got = back(input_ids=src_ids, attention_mask=mask, decoder_input_ids=tgt_in).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
