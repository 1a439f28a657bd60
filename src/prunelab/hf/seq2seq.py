"""What the encoder-decoder checkpoint files have in common, for their family modules (marian, bart, m2m100, t5):

- `file_names`: the file's keys without the `model.` prefix of the *ForConditionalGeneration classes (a bare
  *Model file has none), each remembered under its name in the file for messages;
- `take_shared`: one shared token embedding, from wherever the file stores it (transformers ties the encoder's,
  the decoder's and, where tied, the output projection to it; older files store every copy): the copies must equal
  it and are dropped;
- `layer_key_map`: the fairseq naming of the layers that Marian, BART, mBART and M2M100/NLLB share (self_attn,
  encoder_attn, fc1, fc2 and their LayerNorms), mapped onto prunelab's addresses;
- `check_table`: a fixed position table stored in a file checked against the one prunelab computes.

Family-specific keys (positions, embedding norms, final norms, logit biases) stay in the family modules."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from prunelab.errors import UserError
from prunelab.hf.checkpoint import activation, check_data_fits, num, recorded_layers, wb
from prunelab.models.transformer import Transformer


def file_names(path: str | Path, state: dict[str, Tensor], prefix: str = "model.") -> tuple[dict[str, str], str]:
    """(normalised name -> the file's name, the prefix the file uses: `prefix` or ""); two keys that normalise to
    one name are an error."""
    names: dict[str, str] = {}
    for k in state:
        n = k.removeprefix(prefix)
        if n in names:
            raise UserError(f"{path}: keys {names[n]!r} and {k!r} both name {n!r}")
        names[n] = k
    shown = prefix if any(k.startswith(prefix) for k in state) else ""
    return names, shown


def take_shared(
    path: str | Path,
    family: str,
    state: dict[str, Tensor],
    names: dict[str, str],
    copies: Sequence[str],
    shared: str = "shared.weight",
) -> None:
    """Make `shared` name the shared embedding (the first of `shared`, *copies the file has) and drop every copy
    (normalised names), each checked equal to it; else one error: the checkpoint is untied."""
    present = [n for n in (shared, *copies) if n in names]
    if not present:
        raise UserError(f"{path}: key missing from the {family} checkpoint: {shared}")
    if present[0] != shared:
        names[shared] = names.pop(present[0])
    for n in present[1:]:
        a, b = state[names[shared]], state[names[n]]
        if a.shape != b.shape or not torch.equal(a, b):
            raise UserError(
                f"{path}: {names[n]} differs from {names[shared]}: an untied {family} checkpoint (prunelab's "
                "encoder-decoder shares one embedding between encoder, decoder and output projection)"
            )
        del names[n]


def layer_key_map(enc_layers: int, dec_layers: int) -> dict[str, str]:
    """The fairseq-named layers (Marian, BART, mBART, M2M100): HF key (no `model.` prefix) -> prunelab key."""
    m: dict[str, str] = {}
    attn = {f"{p}_proj": f"{p}_proj" for p in ("q", "k", "v", "out")}
    for side, ours, n in (("encoder", "enc", enc_layers), ("decoder", "dec", dec_layers)):
        for i in range(n):
            h, e = f"{side}.layers.{i}", f"{ours}.{i}"
            parts = {f"self_attn.{a}": f"sa.{b}" for a, b in attn.items()}
            parts["self_attn_layer_norm"] = "sa_res.norm"
            if side == "decoder":
                parts.update({f"encoder_attn.{a}": f"ea.{b}" for a, b in attn.items()})
                parts["encoder_attn_layer_norm"] = "ea_res.norm"
            parts.update({"fc1": "ff.fc1", "fc2": "ff.fc2", "final_layer_norm": "ff_res.norm"})
            for theirs, mine in parts.items():
                m.update(wb(f"{h}.{theirs}", f"{e}.{mine}"))
    return m


def check_table(
    path: str | Path, name: str, theirs: Tensor, ours: Tensor, what: str, rows: slice | None = None
) -> None:
    """A fixed position table of the file (`name`, shown as the file spells it) must be the one prunelab computes
    (`rows`: the rows compared, where the file's table is longer or shorter than ours)."""
    a, b = (theirs, ours) if rows is None else (theirs[rows], ours[rows])
    if a.shape != b.shape or not torch.allclose(a, b, atol=1e-3, rtol=0):
        err = (a - b).abs().max().item() if a.shape == b.shape else None
        raise UserError(
            f"{path}: {name} (shape {tuple(theirs.shape)}, max |diff| {err}) is not the position table prunelab "
            f"computes ({tuple(ours.shape)}, {what})"
        )


def final_logits_bias(path: str | Path, state: dict[str, Tensor], key: str, vocab: int) -> None:
    """The file's final_logits_bias (1, V), reshaped in place into prunelab's (V,) buffer."""
    bias = state[key]
    if bias.shape not in ((1, vocab), (vocab,)):
        raise UserError(f"{path}: final_logits_bias has shape {tuple(bias.shape)}, needs (1, {vocab})")
    state[key] = bias.reshape(-1)


def check_same(hf: dict[str, Any], pairs: Sequence[tuple[str, str]], what: str) -> None:
    """Keys of config.json that must agree (encoder and decoder widths, head counts): one error naming them."""
    for a, b in pairs:
        if a in hf and b in hf and hf[a] != hf[b]:
            raise UserError(f"config.json sets {a}={hf[a]} and {b}={hf[b]}: prunelab's encoder-decoder has one {what}")


def hydra_entry(
    to_config: Callable[[dict[str, Any]], Any], load: Callable[..., Transformer]
) -> Callable[..., Transformer]:
    """A translation family's `build` (the Hydra entry `model=hf model.path=DIR`): the data's tokenizer checked
    against config.json (`to_config`) before the weights are read, then `load(path, weights, **overrides)`."""

    def build(vocab_size: int, pad_id: int, path: str, weights: bool = True, **overrides: Any) -> Transformer:
        check_data_fits(path, to_config, vocab_size, pad_id)
        return load(path, weights, **overrides)

    return build


def fairseq_shape(hf: dict[str, Any], *, act: str, attn_dropout: float, scale: bool, start: str) -> dict[str, Any]:
    """The TransformerConfig fields config.json gives the same way for Marian, BART, mBART and M2M100 (their
    encoder_* / decoder_* keys, dropouts, whole-layer LayerDrop, pad, nn.LayerNorm's eps): the family's defaults
    where its class has its own (`act`: activation_function; `attn_dropout`; `scale`: scale_embedding; `start`: the
    token id key the decoder starts from when decoder_start_token_id is absent). The family checks first that
    encoder and decoder have one width and head count."""
    enc, dec = num(hf, "encoder_layers"), num(hf, "decoder_layers")
    first = hf.get("decoder_start_token_id")
    return dict(
        vocab_size=num(hf, "vocab_size"),
        d_model=num(hf, "d_model"),
        n_heads=num(hf, "encoder_attention_heads"),
        d_ff=num(hf, "encoder_ffn_dim"),
        enc_layers=enc,
        dec_layers=dec,
        layer_numbers=recorded_layers(hf, enc=enc, dec=dec),
        dropout=hf.get("dropout", 0.1),
        attn_dropout=hf.get("attention_dropout", attn_dropout),
        activation_dropout=hf.get("activation_dropout", 0.0),
        enc_layerdrop=hf.get("encoder_layerdrop") or 0.0,  # whole layers skipped in training, as transformers does
        dec_layerdrop=hf.get("decoder_layerdrop") or 0.0,
        pad_id=num(hf, "pad_token_id"),
        norm_eps=1e-5,  # nn.LayerNorm's default, which these classes use
        activation=activation(hf, "activation_function", act),
        embed_scale=bool(hf.get("scale_embedding", scale)),
        decoder_start_id=first if first is not None else num(hf, start),
    )
