"""prunelab models in EleutherAI's lm-evaluation-harness (prunelab.lm_eval_adapter), offline: a tiny random GPT-2 with
a byte-level BPE tokenizer trained here, both saved as a hub folder would be and imported; every score checked
against transformers' own model, computed here by brute force (one full forward per request, no batching)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402

from prunelab.data.language_modeling import PretrainedLmTokenizer  # noqa: E402
from prunelab.data.tokenizer import WordTokenizer  # noqa: E402
from prunelab.hf.families import load_hf  # noqa: E402
from prunelab.lm_eval_adapter import PrunelabLM  # noqa: E402
from prunelab.models.causal_lm import build_causal_lm  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
WORDS = "the a cat dog bird sat ran saw on in under mat park tree big small red green house and".split()
N_POSITIONS = 32


def corpus(n: int = 300) -> list[str]:
    g = torch.Generator().manual_seed(0)
    return [" ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (6,), generator=g)) for _ in range(n)]


@pytest.fixture(scope="module", params=["gpt2", "gemma2"])
def gpt2(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """(transformers' model, its tokenizer, the folder): GPT-2 layout, <|endoftext|> = id 0 its BOS and EOS; or the
    same tokenizer with a Gemma 2 (sliding windows of 8 positions in every other layer, soft-capped logits), whose
    windows the longer requests run past."""
    from tokenizers import ByteLevelBPETokenizer

    folder = tmp_path_factory.mktemp(request.param)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus(), vocab_size=300, min_frequency=1, special_tokens=["<|endoftext|>"])
    bpe.save_model(str(folder))
    tok = transformers.GPT2Tokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"))
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        vocab_size=len(tok),
        n_positions=N_POSITIONS,
        n_embd=32,
        n_layer=2,
        n_head=4,
        initializer_range=0.1,
        bos_token_id=0,
        eos_token_id=0,
    )
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    if request.param == "gemma2":
        cfg = transformers.Gemma2Config(
            vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=8, max_position_embeddings=N_POSITIONS, sliding_window=8,
            initializer_range=0.3, bos_token_id=0, eos_token_id=0, pad_token_id=0,
        )  # fmt: skip
        hf = transformers.Gemma2ForCausalLM(cfg).eval()
    hf.save_pretrained(folder)
    tok.save_pretrained(folder)
    return hf, transformers.AutoTokenizer.from_pretrained(str(folder)), folder


@pytest.fixture(scope="module")
def lm(gpt2) -> PrunelabLM:
    _, _, folder = gpt2
    return PrunelabLM(model=load_hf(folder), tokenizer=PretrainedLmTokenizer(folder), batch_size=3)


def split(tok, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm_eval's (context ids, continuation ids): the whole text encoded, then the context alone; an empty context
    is the BOS id (GPT-2 adds no special tokens)."""
    if not context:
        return [tok.bos_token_id], tok.encode(continuation)
    whole, ctx = tok.encode(context + continuation), tok.encode(context)
    assert whole[: len(ctx)] == ctx
    return ctx, whole[len(ctx) :]


def brute_force(model, ctx: list[int], cont: list[int], max_length: int | None = None) -> tuple[float, bool]:
    """sum of log p(continuation) and whether it is greedy, from one forward of transformers' model (or any model
    returning logits) over context + continuation, cut from the left to max_length + 1 tokens."""
    ids = ctx + cont
    if max_length is not None:
        ids = ids[-(max_length + 1) :]
    with torch.no_grad():
        out = model(torch.tensor([ids[:-1]]))
        logits = out.logits if hasattr(out, "logits") else out
        logp = logits[0].double().log_softmax(-1)[-len(cont) :]
    target = torch.tensor(cont)
    return float(logp.gather(1, target[:, None]).sum()), bool((logp.argmax(-1) == target).all())


def requests(kind: str, args: list[tuple]) -> list[Instance]:
    return [Instance(kind, {}, a, i) for i, a in enumerate(args)]


PAIRS = [
    ("the cat sat", " on the mat"),
    ("a dog", " ran"),  # three one-token continuations of one context: one forward shared
    ("a dog", " sat"),
    ("a dog", " saw"),
    ("the big red house", " and the small green tree"),
    ("", "the bird sat under the tree"),  # empty context: BOS first
    ("the cat sat on ", "the mat"),  # a trailing space moves into the continuation
    (" ".join(corpus(20)[:8]), " and the dog ran"),  # longer than the model's 32 positions: cut from the left
]


def test_loglikelihood_equals_transformers(gpt2, lm: PrunelabLM) -> None:
    hf, tok, _ = gpt2
    assert len(split(tok, *PAIRS[-1])[0]) > 2 * N_POSITIONS
    assert all(len(split(tok, "a dog", c)[1]) == 1 for _, c in PAIRS[1:4])
    got = lm.loglikelihood(requests("loglikelihood", PAIRS))
    for (context, continuation), (score, greedy) in zip(PAIRS, got, strict=True):
        ctx, cont = split(tok, context.rstrip(" "), context[len(context.rstrip(" ")) :] + continuation)
        ref_score, ref_greedy = brute_force(hf, ctx, cont, max_length=N_POSITIONS)
        assert score == pytest.approx(ref_score, abs=1e-4), (context, continuation)
        assert greedy == ref_greedy
    # one at a time, no batching or shared inputs: the same
    one = PrunelabLM(model=lm.model, tokenizer=lm.tokenizer, batch_size=1)
    for a, b in zip(one.loglikelihood(requests("loglikelihood", PAIRS)), got, strict=True):
        assert a[0] == pytest.approx(b[0], abs=1e-5) and a[1] == b[1]


def test_is_greedy(gpt2, lm: PrunelabLM) -> None:
    hf, tok, _ = gpt2
    ctx = tok.encode("the cat sat on")
    seq = hf.generate(torch.tensor([ctx]), do_sample=False, max_new_tokens=4, eos_token_id=None, pad_token_id=0)
    greedy = seq[0, len(ctx) :].tolist()
    other = [*greedy[:-1], (greedy[-1] + 1) % len(tok)]
    got = lm._loglikelihood_tokens([(None, ctx, greedy), (None, ctx, other)], disable_tqdm=True)
    assert [g for _, g in got] == [True, False]
    assert got[0][0] == pytest.approx(brute_force(hf, ctx, greedy)[0], abs=1e-4)
    assert got[1][0] == pytest.approx(brute_force(hf, ctx, other)[0], abs=1e-4)


def rolling_reference(hf, prefix: int, toks: list[int], L: int) -> float:
    """Every token scored once: the first L from [prefix] + the tokens before them, then windows of L predicted
    tokens, each model input the L tokens before the window's end (so the window's first token sees L-1 before it)."""
    total = brute_force(hf, [prefix], toks[:L])[0] if len(toks) >= 1 else 0.0
    done = min(L, len(toks))
    while done < len(toks):
        end = min(done + L, len(toks))
        window = toks[end - L - 1 : end]  # L inputs and the one after them
        total += brute_force(hf, window[: -(end - done)], window[-(end - done) :])[0]
        done = end
    return total


def test_rolling_loglikelihood(gpt2, lm: PrunelabLM) -> None:
    hf, tok, _ = gpt2
    short = "the cat sat on the mat and the dog ran"
    toks = tok.encode(short)
    assert len(toks) < N_POSITIONS
    [got] = lm.loglikelihood_rolling(requests("loglikelihood_rolling", [(short,)]))
    assert got == pytest.approx(brute_force(hf, [0], toks)[0], abs=1e-4)  # one window: the whole text after BOS
    text = " ".join(corpus(30)[10:22])
    toks = tok.encode(text)
    narrow = PrunelabLM(model=lm.model, tokenizer=lm.tokenizer, batch_size=4, max_length=16)
    assert len(toks) > 3 * 16 and len(toks) % 16 != 0  # several windows, the last one partial
    both = narrow.loglikelihood_rolling(requests("loglikelihood_rolling", [(text,), (short,)]))
    assert both[0] == pytest.approx(rolling_reference(hf, 0, toks, 16), abs=1e-3)
    short_toks = tok.encode(short)
    assert 16 < len(short_toks) < 32  # two windows at max_length 16, one at 32
    assert both[1] == pytest.approx(rolling_reference(hf, 0, short_toks, 16), abs=1e-4)
    assert abs(both[1] - got) > 1e-2  # its last tokens saw less context
    # plausible wrong windows (chunks of 16, each after BOS, no context carried over) are told apart
    chunks = sum(brute_force(hf, [0], toks[i : i + 16])[0] for i in range(0, len(toks), 16))
    assert abs(both[0] - chunks) > 0.1


def test_generate_until_equals_transformers_greedy(gpt2, lm: PrunelabLM) -> None:
    hf, tok, _ = gpt2
    contexts = ["the cat sat", "a big red", "the dog"]
    free = []
    for c in contexts:
        ids = torch.tensor([tok.encode(c)])
        seq = hf.generate(ids, do_sample=False, max_new_tokens=8, eos_token_id=None, pad_token_id=0)
        free.append(tok.decode(seq[0, ids.size(1) :]))
    # a stop string first met inside a generation: that one is cut there
    stop = next(ch for f in free for k, ch in enumerate(f) if k > 0 and ch not in f[:k] and ch.strip())
    args = [(c, {"until": [stop, "never"], "max_gen_toks": 8}) for c in contexts]
    got = lm.generate_until(requests("generate_until", args))
    assert got == [f.split(stop)[0] for f in free]
    assert any(0 < len(g) < len(f) for g, f in zip(got, free, strict=True))
    # a task's sampling settings are read; top_k=1 is greedy again
    sampled = [(c, {**kw, "do_sample": True, "temperature": 1.0, "top_k": 1}) for c, kw in args]
    assert lm.generate_until(requests("generate_until", sampled)) == got


def test_prunelab_tokenizer(tmp_path: Path) -> None:
    """prunelab's own tokenizer (no `.hf`): ids without special tokens, EOS (the document separator) before an
    empty context and the first rolling window; scores from the prunelab model's own full forward."""
    tok = WordTokenizer(WORDS)
    torch.manual_seed(0)
    model = build_causal_lm(vocab_size=tok.vocab_size, d_model=32, n_heads=4, d_ff=64, dec_layers=2, max_len=64)
    model.eval()
    lm = PrunelabLM(model=model, tokenizer=tok, batch_size=2)
    assert lm.prefix_token_id == tok.eos_id
    pairs = [("the cat", " sat on the mat"), ("", "a dog ran"), ("big red", " house")]
    got = lm.loglikelihood(requests("loglikelihood", pairs))
    for (context, continuation), (score, _) in zip(pairs, got, strict=True):
        ctx = tok.encode(context) or [tok.eos_id]
        assert score == pytest.approx(brute_force(model, ctx, tok.encode(continuation))[0], abs=1e-4)
    text = "the cat sat on the mat and the dog ran in the park"
    [rolled] = lm.loglikelihood_rolling(requests("loglikelihood_rolling", [(text,)]))
    assert rolled == pytest.approx(brute_force(model, [tok.eos_id], tok.encode(text))[0], abs=1e-4)


TASK_YAML = """\
task: prunelab_tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def write_task(folder: Path, docs: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "docs.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    (folder / "tiny.yaml").write_text(TASK_YAML.format(data=data))
    return folder


QUESTIONS = ["the cat sat on the", "a dog ran in the", "the bird saw a", "the big red", "a small", "the tree and the"]
CHOICES = [["mat", "park", "tree"], ["park", "house", "cat"], ["dog", "bird", "red"]]


def test_multiple_choice_task_through_simple_evaluate(gpt2, lm: PrunelabLM, tmp_path: Path) -> None:
    """A multiple-choice task in lm_eval's YAML format over a local jsonl: its accuracy is what transformers' model
    predicts. The gold answers are set from those predictions (4 of 6 right), so the expected accuracy is exact."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    hf, tok, _ = gpt2
    docs = []
    for i, q in enumerate(QUESTIONS):
        choices = CHOICES[i % len(CHOICES)]
        scores = [brute_force(hf, *split(tok, q, " " + c))[0] for c in choices]  # lm_eval's target delimiter " "
        pred = max(range(len(choices)), key=scores.__getitem__)
        docs.append({"question": q, "choices": choices, "label": pred if i < 4 else (pred + 1) % len(choices)})
    tm = TaskManager(include_path=str(write_task(tmp_path / "tasks", docs)))
    out = lm_eval.simple_evaluate(model=lm, tasks=["prunelab_tiny_mc"], task_manager=tm, bootstrap_iters=0)
    assert out["results"]["prunelab_tiny_mc"]["acc,none"] == pytest.approx(4 / 6)


def test_registered_under_its_name() -> None:
    from lm_eval.api.registry import get_model, model_registry

    import prunelab.lm_eval_adapter as adapter

    assert get_model("prunelab") is PrunelabLM
    assert "hf" in model_registry  # the harness's own models stay known
    adapter.register()  # again: nothing happens


def test_bad_settings(lm: PrunelabLM) -> None:
    from prunelab.errors import UserError

    with pytest.raises(UserError, match="not a setting"):
        PrunelabLM(model=lm.model, tokenizer=lm.tokenizer, pretrained="gpt2")
    with pytest.raises(UserError, match="give a number"):
        PrunelabLM(model=lm.model, tokenizer=lm.tokenizer, batch_size="auto")
    with pytest.raises(UserError, match="run="):
        PrunelabLM()
    with pytest.raises(UserError, match="generation setting"):
        lm.generate_until(requests("generate_until", [("the cat", {"until": ["."], "num_beams": 4})]))


# --- a run folder: `run=` and the command line --------------------------------------------------------------------
LM_RUN = [
    "task=language_modeling",
    "data=synthetic_lm",
    "model=decoder_tiny",
    "model.d_model=32",
    "model.n_heads=4",
    "model.n_kv_heads=2",
    "model.d_ff=64",
    "model.dec_layers=1",
    "model.max_len=64",
    "data.seq_len=32",
    "data.train_sentences=200",
    "data.valid_sentences=20",
    "data.test_sentences=20",
    "trainer.max_steps=4",
    "trainer.val_check_interval=4",
    "trainer.enable_progress_bar=false",
    "logger=none",
]


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.e2e.conftest import train_here

    run = train_here(tmp_path_factory.mktemp("lm_run"), *LM_RUN)
    assert run.returncode == 0, run.stderr
    return run.dir


def test_from_a_run_folder(lm_run: Path) -> None:
    from prunelab.training.load import load_run

    lm = PrunelabLM(run=lm_run, device="cpu")
    loaded = load_run(lm_run, data=True)
    tok = loaded.datamodule.tokenizer
    assert type(lm.tokenizer) is type(tok) and lm.prefix_token_id == tok.eos_id
    pairs = [("the cat", " saw the dog"), ("", "a red bird")]
    for (context, continuation), (score, _) in zip(
        pairs, lm.loglikelihood(requests("loglikelihood", pairs)), strict=True
    ):
        ctx = tok.encode(context) or [tok.eos_id]
        whole = tok.encode(context + continuation)
        cont = whole[len(tok.encode(context)) :]
        assert score == pytest.approx(brute_force(loaded.model, ctx, cont)[0], abs=1e-4)


@pytest.mark.slow
def test_command_line(lm_run: Path, tmp_path: Path) -> None:
    """`python -m prunelab.lm_eval_adapter` is lm_eval's command line with the model "prunelab" known."""
    docs = [{"question": q, "choices": ["cat", "dog"], "label": i % 2} for i, q in enumerate(QUESTIONS)]
    tasks = write_task(tmp_path / "tasks", docs)
    cmd = [sys.executable, "-m", "prunelab.lm_eval_adapter", "--model", "prunelab", "--model_args", f"run={lm_run}"]
    cmd += ["--tasks", "prunelab_tiny_mc", "--include_path", str(tasks), "--device", "cpu", "--batch_size", "4"]
    cmd += ["--output_path", str(tmp_path / "out")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    [results] = (tmp_path / "out").rglob("results_*.json")
    acc = json.loads(results.read_text())["results"]["prunelab_tiny_mc"]["acc,none"]
    assert 0.0 <= acc <= 1.0
