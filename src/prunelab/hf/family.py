"""The written protocol of a checkpoint family: what a module under `prunelab.hf` provides so that a Hugging Face
`model_type` can be imported, pruned and exported (as transformers keeps each model_type in its own folder).

A family module (encoders, marian, t5, bart, m2m100, causal_lm, opt, gpt_neox, phi, gemma) satisfies `Family` with
module-level names; the registry (prunelab.hf.families) checks each against it (`missing`) and dispatches on
config.json's `model_type`.
Shared plumbing stays out of the family modules: prunelab.hf.checkpoint (reading files, accounting for keys,
copying tensors, the tokenizer) and prunelab.hf.seq2seq (what the encoder-decoder files have in common).

Nothing here imports a family module or `transformers`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from torch import Tensor

from prunelab.models.transformer import Transformer, TransformerConfig

# What a family may claim for a model type (the README's families table; tests/unit/test_hf_families.py keeps the
# two equal): import with logits equal to transformers', export back, head pruning, one-shot pruning (magnitude,
# Wanda, SparseGPT), structured width/depth removal, and decoding equal to `generate` with the checkpoint's settings.
CAPABILITIES = ("import", "export", "heads", "oneshot", "structured", "generation")

# What may be cut out of such a network for real (and still be exported): query heads, K/V groups, feed-forward
# neurons, whole layers, single sub-layers (pre-norm only: a post-norm layer cannot skip its LayerNorm).
CUTS = ("heads", "kv_groups", "neurons", "layers", "sublayers")


class Family(Protocol):
    """One module per family; every name below at module level."""

    MODEL_TYPES: tuple[str, ...]  # the config.json `model_type`s it reads
    MODEL_CLASS: type[Transformer]  # the prunelab network it imports into
    TASK: str  # the data kind it serves: translation, classification or language_modeling
    ARCHITECTURES: Mapping[str, str]  # model_type -> the transformers class an export is written as
    FF_WIDTH_KEYS: Mapping[str, Sequence[str]]  # model_type -> config.json's feed-forward width key(s)
    LAYER_COUNT_KEYS: Mapping[str, Mapping[str, Sequence[str]]]  # model_type -> {"enc"/"dec": layer count key(s)}
    FAMILY_CAPABILITIES: Mapping[str, Sequence[str]]  # model_type -> the CAPABILITIES it has (tested)
    FAMILY_CUTS: Mapping[str, Sequence[str]]  # model_type -> the CUTS an export can write

    def network_config(self, hf: dict[str, Any]) -> TransformerConfig:
        """config.json -> the TransformerConfig of the same network; anything it sets that prunelab cannot represent
        exactly is one UserError naming it."""
        ...

    def load(self, path: str | Path, weights: bool = True, **overrides: Any) -> Transformer:
        """A local folder (or hub id in the cache) -> the prunelab network with the checkpoint's weights (every key
        accounted for) and its generation settings (`model.generation`) where it generates; weights=False:
        config.json alone. `overrides`: training settings (checkpoint.OVERRIDABLE)."""
        ...

    def build(self, path: str, weights: bool = True, **data_args: Any) -> Transformer:
        """The Hydra entry: `load` after checking that the data's tokenizer fits (`data_args`: vocab_size, pad_id,
        and num_classes for a classifier, plus training overrides)."""
        ...

    def export_folder(
        self,
        model: Transformer,
        hf: dict[str, Any],
        state: dict[str, Tensor],
        labels: Sequence[str] | None,
        cfg: TransformerConfig,
    ) -> tuple[dict[str, Any], dict[str, Tensor]]:
        """The effective state (masks and gates folded, removed layers gone: prunelab.hf.export) -> (config.json to
        write, tensors under the transformers class's keys)."""
        ...


def missing(module: Any) -> list[str]:
    """The names of the Family protocol that `module` lacks, and the model types whose tables it leaves out."""
    wanted = [
        *(n for n in Family.__annotations__),
        *(n for n in ("network_config", "load", "build", "export_folder")),
    ]
    gaps = [n for n in wanted if not hasattr(module, n)]
    if gaps:
        return gaps
    for table in ("ARCHITECTURES", "FF_WIDTH_KEYS", "LAYER_COUNT_KEYS", "FAMILY_CAPABILITIES", "FAMILY_CUTS"):
        gaps += [f"{table}[{t!r}]" for t in module.MODEL_TYPES if t not in getattr(module, table)]
    for t in module.MODEL_TYPES:
        gaps += [
            f"unknown capability {c!r} of {t}" for c in module.FAMILY_CAPABILITIES.get(t, ()) if c not in CAPABILITIES
        ]
        gaps += [f"unknown cut {c!r} of {t}" for c in module.FAMILY_CUTS.get(t, ()) if c not in CUTS]
    return gaps
