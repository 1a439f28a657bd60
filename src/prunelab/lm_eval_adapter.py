"""prunelab's language models in EleutherAI's lm-evaluation-harness (`lm_eval`, an optional dependency):

    python -m prunelab.lm_eval_adapter --model prunelab --model_args run=RUN_DIR --tasks hellaswag,arc_easy
        (every argument is lm_eval's own; `run=` is a run folder or a .ckpt inside one, rebuilt with load_run)

    import prunelab.lm_eval_adapter                    # registers the model name "prunelab"
    lm_eval.simple_evaluate(model="prunelab", model_args="run=RUN_DIR", tasks=[...])
    lm_eval.simple_evaluate(model=PrunelabLM(model=causal_lm, tokenizer=tok), tasks=[...])

The harness finds a model name only in its in-process registry (lm_eval 0.4: no entry points), so the plain
`lm_eval --model prunelab` cannot see this module; `python -m prunelab.lm_eval_adapter` imports it, then runs
lm_eval's command line.

PrunelabLM follows lm_eval's Hugging Face adapter (`lm_eval.models.huggingface.HFLM`), so that an unpruned imported
checkpoint scores as `--model hf` scores it:
    loglikelihood          context + continuation tokens (the pair encoded as TemplateLM does: the whole text, then
                           the context alone), cut from the left to max_length + 1 tokens; the continuation's summed
                           log-probabilities and whether each of its tokens is the argmax. Batched with right padding
                           (safe: the model is causal, a real token never sees the padding after it); requests whose
                           inputs are equal (one-token continuations of one context) share one forward.
    loglikelihood_rolling  lm_eval's disjoint rolling windows of max_length tokens (get_rolling_token_windows,
                           make_disjoint_window, one token of context), their log-likelihoods summed.
    generate_until         the context cut from the left to max_length - max_gen_toks tokens, then
                           prunelab.models.lm_generation.generate_lm (greedy unless the task asks for do_sample) until
                           EOS, a stop string of `until`, or max_gen_toks tokens; the text is cut at the first stop
                           string.
Tokens: a checkpoint's tokenizer (`.hf`, transformers') encodes as HFLM does (its own special tokens: Llama's BOS,
none for GPT-2); prunelab's own tokenizers encode without special tokens. The prefix of an empty context (and of
rolling windows) is the BOS id of a checkpoint's tokenizer (else its EOS), and EOS, the document separator of
prunelab's language-modeling streams, for prunelab's own (BOS when the run's data started its streams with it).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from prunelab.errors import UserError, exit_code
from prunelab.models.causal_lm import CausalLM
from prunelab.models.lm_generation import generate_lm
from prunelab.training.load import load_run

try:
    from lm_eval import utils as lm_utils
    from lm_eval.api.model import TemplateLM
    from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
except ImportError:
    raise UserError(
        "evaluating with the lm-evaluation-harness needs it installed: pip install lm-eval (prunelab's lm-eval extra)"
    ) from None

log = logging.getLogger("prunelab")
MODEL_NAME = "prunelab"  # the harness's --model name
SAMPLING_KWARGS = ("do_sample", "temperature", "top_k", "top_p")  # the generation settings generate_until reads
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class PrunelabLM(TemplateLM):
    """A prunelab CausalLM and its tokenizer (`encode(str) -> ids`, `decode(ids) -> str`, `eos_id`, `bos_id`; a
    checkpoint's tokenizer also `.hf`) as an lm_eval model. Either `run` (a run folder or a checkpoint in one:
    model and tokenizer rebuilt by prunelab.training.load.load_run) or `model` and `tokenizer`.

    batch_size: sequences a forward; max_length: the longest input (default the model's max_len); max_gen_toks:
    generate_until's default length (a task's own setting wins); device / dtype ("float32", "bfloat16",
    "float16"): where and in what the model runs (a run: the GPU when there is one; a model given: where it is);
    add_bos_token: a checkpoint tokenizer's special tokens on (True) or off (False) instead of its default;
    prefix_token_id: the id that stands before an empty context or the first rolling window."""

    def __init__(
        self,
        run: str | Path | None = None,
        model: CausalLM | None = None,
        tokenizer: Any = None,
        batch_size: int | str | None = 8,
        max_length: int | None = None,
        max_gen_toks: int = 256,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        add_bos_token: bool | None = None,
        prefix_token_id: int | None = None,
        max_batch_size: int | None = None,  # passed by the harness for batch_size=auto, which is not supported
        **unknown: Any,
    ):
        super().__init__()
        if unknown:
            raise UserError(
                f"--model_args {', '.join(sorted(unknown))}: not a setting of the prunelab model (settings: run, "
                "batch_size, max_length, max_gen_toks, device, dtype, add_bos_token, prefix_token_id)"
            )
        self.run = None if run is None else str(run)
        data_bos = False
        if run is not None:
            if model is not None or tokenizer is not None:
                raise UserError("give either run= or model= and tokenizer=, not both")
            model, tokenizer, data_bos = _from_run(Path(run))
            if device is None:
                device = "cuda" if torch.cuda.is_available() else "cpu"
        if model is None or tokenizer is None:
            raise UserError("the prunelab model needs run=<run folder> (or, from Python, model= and tokenizer=)")
        if not isinstance(model, CausalLM):
            raise UserError(
                f"the lm-evaluation-harness scores language models: got a {type(model).__name__}, not a CausalLM"
            )
        self.tokenizer = tokenizer
        self.hf_tokenizer = getattr(tokenizer, "hf", None)
        vocab = getattr(tokenizer, "vocab_size", None)
        if vocab is not None and int(vocab) > model.cfg.vocab_size:
            raise UserError(
                f"the tokenizer has {vocab} tokens but the model's vocabulary {model.cfg.vocab_size}: not its tokenizer"
            )
        if dtype is not None:
            if isinstance(dtype, str) and dtype not in DTYPES and dtype != "auto":
                raise UserError(f"dtype={dtype}: one of {', '.join(DTYPES)}")
            if dtype != "auto":
                model = model.to(DTYPES[dtype] if isinstance(dtype, str) else dtype)
        if device is not None:
            if str(device).startswith("cuda") and not torch.cuda.is_available():
                log.warning("device=%s, but no GPU is available: running on the CPU", device)
                device = "cpu"
            model = model.to(device)
        self.model = model.eval()
        self._device = self.model.embed.weight.device
        self._batch_size = _batch_size(batch_size)
        self._max_length = int(max_length) if max_length is not None else int(model.cfg.max_len)
        if not 1 <= self._max_length <= model.cfg.max_len:
            raise UserError(f"max_length={max_length}: between 1 and the model's max_len={model.cfg.max_len}")
        self._max_gen_toks = int(max_gen_toks)
        self.add_bos_token = add_bos_token
        self.eos_id = int(tokenizer.eos_id)
        if prefix_token_id is not None:
            self._prefix = int(prefix_token_id)
        elif self.hf_tokenizer is not None:  # HFLM's: BOS, else EOS
            bos = self.hf_tokenizer.bos_token_id
            self._prefix = int(bos) if bos is not None else self.eos_id
        else:
            self._prefix = int(tokenizer.bos_id) if data_bos else self.eos_id

    # --- what the harness reads ------------------------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.eos_id

    @property
    def prefix_token_id(self) -> int:
        return self._prefix

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def tokenizer_name(self) -> str:
        folder = getattr(self.tokenizer, "folder", None)
        return str(folder or self.run or type(self.tokenizer).__name__).replace("/", "__")

    def get_model_info(self) -> dict[str, Any]:
        return {
            "model_num_parameters": sum(p.numel() for p in self.model.parameters()),
            "model_dtype": str(self.model.embed.weight.dtype),
            "prunelab_run": self.run,
        }

    # --- tokens ----------------------------------------------------------------------------------------------
    def tok_encode(
        self, string: str, add_special_tokens: bool | None = None, left_truncate_len: int | None = None, **kwargs: Any
    ) -> list[int]:
        """Text -> ids. A checkpoint's tokenizer as HFLM calls it (its default special tokens unless
        add_special_tokens / add_bos_token say otherwise; none when the text already starts with the prefix
        token's text); prunelab's own without special tokens (the prefix first when add_special_tokens is True)."""
        hf = self.hf_tokenizer
        if hf is not None:
            special = add_special_tokens if add_special_tokens is not None else self.add_bos_token
            kw = {} if special is None else {"add_special_tokens": bool(special)}
            if add_special_tokens is None:
                prefix = hf.decode([self.prefix_token_id])
                if prefix and string.startswith(prefix):
                    kw["add_special_tokens"] = False
            ids = list(hf.encode(string, **kw))
        else:
            ids = list(self.tokenizer.encode(string))
            special = add_special_tokens if add_special_tokens is not None else self.add_bos_token
            if special:
                ids = [self.prefix_token_id, *ids]
        return ids[-left_truncate_len:] if left_truncate_len else ids

    def tok_decode(self, tokens: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(tokens)))

    # --- scoring ---------------------------------------------------------------------------------------------
    def _loglikelihood_tokens(
        self,
        requests: Sequence[tuple[Any, Sequence[int], Sequence[int]]],
        disable_tqdm: bool = False,
        **kwargs: Any,
    ) -> list[tuple[float, bool]]:
        """(key, context ids, continuation ids) -> (sum of the continuation's log-probabilities, whether every
        continuation token is the argmax), as HFLM: the input is (context + continuation)[-(max_length+1):][:-1]
        and the continuation is scored at its last len(continuation) positions."""
        from tqdm import tqdm

        L = self.max_length
        inputs: dict[tuple[int, ...], int] = {}  # distinct inputs -> their index
        plan: list[tuple[int, list[int]]] = []  # per request: (input index, continuation)
        for _, ctx, cont in requests:
            ctx, cont = list(ctx), list(cont)
            if not ctx or not cont:
                raise ValueError("a loglikelihood request needs a non-empty context and continuation")
            if len(cont) > L:
                raise UserError(f"a continuation of {len(cont)} tokens is longer than max_length={L}")
            inp = tuple((ctx + cont)[-(L + 1) :][:-1])
            plan.append((inputs.setdefault(inp, len(inputs)), cont))
        seqs = list(inputs)
        order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))  # longest first: batches of similar lengths
        by_input: dict[int, list[int]] = {}
        for r, (i, _) in enumerate(plan):
            by_input.setdefault(i, []).append(r)
        out: list[tuple[float, bool] | None] = [None] * len(plan)
        bar = tqdm(total=len(plan), disable=disable_tqdm, desc="Running loglikelihood requests")
        with torch.inference_mode():
            for b in range(0, len(order), self.batch_size):
                batch = order[b : b + self.batch_size]
                T = len(seqs[batch[0]])
                src = torch.full((len(batch), T), self.eot_token_id, dtype=torch.long)
                for row, i in enumerate(batch):
                    src[row, : len(seqs[i])] = torch.tensor(seqs[i])
                logits = self.model(src.to(self.device))  # (B, T, V)
                for row, i in enumerate(batch):
                    n = len(seqs[i])
                    for r in by_input[i]:
                        cont = plan[r][1]
                        logp = F.log_softmax(logits[row, n - len(cont) : n].float(), dim=-1)  # (len(cont), V)
                        target = torch.tensor(cont, device=logp.device)
                        greedy = bool((logp.argmax(-1) == target).all())
                        answer = (float(logp.gather(1, target[:, None]).sum()), greedy)
                        out[r] = answer
                        key = requests[r][0]
                        if key is not None:
                            self.cache_hook.add_partial("loglikelihood", key, answer)
                    bar.update(len(by_input[i]))
        bar.close()
        return out  # type: ignore[return-value]

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """Each text's log-likelihood: the sum over lm_eval's disjoint rolling windows (HFLM's)."""
        windows: list[tuple[None, list[int], list[int]]] = []
        counts: list[int] = []
        for (text,) in [req.args for req in requests]:
            rolling = [
                lm_utils.make_disjoint_window(w)
                for w in lm_utils.get_rolling_token_windows(
                    token_list=self.tok_encode(text),
                    prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length,
                    context_len=1,
                )
            ]
            windows += [(None, ctx, cont) for ctx, cont in rolling]
            counts.append(len(rolling))
        scores = self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)
        out, k = [], 0
        for req, n in zip(requests, counts, strict=True):
            total = sum(s for s, _ in scores[k : k + n])
            k += n
            out.append(total)
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return out

    # --- generation ------------------------------------------------------------------------------------------
    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Each (context, generation settings) -> the generated text, cut before the first stop string."""
        from tqdm import tqdm

        args = [req.args for req in requests]
        groups: dict[str, list[int]] = {}  # requests with the same settings are batched together
        for i, (_, gen_kwargs) in enumerate(args):
            groups.setdefault(json.dumps(gen_kwargs, sort_keys=True, default=str), []).append(i)
        eos_text = self.hf_tokenizer.decode([self.eot_token_id]) if self.hf_tokenizer is not None else None
        out: list[str | None] = [None] * len(args)
        bar = tqdm(total=len(args), disable=disable_tqdm, desc="Running generate_until requests")
        for members in groups.values():
            settings = normalize_gen_kwargs(args[members[0]][1], self.max_gen_toks)
            until = handle_stop_sequences(settings.pop("until", None), eos=eos_text)
            max_gen = int(settings.pop("max_gen_toks"))
            if unknown := sorted(set(settings) - set(SAMPLING_KWARGS)):
                raise UserError(
                    f"generation setting {unknown[0]}={settings[unknown[0]]!r}: the prunelab model reads "
                    f"{', '.join(SAMPLING_KWARGS)}, until and max_gen_toks"
                )
            max_ctx = self.max_length - max_gen
            if max_ctx < 1:
                raise UserError(f"max_gen_toks={max_gen} leaves no room for a context in max_length={self.max_length}")
            temperature = float(settings.get("temperature") or 0.0)
            sample = bool(settings.get("do_sample")) and temperature > 0
            stops = [s for s in until if s]
            prompts = {i: self.tok_encode(args[i][0], left_truncate_len=max_ctx) for i in members}
            prompts = {i: ids or [self.prefix_token_id] for i, ids in prompts.items()}  # an empty context: the prefix
            ordered = sorted(members, key=lambda i: -len(prompts[i]))
            for b in range(0, len(ordered), self.batch_size):
                batch = ordered[b : b + self.batch_size]
                new = generate_lm(
                    self.model,
                    [prompts[i] for i in batch],
                    max_gen,
                    eos_id=self.eot_token_id,
                    do_sample=sample,
                    temperature=temperature if sample else 1.0,
                    top_k=settings.get("top_k") if sample else None,
                    top_p=settings.get("top_p") if sample else None,
                    stop=self._stop_at(stops),
                )
                for i, ids in zip(batch, new, strict=True):
                    text = postprocess_generated_text(self.tok_decode(ids), until, None)
                    out[i] = text
                    self.cache_hook.add_partial("generate_until", args[i], text)
                bar.update(len(batch))
        bar.close()
        return out  # type: ignore[return-value]

    def _stop_at(self, stops: Sequence[str]) -> Callable[[list[int]], bool] | None:
        """generate_lm's `stop`: True once the text generated so far contains one of `stops`."""
        if not stops:
            return None
        return lambda ids: any(s in self.tok_decode(ids) for s in stops)


