"""An imported MarianMT checkpoint decodes as transformers' `generate` does with the checkpoint's own generation
settings (generation_config.json, or config.json's fields for old checkpoints): a tiny random MarianMTModel saved
with non-default settings, imported, and its translations held token for token to `generate` on the model
`from_pretrained` loads (no generation argument given: the saved settings alone decide)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from prunelab.errors import UserError
from prunelab.hf.generation import checkpoint_decoding, checkpoint_generation, generate, read_generation, with_beams
from prunelab.hf.marian import load_hf_marian
from prunelab.models.decoding import beam_search
from prunelab.models.transformer import Transformer, TransformerConfig
from tests.unit.test_hf_marian_import import EOS, PAD, batch, hf_marian

transformers = pytest.importorskip("transformers")

# Generation settings saved with the checkpoint, each unlike transformers' defaults (greedy, 20 tokens, penalty 1).
SETTINGS = {
    "beams3_len12_lp0.8": dict(num_beams=3, max_length=12, length_penalty=0.8),
    "greedy_len9": dict(num_beams=1, max_length=9),
    "ngram2_min4_early": dict(
        num_beams=4, max_new_tokens=10, no_repeat_ngram_size=2, min_length=4, early_stopping=True
    ),
    "never_renormalized_unforced": dict(
        num_beams=2, max_length=11, length_penalty=1.3, early_stopping="never", renormalize_logits=True
    ),
}


def sources() -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    more = torch.randint(1, PAD, (8, 9), generator=g)
    more[:, -1] = EOS
    return torch.cat([batch(), more])


def save(folder: Path, settings: dict, legacy: bool = False) -> Path:
    """The tame random model with `settings` as its generation config (pad banned, EOS forced unless the name
    says unforced); `legacy`: in config.json instead, without generation_config.json (checkpoints before it)."""
    model = hf_marian()
    model.generation_config.bad_words_ids = [[PAD]]
    for k, v in settings.items():
        setattr(model.generation_config, k, v)
    model.save_pretrained(folder)
    if legacy:
        gen = json.loads((folder / "generation_config.json").read_text())
        config = json.loads((folder / "config.json").read_text())
        config.update({k: v for k, v in gen.items() if not k.startswith(("_", "transformers"))})
        (folder / "config.json").write_text(json.dumps(config))
        (folder / "generation_config.json").unlink()
    return folder


def hf_generate(folder: Path, src: torch.Tensor) -> list[list[int]]:
    """transformers' translations with the folder's own settings: token ids after the decoder start, up to EOS."""
    hf = transformers.MarianMTModel.from_pretrained(folder).eval()
    with torch.no_grad():
        out = hf.generate(input_ids=src, attention_mask=(src != PAD).long())
    rows = []
    for row in out.tolist():
        assert row[0] == PAD  # the decoder start
        row = row[1:]
        rows.append([t for t in (row[: row.index(EOS)] if EOS in row else row) if t != PAD])
    return rows


@pytest.mark.parametrize("name", list(SETTINGS))
def test_checkpoint_decoding_matches_generate(name: str, tmp_path: Path) -> None:
    settings = dict(SETTINGS[name])
    if name.endswith("unforced"):  # no forced EOS: hypotheses may end at the limit without it
        settings["forced_eos_token_id"] = None
    folder = save(tmp_path / "m", settings)
    src = sources()
    want = hf_generate(folder, src)
    ours = load_hf_marian(folder).eval()
    g = checkpoint_generation(ours.generation)
    assert g.source == "generation_config.json" and g.num_beams == settings["num_beams"]
    got = generate(ours, src, g)
    assert got == want
    lens = [len(w) for w in want]
    if name.endswith("unforced"):  # max_length 11: ten tokens, the last one not EOS
        assert max(lens) == 10
    else:
        assert len(set(lens)) > 1  # EOS handling and the length limit are exercised
    if name == "beams3_len12_lp0.8":  # the limit: max_length counts the decoder start, 11 tokens at most
        assert (g.max_new_tokens, g.length_penalty, g.bad_words, g.force_eos) == (11, 0.8, (PAD,), True)
        assert max(lens) == 10  # ten tokens and the forced EOS
        # prunelab's GNMT beam (4 beams, alpha 0.6, 1.5 |src| + 10 tokens) translates otherwise
        assert beam_search(ours, src, bos_id=1, eos_id=EOS) != want
    if name == "ngram2_min4_early":
        assert (g.min_new_tokens, g.max_new_tokens, g.no_repeat_ngram_size) == (3, 10, 2)
        assert min(lens) >= 3


def test_old_checkpoints_read_config_json(tmp_path: Path) -> None:
    """Without generation_config.json transformers reads config.json's generation fields; so does the import."""
    folder = save(tmp_path / "m", dict(num_beams=2, max_length=10, length_penalty=1.5), legacy=True)
    assert read_generation(folder)["source"] == "config.json"
    src = sources()
    ours = load_hf_marian(folder).eval()
    g = checkpoint_generation(ours.generation)
    assert (g.source, g.num_beams, g.max_new_tokens, g.length_penalty) == ("config.json", 2, 9, 1.5)
    assert generate(ours, src, g) == hf_generate(folder, src)


