"""Importing Hugging Face encoders: tiny random BERT/RoBERTa/ELECTRA/DistilBERT models built here from their
configs (no network), saved, imported with load_hf_encoder, and held to HF's own logits in fp32 eval mode."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from prunelab.errors import UserError
from prunelab.hf.encoders import build_hf_encoder, load_hf_encoder
from prunelab.models.addressing import set_gate
from prunelab.models.surgery import prune_heads

transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

FAMILIES = ("bert", "roberta", "electra", "electra_small", "distilbert")
SHAPE = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)


def hf_classifier(family: str, num_labels: int = 3):
    torch.manual_seed(0)
    if family == "distilbert":
        cfg = transformers.DistilBertConfig(vocab_size=99, dim=32, n_layers=2, n_heads=4, hidden_dim=37)
        cls = transformers.DistilBertForSequenceClassification
    elif family.startswith("electra"):  # electra-small's embeddings are narrower, with an embeddings_project
        size = 16 if family == "electra_small" else 32
        cfg, cls = (
            transformers.ElectraConfig(**SHAPE, embedding_size=size),
            transformers.ElectraForSequenceClassification,
        )
    elif family == "roberta":
        cfg, cls = transformers.RobertaConfig(**SHAPE), transformers.RobertaForSequenceClassification
    else:
        cfg, cls = transformers.BertConfig(**SHAPE), transformers.BertForSequenceClassification
    cfg.num_labels = num_labels
    model = cls(cfg).eval()
    # HF's init (std 0.02) keeps every activation near 0, where erf and tanh GELU agree to 1e-7 and the
    # logits are ~1e-3: weights of std 1/sqrt(fan_in) give O(1) activations and logits, so that a wrong GELU,
    # LayerNorm eps or embedding LayerNorm shows above the 1e-5 tolerance. LayerNorms and biases start at 1 and
    # 0: random ones let a swapped key show.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, p.shape[1] ** -0.5)
            else:
                p.add_(torch.randn_like(p) * 0.2)
    return model


def batch(pad: int, with_types: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Four sentences: full length, right-padded, left-padded (RoBERTa's positions skip the pads), short."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 99, (4, 11), generator=g)
    ids[ids == pad] = 5
    ids[1, 7:] = pad
    ids[2, :4] = pad
    ids[3, 3:] = pad
    types = None
    if with_types:
        types = torch.zeros_like(ids)
        types[:, 5:] = 1  # a second segment
    return ids, types


def hf_logits(model, ids: torch.Tensor, types: torch.Tensor | None, pad: int) -> torch.Tensor:
    kw = {"token_type_ids": types} if types is not None else {}
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=(ids != pad).long(), **kw).logits


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, object]]:
    out = {}
    for family in FAMILIES:
        model = hf_classifier(family)
        path = tmp_path_factory.mktemp(family)
        model.save_pretrained(path)
        out[family] = (path, model)
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_match_hugging_face(saved: dict, family: str) -> None:
    path, hf = saved[family]
    ours = load_hf_encoder(path).eval()
    pad = hf.config.pad_token_id
    ids, types = batch(pad, with_types=family != "distilbert")
    got = ours(ids, types=types)
    torch.testing.assert_close(got, hf_logits(hf, ids, types, pad), atol=1e-5, rtol=1e-5)
    if types is not None:  # token types do matter, and None means type 0
        zeros = hf_logits(hf, ids, torch.zeros_like(ids), pad)
        assert not torch.allclose(got, zeros, atol=1e-4)
        torch.testing.assert_close(ours(ids), zeros, atol=1e-5, rtol=1e-5)


def test_roberta_positions_follow_create_position_ids(saved: dict) -> None:
    from transformers.models.roberta.modeling_roberta import RobertaEmbeddings

    path, hf = saved["roberta"]
    ours = load_hf_encoder(path)
    ids, _ = batch(hf.config.pad_token_id, with_types=False)
    want = RobertaEmbeddings.create_position_ids_from_input_ids(ids, hf.config.pad_token_id)
    assert torch.equal(ours.position_ids(ids), want)


def test_bare_encoder_gets_a_fresh_head_and_keeps_its_pooler(tmp_path: Path) -> None:
    torch.manual_seed(0)
    bare = transformers.BertModel(transformers.BertConfig(**SHAPE)).eval()
    bare.save_pretrained(tmp_path)
    with pytest.raises(UserError, match="no classification head"):
        load_hf_encoder(tmp_path)
    ours = load_hf_encoder(tmp_path, num_labels=5).eval()
    assert ours.head.out_features == 5
    ids, types = batch(0, with_types=True)
    with torch.no_grad():
        out = bare(input_ids=ids, attention_mask=(ids != 0).long(), token_type_ids=types)
        mem, _ = ours.encode(ids, types=types)
    torch.testing.assert_close(mem, out.last_hidden_state, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.tanh(ours.pooler(mem[:, 0])), out.pooler_output, atol=1e-5, rtol=1e-5)


def bare_body(family: str, **config):
    """A freshly made body without classification layers, as transformers' *Model saves it (RoBERTa with its pooler,
    `bert_nopool`: a BertModel without one)."""
    torch.manual_seed(0)
    if family == "distilbert":
        cfg = transformers.DistilBertConfig(vocab_size=99, dim=32, n_layers=2, n_heads=4, hidden_dim=37, **config)
        return transformers.DistilBertModel(cfg).eval()
    make = {
        "bert": (transformers.BertConfig, transformers.BertModel),
        "bert_nopool": (transformers.BertConfig, transformers.BertModel),
        "roberta": (transformers.RobertaConfig, transformers.RobertaModel),
        "electra": (transformers.ElectraConfig, transformers.ElectraModel),
    }
    cfg_cls, model_cls = make[family]
    kw = {"add_pooling_layer": False} if family == "bert_nopool" else {}
    return model_cls(cfg_cls(**SHAPE, **config), **kw).eval()


# What transformers' *ForSequenceClassification puts between [CLS] and the head: (the activation, the key of its
# dense layer, the key of the head).
CLASSIFICATION_LAYERS = {
    "bert": ("tanh", "bert.pooler.dense", "classifier"),
    "bert_nopool": ("tanh", "bert.pooler.dense", "classifier"),
    "roberta": ("tanh", "classifier.dense", "classifier.out_proj"),
    "electra": ("gelu", "classifier.dense", "classifier.out_proj"),
    "distilbert": ("relu", "pre_classifier", "classifier"),
}


def test_roberta_classifier_with_pooler_keys_loads(saved: dict, tmp_path: Path) -> None:
    """A RoBERTa classifier whose file also stores `roberta.pooler.*` (common on the hub): transformers ignores
    them, and so does the import, with the logits of transformers' model."""
    path, hf = saved["roberta"]
    state = safetensors_torch.load_file(str(path / "model.safetensors"))
    state["roberta.pooler.dense.weight"] = torch.randn(32, 32)
    state["roberta.pooler.dense.bias"] = torch.randn(32)
    safetensors_torch.save_file(state, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    theirs = transformers.RobertaForSequenceClassification.from_pretrained(tmp_path).eval()
    ours = load_hf_encoder(tmp_path).eval()
    pad = hf.config.pad_token_id
    ids, _ = batch(pad, with_types=False)
    torch.testing.assert_close(ours(ids), hf_logits(theirs, ids, None, pad), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours(ids), hf_logits(hf, ids, None, pad), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", list(CLASSIFICATION_LAYERS))
def test_bare_body_gets_its_familys_classification_layers(family: str, tmp_path: Path) -> None:
    """A body without classification layers gets what the family's *ForSequenceClassification builds on it: a
    dense layer + the family's activation, then the head, the fresh ones initialised as transformers does
    (N(0, initializer_range), bias 0). BERT keeps a pooler its file has; RoBERTa's stored pooler is not its
    classifier's dense layer (transformers drops it), so that one is fresh too."""
    body = bare_body(family, initializer_range=0.05)
    body.save_pretrained(tmp_path)
    torch.manual_seed(1)
    ours = load_hf_encoder(tmp_path, num_labels=4)
    act, _, _ = CLASSIFICATION_LAYERS[family]
    assert ours.pooling == "cls" and ours.pooler is not None and ours.pooler_activation == act
    fresh = [ours.head] if family == "bert" else [ours.head, ours.pooler]
    for layer in fresh:
        w = layer.weight.detach()
        assert abs(w.mean().item()) < 0.01 and 0.04 < w.std().item() < 0.06, (family, w.std().item())
        assert torch.all(layer.bias == 0)
    if family == "bert":  # the file's pretrained pooler
        assert torch.equal(ours.pooler.weight, body.pooler.dense.weight)
    if family == "roberta":
        assert not torch.allclose(ours.pooler.weight, body.pooler.dense.weight)


def test_pytorch_model_bin_with_tf_layernorm_names(saved: dict, tmp_path: Path) -> None:
    """An old file: pytorch_model.bin, LayerNorm gamma/beta, the position_ids buffer, and an MLM head."""
    path, hf = saved["bert"]
    state = safetensors_torch.load_file(str(path / "model.safetensors"))
    old = {}
    for k, v in state.items():
        if "LayerNorm" in k:
            k = k.replace(".weight", ".gamma").replace(".bias", ".beta")
        old[k] = v
    old["bert.embeddings.position_ids"] = torch.arange(512)[None]
    old["cls.predictions.bias"] = torch.zeros(99)
    torch.save(old, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    ids, types = batch(0, with_types=True)
    got = load_hf_encoder(tmp_path).eval()(ids, types=types)
    torch.testing.assert_close(got, hf_logits(hf, ids, types, 0), atol=1e-5, rtol=1e-5)


def _rewrite(src: Path, dst: Path, edit) -> Path:
    state = safetensors_torch.load_file(str(src / "model.safetensors"))
    edit(state)
    safetensors_torch.save_file(state, str(dst / "model.safetensors"))
    (dst / "config.json").write_text((src / "config.json").read_text())
    return dst


def test_unexpected_key_is_an_error_naming_it(saved: dict, tmp_path: Path) -> None:
    path = _rewrite(
        saved["bert"][0], tmp_path, lambda s: s.update({"bert.encoder.layer.0.extra.weight": torch.ones(3)})
    )
    with pytest.raises(UserError, match=r"unexpected key\(s\).*bert\.encoder\.layer\.0\.extra\.weight"):
        load_hf_encoder(path)


def test_missing_key_is_an_error_naming_it(saved: dict, tmp_path: Path) -> None:
    path = _rewrite(saved["roberta"][0], tmp_path, lambda s: s.pop("roberta.encoder.layer.1.output.dense.bias"))
    with pytest.raises(UserError, match=r"missing.*roberta\.encoder\.layer\.1\.output\.dense\.bias"):
        load_hf_encoder(path)


def test_head_gates_at_one_equal_no_gates(saved: dict) -> None:
    path, _ = saved["bert"]
    ids, types = batch(0, with_types=True)
    gated = load_hf_encoder(path).eval()(ids, types=types)
    plain = load_hf_encoder(path, gated=False).eval()(ids, types=types)
    assert torch.equal(gated, plain)


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_removing_a_head_equals_masking_it(saved: dict, family: str) -> None:
    path, hf = saved[family]
    ids, types = batch(hf.config.pad_token_id, with_types=True)
    masked = load_hf_encoder(path).eval()
    set_gate(masked, "enc.0.sa.h1", 0.0)
    set_gate(masked, "enc.1.sa.h3", 0.0)
    cut = load_hf_encoder(path).eval()
    prune_heads(cut, {"enc.0.sa": [1], "enc.1.sa": [3]})
    assert cut.enc[0].sa.n_heads == 3
    with torch.no_grad():
        want = masked(ids, types=types)
        torch.testing.assert_close(cut(ids, types=types), want, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(want, load_hf_encoder(path).eval()(ids, types=types), atol=1e-4)


def test_head_size_mismatch_and_builder_checks(saved: dict) -> None:
    path, _ = saved["electra"]
    with pytest.raises(UserError, match="3 labels, but 4"):
        load_hf_encoder(path, num_labels=4)
    assert build_hf_encoder(vocab_size=99, pad_id=0, num_classes=3, path=str(path)).num_classes == 3
    with pytest.raises(UserError, match="vocabulary of 99 tokens but the data's tokenizer has 120"):
        build_hf_encoder(vocab_size=120, pad_id=0, num_classes=3, path=str(path))
    with pytest.raises(UserError, match="cannot override"):
        load_hf_encoder(path, d_model=64)


def test_unsupported_checkpoints_are_refused(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = transformers.BertConfig(**SHAPE, hidden_act="gelu_fast")
    transformers.BertForSequenceClassification(cfg).save_pretrained(tmp_path)
    with pytest.raises(UserError, match="activation 'gelu_fast'"):
        load_hf_encoder(tmp_path)
    with pytest.raises(UserError, match=r"model folder not found: .*nowhere"):
        load_hf_encoder(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"no config\.json"):
        load_hf_encoder(tmp_path / "empty")


def test_model_config_builds_the_checkpoint_for_the_data(saved: dict) -> None:
    """conf/model/hf_encoder.yaml, instantiated as the training builders do: partial, then the data's arguments."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    node = OmegaConf.load(Path(__file__).parents[2] / "conf" / "model" / "hf_encoder.yaml")
    path, hf = saved["bert"]
    node.path = str(path)
    model = instantiate(node)(vocab_size=99, pad_id=0, num_classes=3)
    ids, types = batch(0, with_types=True)
    torch.testing.assert_close(model.eval()(ids, types=types), hf_logits(hf, ids, types, 0), atol=1e-5, rtol=1e-5)
    with pytest.raises(UserError, match=r"pads with id 0 but the data.s tokenizer with 1"):
        instantiate(node)(vocab_size=99, pad_id=1, num_classes=3)


def test_importing_prunelab_does_not_import_transformers() -> None:
    import subprocess
    import sys

    code = (
        "import sys, prunelab.models, prunelab.hf.encoders, prunelab.hf.export, prunelab.data; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'transformers', 'safetensors', 'tokenizers'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# transformers' *ForSequenceClassification: the dropout between [CLS] and the dense layer (None: none), and the one
# between the dense layer's activation and the head, as module paths
HEAD_DROPOUTS = {
    "bert": (None, "dropout"),
    "roberta": ("classifier.dropout", "classifier.dropout"),
    "electra": ("classifier.dropout", "classifier.dropout"),
    "distilbert": (None, "dropout"),
}


@pytest.mark.parametrize("family", list(HEAD_DROPOUTS))
@pytest.mark.parametrize("classifier_dropout", [None, 0.37])
def test_classification_layers_drop_out_as_transformers_does(
    family: str, classifier_dropout: float | None, tmp_path: Path
) -> None:
    """The fine-tuning recipe includes the classifier's dropout: where transformers applies it (RoBERTa and ELECTRA
    also before the dense layer) and how much (`classifier_dropout`, DistilBERT's `seq_classif_dropout`, else the
    hidden dropout), read off transformers' own model built from the same config."""
    extra = {"seq_classif_dropout": classifier_dropout or 0.2} if family == "distilbert" else {}
    if family != "distilbert":
        extra["classifier_dropout"] = classifier_dropout
    body = bare_body(family, **extra)
    body.save_pretrained(tmp_path)
    theirs = getattr(transformers, f"{type(body).__name__.removesuffix('Model')}ForSequenceClassification")(body.config)
    ours = load_hf_encoder(tmp_path, num_labels=2)
    before, after = HEAD_DROPOUTS[family]
    assert ours.pooler_drop.p == pytest.approx(theirs.get_submodule(after).p)
    if before is None:
        assert ours.pre_pooler_drop is None
    else:
        assert ours.pre_pooler_drop is not None and ours.pre_pooler_drop.p == pytest.approx(
            theirs.get_submodule(before).p
        )
    want = classifier_dropout if classifier_dropout is not None else (0.2 if family == "distilbert" else 0.1)
    assert ours.pooler_drop.p == pytest.approx(want)
