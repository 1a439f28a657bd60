"""Where a run's weights come from, decided here and nowhere else: `start_weights(cfg, out, model, pruner)`.

    scratch     the model as built (its initialisation, saved as the run's θ_0: `init.pt`)
    run         `ckpt=RUN`: a trained run's weights (its folder's tested checkpoint, or any .ckpt it wrote), and that
                run's θ_0 (its init.pt) for every method that rewinds to θ_0
    pretrained  an imported Hugging Face checkpoint (`model.path`): its weights, which are also the run's θ_0 (the
                θ_0 lottery tickets of pretrained models rewind to); the source's config and tokenizer files are
                copied into the run (`hf_source/`), so the run reloads, is analysed and exported without the source

`trained` (run or pretrained) tells the round loop to score the start as the first level.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from prunelab.training.io import read_state, write_state
from prunelab.training.load import load_trained_weights, record_source

log = logging.getLogger("prunelab")


@dataclass(frozen=True)
class StartWeights:
    kind: str  # scratch | run | pretrained
    source: str | None  # the checkpoint the weights were read from (None: scratch)
    init: str | None  # θ_0 (init.pt), None when a ckpt= run left none

    @property
    def trained(self) -> bool:
        return self.kind != "scratch"

    def report(self) -> dict[str, Any]:
        return {"kind": self.kind, "source": self.source, "init": self.init}


def start_weights(cfg: DictConfig, out: Path, model: Any, pruner: Any) -> StartWeights:
    """Give `model` (and `pruner`, for θ_0) the run's start weights; see the module docstring."""
    pretrained = getattr(model, "pretrained_from", None)
    if pretrained is not None:
        record_source(model, out)  # the model's configuration stays with the run, whatever its weights
    if cfg.get("ckpt"):
        source = load_trained_weights(model, Path(cfg.ckpt))
        model.weights_from_run = str(source)  # not the imported folder's weights (pruner.stream reads that folder)
        init = next((d / "init.pt" for d in (source.parent, *source.parents) if (d / "init.pt").exists()), None)
        if init is None:
            log.warning(
                "ckpt=%s: no init.pt next to it; methods that rewind to θ_0 use this run's initialisation", source
            )
        else:
            pruner.use_initial_weights(read_state(init))
        return StartWeights("run", str(source), str(init) if init else None)
    init = out / "init.pt"
    if not init.exists():
        write_state(init, {k: v.detach().cpu() for k, v in model.state_dict().items()})
    return StartWeights("pretrained" if pretrained else "scratch", pretrained, str(init))
