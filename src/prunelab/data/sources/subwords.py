"""The SentencePiece mixin of the data sources (floor: data): one subword model over a data set's training text,
trained once and cached under a name derived from that text and the settings, so that every process and every run on
the same text gets the same ids. The file readers (`sources.files`) and the `datasets` readers (`sources.hf`) build
on it whenever no pretrained checkpoint brings its own tokenizer."""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import os
import random
import tempfile
import zlib
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from prunelab.data.tokenizer import BOS, EOS, PAD, UNK, SentencePieceTokenizer, Tokenizer
from prunelab.errors import UserError

log = logging.getLogger(__name__)

SPM_MODEL_TYPES = ("unigram", "bpe", "char", "word")
# The training sentences are sampled with a constant seed, not the experiment's: the cache key does not
# include the seed, so the model must be a function of the key alone.
SPM_SEED = 0
# bump when the training recipe changes, so that old cached models are not reused
SPM_RECIPE = "prunelab-spm-v1"
FALLBACK_CACHE_DIR = Path("~/.cache/prunelab/spm")
UTF8_ERRORS = ("strict", "replace")


def _content_digest(path: Path) -> bytes:
    """sha256 of the decompressed bytes, so that gzipping a file does not invalidate the cache."""
    h = hashlib.sha256()  # (hashlib.file_digest would do, but needs Python 3.11)
    try:
        with gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    except (OSError, EOFError, zlib.error) as e:
        raise UserError(f"cannot read {path}: {e}") from e
    return h.digest()


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())