def test_a_folder_without_settings_gets_transformers_defaults(tmp_path: Path) -> None:
    folder = save(tmp_path / "m", {})
    gen = json.loads((folder / "generation_config.json").read_text())
    (folder / "generation_config.json").write_text(
        json.dumps({k: gen[k] for k in ("eos_token_id", "decoder_start_token_id", "pad_token_id")})
    )
    g = checkpoint_generation(load_hf_marian(folder, weights=False).generation)
    assert (g.num_beams, g.max_new_tokens, g.length_penalty, g.early_stopping) == (1, 19, 1.0, False)
    assert (g.bad_words, g.force_eos, g.decoder_start_id) == ((), False, PAD)


def test_overrides_and_unsupported_settings(tmp_path: Path) -> None:
    settings = read_generation(save(tmp_path / "m", SETTINGS["beams3_len12_lp0.8"]))
    g = checkpoint_generation(settings, {"num_beams": 1, "max_new_tokens": 5})
    assert (g.num_beams, g.max_new_tokens, g.length_penalty, g.overrides) == (
        1,
        5,
        0.8,
        ("max_new_tokens", "num_beams"),
    )
    with pytest.raises(UserError, match=r"do_sample=True.*task\.decoding=prunelab"):
        checkpoint_generation({**settings, "do_sample": True})
    with pytest.raises(UserError, match=r"repetition_penalty=1\.2"):
        checkpoint_generation(settings, {"repetition_penalty": 1.2})
    assert checkpoint_generation({**settings, "do_sample": True}, {"do_sample": False}).num_beams == 3
    with pytest.raises(UserError, match=r"task\.generation\.beams"):
        checkpoint_generation(settings, {"beams": 2})
    with pytest.raises(UserError, match="single token ids"):
        checkpoint_generation({**settings, "bad_words_ids": [[3, 4]]})


def test_task_decoding_choice(tmp_path: Path) -> None:
    """task.decoding: auto is the checkpoint's own for an imported model and prunelab's for one from scratch."""
    imported = load_hf_marian(save(tmp_path / "m", SETTINGS["beams3_len12_lp0.8"]), weights=False)
    scratch = Transformer(TransformerConfig(vocab_size=11, d_model=8, n_heads=2, d_ff=16, enc_layers=1, dec_layers=1))
    g = checkpoint_decoding(imported, "auto", None)
    assert g is not None and g.num_beams == 3 and g.report()["decoder"] == "checkpoint"
    assert checkpoint_decoding(imported, "checkpoint", {"num_beams": 2}).num_beams == 2  # type: ignore[union-attr]
    assert checkpoint_decoding(imported, "prunelab", None) is None
    assert checkpoint_decoding(scratch, "auto", None) is None
    with pytest.raises(UserError, match=r"task\.decoding=checkpoint: the model has no generation settings"):
        checkpoint_decoding(scratch, "checkpoint", None)
    with pytest.raises(UserError, match=r"task\.generation sets the checkpoint's decoding"):
        checkpoint_decoding(imported, "prunelab", {"num_beams": 2})
    with pytest.raises(UserError, match=r"task\.decoding='hf'"):
        checkpoint_decoding(imported, "hf", None)


