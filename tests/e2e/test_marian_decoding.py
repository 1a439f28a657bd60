"""An imported MarianMT model decodes, by default, as an OPUS-MT user gets it from transformers: with the
checkpoint's own generation_config.json (here 3 beams, at most 12 tokens with the decoder start, length penalty
0.8: none of them transformers' or prunelab's defaults). The pretrained level's translations are transformers'
`generate` outputs line for line, its BLEU their sacreBLEU, and results.json says which decoder produced it;
`task.decoding=prunelab` decodes with prunelab's GNMT beam instead and says so."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import sacrebleu
import torch

from tests import hf_checkpoints as H
from tests.e2e.conftest import check_scores_from_files, read_hypotheses, train

transformers = pytest.importorskip("transformers")

GENERATION = {"num_beams": 3, "max_length": 12, "length_penalty": 0.8}


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A MarianMT model trained a little by transformers (translations of varied quality and length), its generation
    config set to GENERATION (pad never generated, EOS forced at the limit), and parallel text files."""
    root = tmp_path_factory.mktemp("marian_decoding")
    nmt = {"train": H.copy_pairs(64, 1), "valid": H.copy_pairs(8, 2), "test": H.copy_pairs(24, 3)}
    folder = H.marian_checkpoint(root / "marian", *nmt["train"], steps=60)
    path = folder / "generation_config.json"
    gen = json.loads(path.read_text())
    gen.update(GENERATION, bad_words_ids=[[gen["pad_token_id"]]])
    path.write_text(json.dumps(gen))
    return {"marian": folder, "parallel": H.write_parallel(root / "parallel", nmt)}


def hf_translate(folder: Path, sources: list[str]) -> list[str]:
    """transformers' translations with the checkpoint's own settings (no generation argument)."""
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.MarianMTModel.from_pretrained(folder).eval()
    assert model.generation_config.num_beams == 3  # the saved settings are the ones in force
    with torch.no_grad():
        out = model.generate(**tok(sources, padding=True, return_tensors="pt"))
    return tok.batch_decode(out, skip_special_tokens=True)


def marian_run(made: dict[str, Path], out: Path, *overrides: str):
    return train(
        out,
        "model=hf_marian",
        f"model.path={made['marian']}",
        "data=parallel_text",
        f"data.dir={made['parallel']}",
        "logger=none",
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        *overrides,
    )


def test_the_checkpoints_own_decoding_is_the_default(made: dict[str, Path], tmp_path: Path) -> None:
    sources, refs = H.copy_pairs(24, 3)
    want = hf_translate(made["marian"], sources)
    run = marian_run(made, tmp_path / "run")
    assert run.returncode == 0, run.stderr[-3000:]
    res = run.results
    pretrained = res["levels"][0]
    assert (pretrained["stage"], pretrained["round"]) == ("pretrained", -1)
    assert read_hypotheses(run.dir / "checkpoints" / "pretrained") == want
    bleu = sacrebleu.corpus_bleu(want, [refs]).score
    assert pretrained["metrics"]["test/bleu"] == pytest.approx(bleu, rel=1e-6)  # logged metrics are float32
    assert pretrained["metrics"]["test/bleu"] > 0.0
    dec = res["decoding"]
    assert (dec["decoder"], dec["algorithm"], dec["source"]) == (
        "checkpoint",
        "hf_beam_search",
        "generation_config.json",
    )
    assert (dec["num_beams"], dec["max_new_tokens"], dec["length_penalty"]) == (3, 11, 0.8)
    assert dec["force_eos"] and dec["bad_words"] == [
        len(transformers.AutoTokenizer.from_pretrained(made["marian"])) - 1
    ]
    check_scores_from_files(run)

    # the run stands alone: reloaded without its source folder, the model keeps the checkpoint's decoding
    from prunelab.hf.generation import checkpoint_generation
    from prunelab.training import load_run

    moved = made["marian"].with_name("moved")
    shutil.move(made["marian"], moved)
    try:
        model = load_run(run.dir).model
        assert checkpoint_generation(model.generation).report() == dec
    finally:
        shutil.move(moved, made["marian"])


def test_prunelab_beam_by_option(made: dict[str, Path], tmp_path: Path) -> None:
    sources, _ = H.copy_pairs(24, 3)
    run = marian_run(made, tmp_path / "run", "task.decoding=prunelab")
    assert run.returncode == 0, run.stderr[-3000:]
    dec = run.results["decoding"]
    assert dec == {
        "decoder": "prunelab",
        "algorithm": "gnmt_beam_search",
        "beam_size": 4,
        "val_beam_size": 4,
        "length_penalty": 0.6,
        "max_len_a": 1.5,
        "max_len_b": 10,
    }
    # GNMT's length limit (1.5 |src| + 10) and penalty give other translations than the checkpoint's 11 tokens
    assert read_hypotheses(run.dir / "checkpoints" / "pretrained") != hf_translate(made["marian"], sources)
    check_scores_from_files(run)


def test_studies_of_a_marian_run_decode_as_the_run_did(made: dict[str, Path], tmp_path: Path) -> None:
    """`prunelab heads|components` of an imported Marian run score with the checkpoint's own decoding, as the run
    did: the head study's baseline at the checkpoint's 3 beams is the run's test BLEU (prunelab's GNMT beam gives
    other translations, test above), and the component study's baseline on valid is the BLEU of transformers'
    `generate` on the run exported back to Hugging Face. Both studies record the decoding they used."""
    from prunelab.export import export_hf_run
    from prunelab.models.addressing import component_names
    from prunelab.studies.component_study import analyse_components
    from prunelab.studies.head_study import analyse_heads
    from prunelab.training import load_run

    run = marian_run(made, tmp_path / "run")
    assert run.returncode == 0, run.stderr[-3000:]
    res = run.results
    heads = analyse_heads(run.dir, importance_batches=1, beam_size=3, step=0.5, random_orders=0, ablation_order=False)
    assert heads["baseline_bleu"] == pytest.approx(res["metrics"]["test/bleu"], rel=1e-6)
    assert heads["decoding"] == {**res["decoding"], "split": "test", "choice_split": "valid"}

    comps = analyse_components(run.dir, criticality=False)
    assert comps["decoding"] == res["decoding"]  # no --beam-size: the checkpoint's settings as they are
    folder, _ = export_hf_run(run.dir)
    sources, refs = H.copy_pairs(8, 2)
    want = sacrebleu.corpus_bleu(hf_translate(folder, sources), [refs]).score
    assert comps["baseline_bleu"] == pytest.approx(want, abs=1e-6)
    # every component ablated, each scored in full (no early stop with the checkpoint's decoding)
    names = component_names(load_run(run.dir).model)
    assert sorted(comps["bleu_zeroed"]) == sorted(names) and len(names) >= 5
    assert all(v is not None for v in comps["bleu_zeroed"].values())
