"""Issue 38's command-line bar: a tiny T5, a tiny mBART-50 and a tiny M2M100 (made by transformers in the tests,
briefly trained on copy pairs) run `heads`, `slt`, `oneshot` (SparseGPT 2:4) and `structured` with distillation
from the pretrained model, `model=hf model.path=DIR` picking the family, each with the pretrained model's BLEU as the
first level: its translations equal transformers' `generate` with the checkpoint's generation settings (and the
target language code forced first where the family uses one)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import sacrebleu
import torch

from tests import hf_checkpoints as H
from tests.e2e.conftest import check_scores_from_files, read_hypotheses, train_here
from tests.hf_seq2seq import CODES

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.xdist_group("seq2seq_cli")  # one set of checkpoints and data for the module's tests

TINY = ["logger=none", "trainer.max_steps=8", "trainer.val_check_interval=8", "data.max_tokens=512"]
FAMILIES = {"t5": "t5", "mbart": "mbart50", "m2m100": "m2m100"}
STEPS = 150  # the builders' brief training: translations that are not all one token


@pytest.fixture(scope="module", autouse=True)
def built(seq2seq_checkpoint: Callable[..., Path]) -> None:
    """The module's checkpoints, built before its first test (their cost is set-up, not that test's)."""
    for name in (*FAMILIES.values(), "nllb"):
        seq2seq_checkpoint(name, steps=STEPS)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    nmt = {"train": H.copy_pairs(64, 0), "valid": H.copy_pairs(8, 2), "test": H.copy_pairs(16, 3)}
    return H.write_parallel(tmp_path_factory.mktemp("parallel"), nmt)


def hf_translations(folder: Path, name: str, sources: list[str]) -> list[str]:
    """transformers' translations: the folder's tokenizer (source language set) and generation_config.json, the
    target language code as forced_bos_token_id where the family has codes."""
    kwargs = {}
    if name in CODES:  # M2M100's tokenizer names languages by their ISO code, the others by their code tokens
        kwargs = (
            {"src_lang": "en", "tgt_lang": "de"}
            if name == "m2m100"
            else dict(zip(("src_lang", "tgt_lang"), CODES[name], strict=True))
        )
    tok = transformers.AutoTokenizer.from_pretrained(folder, **kwargs)
    model = transformers.AutoModelForSeq2SeqLM.from_pretrained(folder).eval()
    forced = {"forced_bos_token_id": tok.convert_tokens_to_ids(CODES[name][1])} if name in CODES else {}
    with torch.no_grad():
        out = model.generate(**tok(sources, padding=True, return_tensors="pt"), **forced)
    return tok.batch_decode(out, skip_special_tokens=True)


def run(seq2seq_checkpoint: Callable[..., Path], data: Path, out: Path, name: str, *overrides: str):
    folder = seq2seq_checkpoint(name, steps=STEPS)
    args = ["model=hf", f"model.path={folder}", "data=parallel_text", f"data.dir={data}", "data.src_lang=en"]
    return folder, train_here(out, *args, "data.tgt_lang=de", *TINY, *overrides)


def check_export(run_dir: Path) -> None:
    """`prunelab export RUN --format hf` (export_hf_run) -> a folder transformers loads with the run's logits."""
    from prunelab.export import export_hf_run
    from prunelab.training import load_run

    out, _ = export_hf_run(run_dir)
    ours = load_run(run_dir).model.eval()
    theirs = transformers.AutoModelForSeq2SeqLM.from_pretrained(out).eval()
    g = torch.Generator().manual_seed(0)
    pad = ours.cfg.pad_id
    src = torch.randint(4, ours.cfg.vocab_size - 8, (2, 9), generator=g)
    src[1, 6:] = pad
    tgt = torch.randint(4, ours.cfg.vocab_size - 8, (2, 5), generator=g)
    tgt[:, 0] = ours.cfg.decoder_start_id
    with torch.no_grad():
        want = ours(src, tgt)
        got = theirs(input_ids=src, attention_mask=(src != pad).long(), decoder_input_ids=tgt).logits
    torch.testing.assert_close(got, want, atol=5e-5, rtol=1e-5)


