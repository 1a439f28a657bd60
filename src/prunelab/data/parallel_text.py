"""`data=parallel_text`: a sentence-aligned corpus on disk, cut into joint SentencePiece subwords.

The layout is the raw one of Multi30k, IWSLT and WMT dumps: `{dir}/{prefix}.{lang}`, one sentence per
line, line i of the source file translating line i of the target file; `{prefix}.{lang}.gz` is read
as well when the plain file is absent. One SentencePiece model is trained on the training text of both
sides and cached next to the data under a name derived from that text and the SentencePiece settings.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import io
import itertools
import logging
import os
import random
import tempfile
import zlib
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from prunelab.data.tokenizer import BOS, EOS, PAD, UNK, SentencePieceTokenizer, Tokenizer
from prunelab.data.translation import TranslationDataModule
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


def read_lines(path: Path, utf8_errors: str = "strict") -> list[str]:
    """The lines of a UTF-8 text file (optionally gzipped), stripped, empty ones kept in place.

    Lines are split on b"\\n" only: `str.splitlines` also breaks on U+2028, U+0085, form feeds etc.,
    which occur inside sentences of web-crawled corpora and would shift one side against the other.
    Bytes that are not UTF-8 are an error naming the file, line and byte (`utf8_errors="strict"`), or are
    replaced with U+FFFD and counted in a warning (`"replace"`).
    """
    lines: list[str] = []
    bad_lines: list[int] = []
    try:
        with gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb") as f:
            for i, raw in enumerate(f):  # binary files iterate on b"\n" alone
                if i == 0:
                    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
                        raise UserError(
                            f"{path} is UTF-16 (it starts with a UTF-16 byte order mark); convert it to UTF-8"
                        )
                    raw = raw.removeprefix(codecs.BOM_UTF8)
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    if utf8_errors == "strict":
                        raise UserError(
                            f"{path}:{i + 1}: not UTF-8 (byte 0x{raw[e.start]:02x} at byte {e.start + 1} of the "
                            "line); convert the file (e.g. iconv -f latin1 -t utf-8) or set data.utf8_errors=replace"
                        ) from None
                    text = raw.decode("utf-8", errors="replace")
                    bad_lines.append(i + 1)
                lines.append(text.strip())  # also drops the "\r" of CRLF files
    except (OSError, EOFError, zlib.error) as e:  # unreadable, or a corrupt / truncated .gz
        raise UserError(f"cannot read {path}: {e}") from e
    if bad_lines:
        log.warning(
            "%s: invalid UTF-8 on %d lines (first: line %d) replaced with U+FFFD", path, len(bad_lines), bad_lines[0]
        )
    return lines


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
    which key the cache) and `_spm_sentences()` (the training text), and the settings `vocab_size`,
    `spm_model_type`, `spm_character_coverage`, `spm_max_sentences`, `cache_dir`, `data_dir`, and
    `utf8_errors` (how `read_lines` treats bytes that are not UTF-8)."""

    vocab_size: int
    utf8_errors: str
    spm_model_type: str
    spm_character_coverage: float
    spm_max_sentences: int
    cache_dir: Path | None
    data_dir: Path
    _spm_file: Path | None

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


class ParallelTextDataModule(SentencePieceData, TranslationDataModule):
    def __init__(
        self,
        dir: str,
        src_lang: str,
        tgt_lang: str,
        vocab_size: int = 8000,
        spm_model_type: str = "unigram",
        spm_character_coverage: float = 1.0,
        spm_max_sentences: int = 2_000_000,
        train_prefix: str = "train",
        valid_prefix: str = "valid",
        test_prefix: str = "test",
        cache_dir: str | None = None,
        utf8_errors: str = "strict",
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.data_dir = Path(dir).expanduser().absolute()
        self.utf8_errors = utf8_errors
        self.src_lang, self.tgt_lang = src_lang, tgt_lang
        self.vocab_size = vocab_size
        self.spm_model_type = spm_model_type
        self.spm_character_coverage = spm_character_coverage
        self.spm_max_sentences = spm_max_sentences
        self.prefixes = {"train": train_prefix, "valid": valid_prefix, "test": test_prefix}
        self.cache_dir = Path(cache_dir).expanduser().absolute() if cache_dir else None
        self._spm_file: Path | None = None
        self._lines: dict[str, tuple[list[str], list[str]]] = {}  # splits read early, kept for setup()

        self.check_spm_settings()
        self.files = {split: self._split_files(split) for split in self.prefixes}

    # --- files ------------------------------------------------------------------------------------------
    def _split_files(self, split: str) -> tuple[Path, Path]:
        paths = []
        for lang in (self.src_lang, self.tgt_lang):
            plain = self.data_dir / f"{self.prefixes[split]}.{lang}"
            gz = plain.with_name(plain.name + ".gz")
            if not plain.is_file() and not gz.is_file():
                raise UserError(
                    f"{split} file not found: {plain} (nor {gz.name}); if the {split} split has another name, "
                    f"set data.{split}_prefix=..., e.g. data.valid_prefix=dev"
                )
            paths.append(plain if plain.is_file() else gz)
        return paths[0], paths[1]

    def read_split(self, split: str) -> tuple[list[str], list[str]]:
        if split in self._lines:  # read already to train SentencePiece; hand it over without a copy
            return self._lines.pop(split)
        src_path, tgt_path = self.files[split]
        src, tgt = read_lines(src_path, self.utf8_errors), read_lines(tgt_path, self.utf8_errors)
        if split == "train":
            for path, lines in ((src_path, src), (tgt_path, tgt)):
                if not any(lines):
                    raise UserError(f"training file {path} is empty")
        if len(src) != len(tgt):
            raise UserError(
                f"the {split} split is not aligned: {src_path} has {len(src)} lines but {tgt_path} has {len(tgt)}"
            )
        return src, tgt

    # --- subwords (SentencePieceData) -------------------------------------------------------------------
    def _spm_sources(self) -> list[Path]:
        return list(self.files["train"])

    def _spm_sentences(self) -> list[str]:
        # read (and check) the training split once; setup() reuses these lines
        src, tgt = self.read_split("train")
        self._lines["train"] = (src, tgt)
        return [line for line in itertools.chain(src, tgt) if line]

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        self._lines.clear()  # the examples hold what is needed; drop the raw text
