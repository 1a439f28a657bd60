"""Importing Hugging Face MarianMT: a tiny random MarianMTModel built here from its config (no network), saved,
imported with load_hf_marian, and held to HF's own teacher-forced logits (fp32, eval mode) and to HF's greedy
`generate` token for token."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from prunelab.errors import UserError
from prunelab.hf.marian import build_hf_marian, load_hf_marian
from prunelab.models.decoding import beam_search, greedy_decode, hf_beam_search
from prunelab.models.transformer import Transformer, TransformerConfig, sinusoidal_positions

transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

V, PAD, EOS = 60, 59, 0
MAX_NEW = 12  # generated tokens at most, EOS included


def hf_marian(tame: bool = True):
    """tame=False: the raw random model, logits of several units; tame=True (see below): varied translations."""
    torch.manual_seed(0)
    cfg = transformers.MarianConfig(
        vocab_size=V,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=37,
        decoder_ffn_dim=37,
        activation_function="swish",
        max_position_embeddings=64,
        pad_token_id=PAD,
        eos_token_id=EOS,
        decoder_start_token_id=PAD,
        forced_eos_token_id=EOS,
        scale_embedding=True,
    )
    model = transformers.MarianMTModel(cfg).eval()
    # HF's init (std 0.02) keeps activations near 0: std 1/sqrt(fan_in) gives O(1) activations and logits, so that
    # a wrong position layout, activation or missing bias shows above the tolerance. LayerNorms and biases get
    # random offsets so that a swapped key shows; the pad row stays random (the decoder starts from it).
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "embed_positions" in name:  # the fixed sinusoid table (not saved: recomputed on load)
                continue
            if p.dim() == 2:
                p.normal_(0.0, p.shape[1] ** -0.5)
            else:
                p.add_(torch.randn_like(p) * 0.2)
        if not tame:
            model.final_logits_bias.normal_(0.0, 1.0)
            return model
        # With tied embeddings of that size a random decoder copies its input token, and one token direction
        # dominates every output: smaller embeddings, and a final_logits_bias that takes out the mean logit (plus
        # noise, and a lift for </s>), give greedy outputs that vary with the source and end at different lengths.
        model.model.shared.weight.mul_(0.3)
        g = torch.Generator().manual_seed(3)
        src, tgt = torch.randint(1, PAD, (2, 8, 10), generator=g)
        tgt[:, 0] = PAD
        model.final_logits_bias.zero_()
        logits = model(input_ids=src, decoder_input_ids=tgt).logits
        sd = logits.std((0, 1)).mean()
        model.final_logits_bias.copy_(-logits.mean((0, 1))[None] + 0.3 * sd * torch.randn(1, V, generator=g))
        model.final_logits_bias[0, EOS] += 1.5 * sd
    return model


def batch() -> torch.Tensor:
    """Five sources of length <= 9: full, right-padded, left-padded, short; each real sentence ends with </s>."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, PAD, (5, 9), generator=g)  # 1 .. V-2: neither eos nor pad
    ids[:, -1] = EOS
    ids[1, 6:] = PAD
    ids[1, 5] = EOS
    ids[2, :3] = PAD
    ids[3, 2:] = PAD
    ids[3, 1] = EOS
    return ids


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    model = hf_marian()
    path = tmp_path_factory.mktemp("marian")
    model.save_pretrained(path)
    return path, model


