"""Language-modeling data (prunelab.data.language_modeling): windows against the references' loops written out here
(SparseGPT's non-overlapping windows, Hugging Face's strided perplexity), batches against the stream they came from,
the three data sources reading files, `datasets` folders and tokenizers built here offline, calibration through
pruning.calibration unchanged, and the errors."""

from __future__ import annotations

import gzip
import json
import math
import random
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from prunelab.data.language_modeling import (
    HfLmDataModule,
    LanguageModelingDataModule,
    LmTextDataModule,
    PretrainedLmTokenizer,
    SyntheticLmDataModule,
)
from prunelab.data.sources.files import split_documents
from prunelab.data.splits import split_check
from prunelab.data.windows import IGNORE, Window, collate_lm, window_spans, windows
from prunelab.errors import UserError
from prunelab.pruning.calibration import calibration_set

ROOT = Path(__file__).resolve().parents[2]
WORDS = "the cat dog sat ran on in a big small red house tree saw mat park and with".split()


# --- independent references ------------------------------------------------------------------------------------------
def sparsegpt_windows(stream: list[int], seq_len: int) -> list[tuple[int, list[int], list[int]]]:
    """SparseGPT/Wanda's evaluation loop: nsamples = numel // seqlen windows; inputs window[:-1], labels window[1:].
    -> (start, inputs, labels)."""
    out = []
    for i in range(len(stream) // seq_len):
        w = stream[i * seq_len : (i + 1) * seq_len]
        out.append((i * seq_len, w[:-1], w[1:]))
    return out


def hf_strided(stream: list[int], max_length: int, stride: int) -> list[tuple[int, list[int], list[int]]]:
    """Hugging Face's documented strided perplexity loop, with the model's internal shift written out:
    target_ids[:, :-trg_len] = -100, then logits[:-1] are scored against labels[1:]. -> (begin, inputs, labels)."""
    out = []
    prev_end = 0
    for begin in range(0, len(stream), stride):
        end = min(begin + max_length, len(stream))
        trg_len = end - prev_end
        input_ids = stream[begin:end]
        target_ids = list(input_ids)
        for j in range(len(target_ids) - trg_len):
            target_ids[j] = -100
        out.append((begin, input_ids[:-1], target_ids[1:]))
        prev_end = end
        if end == len(stream):
            break
    return out


def batch_rows(batch: dict[str, Any]) -> list[tuple[list[int], list[int]]]:
    """A batch's rows with the padding cut off: (inputs, labels), padding found from the labels' trailing -100s and
    the inputs' pad ids together (a row's last real target is never padding)."""
    rows = []
    for src, tgt in zip(batch["src"].tolist(), batch["target"].tolist(), strict=True):
        n = max((j + 1 for j, t in enumerate(tgt) if t != IGNORE), default=0)
        rows.append((src[:n], tgt[:n]))
    return rows


def tokens_of(n: int, seed: int = 0, vocab: int = 50) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(4, vocab) for _ in range(n)]


