"""The reference one-shot pruners, written here in plain PyTorch as the baseline that prunelab's SparseGPT and Wanda
are timed against and must agree with (they are the definitions):

- SparseGPT: IST-DASLab/sparsegpt (Frantar & Alistarh 2023, https://github.com/IST-DASLab/sparsegpt), its
  `SparseGPT.add_batch` / `SparseGPT.fasterprune(sparsity, prunen, prunem, blocksize=128, percdamp=.01)` and the
  layer-by-layer driver `llama_sequential` (llama.py);
- Wanda: locuslab/wanda (Sun et al. 2023, https://github.com/locuslab/wanda), its `WrappedGPT.add_batch`
  (lib/layerwrapper.py) and `prune_wanda` (lib/prune.py).

Their algorithms step by step, in the same arithmetic order where it decides the mask, on a transformers
LlamaForCausalLM (the model class the reference drivers run): the first layer's inputs caught for every calibration
window (one window a forward pass, as the references feed them); then layer by layer, every Linear of the layer
calibrated on the unpruned layer's inputs (hooks on one pass over the windows), each pruned, and the pruned layer run
again to give the next layer its inputs.

- H = 2/n Σ x xᵀ as a running average over the windows (n = windows seen), fp32; Wanda's ‖X_j‖₂² the same way.
- SparseGPT: inputs that were always 0 get H_jj = 1 and their weights zeroed; λ = 1% of mean(diag H) added to the
  diagonal; U = the upper Cholesky factor of H⁻¹ (cholesky, cholesky_inverse, cholesky upper); columns in blocks of
  128: the block's mask is every entry whose w² / U_jj² (the block's weights after the earlier blocks' updates) is
  at most the int(numel · sparsity)-th smallest of the block (0-based, so one entry more than numel · sparsity);
  N:M: the N lowest of every M columns (reference's `prunen`, removed) chosen when the group's first column comes
  up; the columns visited in turn, the removed weight's error (w - q) / U_jj spread over the block's columns to its
  right by U's row, and the block's errors over every later column by one matmul.
- Wanda: score |W_ij| · sqrt(‖X_j‖₂²) per output row, a stable sort per row, the int(cols · sparsity) lowest removed;
  N:M: the N lowest of every M consecutive inputs.

Not their code: the quantizer, the losses they print and the device moves are left out (they do not touch the
masks or the weights)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn


class SparseGPT:
    """One Linear's SparseGPT: H from its inputs (`add_batch`), then `fasterprune`."""

    def __init__(self, layer: nn.Linear):
        self.layer = layer
        self.rows, self.columns = layer.weight.shape
        self.h = torch.zeros((self.columns, self.columns), device=layer.weight.device)
        self.nsamples = 0

    def add_batch(self, inp: Tensor) -> None:
        if inp.dim() == 2:
            inp = inp.unsqueeze(0)
        tmp = inp.shape[0]  # sequences in this call
        inp = inp.reshape(-1, inp.shape[-1]).t()
        self.h *= self.nsamples / (self.nsamples + tmp)
        self.nsamples += tmp
        inp = math.sqrt(2 / self.nsamples) * inp.float()
        self.h += inp.matmul(inp.t())

    @torch.no_grad()
    def fasterprune(
        self, sparsity: float, prunen: int = 0, prunem: int = 0, blocksize: int = 128, percdamp: float = 0.01
    ) -> Tensor:
        """Prunes the layer's weight in place -> the mask (bool, True = removed)."""
        w = self.layer.weight.data.clone().float()
        h = self.h
        del self.h
        dead = torch.diag(h) == 0
        h[dead, dead] = 1
        w[:, dead] = 0
        damp = percdamp * torch.mean(torch.diag(h))
        diag = torch.arange(self.columns, device=h.device)
        h[diag, diag] += damp
        h = torch.linalg.cholesky(h)
        h = torch.cholesky_inverse(h)
        hinv = torch.linalg.cholesky(h, upper=True)
        masks = []
        for i1 in range(0, self.columns, blocksize):
            i2 = min(i1 + blocksize, self.columns)
            w1 = w[:, i1:i2].clone()
            q1 = torch.zeros_like(w1)
            err1 = torch.zeros_like(w1)
            hinv1 = hinv[i1:i2, i1:i2]
            if prunen == 0:
                tmp = w1**2 / (torch.diag(hinv1).reshape((1, -1))) ** 2
                thresh = torch.sort(tmp.flatten())[0][int(tmp.numel() * sparsity)]
                mask1 = tmp <= thresh
            else:
                mask1 = torch.zeros_like(w1) == 1
            for i in range(i2 - i1):
                col = w1[:, i]
                d = hinv1[i, i]
                if prunen != 0 and i % prunem == 0:
                    tmp = w1[:, i : i + prunem] ** 2 / (torch.diag(hinv1)[i : i + prunem].reshape((1, -1))) ** 2
                    mask1.scatter_(1, i + torch.topk(tmp, prunen, dim=1, largest=False)[1], True)
                q = col.clone()
                q[mask1[:, i]] = 0
                q1[:, i] = q
                e = (col - q) / d
                w1[:, i:] -= e.unsqueeze(1).matmul(hinv1[i, i:].unsqueeze(0))
                err1[:, i] = e
            w[:, i1:i2] = q1
            w[:, i2:] -= err1.matmul(hinv[i1:i2, i2:])
            masks.append(mask1)
        self.layer.weight.data = w.reshape(self.layer.weight.shape).to(self.layer.weight.data.dtype)
        return torch.cat(masks, dim=1)