@pytest.fixture(scope="module")
def saved_raw(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    model = hf_marian(tame=False)
    path = tmp_path_factory.mktemp("marian_raw")
    model.save_pretrained(path)
    return path, model


@pytest.fixture(scope="module")
def ours(saved: tuple[Path, object]) -> Transformer:
    return load_hf_marian(saved[0]).eval()


def copy_with(src: Path, dst: Path, edit=None, config=None) -> Path:
    """A copy of the checkpoint folder, its state dict passed through `edit` and its config.json through `config`."""
    shutil.copytree(src, dst)
    if edit is not None:
        state = safetensors_torch.load_file(str(dst / "model.safetensors"))
        edit(state)
        safetensors_torch.save_file({k: v.contiguous() for k, v in state.items()}, str(dst / "model.safetensors"))
    if config is not None:
        c = json.loads((dst / "config.json").read_text())
        config(c)
        (dst / "config.json").write_text(json.dumps(c))
    return dst


def test_config_is_marian(ours: Transformer) -> None:
    c = ours.cfg
    assert (c.pre_norm, c.pos_layout, c.logit_bias, c.ban_pad) == (False, "split", True, True)
    assert (c.pad_id, c.decoder_start_id, c.activation, c.embed_scale) == (PAD, PAD, "silu", True)
    assert isinstance(ours.enc_norm, torch.nn.Identity) and isinstance(ours.dec_norm, torch.nn.Identity)
    assert ours.logit_bias.shape == (V,)


def test_split_positions_equal_hf_table(saved: tuple[Path, object]) -> None:
    hf = saved[1]
    ours = sinusoidal_positions(64, 32, "split")
    torch.testing.assert_close(ours, hf.model.encoder.embed_positions.weight, atol=0, rtol=0)
    # the default layout is unchanged: sin in the even columns, cos in the odd ones
    inter = sinusoidal_positions(64, 32)
    torch.testing.assert_close(inter[:, 0::2], ours[:, :16], atol=1e-4, rtol=0)
    torch.testing.assert_close(inter[:, 1::2], ours[:, 16:], atol=1e-4, rtol=0)


def test_default_config_unchanged() -> None:
    model = Transformer(TransformerConfig(vocab_size=11, d_model=8, n_heads=2, d_ff=16, enc_layers=1, dec_layers=1))
    assert "logit_bias" not in model.state_dict()
    pe = sinusoidal_positions(1024, 8)
    assert torch.equal(model.pos, pe)
    assert pe[1, 0] == torch.sin(torch.tensor(1.0)) and pe[1, 1] == torch.cos(torch.tensor(1.0))


@pytest.mark.parametrize("which", ["saved", "saved_raw"])
def test_teacher_forced_logits_match(which: str, request: pytest.FixtureRequest) -> None:
    path, hf = request.getfixturevalue(which)
    ours = load_hf_marian(path).eval()
    src = batch()
    g = torch.Generator().manual_seed(2)
    tgt_in = torch.randint(1, PAD, (5, 7), generator=g)
    tgt_in[:, 0] = PAD  # Marian's decoder starts from pad
    tgt_in[3, 4:] = PAD  # a padded target
    with torch.no_grad():
        want = hf(input_ids=src, attention_mask=(src != PAD).long(), decoder_input_ids=tgt_in).logits
        got = ours(src, tgt_in)
    err = (got - want).abs().max().item()
    assert (want - want.mean((0, 1))).abs().max() > (1.0 if which == "saved_raw" else 0.1)  # far above the tolerance
    print(f"{which}: max |logit diff| {err:.2e}, max |logit| {want.abs().max():.2f}")
    assert err < 1e-5, f"max |logit diff| {err:.2e}"


def hf_generate(hf, src: torch.Tensor, max_new_tokens: int = MAX_NEW, **kw) -> list[list[int]]:
    with torch.no_grad():
        out = hf.generate(
            input_ids=src,
            attention_mask=(src != PAD).long(),
            do_sample=False,
            max_new_tokens=max_new_tokens,
            bad_words_ids=[[PAD]],
            **kw,
        )
    rows = []
    for row in out.tolist():
        assert row[0] == PAD  # the decoder start
        row = row[1:]
        assert EOS in row  # forced at the limit at the latest
        rows.append(row[: row.index(EOS)])  # prunelab returns the tokens before EOS
    return rows


def test_greedy_matches_hf_generate(saved: tuple[Path, object], ours: Transformer) -> None:
    hf = saved[1]
    src = batch()
    want = hf_generate(hf, src, num_beams=1)
    lens = {len(w) for w in want}
    assert len(lens) > 1 and min(lens) < MAX_NEW - 1  # some end early, lengths differ: EOS handling is exercised
    # the start token comes from the model's config (pad): the bos_id given is not used
    got_beam = beam_search(ours, src, bos_id=1, eos_id=EOS, beam_size=1, max_len_a=0.0, max_len_b=MAX_NEW)
    got_greedy = greedy_decode(ours, src, bos_id=1, eos_id=EOS, max_len_a=0.0, max_len_b=MAX_NEW)
    assert got_beam == want
    assert got_greedy == want


def test_pad_never_generated(ours: Transformer) -> None:
    """With the pad logit raised far above all others, greedy decoding is unchanged: pad is never emitted (HF's
    bad_words_ids=[[pad]]), and it is the argmax everywhere, so without the ban every output would be empty."""
    src = batch()
    kw = dict(bos_id=1, eos_id=EOS, max_len_a=0.0, max_len_b=MAX_NEW)
    before = greedy_decode(ours, src, **kw)
    ours.logit_bias[PAD] += 100.0
    try:
        assert greedy_decode(ours, src, **kw) == before
        assert beam_search(ours, src, beam_size=1, **kw) == before
        ours.cfg.ban_pad = False
        assert greedy_decode(ours, src, **kw) == [[]] * len(before)  # pad everywhere, stripped
    finally:
        ours.logit_bias[PAD] -= 100.0
        ours.cfg.ban_pad = True


def test_position_tables_in_the_file_are_checked(saved: tuple[Path, object], tmp_path: Path) -> None:
    hf = saved[1]
    table = hf.model.encoder.embed_positions.weight.detach().clone()

    def good(s):
        s["model.encoder.embed_positions.weight"] = table
        s["model.decoder.embed_positions.weight"] = table.half().float()  # fp16 storage, within tolerance

    load_hf_marian(copy_with(saved[0], tmp_path / "good", good))

    def bad(s):
        s["model.decoder.embed_positions.weight"] = sinusoidal_positions(64, 32)  # interleaved

    with pytest.raises(UserError, match=r"model\.decoder\.embed_positions\.weight"):
        load_hf_marian(copy_with(saved[0], tmp_path / "bad", bad))


def test_tied_copies_fp16_and_bin_accepted(saved: tuple[Path, object], ours: Transformer, tmp_path: Path) -> None:
    def edit(s):
        shared = s["model.shared.weight"]
        s["model.encoder.embed_tokens.weight"] = shared.clone()
        s["model.decoder.embed_tokens.weight"] = shared.clone()
        s["lm_head.weight"] = shared.clone()
        for k in s:
            s[k] = s[k].half()

    path = copy_with(saved[0], tmp_path / "copies", edit)
    state = safetensors_torch.load_file(str(path / "model.safetensors"))  # as an old pytorch_model.bin
    (path / "model.safetensors").unlink()
    torch.save(state, path / "pytorch_model.bin")
    model = load_hf_marian(path)
    assert all(p.dtype == torch.float32 for p in model.state_dict().values() if p.is_floating_point())
    torch.testing.assert_close(model.embed.weight, ours.embed.weight.half().float(), atol=0, rtol=0)


def test_unexpected_and_missing_keys_are_named(saved: tuple[Path, object], tmp_path: Path) -> None:
    def extra(s):
        s["model.encoder.layers.0.extra.weight"] = torch.zeros(3)

    with pytest.raises(UserError, match=r"unexpected key.*model\.encoder\.layers\.0\.extra\.weight"):
        load_hf_marian(copy_with(saved[0], tmp_path / "extra", extra))

    def missing(s):
        del s["model.decoder.layers.1.encoder_attn.v_proj.bias"]

    with pytest.raises(UserError, match=r"missing.*model\.decoder\.layers\.1\.encoder_attn\.v_proj\.bias"):
        load_hf_marian(copy_with(saved[0], tmp_path / "missing", missing))

    def shape(s):
        s["model.encoder.layers.0.fc1.weight"] = torch.zeros(36, 32)

    with pytest.raises(UserError, match=r"model\.encoder\.layers\.0\.fc1\.weight has shape \(36, 32\)"):
        load_hf_marian(copy_with(saved[0], tmp_path / "shape", shape))


@pytest.mark.parametrize(
    "change",
    [
        {"share_encoder_decoder_embeddings": False},
        {"tie_word_embeddings": False},
        {"decoder_vocab_size": V + 1},
    ],
)
def test_untied_config_refused(saved: tuple[Path, object], tmp_path: Path, change: dict) -> None:
    path = copy_with(saved[0], tmp_path / "untied", config=lambda c: c.update(change))
    with pytest.raises(UserError, match="untied"):
        load_hf_marian(path)


def test_untied_weights_refused(saved: tuple[Path, object], tmp_path: Path) -> None:
    def edit(s):
        s["model.decoder.embed_tokens.weight"] = s["model.shared.weight"] + 1.0

    with pytest.raises(UserError, match=r"model\.decoder\.embed_tokens\.weight differs.*untied"):
        load_hf_marian(copy_with(saved[0], tmp_path / "untied_w", edit))


def test_build_hf_marian_checks_the_data(saved: tuple[Path, object]) -> None:
    path = str(saved[0])
    with pytest.raises(UserError, match="vocabulary of 60 tokens but the data's tokenizer has 61"):
        build_hf_marian(61, PAD, path)
    with pytest.raises(UserError, match="pads with id 59 but the data's tokenizer with 0"):
        build_hf_marian(V, 0, path)
    model = build_hf_marian(V, PAD, path, dropout=0.0)
    assert model.cfg.dropout == 0.0 and model.cfg.pad_id == PAD
    with pytest.raises(UserError, match="cannot override"):
        build_hf_marian(V, PAD, path, d_model=64)


def test_hydra_config(saved: tuple[Path, object]) -> None:
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    conf = OmegaConf.load(Path(__file__).parents[2] / "conf" / "model" / "hf_marian.yaml")
    conf.path = str(saved[0])
    model = instantiate(conf)(vocab_size=V, pad_id=PAD)
    assert isinstance(model, Transformer) and model.cfg.pos_layout == "split"


@pytest.mark.parametrize(
    ("length_penalty", "early_stopping", "max_new"),
    [
        (1.0, False, MAX_NEW),
        (0.6, True, MAX_NEW),
        (2.0, "never", MAX_NEW),
        (0.0, False, MAX_NEW),
        (1.0, "never", 6),
        (-1.0, False, 6),
    ],
)
def test_hf_beam_search_matches_hf_generate(
    saved: tuple[Path, object], ours: Transformer, length_penalty: float, early_stopping: bool | str, max_new: int
) -> None:
    """Beam 4: prunelab's HF-style beam search (decoding.hf_beam_search) gives HF's translations token for token.
    The short limit makes hypotheses end at it, where HF forces EOS at log-probability 0."""
    hf = saved[1]
    g = torch.Generator().manual_seed(5)
    more = torch.randint(1, PAD, (8, 9), generator=g)
    more[:, -1] = EOS
    src = torch.cat([batch(), more])
    want = hf_generate(hf, src, max_new, num_beams=4, length_penalty=length_penalty, early_stopping=early_stopping)
    got = hf_beam_search(
        ours,
        src,
        bos_id=1,
        eos_id=EOS,
        beam_size=4,
        length_penalty=length_penalty,
        early_stopping=early_stopping,
        max_new_tokens=max_new,
    )
    assert got == want
