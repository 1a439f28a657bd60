"""A checkpoint's own decoding: the generation settings transformers' `generate` reads, and prunelab's decoding
with them.

transformers decodes an imported model with its `generation_config.json` (OPUS-MT: 4 beams, at most 512 tokens,
length penalty 1.0, pad never generated), or, for a checkpoint saved before that file existed, with the
generation fields of its `config.json`; what neither sets takes transformers' global defaults (greedy, at most
20 tokens). `read_generation` reads them as transformers does and the importer keeps them on the model
(`model.generation`; a run's copy of its source folder has the same files, so a reloaded run gets them again).
`checkpoint_generation` turns them into the `Generation` that `generate` decodes with: Hugging Face's beam search
(`prunelab.models.decoding.hf_beam_search`), which gives `generate`'s translations token for token. A setting
that would change the output and that prunelab does not implement (sampling, repetition penalties, ...) is one
clear error rather than a silently different decoder. `checkpoint_decoding` is what a run's `task.decoding` and
`task.generation` choose (the translation task decodes with it, the studies read a finished run's decoding with it).

Nothing here imports `transformers`. Floor: hf/, above models/ (it decodes with models.decoding)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from prunelab.errors import UserError
from prunelab.hf.checkpoint import account_for_keys, copy_weights, resolve_checkpoint
from prunelab.models.decoding import hf_beam_search

GENERATION_FILE = "generation_config.json"

# The settings prunelab decodes with, under transformers' names, with transformers' global defaults
# (GenerationConfig._get_default_generation_params; token ids have none).
DEFAULTS: dict[str, Any] = {
    "num_beams": 1,
    "max_length": 20,
    "max_new_tokens": None,
    "min_length": 0,
    "min_new_tokens": None,
    "length_penalty": 1.0,
    "early_stopping": False,
    "no_repeat_ngram_size": 0,
    "bad_words_ids": None,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "renormalize_logits": False,
    "eos_token_id": None,
    "bos_token_id": None,
    "decoder_start_token_id": None,
    "pad_token_id": None,
}
# Settings that change what `generate` returns and that prunelab does not implement, with the values under
# which they do nothing (sampling parameters such as temperature or top_p do nothing without do_sample).
INACTIVE: dict[str, tuple[Any, ...]] = {
    "do_sample": (None, False),
    "num_beam_groups": (None, 1),
    "diversity_penalty": (None, 0.0),
    "repetition_penalty": (None, 1.0),
    "encoder_repetition_penalty": (None, 1.0),
    "encoder_no_repeat_ngram_size": (None, 0),
    "suppress_tokens": (None, []),
    "begin_suppress_tokens": (None, []),
    "exponential_decay_length_penalty": (None,),
    "sequence_bias": (None, {}),
    "force_words_ids": (None, []),
    "constraints": (None, []),
    "penalty_alpha": (None, 0.0),
    "guidance_scale": (None, 1.0),
    "prompt_lookup_num_tokens": (None,),
    "watermarking_config": (None,),
}


def read_generation(path: str | Path) -> dict[str, Any]:
    """The generation settings of a Hugging Face folder or hub id, as transformers' `from_pretrained` reads them:
    `generation_config.json` when the folder has one, else config.json's generation fields (old checkpoints).
    Only the settings that DEFAULTS or INACTIVE name, those set (not null), plus `source`: the file they came from."""
    folder = resolve_checkpoint(path)
    source = GENERATION_FILE if (folder / GENERATION_FILE).is_file() else "config.json"
    try:
        raw = json.loads((folder / source).read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{folder / source}: cannot be read as JSON ({e})") from None
    settings = {k: raw[k] for k in sorted({*DEFAULTS, *INACTIVE}) if raw.get(k) is not None}
    return {**settings, "source": source}


def with_generation(model: Any, path: str | Path) -> Any:
    """`model` with the checkpoint's generation settings as `model.generation` (read_generation): the tasks decode
    with them by default, as transformers' `generate` does; a run's copy of its source has the same files."""
    model.generation = read_generation(path)
    return model


def imported(
    model: Any,
    path: str | Path,
    family: str,
    state: dict[str, Tensor],
    names: dict[str, str],
    mapping: dict[str, str],
    dropped: re.Pattern[str] | None = None,
    shown: Callable[[str], str] = str,
) -> Any:
    """A family's import finished: every key of the file accounted for (checkpoint.account_for_keys), its tensors
    copied into `model` (copy_weights), and the folder's generation settings attached (with_generation)."""
    account_for_keys(path, family, names, mapping, dropped=dropped, shown=shown)
    return with_generation(copy_weights(model, state, names, mapping, path), path)