PRUNERS = {
    "heads": ["pruner=heads", "sparsity=0.25", "pruner.finetune_steps=2"],
    "slt": ["pruner=slt", "sparsity=0.5", "pruner.levels=[0.5]"],
    "oneshot": [
        "pruner=oneshot",
        "pruner.pattern=2:4",
        "sparsity=0.5",
        "trainer.max_steps=0",
        "pruner.calibration.n=8",
    ],
    "structured": ["pruner=structured", "sparsity=0.3", "pruner.budget=stack_params", "pruner.finetune_steps=2"],
}


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("method", list(PRUNERS))
def test_every_method_from_the_command_line(
    seq2seq_checkpoint: Callable[..., Path], data: Path, tmp_path: Path, family: str, method: str
) -> None:
    name = FAMILIES[family]
    overrides = list(PRUNERS[method])
    if method == "structured":  # recovery distils from the pretrained model itself
        overrides.append(f"task.distill.teacher={seq2seq_checkpoint(name, steps=STEPS)}")
    folder, r = run(seq2seq_checkpoint, data, tmp_path / "run", name, *overrides)
    assert r.returncode == 0, r.stderr[-3000:]
    res = r.results
    first = res["levels"][0]
    assert res["status"] == "completed" and first["sparsity"] == 0.0 and first["stage"] in ("pretrained", "dense")
    sources, refs = H.copy_pairs(16, 3)
    want = hf_translations(folder, name, sources)
    level_dir = r.dir / "checkpoints" / ("pretrained" if first["round"] == -1 else "round_0")
    assert read_hypotheses(level_dir) == want  # the first level is the pretrained model, decoded as generate does
    assert first["metrics"]["test/bleu"] == pytest.approx(sacrebleu.corpus_bleu(want, [refs]).score, rel=1e-6)
    assert len(res["levels"]) >= 2
    check_scores_from_files(r)
    last = res["levels"][-1]
    if method in ("slt", "oneshot"):
        assert last["sparsity"] == pytest.approx(0.5, abs=0.01)
    if method == "oneshot":
        assert res["oneshot"]["method"] == "sparsegpt" and last["time"]["steps"] == 0
    if method == "structured":
        assert res["distillation"]["teacher"] == str(folder)
        assert last["params"]["total"] < first["params"]["total"]
    if method in ("structured", "oneshot"):  # out again: transformers loads the pruned run with its logits
        check_export(r.dir)
    if method == "heads":
        # a quarter of the heads (encoder self, decoder self, cross) cut out of the projections
        assert last["sparsity"] == 0.25 and last["params"]["removed"] > 0
        assert last["params"]["total"] == first["params"]["total"] - last["params"]["removed"]


def test_a_pretrained_checkpoint_scored_as_it_is(seq2seq_checkpoint: Callable[..., Path], data: Path, tmp_path: Path):
    """`trainer.max_steps=0 pruner=none`: one level, the pretrained model's, nothing trained."""
    folder, r = run(seq2seq_checkpoint, data, tmp_path / "run", "nllb", "pruner=none", "trainer.max_steps=0")
    assert r.returncode == 0, r.stderr[-3000:]
    (level,) = r.results["levels"]
    assert level["stage"] == "pretrained" and level["time"]["steps"] == 0
    assert read_hypotheses(r.dir / "checkpoints" / "round_0") == hf_translations(folder, "nllb", H.copy_pairs(16, 3)[0])


@pytest.mark.parametrize("name", ["t5", "mbart50"])
def test_head_and_component_studies(
    seq2seq_checkpoint: Callable[..., Path], data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """`prunelab heads|components RUN` on an imported T5 / mBART-50 scored as it is: BLEU (decoded with the
    checkpoint's own beam-4 settings, the target code forced as the run forced it) is the score, and its baseline is
    the run's test BLEU; every head of the three attention kinds and every sub-layer is studied."""
    import logging

    from prunelab.cli.main import main

    folder, r = run(seq2seq_checkpoint, data, tmp_path / "run", name, "pruner=none", "trainer.max_steps=0")
    assert r.returncode == 0, r.stderr[-3000:]
    bleu = r.results["metrics"]["test/bleu"]
    monkeypatch.setattr(logging.getLogger("prunelab"), "handlers", [])  # main() logs to this test's stderr
    heads = [
        "--beam-size",
        "4",
        "--importance-batches",
        "1",
        "--random-orders",
        "1",
        "--step",
        "0.5",
        "--no-ablation-order",
    ]
    assert main(["heads", str(r.dir), *heads, "--speed-batch-sizes", "1", "--speed-sentences", "4"]) == 0
    report = json.loads((r.dir / "heads" / "heads.json").read_text())
    assert report["baseline_bleu"] == pytest.approx(bleu, abs=1e-6)
    assert report["decoding"]["forced_bos_id"] == r.results["decoding"]["forced_bos_id"]
    if name in CODES:  # the code of the data's target language, as the run decoded
        code = transformers.AutoTokenizer.from_pretrained(folder).convert_tokens_to_ids(CODES[name][1])
        assert report["decoding"]["forced_bos_id"] == code
    want = {
        f"{s}.{i}.{k}.h{h}"
        for s, k in (("enc", "sa"), ("dec", "sa"), ("dec", "ea"))
        for i in range(2)
        for h in range(4)
    }
    assert set(report["importance"]) == want
    assert main(["components", str(r.dir), "--split", "test", "--no-criticality"]) == 0
    comp = json.loads((r.dir / "components" / "components.json").read_text())
    assert comp["baseline_bleu"] == pytest.approx(bleu, abs=1e-6)


def test_prunelab_beam_cannot_force_the_target_code(
    seq2seq_checkpoint: Callable[..., Path], data: Path, tmp_path: Path
) -> None:
    _, r = run(seq2seq_checkpoint, data, tmp_path / "run", "m2m100", "task.decoding=prunelab", "trainer.max_steps=0")
    assert r.returncode == 2 and "task.decoding=checkpoint" in r.stderr and "__de__" in r.stderr