class SentencePieceData(ABC):
    """A joint SentencePiece model over a data set's training text, cached next to the data under a name
    derived from that text and the settings. A data module provides `_spm_sources()` (the training files,
    which key the cache) and `_spm_sentences()` (the training text), and sets `data_dir` (where the cache goes first)
    and `utf8_errors` (how `read_lines` treats bytes that are not UTF-8) before `check_spm_settings()`. The settings
    are this mixin's keyword arguments; the others go on to the data module's base."""

    vocab_size: int
    utf8_errors: str
    spm_model_type: str
    spm_character_coverage: float
    spm_max_sentences: int
    cache_dir: Path | None
    data_dir: Path
    _spm_file: Path | None

    def __init__(
        self,
        vocab_size: int = 8000,
        spm_model_type: str = "unigram",
        spm_character_coverage: float = 1.0,
        spm_max_sentences: int = 2_000_000,
        cache_dir: str | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.spm_model_type = spm_model_type
        self.spm_character_coverage = spm_character_coverage
        self.spm_max_sentences = spm_max_sentences
        self.cache_dir = Path(cache_dir).expanduser().absolute() if cache_dir else None
        self._spm_file = None

    @abstractmethod
    def _spm_sources(self) -> list[Path]:
        """The training files: their content keys the cache."""

    @abstractmethod
    def _spm_sentences(self) -> list[str]:
        """The text SentencePiece is trained on."""

    def check_spm_settings(self) -> None:
        """Fail at construction, before a model is built, on settings that cannot work."""
        if self.vocab_size <= 0:
            raise UserError(f"data.vocab_size must be positive, got {self.vocab_size}")
        if self.spm_model_type not in SPM_MODEL_TYPES:
            raise UserError(
                f"data.spm_model_type must be one of {', '.join(SPM_MODEL_TYPES)}, got {self.spm_model_type!r}"
            )
        if not 0 < self.spm_character_coverage <= 1:
            raise UserError(f"data.spm_character_coverage must be in (0, 1], got {self.spm_character_coverage}")
        if self.spm_max_sentences < 0:
            raise UserError(f"data.spm_max_sentences must be 0 (no cap) or positive, got {self.spm_max_sentences}")
        if self.utf8_errors not in UTF8_ERRORS:
            raise UserError(f"data.utf8_errors must be strict or replace, got {self.utf8_errors!r}")
        if not self.data_dir.is_dir():
            raise UserError(f"data directory not found: {self.data_dir} (set data.dir=...)")

    def prepare_data(self) -> None:
        # Lightning calls this on one process per node before setup() runs on every rank: the model is
        # trained once here and the other ranks find it in the cache. (A pretrained tokenizer needs none.)
        if not getattr(self, "pretrained", None):
            self._spm_model()

    def build_tokenizer(self) -> Tokenizer:
        path = self._spm_model()
        try:
            return SentencePieceTokenizer(path)
        except (OSError, RuntimeError, ValueError) as e:
            raise UserError(f"cannot load SentencePiece model {path} (delete it to retrain): {_one_line(e)}") from e

    def describe_tokenizer(self) -> dict[str, Any]:
        """The SentencePiece model, as a language-modeling protocol names the data's own tokenizer."""
        return {"kind": "sentencepiece", "name": str(self._spm_model()), "model_type": self.spm_model_type}

    def _cache_dirs(self) -> list[Path]:
        return [self.cache_dir] if self.cache_dir else [self.data_dir, FALLBACK_CACHE_DIR.expanduser()]

    def _cache_key(self) -> str:
        h = hashlib.sha256(
            f"{SPM_RECIPE} vocab_size={self.vocab_size} model_type={self.spm_model_type} "
            f"character_coverage={self.spm_character_coverage} max_sentences={self.spm_max_sentences}\n".encode()
        )
        for path in self._spm_sources():
            h.update(_content_digest(path))
        h.update(self._spm_key_extra())
        return h.hexdigest()[:16]

    def _spm_key_extra(self) -> bytes:
        """More of the cache key, for text that does not come from files (a `datasets` data set: its text)."""
        return b""

    def _spm_model(self) -> Path:
        """The cached model file for this training text and these settings; trained if there is none."""
        if self._spm_file is not None:
            return self._spm_file
        name = f"spm.{self._cache_key()}.model"
        for d in self._cache_dirs():
            if (d / name).is_file():
                log.info("SentencePiece: using cached model %s", d / name)
                self._spm_file = d / name
                return self._spm_file
        model = self._train_spm()
        self._spm_file = self._write_atomically(name, model)
        log.info("SentencePiece: trained %s", self._spm_file)
        return self._spm_file

    def _train_spm(self) -> bytes:
        import sentencepiece as spm

        sources = " and ".join(str(p) for p in self._spm_sources())
        sentences = self._spm_sentences()
        log.info("SentencePiece: training a %s model of %d pieces on %s", self.spm_model_type, self.vocab_size, sources)
        # Sample here rather than with SentencePiece's input_sentence_size: its sampling ignores
        # SetRandomGeneratorSeed (a different model on every run), and two processes that train at once (DDP
        # on several nodes sharing the data dir) must produce the same model, or they would disagree on ids.
        if 0 < self.spm_max_sentences < len(sentences):
            sentences = random.Random(SPM_SEED).sample(sentences, self.spm_max_sentences)
        model = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                # the cleaned lines, not the files: SentencePiece would read BOMs, "\r" and .gz bytes as text
                sentence_iterator=iter(sentences),
                model_writer=model,  # the model comes back as bytes; written atomically below
                vocab_size=self.vocab_size,
                model_type=self.spm_model_type,
                character_coverage=self.spm_character_coverage,
                input_sentence_size=0,  # sampled above
                hard_vocab_limit=False,  # a tiny corpus may not support vocab_size pieces; take fewer
                pad_id=PAD,
                bos_id=BOS,
                eos_id=EOS,
                unk_id=UNK,
                minloglevel=1,  # warnings only
            )
        except RuntimeError as e:
            raise UserError(f"SentencePiece training on {sources} failed: {_one_line(e)}") from e
        return model.getvalue()

    def _write_atomically(self, name: str, data: bytes) -> Path:
        """Write to a temporary file in the target dir, then rename it into place: a concurrent reader
        (another DDP rank or job) sees either no model or the whole of it, never a partial file."""
        errors = []
        for d in self._cache_dirs():
            tmp: str | None = None
            try:
                d.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=d, prefix=f".{name}.", suffix=".tmp")
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.chmod(tmp, 0o644)  # mkstemp makes it private; others sharing the data dir may reuse it
                os.replace(tmp, d / name)
                return d / name
            except OSError as e:  # not writable (read-only dataset mount, full disk, ...): try the next place
                if tmp is not None:
                    Path(tmp).unlink(missing_ok=True)
                errors.append(f"{d}: {e.strerror or e}")
        raise UserError(f"cannot write the SentencePiece model {name} to any of: {'; '.join(errors)}")