@dataclass(frozen=True)
class Generation:
    """How `generate` decodes, in the terms of prunelab's decoders (see checkpoint_generation for the mapping)."""

    num_beams: int
    max_new_tokens: int  # tokens generated at most, EOS included (the decoder start not counted)
    min_new_tokens: int  # EOS is banned before this many tokens are generated
    length_penalty: float  # HF's: sum log p / |Y| ** length_penalty (|Y| counts EOS)
    early_stopping: bool | str
    no_repeat_ngram_size: int
    bad_words: tuple[int, ...]  # never generated (HF's single-token bad_words_ids; Marian: the pad id)
    eos_id: int
    decoder_start_id: int
    force_eos: bool  # the last possible token is EOS (HF's forced_eos_token_id)
    forced_bos_id: int | None  # the first generated token (HF's forced_bos_token_id: mBART-50's target language)
    renormalize: bool  # log-probabilities renormalised after the bans (HF's renormalize_logits)
    source: str  # where the settings came from: generation_config.json, config.json, or (defaults)
    overrides: tuple[str, ...] = ()  # the settings the run changed (task.generation)

    def report(self) -> dict[str, Any]:
        """The settings as results.json records them (`decoding`)."""
        d = asdict(self)
        d["bad_words"], d["overrides"] = list(self.bad_words), list(self.overrides)
        return {"decoder": "checkpoint", "algorithm": "greedy" if self.num_beams == 1 else "hf_beam_search", **d}


def with_beams(g: Generation, num_beams: int) -> Generation:
    """`g` with another beam width (a study's or a pruner's choice), recorded among its overrides."""
    if num_beams < 1:
        raise UserError(f"beam width must be >= 1, got {num_beams}")
    if num_beams == g.num_beams:
        return g
    overrides = g.overrides if "num_beams" in g.overrides else (*g.overrides, "num_beams")
    return replace(g, num_beams=num_beams, overrides=overrides)


def _one_id(name: str, value: Any) -> int | None:
    """A token id setting: an int, or a list of one (transformers allows lists; prunelab decodes with one)."""
    if isinstance(value, list):
        if len(set(value)) > 1:
            raise UserError(f"generation setting {name}={value}: several ids are not supported (one id)")
        value = value[0] if value else None
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise UserError(f"generation setting {name}={value!r} is not a token id")
    return value


def checkpoint_generation(settings: Mapping[str, Any] | None, overrides: Mapping[str, Any] | None = None) -> Generation:
    """The Generation of a checkpoint's settings (read_generation), with `overrides` (transformers' names, e.g.
    {"num_beams": 1}) on top, as transformers' `generate` applies them to an encoder-decoder model: at most
    max_new_tokens tokens, or max_length - 1 (max_length counts the decoder start token); EOS banned while fewer than
    min_length - 1 or min_new_tokens are generated; the decoder starts from decoder_start_token_id, else bos_token_id.
    One UserError for a setting prunelab does not implement, or a malformed one."""
    raw = dict(settings or {})
    overrides = dict(overrides or {})
    if unknown := sorted(set(overrides) - {*DEFAULTS, *INACTIVE}):
        raise UserError(
            f"task.generation.{unknown[0]}: not a generation setting prunelab reads (known: {sorted(DEFAULTS)})"
        )
    source = str(raw.pop("source", "(defaults)"))
    s = {**DEFAULTS, **raw, **overrides}
    for name, inactive in INACTIVE.items():
        if name in s and s[name] not in inactive:
            raise UserError(
                f"the checkpoint's {source} sets {name}={s[name]!r}, which prunelab's decoding does not implement: "
                f"set +task.generation.{name}={inactive[-1]!r} (decoding then differs from transformers' generate), "
                "or decode with task.decoding=prunelab"
            )
    if s["early_stopping"] not in (True, False, "never"):
        raise UserError(f"generation setting early_stopping={s['early_stopping']!r}: true, false or never")
    eos = _one_id("eos_token_id", s["eos_token_id"])
    if eos is None:
        raise UserError(
            f"the checkpoint's {source} names no eos_token_id: prunelab cannot tell where a translation ends"
        )
    start = _one_id("decoder_start_token_id", s["decoder_start_token_id"])
    start = start if start is not None else _one_id("bos_token_id", s["bos_token_id"])
    if start is None:
        raise UserError(f"the checkpoint's {source} names no decoder_start_token_id (nor bos_token_id)")
    forced = _one_id("forced_eos_token_id", s["forced_eos_token_id"])
    if forced not in (None, eos):
        raise UserError(f"generation setting forced_eos_token_id={forced} differs from eos_token_id={eos}")
    forced_bos = _one_id("forced_bos_token_id", s["forced_bos_token_id"])
    bad: list[int] = []
    for words in s["bad_words_ids"] or []:
        if not isinstance(words, list) or len(words) != 1 or not isinstance(words[0], int):
            raise UserError(f"generation setting bad_words_ids: {words!r} is not supported (single token ids only)")
        if words[0] != eos:  # transformers drops a bad word that is EOS
            bad.append(words[0])
    if s["max_new_tokens"] is not None:
        max_new = int(s["max_new_tokens"])
    else:
        max_new = int(s["max_length"]) - 1
    min_new = max(int(s["min_length"] or 0) - 1, int(s["min_new_tokens"] or 0))
    beams, ngram = int(s["num_beams"]), int(s["no_repeat_ngram_size"] or 0)
    if beams < 1 or max_new < 1 or ngram < 0:
        raise UserError(
            f"generation settings num_beams={beams}, max tokens={max_new}, no_repeat_ngram_size={ngram}: "
            "need num_beams >= 1, at least one token, no_repeat_ngram_size >= 0"
        )
    return Generation(
        num_beams=beams,
        max_new_tokens=max_new,
        min_new_tokens=min_new,
        length_penalty=float(s["length_penalty"]),
        early_stopping=s["early_stopping"],
        no_repeat_ngram_size=ngram,
        bad_words=tuple(sorted(set(bad))),
        eos_id=eos,
        decoder_start_id=start,
        force_eos=forced is not None,
        forced_bos_id=forced_bos,
        renormalize=bool(s["renormalize_logits"]),
        source=source,
        overrides=tuple(sorted(overrides)),
    )


