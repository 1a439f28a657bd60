"""Forced BOS (transformers' ForcedBOSTokenLogitsProcessor: the first generated token is `forced_bos_token_id`, at
log-probability 0, every other token -inf) in the checkpoint's own decoding: a checkpoint whose
generation_config.json sets it, and a run whose multilingual tokenizer has a target language code (mBART-50,
M2M100, NLLB: `generate(..., forced_bos_token_id=code)`), decode token for token as transformers' `generate`.

The model is a tiny random MarianMT (the importable family these tests can run through prunelab's decoding alone);
the processor order is generate's: n-gram and bad-word bans, minimum length, then forced BOS, then forced EOS, then
renormalisation. The planted cases are those where the order decides the output: a forced token that is also a bad
word (forced after the ban), a one-token limit (forced EOS last), a forced EOS-as-BOS under a minimum length."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from prunelab.errors import UserError
from prunelab.hf.generation import checkpoint_generation, generate, read_generation, with_target_code
from prunelab.hf.marian import load_hf_marian
from prunelab.pruning import NoPruner
from prunelab.tasks.translation import TranslationTask
from tests.unit.test_hf_generation import hf_generate, save, sources
from tests.unit.test_hf_marian_import import EOS, PAD

transformers = pytest.importorskip("transformers")

FORCED = 7  # a token the tame random model does not start its translations with (checked below)

# generation_config.json settings, each with a forced first token; the comment says what a wrong order would give
SETTINGS = {
    "beams4": dict(num_beams=4, max_length=12, forced_bos_token_id=FORCED),
    "greedy": dict(num_beams=1, max_length=9, forced_bos_token_id=FORCED),
    "beams3_lp_ngram_early": dict(
        num_beams=3,
        max_length=12,
        length_penalty=0.7,
        no_repeat_ngram_size=2,
        early_stopping=True,
        forced_bos_token_id=FORCED,
    ),
    # the forced token is a bad word too: generate bans it, then forces it (ban after force: no token left)
    "forced_bad_word": dict(num_beams=4, max_length=10, bad_words_ids=[[PAD], [FORCED]], forced_bos_token_id=FORCED),
    # one token at most: forced BOS, then forced EOS wins (BOS after EOS: the forced token, never EOS)
    "one_token": dict(num_beams=4, max_length=2, forced_bos_token_id=FORCED),
    # EOS forced as the first token under a minimum length: the minimum bans EOS, then BOS forces it (ban after
    # force: no token left at the first step)
    "eos_first_min_length": dict(num_beams=2, max_length=8, min_length=4, forced_bos_token_id=EOS),
    # renormalised after the force: log-softmax of (-inf, ..., 0) leaves the forced token at 0
    "renormalized": dict(num_beams=2, max_length=10, renormalize_logits=True, forced_bos_token_id=FORCED),
}


def hf_raw(folder: Path, src: torch.Tensor, **kwargs: object) -> list[list[int]]:
    """transformers' generated tokens after the decoder start, unstripped but for the padding of shorter rows."""
    hf = transformers.MarianMTModel.from_pretrained(folder).eval()
    with torch.no_grad():
        out = hf.generate(input_ids=src, attention_mask=(src != PAD).long(), **kwargs)
    return [row[1:] for row in out.tolist()]


@pytest.mark.parametrize("name", list(SETTINGS))
def test_forced_bos_decodes_as_generate(name: str, tmp_path: Path) -> None:
    settings = SETTINGS[name]
    folder = save(tmp_path / "m", settings)
    src = sources()
    g = checkpoint_generation(load_hf_marian(folder, weights=False).generation)
    assert g.forced_bos_id == settings["forced_bos_token_id"] and g.report()["forced_bos_id"] == g.forced_bos_id
    got = generate(load_hf_marian(folder).eval(), src, g)
    assert got == hf_generate(folder, src)
    raw = hf_raw(folder, src)
    if name == "one_token":
        assert all(row[0] == EOS for row in raw) and got == [[]] * len(src)
    elif name == "eos_first_min_length":
        assert all(row[0] == EOS for row in raw) and got == [[]] * len(src)
    else:  # every translation starts with the forced token, and would not without it
        assert all(row[0] == FORCED for row in raw) and all(h[0] == FORCED for h in got)
        unforced = hf_raw(folder, src, forced_bos_token_id=None)
        assert not all(row[0] == FORCED for row in unforced)


def test_the_task_forces_the_target_language_code(tmp_path: Path) -> None:
    """A run whose tokenizer has a target language code decodes as generate(forced_bos_token_id=code), for
    validation and for the studies' scorer alike; a checkpoint that forces another first token is one error."""
    folder = save(tmp_path / "m", dict(num_beams=4, max_length=12))
    model = load_hf_marian(folder).eval()
    src = sources()
    tok = SimpleNamespace(target_code_id=FORCED, tgt_code="de_DE", pad_id=PAD, eos_id=EOS, bos_id=PAD)
    task = TranslationTask(model, NoPruner(), tok)  # type: ignore[arg-type]
    assert task.generation is not None and task.generation.forced_bos_id == FORCED
    assert task.decoding()["forced_bos_id"] == FORCED
    want = hf_raw(folder, src, forced_bos_token_id=FORCED)
    assert generate(model, src, task.generation) == [r[: r.index(EOS)] if EOS in r else r for r in want]
    scorer = TranslationTask.scorer(SimpleNamespace(tokenizer=tok), checkpoint_generation(model.generation))
    assert scorer.generation.forced_bos_id == FORCED
    # a tokenizer without a code (Marian, T5, BART) forces nothing: the checkpoint's settings as they are
    plain = TranslationTask(model, NoPruner(), SimpleNamespace(target_code_id=None))  # type: ignore[arg-type]
    assert plain.generation is not None and plain.generation.forced_bos_id is None

    other = save(tmp_path / "forcing", dict(num_beams=4, max_length=12, forced_bos_token_id=FORCED + 1))
    with pytest.raises(UserError, match=r"forces the first generated token to id 8 .* de_DE is id 7") as e:
        TranslationTask(load_hf_marian(other, weights=False), NoPruner(), tok)  # type: ignore[arg-type]
    assert "\n" not in str(e.value)
    # the same code as the checkpoint's: nothing to choose between
    same = checkpoint_generation(read_generation(save(tmp_path / "same", dict(forced_bos_token_id=FORCED))))
    assert with_target_code(same, FORCED) is same
