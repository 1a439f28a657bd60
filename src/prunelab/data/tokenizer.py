"""Tokenizers share one id layout: pad=0, bos=1, eos=2, unk=3, then the vocabulary."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]


class Tokenizer(Protocol):
    pad_id: int
    bos_id: int
    eos_id: int
    unk_id: int

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class WordTokenizer:
    """Whitespace words; used for the synthetic language pair, whose vocabulary is known exactly."""

    pad_id, bos_id, eos_id, unk_id = PAD, BOS, EOS, UNK

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


class SentencePieceTokenizer:
    """A SentencePiece model (Kudo & Richardson 2018), the usual joint subword vocabulary for NMT."""

    pad_id, bos_id, eos_id, unk_id = PAD, BOS, EOS, UNK

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


class PieceTokenizer:
    """Words cut into known subword pieces, marked BPE-style: every piece but a word's last ends in "@@".

    Used for the synthetic pair, whose words are built from syllables: as with BPE or SentencePiece on
    real text, lexical knowledge then has to live in the network, not in one embedding per word.
    """

    pad_id, bos_id, eos_id, unk_id = PAD, BOS, EOS, UNK
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
