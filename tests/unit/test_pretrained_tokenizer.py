"""A pretrained checkpoint's own tokenizer in prunelab's data modules: the ids, token types and framing of every
example are what the Hugging Face tokenizer itself produces, and the teacher-forced batches of a Marian checkpoint
give the loss Hugging Face's own model computes on HF's own batch (decoder input = shift_tokens_right of the labels)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from prunelab.data.classification import TsvClassificationDataModule
from prunelab.data.translation import ParallelTextDataModule
from prunelab.errors import UserError
from prunelab.hf.encoders import load_hf_encoder
from prunelab.hf.marian import build_hf_marian
from prunelab.hf.tokenizer import PretrainedTokenizer
from tests import hf_checkpoints as H

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pretrained")
    texts, labels = H.sentiment(60, 0)
    pairs = H.copy_pairs(60, 0)
    out = {
        "bert": H.encoder_checkpoint(root / "bert", texts, labels, "bert", steps=0),
        "roberta": H.encoder_checkpoint(root / "roberta", texts, labels, "roberta", steps=0),
        "marian": H.marian_checkpoint(root / "marian", *pairs, steps=0),
    }
    # single texts and sentence pairs (NLI-style), one very long text to be truncated
    long = " ".join(["really good"] * 40)
    rows = {"train": (texts[:40], labels[:40]), "dev": (texts[40:50], labels[40:50]), "test": (texts[50:], labels[50:])}
    out["tsv"] = H.write_tsv(root / "tsv", rows)
    pair_rows = {k: ([f"{a}\t{b}" for a, b in zip(t, reversed(t), strict=True)], y) for k, (t, y) in rows.items()}
    pair_rows["test"] = ([*pair_rows["test"][0], f"{long}\tbad"], [*pair_rows["test"][1], "positive"])
    out["pairs"] = H.write_tsv(root / "pairs", pair_rows)
    out["parallel"] = H.write_parallel(
        root / "parallel", {"train": pairs, "valid": H.copy_pairs(8, 1), "test": H.copy_pairs(8, 2)}
    )
    return out


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_classification_inputs_are_the_tokenizers_own(folders: dict[str, Path], family: str) -> None:
    hf = transformers.AutoTokenizer.from_pretrained(folders[family])
    dm = TsvClassificationDataModule(dir=str(folders["pairs"]), tokenizer=str(folders[family]), max_len=24)
    dm.prepare_data()
    dm.setup()
    assert not list(folders["pairs"].glob("spm.*"))  # no SentencePiece model trained
    texts, _ = dm.read_split("test")
    for (ids, _, _, _, types), text in zip(dm.examples["test"], texts, strict=True):
        a, b = text.split("\t")
        want = hf(a, b, truncation=True, max_length=24)
        assert ids == want["input_ids"]
        assert types == (want["token_type_ids"] if family == "bert" else None)
    assert len(dm.examples["test"][-1][0]) == 24  # the long pair was cut, longest side first
    batch = dm.collate_fn()(dm.examples["test"][:4])
    if family == "bert":  # [CLS] a [SEP] b [SEP]: type 1 from b on, 0 on padding
        assert batch["types"].max() == 1 and batch["types"][batch["src"] == hf.pad_token_id].eq(0).all()
    else:  # <s> a </s></s> b </s>, no token types
        assert "types" not in batch and batch["src"][0, 0] == hf.bos_token_id


def test_bert_classifier_scores_its_own_tokenization_like_hugging_face(folders: dict[str, Path]) -> None:
    """Data module + import together: prunelab's logits on its batch are HF's logits on HF's batch."""
    dm = TsvClassificationDataModule(dir=str(folders["pairs"]), tokenizer=str(folders["bert"]))
    dm.setup()
    batch = dm.collate_fn()(dm.examples["test"][:6])
    ours = load_hf_encoder(folders["bert"]).eval()
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(folders["bert"]).eval()
    tok = transformers.AutoTokenizer.from_pretrained(folders["bert"])
    texts, _ = dm.read_split("test")
    enc = tok(
        [t.split("\t")[0] for t in texts[:6]], [t.split("\t")[1] for t in texts[:6]], padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        want = hf(**enc).logits
        torch.testing.assert_close(ours(batch["src"], types=batch["types"]), want, atol=1e-5, rtol=1e-5)


def test_marian_batches_match_hugging_face(folders: dict[str, Path]) -> None:
    from transformers.models.marian.modeling_marian import shift_tokens_right

    path = folders["marian"]
    hf_tok = transformers.AutoTokenizer.from_pretrained(path)
    hf = transformers.MarianMTModel.from_pretrained(path).eval()
    dm = ParallelTextDataModule(dir=str(folders["parallel"]), src_lang="en", tgt_lang="de", tokenizer=str(path))
    dm.prepare_data()
    dm.setup()
    tok = dm.tokenizer
    assert (tok.pad_id, tok.eos_id, tok.bos_id) == (hf.config.pad_token_id, 0, hf.config.decoder_start_token_id)
    src, tgt = dm.read_split("test")
    enc = hf_tok(src, text_target=tgt, padding=True, return_tensors="pt")
    batch = dm.collate_fn()(dm.examples["test"])
    # right-padded alike: HF's source ends in </s>, its labels too, and the decoder starts from pad
    torch.testing.assert_close(batch["src"], enc["input_ids"])
    torch.testing.assert_close(batch["tgt_out"], enc["labels"])
    # (where the labels are padding, HF's shifted input carries </s> on; those positions are never scored)
    real = enc["labels"] != tok.pad_id
    shifted = shift_tokens_right(enc["labels"], tok.pad_id, tok.bos_id)
    torch.testing.assert_close(batch["tgt_in"][real], shifted[real])
    assert (batch["tgt_in"][:, 0] == tok.pad_id).all()
    model = build_hf_marian(tok.vocab_size, tok.pad_id, str(path)).eval()
    labels = enc["labels"].masked_fill(enc["labels"] == tok.pad_id, -100)
    with torch.no_grad():
        want = hf(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], labels=labels).loss
        got = torch.nn.functional.cross_entropy(
            model(batch["src"], batch["tgt_in"]).flatten(0, 1), batch["tgt_out"].flatten(), ignore_index=tok.pad_id
        )
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert [tok.decode(t) for t in enc["labels"].tolist()] == tgt  # targets decode with target.spm


def test_a_vocab_txt_only_folder_loads(folders: dict[str, Path], tmp_path: Path) -> None:
    """Older BERT folders have vocab.txt and config.json, no tokenizer.json."""
    vocab = transformers.AutoTokenizer.from_pretrained(folders["bert"]).get_vocab()
    (tmp_path / "vocab.txt").write_text("".join(f"{w}\n" for w, _ in sorted(vocab.items(), key=lambda kv: kv[1])))
    (tmp_path / "config.json").write_text((folders["bert"] / "config.json").read_text())
    ours, theirs = PretrainedTokenizer(tmp_path), PretrainedTokenizer(folders["bert"])
    text = "the plot was really superb and the cast weak"
    assert ours.classification_input([text], 64) == theirs.classification_input([text], 64)
    assert ours.decode(ours.encode(text)) == text


def test_unreadable_tokenizer_folders_are_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="model folder not found"):
        PretrainedTokenizer(tmp_path / "nowhere")
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(UserError, match=f"cannot load the tokenizer in {tmp_path}"):
        PretrainedTokenizer(tmp_path)
