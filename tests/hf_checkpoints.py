"""Tiny pretrained checkpoints made here, offline, with the original libraries: a BERT (or RoBERTa) classifier with
a WordPiece (byte-level BPE) tokenizer trained on the test's sentences, and a MarianMT model with its two
SentencePiece models and vocab.json. Each is trained a little by Hugging Face itself (its own model class, a plain
AdamW loop), so that it has a real score of its own, and saved with `save_pretrained` as a hub folder would be.

The corpora are small tasks such a model learns in a few hundred steps:
- sentiment: filler words around one cue word; the label is the cue's polarity.
- copy-translation: target = the source words, each mapped through a fixed lexicon.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import torch

POSITIVE = ["good", "great", "fine", "nice", "superb"]
NEGATIVE = ["bad", "awful", "poor", "dull", "weak"]
FILLER = ["the", "movie", "film", "plot", "was", "really", "quite", "a", "story", "and", "acting", "cast", "it", "so"]
LEXICON = {
    w: t
    for w, t in zip(
        [
            "the",
            "cat",
            "dog",
            "sat",
            "ran",
            "on",
            "in",
            "mat",
            "park",
            "a",
            "big",
            "small",
            "red",
            "house",
            "tree",
            "saw",
        ],
        [
            "die",
            "katze",
            "hund",
            "sass",
            "lief",
            "auf",
            "im",
            "matte",
            "garten",
            "eine",
            "gross",
            "klein",
            "rot",
            "haus",
            "baum",
            "sah",
        ],
        strict=True,
    )
}


def sentiment(n: int, seed: int) -> tuple[list[str], list[str]]:
    """n (text, label) examples; labels "negative" / "positive"."""
    rng = random.Random(seed)
    texts, labels = [], []
    for _ in range(n):
        positive = rng.random() < 0.5
        words = rng.sample(FILLER, rng.randint(2, 5))
        words.insert(rng.randint(0, len(words)), rng.choice(POSITIVE if positive else NEGATIVE))
        texts.append(" ".join(words))
        labels.append("positive" if positive else "negative")
    return texts, labels


def copy_pairs(n: int, seed: int) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    words = list(LEXICON)
    src = [" ".join(rng.choice(words) for _ in range(rng.randint(2, 6))) for _ in range(n)]
    return src, [" ".join(LEXICON[w] for w in s.split()) for s in src]


def write_tsv(folder: Path, splits: dict[str, tuple[list[str], list[str]]]) -> Path:
    """{train,dev,test}.tsv with a header row."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, (texts, labels) in splits.items():
        rows = ["sentence\tlabel", *(f"{t}\t{y}" for t, y in zip(texts, labels, strict=True))]
        (folder / f"{name}.tsv").write_text("\n".join(rows) + "\n")
    return folder


def write_parallel(
    folder: Path, splits: dict[str, tuple[list[str], list[str]]], src: str = "en", tgt: str = "de"
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, (s, t) in splits.items():
        (folder / f"{name}.{src}").write_text("\n".join(s) + "\n")
        (folder / f"{name}.{tgt}").write_text("\n".join(t) + "\n")
    return folder


# --- tokenizers -----------------------------------------------------------------------------------------------
def wordpiece_tokenizer(texts: list[str], vocab_size: int = 120):
    """A BertTokenizer whose vocabulary is a WordPiece model trained (by `tokenizers`) on `texts`."""
    import transformers
    from tokenizers import BertWordPieceTokenizer

    wp = BertWordPieceTokenizer(lowercase=True)
    wp.train_from_iterator(
        texts, vocab_size=vocab_size, min_frequency=1, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    )
    return transformers.BertTokenizer(vocab=wp.get_vocab(), do_lower_case=True)


def bpe_tokenizer(texts: list[str], folder: Path, vocab_size: int = 300):
    """A RobertaTokenizer (byte-level BPE: vocab.json + merges.txt) trained on `texts`."""
    import transformers
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        texts, vocab_size=vocab_size, min_frequency=1, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    )
    folder.mkdir(parents=True, exist_ok=True)
    bpe.save_model(str(folder))
    return transformers.RobertaTokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"))


