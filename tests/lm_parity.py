"""The checks every decoder-only family's import is held to, against the transformers model it came from: logits,
the perplexity windows' loss, the KV cache one position at a time past the prompt, greedy generation equal to
`generate`; and an export after real cuts (heads, neurons, a whole layer, one sub-layer) reloading in transformers
with equal logits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from prunelab.hf.export import export_hf
from prunelab.hf.families import load_hf
from prunelab.models.causal_lm import CausalLM
from prunelab.models.lm_generation import generate_lm


def spread(model: torch.nn.Module, norm_keys: tuple[str, ...] = ("norm",)) -> torch.nn.Module:
    """Weights moved away from their init (norm weights jittered around theirs, the rest N(0, 0.3²)), so that a
    mapping error shows in the logits."""
    torch.manual_seed(1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if any(k in n for k in norm_keys):
                p.add_(torch.randn_like(p) * 0.1)
            else:
                p.normal_(0.0, 0.3)
    return model.eval()


def assert_same_lm(ours: CausalLM, theirs: Any, vocab: int, length: int = 30, prompt: int = 7) -> None:
    """Logits (B=3, `length` tokens), per-window losses, the cache fed the prompt then one token a step, and 8
    greedy tokens after a 6-token prompt, all equal to transformers'."""
    torch.manual_seed(2)
    x = torch.randint(1, vocab, (3, length))
    with torch.no_grad():
        want = theirs(x).logits
        assert want.abs().max() > 1.0, "logits too flat to tell errors apart"
        torch.testing.assert_close(ours(x), want, atol=5e-5, rtol=1e-5)
        batch = {"src": x[:, :-1], "target": x[:, 1:]}
        loss = torch.stack([theirs(w[None], labels=w[None]).loss for w in x])
        torch.testing.assert_close(ours.example_losses(batch), loss, atol=1e-5, rtol=1e-5)
        cache = ours.new_cache()
        steps = [ours(x[:, :prompt], cache, 0)] + [ours(x[:, t : t + 1], cache, t) for t in range(prompt, length)]
        torch.testing.assert_close(torch.cat(steps, 1), want, atol=5e-5, rtol=1e-5)
        out = theirs.generate(x[:, :6], max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert generate_lm(ours, x[:, :6], 8) == out[:, 6:].tolist()


def assert_pruned_export_reloads(folder: Path, out: Path, model_class: Any, vocab: int) -> dict[str, Any]:
    """Query heads 1-2 of layer 0 and feed-forward neurons 0-7 of every layer removed for real, layer 1 removed whole
    and layer 2's feed-forward removed: the export's config.json has 2 layers and 8 neurons fewer, and transformers'
    `model_class` loads it with logits equal to the pruned model's. -> the exported config.json."""
    ours = load_hf(folder).eval()
    ours.dec[0].sa.prune_heads([1, 2])
    width = ours.dec[0].ff.width
    for layer in ours.dec:
        layer.ff.prune_neurons(range(8))
    for kind in ours.dec[1].kinds:
        ours.dec[1].remove(kind)
    ours.dec[2].remove("ff")
    exported = export_hf(ours, folder, out)
    config = json.loads((exported / "config.json").read_text())
    assert config["num_hidden_layers"] == len(ours.dec) - 1 and config["intermediate_size"] == width - 8
    back = model_class.from_pretrained(exported).eval()
    x = torch.randint(1, vocab, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(back(x).logits, ours(x), atol=5e-5, rtol=1e-5)
    return config
