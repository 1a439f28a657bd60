"""Text files on disk, the data sources' file readers (floor: data): plain or gzipped UTF-8 lines (`read_lines`), a
file's text as stored (`read_text`), documents cut from lines (`split_documents`), tab-separated examples
(`read_tsv`), and `TextFiles`, the mixin of the data modules that read a folder of such files (`data.dir`) and train
their SentencePiece model on its training text (`data=parallel_text`, `tsv_classification`, `lm_text`)."""

from __future__ import annotations

import codecs
import gzip
import logging
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prunelab.data.sources.subwords import SentencePieceData
from prunelab.errors import UserError

log = logging.getLogger(__name__)
# a header row is recognised by its last field
HEADER_LABELS = {"label", "labels", "gold_label", "class", "category", "target", "y"}


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


def read_text(path: Path, utf8_errors: str = "strict") -> str:
    """A UTF-8 text file's (optionally gzipped) text as stored: nothing stripped, line ends kept, only a leading UTF-8
    byte-order mark dropped (it is not text). Bytes that are not UTF-8: an error naming the file and line, or, with
    `utf8_errors="replace"`, U+FFFD."""
    try:
        with gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:  # unreadable, or a corrupt / truncated .gz
        raise UserError(f"cannot read {path}: {e}") from e
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise UserError(f"{path} is UTF-16 (it starts with a UTF-16 byte order mark); convert it to UTF-8")
    raw = raw.removeprefix(codecs.BOM_UTF8)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        if utf8_errors == "strict":
            line = raw.count(b"\n", 0, e.start) + 1
            raise UserError(
                f"{path}:{line}: not UTF-8 (byte 0x{raw[e.start]:02x}); convert the file (e.g. iconv -f latin1 -t "
                "utf-8) or set data.utf8_errors=replace"
            ) from None
        log.warning("%s: invalid UTF-8 replaced with U+FFFD", path)
        return raw.decode("utf-8", errors="replace")


def split_documents(lines: Sequence[str], mode: str) -> list[str]:
    """Stripped lines -> documents: blank_lines (runs of non-empty lines, each joined with "\\n"), lines (each
    non-empty line), file (the whole text, lines joined with "\\n", blank ones kept). (`joined` has no documents: the
    file's text is read as stored, `read_text`.)"""
    if mode == "lines":
        return [line for line in lines if line]
    if mode == "file":
        text = "\n".join(lines).strip("\n")
        return [text] if text.strip() else []
    docs: list[str] = []
    cur: list[str] = []
    for line in (*lines, ""):
        if line:
            cur.append(line)
        elif cur:
            docs.append("\n".join(cur))
            cur = []
    return docs


def find_file(plain: Path) -> Path | None:
    """`plain` when it is a file, else `plain`.gz when that is one, else None."""
    if plain.is_file():
        return plain
    gz = plain.with_name(plain.name + ".gz")
    return gz if gz.is_file() else None


def read_tsv(
    path: Path, utf8_errors: str, header: bool | str, pairs: bool | None
) -> tuple[list[str], list[str], list[int], bool]:
    """The examples of a classification file, `text<TAB>label` or `text_a<TAB>text_b<TAB>label` (`pairs`; None: decided
    by the file's first example) -> (texts, a pair's parts joined by a tab; labels; each example's line number; pairs).
    `header`: true, false, or auto (a first row whose last field is one of HEADER_LABELS)."""
    lines = read_lines(path, utf8_errors)
    first = next((i for i, line in enumerate(lines) if line), None)
    if first is None:
        raise UserError(f"{path} is empty")
    last_field = lines[first].split("\t")[-1].strip().lower()
    skip_header = header is True or (header == "auto" and last_field in HEADER_LABELS)
    start = first + 1 if skip_header else first
    data_line = next((i for i in range(start, len(lines)) if lines[i]), None)
    if data_line is None:
        raise UserError(f"{path} has a header but no examples")
    if pairs is None:
        found = len(lines[data_line].split("\t"))
        if found not in (2, 3):
            raise UserError(
                f"{path}:{data_line + 1}: expected text<TAB>label or text_a<TAB>text_b<TAB>label, "
                f"found {found} tab-separated fields"
            )
        pairs = found == 3
    n = 3 if pairs else 2
    layout = "text_a<TAB>text_b<TAB>label" if pairs else "text<TAB>label"
    texts, labels, numbers, empty = [], [], [], 0
    for i in range(start, len(lines)):
        if not lines[i]:
            empty += 1
            continue
        numbers.append(i + 1)
        parts = lines[i].split("\t")
        if len(parts) != n:
            raise UserError(f"{path}:{i + 1}: expected {n} tab-separated fields ({layout}), found {len(parts)}")
        label = parts[-1].strip()
        if not label:
            raise UserError(f"{path}:{i + 1}: the label is empty")
        texts.append("\t".join(p.strip() for p in parts[:-1]))
        labels.append(label)
    if empty:
        log.warning("%s: skipped %d empty lines", path, empty)
    return texts, labels, numbers, pairs


class TextFiles(SentencePieceData):
    """The mixin of a data module that reads its splits from files in one folder, `dir` (plain or .gz, UTF-8;
    `utf8_errors`: strict, or replace with U+FFFD), with SentencePiece trained on its training files and cached in
    that folder (else ~/.cache/prunelab/spm). A data module calls `check_spm_settings()` once its own arguments are
    checked, and finds its files with `find_file`."""

    def __init__(self, dir: str, utf8_errors: str = "strict", **kwargs: Any):
        super().__init__(**kwargs)
        self.data_dir = Path(dir).expanduser().absolute()
        self.utf8_errors = utf8_errors