def marian_tokenizer(src: list[str], tgt: list[str], folder: Path, pieces: int = 40):
    """Marian's layout: source.spm and target.spm (SentencePiece, trained here on each side) and vocab.json, the
    model's ids: </s> = 0, <unk> = 1, the pieces of both sides, <pad> last."""
    import sentencepiece as spm
    import transformers

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["</s>", "<unk>"]
    for name, sents in (("source", src), ("target", tgt)):
        model = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sents),
            model_writer=model,
            vocab_size=pieces,
            model_type="unigram",
            hard_vocab_limit=False,
            minloglevel=2,
            unk_id=1,
            eos_id=0,
            bos_id=-1,
            pad_id=-1,
        )
        (folder / f"{name}.spm").write_bytes(model.getvalue())
        sp = spm.SentencePieceProcessor(model_file=str(folder / f"{name}.spm"))
        vocab += [p for p in (sp.id_to_piece(i) for i in range(sp.get_piece_size())) if p not in vocab]
    vocab.append("<pad>")
    (folder / "vocab.json").write_text(json.dumps({p: i for i, p in enumerate(vocab)}))
    return transformers.MarianTokenizer(
        str(folder / "source.spm"), str(folder / "target.spm"), str(folder / "vocab.json")
    )


# --- checkpoints ------------------------------------------------------------------------------------------------
def hf_train(model, batches: list[dict], steps: int, lr: float) -> None:
    """Hugging Face's model trained by a plain AdamW loop on `batches` (cycled)."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for step in range(steps):
        loss = model(**batches[step % len(batches)]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def encoder_checkpoint(
    folder: Path,
    texts: list[str],
    labels: list[str],
    family: str = "bert",
    steps: int = 150,
    seed: int = 0,
    names: list[str] | None = None,
) -> Path:
    """A tiny BERT/RoBERTa sequence classifier trained by HF for `steps` steps on (texts, labels), saved with its
    tokenizer and the label names as id2label (`names`: in that order; by default sorted)."""
    import transformers

    torch.manual_seed(seed)
    names = names or sorted(set(labels))
    shape = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=64,
        id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)},
    )
    if family == "bert":
        tok = wordpiece_tokenizer(texts)
        config = transformers.BertConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, **shape)
        model = transformers.BertForSequenceClassification(config)
    else:
        tok = bpe_tokenizer(texts, folder / "_bpe")
        config = transformers.RobertaConfig(
            vocab_size=len(tok),
            pad_token_id=tok.pad_token_id,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            type_vocab_size=1,
            **{**shape, "max_position_embeddings": 66},
        )
        model = transformers.RobertaForSequenceClassification(config)
    index = {n: i for i, n in enumerate(names)}
    batches = []
    for i in range(0, len(texts), 16):
        enc = tok(texts[i : i + 16], padding=True, return_tensors="pt")
        batches.append({**enc, "labels": torch.tensor([index[y] for y in labels[i : i + 16]])})
    hf_train(model, batches, steps, lr=3e-3)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def marian_checkpoint(folder: Path, src: list[str], tgt: list[str], steps: int = 300, seed: int = 0) -> Path:
    """A tiny MarianMT model (swish, tied embeddings, pad = V-1 = decoder start) trained by HF on (src, tgt)."""
    import transformers

    torch.manual_seed(seed)
    tok = marian_tokenizer(src, tgt, folder)
    V = len(tok)
    config = transformers.MarianConfig(
        vocab_size=V,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        activation_function="swish",
        max_position_embeddings=64,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        decoder_start_token_id=tok.pad_token_id,
        forced_eos_token_id=tok.eos_token_id,
        scale_embedding=True,
        dropout=0.0,
        num_beams=4,
        max_length=64,
        bad_words_ids=[[tok.pad_token_id]],
    )
    model = transformers.MarianMTModel(config)
    batches = [
        tok(src[i : i + 16], text_target=tgt[i : i + 16], padding=True, return_tensors="pt")
        for i in range(0, len(src), 16)
    ]
    for b in batches:  # HF ignores label positions of -100 (padding)
        b["labels"][b["labels"] == tok.pad_token_id] = -100
    hf_train(model, batches, steps, lr=5e-3)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


# --- decoder-only language models ---------------------------------------------------------------------------
def documents(n: int, seed: int) -> list[str]:
    """`n` documents of 3 sentences of the two corpora above: text a small language model learns."""
    texts, _ = sentiment(3 * n, seed)
    sources, targets = copy_pairs(3 * n, seed)
    sents = [f"{a} . {b} . {c} ." for a, b, c in zip(texts, sources, targets, strict=True)]
    return [" ".join(sents[3 * i : 3 * i + 3]) for i in range(n)]


def write_lm_text(folder: Path, splits: dict[str, list[str]]) -> Path:
    """{train,valid,test}.txt with documents separated by blank lines (data=lm_text)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, docs in splits.items():
        (folder / f"{name}.txt").write_text("\n\n".join(docs) + "\n")
    return folder