# --- windows ---------------------------------------------------------------------------------------------------------
def test_non_overlapping_windows_are_the_references() -> None:
    for n in range(0, 60):
        for seq_len in range(2, 12):
            stream = tokens_of(n, seed=n * 100 + seq_len)
            ws = windows(stream, seq_len)
            ref = sparsegpt_windows(stream, seq_len)
            assert len(ws) == n // seq_len
            assert sum(len(w.ids) for w in ws) == (n // seq_len) * seq_len  # the trailing partial window dropped
            for w, (start, inputs, labels) in zip(ws, ref, strict=True):
                assert w.start == start and w.score_from == 1 and list(w.ids) == stream[start : start + seq_len]
                batch = collate_lm([w], pad_id=0)
                assert batch_rows(batch) == [(inputs, labels)]
                assert batch["n_tokens"] == seq_len - 1
            assert [w.idx for w in ws] == list(range(len(ws)))


def test_strided_windows_score_every_token_once_as_hugging_face_does() -> None:
    for n in range(0, 40):
        for seq_len in range(2, 9):
            for stride in range(1, seq_len):
                stream = [100 + p for p in range(n)]  # the token is its position: contexts can be read off
                ws = windows(stream, seq_len, stride)
                ref = hf_strided(stream, seq_len, stride) if n >= 2 else []
                got = [batch_rows(collate_lm([w], pad_id=0))[0] for w in ws]
                assert got == [(inputs, labels) for _, inputs, labels in ref], (n, seq_len, stride)
                scored: dict[int, int] = {}
                for w in ws:
                    assert 1 <= w.score_from < len(w.ids) <= seq_len
                    for j in range(w.score_from, len(w.ids)):
                        p = w.ids[j] - 100  # stream position of the scored token
                        scored[p] = scored.get(p, 0) + 1
                        context = list(w.ids[:j])
                        assert context == stream[p - j : p]  # the tokens right before it, in order
                        assert min(p, seq_len - stride) <= j <= seq_len - 1
                assert scored == dict.fromkeys(range(1, n), 1), (n, seq_len, stride)


def test_window_arguments() -> None:
    with pytest.raises(ValueError):
        window_spans(10, 1)
    for stride in (0, 4, 5):
        with pytest.raises(ValueError):
            window_spans(10, 4, stride)


def test_collate_pads_and_masks() -> None:
    stream = tokens_of(30, seed=3)
    ws = [Window(stream[0:8], 1, 0, 0), Window(stream[4:12], 5, 1, 4), Window(stream[20:25], 2, 7, 20)]
    b = collate_lm(ws, pad_id=9)
    assert set(b) == {"src", "target", "real", "n_tokens", "idx", "ref"}
    assert b["src"].dtype == b["target"].dtype == torch.long and b["src"].shape == b["target"].shape == (3, 7)
    for i, w in enumerate(ws):
        ids = list(w.ids)
        for j in range(7):
            assert b["src"][i, j] == (ids[j] if j < len(ids) - 1 else 9)
            assert b["target"][i, j] == (ids[j + 1] if w.score_from <= j + 1 < len(ids) else IGNORE)
            assert b["real"][i, j] == (j < len(ids) - 1)
    assert b["n_tokens"] == int((b["target"] != IGNORE).sum()) == 7 + 3 + 3
    assert b["idx"].tolist() == [0, 1, 7] and b["ref"] == ["", "", ""]


@pytest.mark.parametrize("stride", [None, 3, 7])
def test_batches_give_the_streams_log_likelihood(stride: int | None) -> None:
    """A bigram model's summed NLL over a split's batches equals the sum over the stream's scored tokens, computed
    straight from the stream: every token after the first (strided), or after each window's first (non-overlapping)."""
    seq_len, V = 8, 40
    stream = tokens_of(101, seed=5, vocab=V)
    table = torch.randn(V, V, generator=torch.Generator().manual_seed(0)).log_softmax(-1)
    ws = windows(stream, seq_len, stride)
    total = 0.0
    for k in range(0, len(ws), 4):
        b = collate_lm(ws[k : k + 4], pad_id=0)
        total += float(F.cross_entropy(table[b["src"]].flatten(0, 1), b["target"].flatten(), reduction="sum"))
    if stride is None:
        positions = [p for p in range(1, (len(stream) // seq_len) * seq_len) if p % seq_len]
    else:
        positions = list(range(1, len(stream)))
    expected = -sum(float(table[stream[p - 1], stream[p]]) for p in positions)
    assert math.isclose(total, expected, rel_tol=1e-5)


# --- data=lm_text ----------------------------------------------------------------------------------------------------
def sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9)))


def documents(n: int, seed: int) -> list[list[str]]:
    """n documents of 1-3 lines each."""
    rng = random.Random(seed)
    return [[sentence(rng) for _ in range(rng.randint(1, 3))] for _ in range(n)]


def write_text(path: Path, docs: list[list[str]]) -> None:
    """Documents separated by blank lines (two blank lines between some, surrounding spaces and CRLF on some)."""
    parts = []
    for i, doc in enumerate(docs):
        parts.append("\r\n".join(f"  {line} " for line in doc) if i % 3 == 0 else "\n".join(doc))
        parts.append("\n\n\n" if i % 4 == 1 else "\n\n")
    data = ("\n" + "".join(parts)).encode()
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)