class IdTokenizer:
    """Token ids as words, so that BLEU compares translations token for token."""

    def decode(self, ids: list[int]) -> str:
        return " ".join(f"w{t}" for t in ids)


def test_studies_and_the_component_pruner_score_with_the_runs_decoding(tmp_path: Path) -> None:
    """A run that decodes with its checkpoint's settings is studied and pruned with them (the study's or pruner's
    beam width over the checkpoint's other settings): its scorer decodes as `generate` does, and an ablation's BLEU
    is the one of transformers' `generate` on the checkpoint with that component's output zeroed (dec.0.ff: fc2's
    weight and bias at zero, which Marian's post-norm layer then adds as nothing)."""
    import sacrebleu

    from prunelab.hf.generation import Generation
    from prunelab.pruning.base import NoPruner
    from prunelab.scoring.scoring import BleuScorer, GenerateBleuScorer
    from prunelab.scoring.variants import DecodeSettings, decode_settings
    from prunelab.tasks.translation import TranslationTask

    folder = save(tmp_path / "m", SETTINGS["beams3_len12_lp0.8"])
    model = load_hf_marian(folder).eval()
    g = decode_settings({"task": {"decoding": "auto"}}, None, model)
    assert isinstance(g, Generation) and g.num_beams == 3
    narrow = decode_settings({"task": {"decoding": "auto"}}, 2, model)
    assert isinstance(narrow, Generation) and narrow.num_beams == 2 and "num_beams" in narrow.overrides
    assert (narrow.max_new_tokens, narrow.length_penalty) == (g.max_new_tokens, g.length_penalty)
    gnmt = {"decoding": "prunelab", "beam_size": 5, "length_penalty": 1.0}
    assert decode_settings({"task": gnmt}, None, model) == DecodeSettings(beam_size=5, alpha=1.0)
    assert decode_settings({"task": {"beam_size": 2}}, None, model) == DecodeSettings(beam_size=2)  # no decoding key

    tok = IdTokenizer()
    src = sources()
    batches = [{"src": src, "ref": [tok.decode(r) for r in hf_generate(folder, src)]}]
    scorer = TranslationTask.scorer(SimpleNamespace(tokenizer=tok), g)
    assert isinstance(scorer, GenerateBleuScorer)
    hf = transformers.MarianMTModel.from_pretrained(folder).eval()
    with torch.no_grad():
        hf.model.decoder.layers[0].fc2.weight.zero_()
        hf.model.decoder.layers[0].fc2.bias.zero_()
    hf.save_pretrained(tmp_path / "zeroed")
    ablated = [tok.decode(h) for h in hf_generate(tmp_path / "zeroed", src)]
    want = sacrebleu.corpus_bleu(ablated, [batches[0]["ref"]]).score
    res = scorer.ablation(model, batches, names=["dec.0.ff", "enc.1.sa"])
    assert res.baseline == pytest.approx(100.0) and want < 90.0
    assert res.bleu["dec.0.ff"] == pytest.approx(want, abs=1e-9)
    assert res.bleu["enc.1.sa"] is not None and not res.bleu_upper_bound  # every ablation decoded in full
    scores, passes = scorer.variants(model, batches, [frozenset(), frozenset({"dec.0.ff"})])
    assert scores == [res.baseline, res.bleu["dec.0.ff"]] and passes == 2

    # the component pruner and importance tracker ask the task: the checkpoint's decoding at their beam width
    task = TranslationTask(model, NoPruner(), tok)  # type: ignore[arg-type]
    own = task.own_scorer(SimpleNamespace(tokenizer=tok), DecodeSettings(beam_size=1))
    assert isinstance(own, GenerateBleuScorer) and own.generation == with_beams(g, 1)
    plain = TranslationTask(model, NoPruner(), tok, decoding="prunelab")  # type: ignore[arg-type]
    assert isinstance(plain.own_scorer(SimpleNamespace(tokenizer=tok), DecodeSettings(beam_size=1)), BleuScorer)