def _batch_size(value: int | str | None) -> int:
    if value is None:
        return 8
    if isinstance(value, str) and not value.strip().isdigit():
        raise UserError(f"batch_size={value}: give a number (automatic batch sizes are not supported)")
    size = int(value)
    if size < 1:
        raise UserError(f"batch_size={value}: must be >= 1")
    return size


def _from_run(path: Path) -> tuple[CausalLM, Any, bool]:
    """A run folder (or a .ckpt in one) -> (its model, its data's tokenizer, whether its streams start with BOS)."""
    from omegaconf import OmegaConf

    loaded = load_run(path, data=True)
    if not isinstance(loaded.model, CausalLM):
        raise UserError(
            f"run={path}: a {type(loaded.model).__name__}; the lm-evaluation-harness scores language models "
            "(task=language_modeling runs)"
        )
    tokenizer = getattr(loaded.datamodule, "tokenizer", None)
    if tokenizer is None:
        raise UserError(f"run={path}: its data module has no tokenizer")
    bos = bool(OmegaConf.select(loaded.config, "data.bos", default=False))
    return loaded.model, tokenizer, bos


def register() -> None:
    """Make "prunelab" a model name of the harness's registry (done on import; a second call does nothing)."""
    import lm_eval.models  # noqa: F401  the harness's own names first: it fills only an empty registry itself
    from lm_eval.api.registry import model_registry, register_model

    if MODEL_NAME not in model_registry:
        register_model(MODEL_NAME)(PrunelabLM)


register()


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m prunelab.lm_eval_adapter ARGS`: lm_eval's command line (`lm_eval ARGS`) with "prunelab" known."""
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    return exit_code(cli_evaluate)


if __name__ == "__main__":
    sys.exit(main())
