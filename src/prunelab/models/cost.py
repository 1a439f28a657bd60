"""What a model costs: its parameters and its forward FLOPs per token, counted from the modules it has now (heads,
neurons and sub-layers removed for real are gone from both).

FLOPs per token are the matrix products of one forward pass, 2 x multiply-adds, at a context of `context` tokens:

- every Linear: 2 x in x out per token it reads (a stack's Linears read every token of that stack);
- attention: 2 x 2 x heads x head width x `context` per query token (QK^T and the weighted sum of V; a causal or
  padded map is counted at its full `context`, as torch.utils.flop_counter counts scaled_dot_product_attention),
  and only the second half for AttendOut's uniform maps, which have no scores;
- the output projection over the vocabulary (a translation or language model): 2 x d_model x vocabulary per token.

An encoder-decoder's token is one source token through the encoder plus one target token through the decoder
(source and target of equal length); a classifier's is one token through the encoder (its pooler and head act once
per example and are left out). Norms, activations, softmax and embedding look-ups are left out, as in Kaplan et
al. (2020) and Minitron's counts.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from prunelab.models.transformer import MultiHeadAttention, Transformer


def parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def stack_flops(layers: Iterable[nn.Module], context: int) -> int:
    """Forward FLOPs per token of `layers` (stack layers, each reading every token)."""
    total = 0
    for m in (m for layer in layers for m in layer.modules()):
        if isinstance(m, nn.Linear):
            total += 2 * m.in_features * m.out_features
        elif isinstance(m, MultiHeadAttention):
            scores = 0 if m.uniform else 2 * m.n_heads * m.head_dim * context
            total += scores + 2 * m.n_heads * m.head_dim * context
    return total


def flops_per_token(model: Transformer, context: int) -> int:
    """Forward FLOPs per token at `context` tokens (see the module doc)."""
    total = stack_flops(model.enc, context) + stack_flops(model.dec, context)
    if len(model.dec) or hasattr(model, "lm_head"):  # a decoder: logits over the vocabulary at every target token
        total += 2 * model.cfg.d_model * model.cfg.vocab_size
    return total


def cost(model: Transformer, context: int) -> dict[str, int]:
    """{"params": all parameters, "stack_params": those of the layer stacks (Kaplan et al.'s non-embedding N: no
    embeddings, output projection, pooler or classifier head), "flops_per_token": at `context`, "context": context}."""
    return {
        "params": parameters(model),
        "stack_params": parameters(model.enc) + parameters(model.dec),
        "flops_per_token": flops_per_token(model, context),
        "context": context,
    }