class WrappedGPT:
    """One Linear's Wanda statistics: the running average of its inputs' squared column norms."""

    def __init__(self, layer: nn.Linear):
        self.layer = layer
        self.scaler_row = torch.zeros(layer.weight.shape[1], device=layer.weight.device)
        self.nsamples = 0

    def add_batch(self, inp: Tensor) -> None:
        if inp.dim() == 2:
            inp = inp.unsqueeze(0)
        tmp = inp.shape[0]
        inp = inp.reshape(-1, inp.shape[-1]).t()
        self.scaler_row *= self.nsamples / (self.nsamples + tmp)
        self.nsamples += tmp
        inp = inp.type(torch.float32)
        self.scaler_row += torch.norm(inp, p=2, dim=1) ** 2 / self.nsamples


@torch.no_grad()
def wanda_prune(layer: nn.Linear, scaler_row: Tensor, sparsity: float, prune_n: int = 0, prune_m: int = 0) -> Tensor:
    """prune_wanda's step for one Linear (no variant): the weight's removed entries zeroed -> the mask."""
    metric = torch.abs(layer.weight.data) * torch.sqrt(scaler_row.reshape((1, -1)))
    mask = torch.zeros_like(metric) == 1
    if prune_n != 0:
        for ii in range(metric.shape[1]):
            if ii % prune_m == 0:
                tmp = metric[:, ii : ii + prune_m].float()
                mask.scatter_(1, ii + torch.topk(tmp, prune_n, dim=1, largest=False)[1], True)
    else:
        sort_res = torch.sort(metric, dim=-1, stable=True)
        indices = sort_res[1][:, : int(metric.shape[1] * sparsity)]
        mask.scatter_(1, indices, True)
    layer.weight.data[mask] = 0
    return mask


def find_layers(module: nn.Module, name: str = "") -> dict[str, nn.Linear]:
    """The Linears under `module`, by dotted name (the references' find_layers)."""
    if type(module) is nn.Linear:
        return {name: module}
    out: dict[str, nn.Linear] = {}
    for child_name, child in module.named_children():
        out.update(find_layers(child, f"{name}.{child_name}" if name else child_name))
    return out


def add_batch(stat: SparseGPT | WrappedGPT) -> Callable[..., None]:
    """The forward hook that feeds a Linear's inputs to its statistics."""

    def hook(_: nn.Module, inp: tuple[Tensor, ...], out: Tensor) -> None:
        stat.add_batch(inp[0].data)

    return hook


class _Caught(Exception):
    pass


def layer_inputs(model: Any, windows: list[Tensor]) -> tuple[list[Tensor], dict[str, Any]]:
    """The first decoder layer's input for every window (batch of 1) and the keyword arguments the model passes its
    layers (attention mask, rotary tables, positions): the references' Catcher."""
    layers = model.model.layers
    inps: list[Tensor] = []
    cache: dict[str, Any] = {}

    class Catcher(nn.Module):
        def __init__(self, module: nn.Module):
            super().__init__()
            self.module = module

        def forward(self, inp: Tensor, **kwargs: Any) -> Tensor:
            inps.append(inp)
            cache.update(kwargs)
            raise _Caught

    layers[0] = Catcher(layers[0])
    try:
        for w in windows:
            try:
                model(w)
            except _Caught:
                pass
    finally:
        layers[0] = layers[0].module
    return inps, cache


def _hidden(out: Any) -> Tensor:
    return out[0] if isinstance(out, tuple) else out  # older transformers' layers return a tuple


@torch.no_grad()
def llama_sequential(
    model: Any,
    windows: list[Tensor],
    method: str,
    sparsity: float,
    prunen: int = 0,
    prunem: int = 0,
    record: list[tuple[Tensor, Tensor, Tensor]] | None = None,
) -> dict[str, Tensor]:
    """sparsegpt's llama_sequential (not true-sequential) or wanda's prune_wanda on a LlamaForCausalLM: every window
    (1, T) its own pass -> the masks by the Linear's name (model.layers.3.mlp.down_proj). `record`: every matrix's
    (weight before, its statistic (H, or Wanda's squared norms), mask) appended, for a solver to be given the same
    problems (a copy per matrix: not for timing)."""
    use_cache = model.config.use_cache
    model.config.use_cache = False
    inps, kwargs = layer_inputs(model, windows)
    kwargs = {k: v for k, v in kwargs.items() if k in ("attention_mask", "position_ids", "position_embeddings")}
    masks: dict[str, Tensor] = {}
    for i, layer in enumerate(model.model.layers):
        subset = find_layers(layer)
        stats = {n: (SparseGPT(m) if method == "sparsegpt" else WrappedGPT(m)) for n, m in subset.items()}
        handles = [subset[n].register_forward_hook(add_batch(stats[n])) for n in subset]
        for x in inps:
            layer(x, **kwargs)
        for h in handles:
            h.remove()
        for n in subset:
            if record is not None:
                before = subset[n].weight.data.clone()
                stat = stats[n].h.clone() if method == "sparsegpt" else stats[n].scaler_row.clone()
            if method == "sparsegpt":
                mask = stats[n].fasterprune(sparsity, prunen=prunen, prunem=prunem)
            else:
                mask = wanda_prune(subset[n], stats[n].scaler_row, sparsity, prunen, prunem)
            masks[f"model.layers.{i}.{n}"] = mask
            if record is not None:
                record.append((before, stat, mask))
        del stats
        inps = [_hidden(layer(x, **kwargs)) for x in inps]
    model.config.use_cache = use_cache
    return masks