def text_dir(tmp_path: Path, n: tuple[int, int, int] = (60, 20, 20)) -> tuple[Path, dict[str, list[str]]]:
    folder = tmp_path / "text"
    folder.mkdir()
    docs = {}
    for (split, name), k, seed in zip(
        {"train": "train.txt", "valid": "valid.txt.gz", "test": "test.txt"}.items(), n, (1, 2, 3), strict=True
    ):
        d = documents(k, seed)
        write_text(folder / name, d)
        docs[split] = ["\n".join(lines) for lines in d]
    return folder, docs


def expected_stream(encode: Any, docs: list[str], eos: int) -> list[int]:
    out: list[int] = []
    for d in docs:
        out += [*encode(d), eos]
    return out


def test_split_documents() -> None:
    lines = ["", "a b", "c", "", "", "d", ""]
    assert split_documents(lines, "blank_lines") == ["a b\nc", "d"]
    assert split_documents(lines, "lines") == ["a b", "c", "d"]
    assert split_documents(lines, "file") == ["a b\nc\n\n\nd"]
    assert split_documents(["", ""], "blank_lines") == split_documents(["", ""], "file") == []


def test_lm_text_with_sentencepiece(tmp_path: Path) -> None:
    folder, docs = text_dir(tmp_path)
    dm = LmTextDataModule(dir=str(folder), vocab_size=40, seq_len=16, stride=None, max_tokens=64)
    dm.prepare_data()
    dm.setup()
    assert len(list(folder.glob("spm.*.model"))) == 1  # trained on train.txt, cached next to the data
    tok = dm.tokenizer
    assert (tok.pad_id, tok.eos_id) == (0, 2)
    proto = json.loads(json.dumps(dm.task_kwargs()["protocol"]))  # JSON-able
    assert dm.task_kwargs()["tokenizer"] is tok and dm.model_kwargs() == {}
    for split in ("train", "valid", "test"):
        stream = expected_stream(tok.encode, docs[split], tok.eos_id)
        ws = dm.examples[split]
        assert [list(w.ids) for w in ws] == [stream[k * 16 : (k + 1) * 16] for k in range(len(stream) // 16)]
        assert proto["splits"][split] == {
            "documents": len(docs[split]),
            "tokens": len(stream),
            "windows": len(stream) // 16,
            "stride": None,
            "predicted_tokens": 15 * (len(stream) // 16),
            "dropped_tokens": len(stream) % 16,
        }
    assert proto["seq_len"] == 16 and proto["stride"] is None
    assert proto["document_separator"]["id"] == 2 and proto["pad_id"] == 0
    assert proto["tokenizer"]["kind"] == "sentencepiece" and proto["tokenizer"]["vocab_size"] == tok.vocab_size
    # a training batch holds max_tokens // seq_len windows, and an epoch every window once
    batches = list(dm.train_dataloader())
    sizes = sorted(b["src"].shape[0] for b in batches)
    assert sizes[1:] == [4] * (len(sizes) - 1) and all(b["src"].shape[1] == 15 for b in batches)
    assert sorted(i for b in batches for i in b["idx"].tolist()) == list(range(len(dm.examples["train"])))
    # evaluation: every window once, in order
    assert [i for b in dm.val_dataloader() for i in b["idx"].tolist()] == list(range(len(dm.examples["valid"])))
    assert split_check(dm.examples)["train"]["examples"] == len(dm.examples["train"])


def test_lm_text_strided_evaluation(tmp_path: Path) -> None:
    folder, docs = text_dir(tmp_path)
    dm = LmTextDataModule(dir=str(folder), vocab_size=40, seq_len=16, stride=5)
    dm.setup()
    tok = dm.tokenizer
    stats = dm.protocol()["splits"]
    for split, loader in (("valid", dm.val_dataloader()), ("test", dm.test_dataloader())):
        stream = expected_stream(tok.encode, docs[split], tok.eos_id)
        # (evaluation batches group windows by length: the short last window comes first)
        got = [
            r for _, r in sorted(pair for b in loader for pair in zip(b["idx"].tolist(), batch_rows(b), strict=True))
        ]
        assert got == [(inputs, labels) for _, inputs, labels in hf_strided(stream, 16, 5)]
        assert stats[split]["predicted_tokens"] == len(stream) - 1 and stats[split]["dropped_tokens"] == 0
        assert stats[split]["stride"] == 5
    train = expected_stream(tok.encode, docs["train"], tok.eos_id)
    assert (
        stats["train"]["windows"] == len(train) // 16 and stats["train"]["stride"] is None
    )  # training: non-overlapping
    assert dm.protocol()["eval_windows"] == "strided"


def test_lm_text_documents_and_bos(tmp_path: Path) -> None:
    folder, docs = text_dir(tmp_path)
    dm = LmTextDataModule(dir=str(folder), vocab_size=40, seq_len=8, documents="lines", bos=True)
    dm.setup()
    tok = dm.tokenizer
    lines = [line for d in docs["test"] for line in d.split("\n")]
    stream = [tok.bos_id, *expected_stream(tok.encode, lines, tok.eos_id)]
    assert [list(w.ids) for w in dm.examples["test"]] == [stream[k * 8 : (k + 1) * 8] for k in range(len(stream) // 8)]
    assert dm.protocol()["splits"]["test"]["documents"] == len(lines)


# --- pretrained tokenizers, built here offline -----------------------------------------------------------------------
def gpt2_like_tokenizer(folder: Path, texts: list[str], model_max_length: int = 1024) -> Path:
    """A byte-level BPE trained on `texts`, saved as a GPT-2 checkpoint's tokenizer: <|endoftext|> is its BOS, EOS and
    UNK, and it has no pad token."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=300, min_frequency=1, special_tokens=["<|endoftext|>"])
    eot = "<|endoftext|>"
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        bos_token=eot,
        eos_token=eot,
        unk_token=eot,
        model_max_length=model_max_length,
    )
    tok.save_pretrained(str(folder))
    return folder


def llama_like_tokenizer(folder: Path, texts: list[str]) -> Path:
    """A byte-level BPE trained on `texts` whose call puts BOS first, as Llama's and OPT's tokenizers do (so that
    `tokenizer(text)` and the ids without special tokens differ): <s> BOS, </s> EOS, no pad token."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import ByteLevelBPETokenizer, processors

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=300, min_frequency=1, special_tokens=["<s>", "</s>", "<unk>"])
    bpe._tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", bpe.token_to_id("<s>"))]
    )
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    tok.save_pretrained(str(folder))
    return folder


FILES = {"train": "train.txt", "valid": "valid.txt.gz", "test": "test.txt"}  # text_dir's


def file_text(path: Path) -> str:
    """The file's text as stored (the bytes decoded, nothing stripped or translated)."""
    raw = path.read_bytes()
    return (gzip.decompress(raw) if path.name.endswith(".gz") else raw).decode("utf-8")


def test_lm_text_joined_is_the_tokenizer_called_on_each_files_text(tmp_path: Path) -> None:
    """data.documents=joined is the literature's protocol (SparseGPT/Wanda: tokenizer("\\n\\n".join(rows))): each
    split's stream is exactly the checkpoint's tokenizer called on the file's text, its BOS included, no EOS inserted
    (the files have CRLF lines, surrounding spaces and runs of blank lines, and one is gzipped); the default
    (blank_lines) is the eos stream, and results.json's protocol says which a run used."""
    transformers = pytest.importorskip("transformers")
    folder, docs = text_dir(tmp_path)
    ckpt = llama_like_tokenizer(tmp_path / "llama", [d for s in docs.values() for d in s])
    ref = transformers.AutoTokenizer.from_pretrained(str(ckpt), local_files_only=True)
    bos, eos = ref.bos_token_id, ref.eos_token_id
    dm = LmTextDataModule(dir=str(folder), tokenizer=str(ckpt), seq_len=12, stride=5, documents="joined")
    dm.prepare_data()
    dm.setup()
    for split, name in FILES.items():
        text = file_text(folder / name)
        assert "\r\n" in text or name != "train.txt"  # line ends kept as stored
        stream = ref(text)["input_ids"]  # the tokenizer called directly on the file's text
        assert stream[0] == bos and eos not in stream
        if split == "train":
            assert [list(w.ids) for w in dm.examples[split]] == [
                stream[k * 12 : (k + 1) * 12] for k in range(len(stream) // 12)
            ]
        else:  # strided evaluation over the same stream
            assert [(w.start, list(w.ids)) for w in dm.examples[split]] == [
                (b, stream[b:e]) for b, e, _ in window_spans(len(stream), 12, 5)
            ]
        assert dm.split_stats[split]["tokens"] == len(stream) and dm.split_stats[split]["documents"] == 1
    proto = dm.protocol()
    assert proto["stream"] == "joined" and proto["stream_definition"].startswith("the split's whole text")
    assert proto["document_separator"] is None and proto["bos_first"] == {"id": bos}
    assert json.loads(json.dumps(proto)) == proto

    eos_dm = LmTextDataModule(dir=str(folder), tokenizer=str(ckpt), seq_len=12)  # the default: documents + EOS
    eos_dm.prepare_data()
    eos_dm.setup()
    stream = expected_stream(lambda d: ref(d, add_special_tokens=False)["input_ids"], docs["test"], eos)
    assert [list(w.ids) for w in eos_dm.examples["test"]] == [
        stream[k * 12 : (k + 1) * 12] for k in range(len(stream) // 12)
    ]
    proto = eos_dm.protocol()
    assert proto["stream"] == "eos" and proto["document_separator"]["id"] == eos and proto["bos_first"] is None

    # data.bos=true would put a second BOS before tokenizer(text)'s own
    with pytest.raises(UserError, match=r"data\.bos=true.*joined"):
        LmTextDataModule(dir=str(folder), tokenizer=str(ckpt), seq_len=12, documents="joined", bos=True).setup()


def test_lm_text_joined_with_sentencepiece(tmp_path: Path) -> None:
    """Without a checkpoint there is no tokenizer(text) call: the joined stream is [BOS if data.bos] + encode(text) of
    the file's whole text, no EOS."""
    folder, _ = text_dir(tmp_path)
    for bos in (False, True):
        dm = LmTextDataModule(dir=str(folder), vocab_size=40, seq_len=8, documents="joined", bos=bos)
        dm.prepare_data()
        dm.setup()
        tok = dm.tokenizer
        stream = [tok.bos_id] * bos + tok.encode(file_text(folder / "test.txt"))
        assert tok.eos_id not in stream[1:]
        assert [list(w.ids) for w in dm.examples["test"]] == [
            stream[k * 8 : (k + 1) * 8] for k in range(len(stream) // 8)
        ]
        assert dm.protocol()["bos_first"] == ({"id": tok.bos_id} if bos else None)


def test_lm_text_with_a_pretrained_tokenizer(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    folder, docs = text_dir(tmp_path)
    ckpt = gpt2_like_tokenizer(tmp_path / "gpt2", [d for s in docs.values() for d in s])
    dm = LmTextDataModule(dir=str(folder), tokenizer=str(ckpt), seq_len=12, vocab_size=40)
    dm.prepare_data()
    dm.setup()
    assert not list(folder.glob("spm.*.model"))  # no SentencePiece with a pretrained tokenizer
    ref = transformers.AutoTokenizer.from_pretrained(str(ckpt), local_files_only=True)
    eos = ref.eos_token_id
    tok = dm.tokenizer
    assert isinstance(tok, PretrainedLmTokenizer) and tok.eos_id == eos and tok.pad_id == eos  # no pad token: EOS
    for split in ("train", "valid", "test"):
        stream = expected_stream(lambda d: ref(d, add_special_tokens=False)["input_ids"], docs[split], eos)
        assert [list(w.ids) for w in dm.examples[split]] == [
            stream[k * 12 : (k + 1) * 12] for k in range(len(stream) // 12)
        ]
    ws = dm.examples["test"]
    b = collate_lm([ws[0], Window(ws[1].ids[:5], 1, 1, ws[1].start)], tok.pad_id)
    assert b["src"][1, 4:].tolist() == [eos] * 7  # padded with EOS; `real` tells padding from EOS in the text
    assert b["real"][1].tolist() == [True] * 4 + [False] * 7 and bool(b["real"][0].all())
    proto = dm.protocol()
    assert proto["tokenizer"]["kind"] == "pretrained" and proto["pad_id"] == eos
    assert proto["tokenizer"]["vocab_size"] == len(ref)


def test_seq_len_beyond_the_models_positions(tmp_path: Path) -> None:
    folder, docs = text_dir(tmp_path)
    ckpt = gpt2_like_tokenizer(tmp_path / "gpt2", [d for s in docs.values() for d in s], model_max_length=16)
    LmTextDataModule(dir=str(folder), tokenizer=str(ckpt), seq_len=17).setup()  # 16 input tokens a window: fits
    with pytest.raises(UserError, match=r"seq_len=18.*positions"):
        LmTextDataModule(dir=str(folder), tokenizer=str(ckpt), seq_len=18).setup()


# --- data=hf_lm ------------------------------------------------------------------------------------------------------
def save_text_dataset(folder: Path, column: str = "text") -> dict[str, list[str]]:
    datasets = pytest.importorskip("datasets")
    rows = {}
    for split, seed in (("train", 1), ("validation", 2), ("test", 3)):
        rng = random.Random(seed)
        # wikitext-like rows: headings, paragraphs and empty rows
        rows[split] = [rng.choice(["", f" = {sentence(rng)} = \n", f" {sentence(rng)} . \n"]) for _ in range(40)]
    cols = {s: {column: r, "n": list(range(len(r)))} for s, r in rows.items()}
    datasets.DatasetDict({s: datasets.Dataset.from_dict(c) for s, c in cols.items()}).save_to_disk(str(folder))
    return rows


@pytest.mark.parametrize("join", ["\n\n", None])
def test_hf_lm_rows(tmp_path: Path, join: str | None) -> None:
    transformers = pytest.importorskip("transformers")
    rows = save_text_dataset(tmp_path / "wiki")
    ckpt = llama_like_tokenizer(tmp_path / "llama", [r for s in rows.values() for r in s if r])  # its call adds BOS
    ref = transformers.AutoTokenizer.from_pretrained(str(ckpt), local_files_only=True)
    dm = HfLmDataModule(name=str(tmp_path / "wiki"), tokenizer=str(ckpt), join=join, seq_len=10)
    dm.prepare_data()
    dm.setup()
    eos = ref.eos_token_id
    for split, name in (("train", "train"), ("valid", "validation"), ("test", "test")):
        if join is None:  # every row with text a document
            stream = expected_stream(
                lambda d: ref(d, add_special_tokens=False)["input_ids"], [r for r in rows[name] if r.strip()], eos
            )
        else:  # SparseGPT/Wanda: tokenizer("\n\n".join(rows)), exactly: its BOS first, no EOS
            stream = ref(join.join(rows[name]))["input_ids"]
            assert stream[0] == ref.bos_token_id and eos not in stream
        assert [list(w.ids) for w in dm.examples[split]] == [
            stream[k * 10 : (k + 1) * 10] for k in range(len(stream) // 10)
        ]
    assert ("joined with '\\n\\n'" in dm.protocol()["documents"]) == (join is not None)
    assert dm.protocol()["stream"] == ("eos" if join is None else "joined")


def test_hf_lm_column(tmp_path: Path) -> None:
    save_text_dataset(tmp_path / "ds", column="body")
    dm = HfLmDataModule(name=str(tmp_path / "ds"), vocab_size=40, seq_len=8, cache_dir=str(tmp_path / "cache"))
    dm.prepare_data()
    dm.setup()  # the only string column is found; SentencePiece trained on its text
    assert dm.examples["test"] and len(list((tmp_path / "cache").glob("spm.*.model"))) == 1
    with pytest.raises(UserError, match="no column 'text'"):
        HfLmDataModule(name=str(tmp_path / "ds"), column="text", vocab_size=40, seq_len=8).setup()


# --- data=synthetic_lm -----------------------------------------------------------------------------------------------
def test_synthetic_lm() -> None:
    dm = SyntheticLmDataModule(seed=7, train_sentences=300, valid_sentences=40, test_sentences=40)
    dm.setup()
    again = SyntheticLmDataModule(seed=7, train_sentences=300, valid_sentences=40, test_sentences=40)
    again.setup()
    other = SyntheticLmDataModule(seed=8, train_sentences=300, valid_sentences=40, test_sentences=40)
    other.setup()
    assert dm.seq_len == 64
    for split in ("train", "valid", "test"):
        assert [list(w.ids) for w in dm.examples[split]] == [list(w.ids) for w in again.examples[split]]
        assert all(dm.tokenizer.unk_id not in list(w.ids) for w in dm.examples[split])  # every word has its pieces
    assert [list(w.ids) for w in dm.examples["test"]] != [list(w.ids) for w in other.examples["test"]]
    assert not set(dm.sentences["train"]) & set(dm.sentences["valid"] + dm.sentences["test"])
    tok = dm.tokenizer
    stream = expected_stream(tok.encode, dm.read_documents("valid"), tok.eos_id)
    assert [list(w.ids) for w in dm.examples["valid"]] == [
        stream[k * 64 : (k + 1) * 64] for k in range(len(stream) // 64)
    ]
    assert tok.decode(tok.encode(dm.sentences["test"][0])) == dm.sentences["test"][0]
    words = SyntheticLmDataModule(seed=7, tokenization="word", train_sentences=300, seq_len=16)
    words.setup()
    assert len(words.examples["test"][0].ids) == 16 and words.tokenizer.unk_id not in list(
        words.examples["test"][0].ids
    )


# --- calibration (pruning.calibration, unchanged) --------------------------------------------------------------------
def test_calibration_set(tmp_path: Path) -> None:
    dm = SyntheticLmDataModule(seed=3, train_sentences=300, valid_sentences=40, test_sentences=40, seq_len=32)
    dm.setup()
    train = {w.idx: w for w in dm.examples["train"]}
    cal = calibration_set(dm, n=10, max_tokens=None, seed=5, batch_tokens=128)
    assert cal.report["examples"] == 10 and cal.report["tokens"] == 10 * 32
    seen = []
    for b in cal.batches:
        assert set(b) == {"src", "target", "real", "n_tokens", "idx", "ref"} and b["src"].shape[0] <= 4
        assert b["n_tokens"] == 31 * len(b["ref"]) == int((b["target"] != IGNORE).sum())
        for i, (inputs, labels) in zip(b["idx"].tolist(), batch_rows(b), strict=True):
            ids = list(train[i].ids)
            assert (inputs, labels) == (ids[:-1], ids[1:])
            seen.append(i)
    assert len(set(seen)) == 10
    capped = calibration_set(dm, n=10, max_tokens=100, seed=5)
    assert capped.report["examples"] == 3  # 3 windows of 32 tokens fit in 100
    # calibration text from a file: its lines are documents, their stream cut into windows
    lines = [" ".join(dm.sentences["test"][i : i + 3]) for i in range(0, 30, 3)]
    (tmp_path / "cal.txt").write_text("\n".join(lines) + "\n\n")
    from_file = calibration_set(dm, n=100, max_tokens=None, seed=0, file=str(tmp_path / "cal.txt"))
    stream = expected_stream(dm.tokenizer.encode, lines, dm.tokenizer.eos_id)
    assert from_file.report["examples"] == len(stream) // 32
    got = sorted((i, r) for b in from_file.batches for i, r in zip(b["idx"].tolist(), batch_rows(b), strict=True))
    assert [r for _, r in got] == [
        (w[:-1], w[1:]) for w in (stream[k * 32 : (k + 1) * 32] for k in range(len(stream) // 32))
    ]
    with pytest.raises(UserError, match="fewer than one window"):
        dm.encode_texts(["the"], "somewhere")


# --- errors and configs ----------------------------------------------------------------------------------------------
def test_errors(tmp_path: Path) -> None:
    folder, _ = text_dir(tmp_path)
    with pytest.raises(UserError, match="data directory not found"):
        LmTextDataModule(dir=str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match=r"test file not found.*data.test_file"):
        LmTextDataModule(dir=str(folder), test_file="missing.txt")
    with pytest.raises(UserError, match=r"data\.seq_len must be an integer >= 2"):
        LmTextDataModule(dir=str(folder), seq_len=1)
    with pytest.raises(UserError, match=r"data.stride.*data.stride=null"):
        LmTextDataModule(dir=str(folder), seq_len=8, stride=8)
    with pytest.raises(UserError, match=r"data\.stride"):
        LmTextDataModule(dir=str(folder), seq_len=8, stride=0)
    with pytest.raises(UserError, match=r"data\.documents"):
        LmTextDataModule(dir=str(folder), documents="paragraphs")
    with pytest.raises(
        UserError, match=r"the train split \(.*train.txt\) has \d+ tokens, fewer than one window of data.seq_len=5000"
    ):
        LmTextDataModule(dir=str(folder), vocab_size=40, seq_len=5000).setup()
    (folder / "empty").mkdir()
    for name in ("train.txt", "test.txt"):
        (folder / "empty" / name).write_text("a b c d e f g h i j\n" * 5)
    (folder / "empty" / "valid.txt").write_text("\n  \n\n")
    with pytest.raises(UserError, match=r"the valid split \(.*valid.txt\) has no text"):
        LmTextDataModule(dir=str(folder / "empty"), vocab_size=20, seq_len=4).setup()
    with pytest.raises(UserError, match=r"data\.tokenization"):
        SyntheticLmDataModule(tokenization="bytes")


def test_configs_build_the_data_modules(tmp_path: Path) -> None:
    folder, _ = text_dir(tmp_path)
    save_text_dataset(tmp_path / "wiki")
    from hydra.utils import instantiate

    overrides = {
        "lm_text": {"dir": str(folder), "vocab_size": 40, "seq_len": 16},
        "hf_lm": {"name": str(tmp_path / "wiki"), "vocab_size": 40, "seq_len": 16, "cache_dir": str(tmp_path / "c")},
        "synthetic_lm": {"train_sentences": 200},
    }
    for name, extra in overrides.items():
        node = OmegaConf.load(ROOT / "conf" / "data" / f"{name}.yaml")
        assert "language_modeling" in str(node.pop("defaults"))  # the data config selects its task
        cfg = OmegaConf.merge({"seed": 11, "data": node}, {"data": extra})
        dm = instantiate(cfg.data)
        assert isinstance(dm, LanguageModelingDataModule) and dm.kind == "language_modeling"
        assert dm.shuffle_seed == 11 and dm.pretrained is None and dm.stride is None
        dm.prepare_data()
        dm.setup()
        assert all(dm.examples[s] for s in ("train", "valid", "test"))
    assert OmegaConf.load(ROOT / "conf" / "data" / "hf_lm.yaml").join == "\n\n"
