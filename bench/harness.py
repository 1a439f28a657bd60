"""What every bench section shares: contenders interleaved over repetitions after a warm-up, paired
per-repetition ratios summarised as median [min, max], and the runs' own building blocks (the default
config composed exactly as `train.py` composes it, its data, model and LightningModule)."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
SPREAD_LIMIT = 0.05  # a ratio whose [min, max] reaches further than this from its median is called out as noisy


@dataclass
class Figure:
    """One row of the table. `value` is the median over repetitions; `lo`/`hi` the min and max."""

    section: str
    name: str
    value: float
    lo: float | None = None
    hi: float | None = None
    unit: str = "x"
    goal: float | None = None  # the value must reach it (>=), or stay under it with lower_is_better
    lower_is_better: bool = False
    note: str = ""

    @property
    def verdict(self) -> str:
        if self.goal is None:
            return ""
        ok = self.value < self.goal if self.lower_is_better else self.value >= self.goal
        if ok:
            return "met"
        miss = self.value / self.goal - 1 if self.lower_is_better else 1 - self.value / self.goal
        return f"missed by {100 * miss:.0f}%"

    @property
    def spread(self) -> float | None:
        """How far [min, max] reaches from the median, relative (0.07: within ±7%); None without a range."""
        if self.lo is None or self.hi is None or not self.value:
            return None
        return max(self.hi / self.value - 1, 1 - self.lo / self.value)

    @property
    def spread_note(self) -> str:
        """The spread of a ratio row as "±3%", with "(over ±5%: ...)" past SPREAD_LIMIT; "" for other rows."""
        if self.unit != "x" or self.spread is None:
            return ""
        note = f"±{100 * self.spread:.0f}%"
        return note + (
            f" (over ±{100 * SPREAD_LIMIT:.0f}%: more repetitions needed)" if self.spread > SPREAD_LIMIT else ""
        )

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "verdict": self.verdict, "spread": self.spread}


def interleave(contenders: dict[str, Callable[[], float]], reps: int, warmup: int = 1) -> dict[str, list[float]]:
    """Call every contender `warmup` times, then `reps` rounds of each in turn (the order rotating, so no
    contender always runs right after another); each call returns its own measurement."""
    names = list(contenders)
    for _ in range(warmup):
        for n in names:
            contenders[n]()
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(reps):
        for n in names[r % len(names) :] + names[: r % len(names)]:
            out[n].append(contenders[n]())
    return out


def paired(section: str, name: str, num: list[float], den: list[float], **kw: Any) -> Figure:
    """Median [min, max] of the per-repetition ratios num[i] / den[i] (pairs measured back to back)."""
    ratios = [a / b for a, b in zip(num, den, strict=True)]
    return Figure(section, name, statistics.median(ratios), min(ratios), max(ratios), **kw)


def spread(section: str, name: str, values: list[float], **kw: Any) -> Figure:
    return Figure(section, name, statistics.median(values), min(values), max(values), **kw)


def seconds(fn: Callable[[], Any]) -> Callable[[], float]:
    """A contender that returns the wall time of one call of fn."""

    def timed() -> float:
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t

    return timed


# --- the objects a run is made of --------------------------------------------------------------------
def compose(*overrides: str) -> Any:
    """The config `python train.py OVERRIDES` would run (without Hydra's run folder)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose("train", overrides=list(overrides))


def build_run(cfg: Any, pruner: Any = None) -> tuple[Any, Any]:
    """(datamodule, LightningModule) exactly as train.py builds them for `cfg`."""
    from hydra.utils import instantiate

    from prunelab.training.build import build_data, build_model, model_args
    from prunelab.training.task import build_task

    torch.manual_seed(cfg.seed)
    dm = build_data(cfg)
    model = build_model(cfg.model, model_args(dm))
    return dm, build_task(cfg, dm, model, pruner if pruner is not None else instantiate(cfg.pruner))


def first_batches(loader: Iterable[Any], n: int) -> list[Any]:
    out = []
    for b in loader:
        out.append(b)
        if len(out) == n:
            break
    if len(out) < n:
        raise RuntimeError(f"the loader has only {len(out)} batches, {n} needed")
    return out


def replay(batches: list[Any]) -> torch.utils.data.DataLoader:
    """A loader that yields exactly these batches, in order (for trainer.fit and the bare loop alike)."""
    return torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False)


def target_tokens(batch: dict[str, Any], pad_id: int) -> int:
    return int((batch["tgt_out"] != pad_id).sum())


CHILD = """
import dataclasses, importlib, json, sys
sys.path[:0] = sys.argv[1:3]
r = getattr(importlib.import_module(sys.argv[3]), sys.argv[4])(**json.loads(sys.argv[5]))
if dataclasses.is_dataclass(r):
    out = {"figure": dataclasses.asdict(r)}
elif isinstance(r, list) and r and all(dataclasses.is_dataclass(f) for f in r):
    out = {"figures": [dataclasses.asdict(f) for f in r]}
else:
    out = {"json": r}
print("RESULT " + json.dumps(out))
"""


def in_child(module: str, function: str, **kwargs: Any) -> Any:
    """`module.function(**kwargs)` (a module on bench/'s or src/'s path) in a fresh Python process -> its result: a
    Figure, a list of Figures, or JSON. What the call measures is then its own work, not also the allocator's and the
    heap's history of the work run before it in this process. Its progress lines come through on stderr."""
    here = Path(__file__).resolve().parent
    args = [str(here), str(here.parent / "src"), module, function, json.dumps(kwargs)]
    proc = subprocess.run([sys.executable, "-c", CHILD, *args], stdout=subprocess.PIPE, text=True, check=False)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode or line is None:
        raise RuntimeError(f"{module}.{function} failed in its process (exit {proc.returncode}; traceback above)")
    out = json.loads(line.removeprefix("RESULT "))
    if "figure" in out:
        return Figure(**out["figure"])
    if "figures" in out:
        return [Figure(**f) for f in out["figures"]]
    return out["json"]