def causal_lm_checkpoint(folder: Path, docs: list[str], family: str = "gpt2", steps: int = 60, seed: int = 0) -> Path:
    """A tiny GPT-2, OPT, Pythia (GPT-NeoX), Phi-3, Gemma 2, or Llama with grouped-query attention and an untied head,
    with a byte-level BPE tokenizer (<|endoftext|> = id 0, its BOS, EOS and the documents' separator) trained on
    `docs`, trained by HF for `steps` steps on windows of the documents' token stream, saved with `save_pretrained`."""
    import transformers
    from tokenizers import ByteLevelBPETokenizer

    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(docs, vocab_size=300, min_frequency=1, special_tokens=["<|endoftext|>"])
    bpe.save_model(str(folder))
    # the slow class reads vocab.json + merges.txt (GPT-2's layout); AutoTokenizer loads the saved folder as fast
    tok = transformers.GPT2Tokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"))
    ids = [t for d in docs for t in [*tok.encode(d), tok.eos_token_id]]
    windows = torch.tensor(ids[: len(ids) // 32 * 32]).view(-1, 32)
    if family == "gpt2":
        config = transformers.GPT2Config(
            vocab_size=len(tok), n_positions=128, n_embd=32, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0
        )
        model = transformers.GPT2LMHeadModel(config)
    elif family == "opt":  # OPT's own pad id (1) is a real token of this tokenizer: pad with <|endoftext|>
        config = transformers.OPTConfig(
            vocab_size=len(tok), hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=128, word_embed_proj_dim=32, pad_token_id=0, bos_token_id=0, eos_token_id=0,
        )  # fmt: skip
        model = transformers.OPTForCausalLM(config)
    elif family == "pythia":  # GPT-NeoX: parallel residual, a quarter of each head rotated
        config = transformers.GPTNeoXConfig(
            vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=128, rotary_pct=0.25, use_parallel_residual=True, bos_token_id=0, eos_token_id=0,
        )  # fmt: skip
        model = transformers.GPTNeoXForCausalLM(config)
    elif family == "phi3":  # fused qkv_proj / gate_up_proj, grouped-query attention, half of each head rotated
        config = transformers.Phi3Config(
            vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=128, partial_rotary_factor=0.5, bos_token_id=0,
            eos_token_id=0, pad_token_id=0,
        )  # fmt: skip
        model = transformers.Phi3ForCausalLM(config)
    elif family == "gemma2":  # sandwich norms, soft-capping, a sliding window (16) shorter than the windows (32)
        config = transformers.Gemma2Config(
            vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=8, max_position_embeddings=128, sliding_window=16, bos_token_id=0,
            eos_token_id=0, pad_token_id=0,
        )  # fmt: skip
        model = transformers.Gemma2ForCausalLM(config)
    else:
        config = transformers.LlamaConfig(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
            tie_word_embeddings=False,
            rope_theta=500.0,
            bos_token_id=0,
            eos_token_id=0,
        )
        model = transformers.LlamaForCausalLM(config)
    batches = [{"input_ids": windows[i : i + 8], "labels": windows[i : i + 8]} for i in range(0, len(windows), 8)]
    hf_train(model, batches, steps, lr=3e-3)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
