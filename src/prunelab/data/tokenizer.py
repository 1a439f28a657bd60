"""Tokenizers: what turns text into model ids and back, and how an input is framed with special tokens.

prunelab's own tokenizers share one id layout: pad=0, bos=1, eos=2, unk=3, then the vocabulary. A pretrained
checkpoint brings its own (`prunelab.hf.tokenizer.PretrainedTokenizer`: BERT's WordPiece, RoBERTa's byte-level
BPE, Marian's two SentencePiece models), with its own special ids; the data modules only ever use the ids a
tokenizer names:

    translation     source = encode(s) + [eos]    decoder input = [bos] + encode_target(t)    output = ... + [eos]
    classification  classification_input([text] or [text_a, text_b], max_len) -> ids (with [CLS] first), types

For an encoder-decoder checkpoint `bos_id` is the decoder's start token (Marian: its pad id), and `encode` /
`encode_target` put the checkpoint's own prefix first (`target_prefix`: mBART-50's [de_DE], BART's <s>), so that a
source is exactly what the checkpoint's tokenizer makes of it (`[en_XX] X </s>`); prunelab's own prefix nothing."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]


class Tokenizer(Protocol):
    pad_id: int
    bos_id: int  # the decoder's first input; a classifier's [CLS]
    eos_id: int
    unk_id: int
    max_positions: int | None  # the longest input a pretrained model takes (None: no limit of its own)
    # the ids every encode_target starts with (a multilingual checkpoint's target language code), and that code,
    # which decoding forces as the first token (None: nothing forced)
    target_prefix: Sequence[int]
    target_code_id: int | None

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> list[int]:
        """Text (a source sentence) -> ids, without the final EOS (a checkpoint's prefix first, if it has one)."""

    def encode_target(self, text: str) -> list[int]:
        """A target sentence -> ids, target_prefix first, without the final EOS (Marian cuts it with its target
        model)."""

    def decode(self, ids: Sequence[int]) -> str:
        """Model ids (a hypothesis) -> detokenized text, special tokens left out."""

    def classification_input(self, parts: Sequence[str], max_len: int) -> tuple[list[int], list[int] | None, bool]:
        """One text or a pair -> (ids with the special tokens, token types or None, whether it was truncated)."""


class OwnTokenizer(ABC):
    """What prunelab's own tokenizers share: the fixed special ids, targets cut like sources, and classification
    inputs framed as [CLS] a EOS (b EOS), with [CLS] = BOS and no token types. A subclass says how text becomes ids
    and back."""

    pad_id, bos_id, eos_id, unk_id = PAD, BOS, EOS, UNK
    max_positions: int | None = None
    target_prefix: tuple[int, ...] = ()  # targets are the sentence alone
    target_code_id: int | None = None

    @abstractmethod
    def encode(self, text: str) -> list[int]: ...

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str: ...

    def encode_target(self, text: str) -> list[int]:
        return self.encode(text)

    def classification_input(self, parts: Sequence[str], max_len: int) -> tuple[list[int], list[int] | None, bool]:
        ids = [BOS]
        for part in parts:
            ids += [*self.encode(part), EOS]
        if len(ids) <= max_len:
            return ids, None, False
        return [*ids[: max_len - 1], EOS], None, True


class WordTokenizer(OwnTokenizer):
    """Whitespace words; used for the synthetic language pair, whose vocabulary is known exactly."""

    def __init__(self, words: Iterable[str]):
        self.itos = SPECIALS + sorted(set(words) - set(SPECIALS))
        self.stoi = {w: i for i, w in enumerate(self.itos)}

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> list[int]:
        return [self.stoi.get(w, UNK) for w in text.split()]

    def decode(self, ids: Sequence[int]) -> str:
        return " ".join(self.itos[i] for i in ids if i >= len(SPECIALS) or i == UNK)


class SentencePieceTokenizer(OwnTokenizer):
    """A SentencePiece model (Kudo & Richardson 2018), the usual joint subword vocabulary for NMT."""

    def __init__(self, model_file: str | Path):
        import sentencepiece as spm

        self.sp = spm.SentencePieceProcessor(model_file=str(model_file))
        ids = (self.sp.pad_id(), self.sp.bos_id(), self.sp.eos_id(), self.sp.unk_id())
        if ids != (PAD, BOS, EOS, UNK):
            raise ValueError(f"{model_file}: special ids {ids} differ from prunelab's (0, 1, 2, 3)")

    @property
    def vocab_size(self) -> int:
        return int(self.sp.get_piece_size())

    def encode(self, text: str) -> list[int]:
        return list(self.sp.encode(text))

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.sp.decode([i for i in ids if i >= len(SPECIALS) or i == UNK]))


class PieceTokenizer(OwnTokenizer):
    """Words cut into known subword pieces, marked BPE-style: every piece but a word's last ends in "@@".

    Used for the synthetic pair, whose words are built from syllables: as with BPE or SentencePiece on
    real text, lexical knowledge then has to live in the network, not in one embedding per word.
    """

    CONT = "@@"

    def __init__(self, segmentation: dict[str, list[str]]):
        self.segmentation = segmentation
        pieces = {p + self.CONT for ps in segmentation.values() for p in ps[:-1]}
        pieces |= {ps[-1] for ps in segmentation.values()}
        self.itos = SPECIALS + sorted(pieces)
        self.stoi = {w: i for i, w in enumerate(self.itos)}

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for word in text.split():
            pieces = self.segmentation.get(word)
            if pieces is None:
                ids.append(UNK)
                continue
            ids += [self.stoi[p + self.CONT] for p in pieces[:-1]] + [self.stoi[pieces[-1]]]
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        text = " ".join(self.itos[i] for i in ids if i >= len(SPECIALS) or i == UNK)
        return text.replace(self.CONT + " ", "").removesuffix(self.CONT)