def with_target_code(g: Generation, code_id: int | None, code: str | None = None) -> Generation:
    """`g` forcing the target language code `code_id` (the token `code`) as the first generated token, as one passes
    `forced_bos_token_id=tokenizer.convert_tokens_to_ids(tgt_lang)` to `generate` for mBART-50, M2M100 and NLLB;
    `g` itself without a code. A checkpoint whose own settings force another first token is one UserError: the data's
    target language is not the one the checkpoint translates into."""
    if code_id is None or g.forced_bos_id == code_id:
        return g
    if g.forced_bos_id is not None:
        raise UserError(
            f"the checkpoint's {g.source} forces the first generated token to id {g.forced_bos_id} "
            f"(forced_bos_token_id), but the data's target language code{f' {code}' if code else ''} is id {code_id}: "
            "translate into the checkpoint's language (data.tgt_lang / data.tgt_code), or set "
            f"+task.generation.forced_bos_token_id={code_id}"
        )
    return replace(g, forced_bos_id=code_id)


DECODERS = ("auto", "checkpoint", "prunelab")


def checkpoint_decoding(model: Any, decoding: str, overrides: dict[str, Any] | None) -> Generation | None:
    """task.decoding -> the checkpoint's Generation (its settings, `model.generation`, with task.generation's
    `overrides` on top), or None for prunelab's beam search; one UserError for a choice that does not apply."""
    if isinstance(overrides, DictConfig):  # from Hydra: plain lists and dicts
        overrides = OmegaConf.to_container(overrides, resolve=True)  # type: ignore[assignment]
    if decoding not in DECODERS:
        raise UserError(f"task.decoding={decoding!r}: one of {', '.join(DECODERS)}")
    settings = getattr(model, "generation", None)
    if decoding == "checkpoint" and settings is None:
        raise UserError(
            "task.decoding=checkpoint: the model has no generation settings of its own (only an imported checkpoint, "
            "model=hf_marian, has them); use task.decoding=prunelab"
        )
    if decoding == "prunelab" or settings is None:
        if overrides:
            raise UserError(
                "task.generation sets the checkpoint's decoding, but the run decodes with prunelab's beam "
                f"(task.decoding={decoding}): set task.beam_size, task.length_penalty, task.max_len_a/b instead"
            )
        return None
    return checkpoint_generation(settings, overrides)


def generate(model: Any, src: Tensor, g: Generation) -> list[list[int]]:
    """`model`'s translations of `src` (B, S) as transformers' `generate` with settings `g` gives them: token ids
    without the decoder start and EOS. One beam is greedy decoding (HF's beam search with one beam and
    early_stopping=False picks the argmax at every step). The length limit stays within the model's positions."""
    return hf_beam_search(
        model,
        src,
        g.decoder_start_id,
        g.eos_id,
        beam_size=g.num_beams,
        length_penalty=g.length_penalty,
        early_stopping=False if g.num_beams == 1 else g.early_stopping,
        max_new_tokens=min(g.max_new_tokens, model.max_positions),
        min_new_tokens=g.min_new_tokens,
        no_repeat_ngram_size=g.no_repeat_ngram_size,
        banned=g.bad_words,
        force_eos=g.force_eos,
        forced_bos=g.forced_bos_id,
        renormalize=g.renormalize,
        start=g.decoder_start_id,
    )
