"""Heatmaps: layer x head per attention type (E:SA, D:SA, D:EA), and component type x layer (Wang & Tu's
Figure 3). Observers: files only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prunelab.callbacks.curves import save_figure
from prunelab.models.addressing import COMPONENT_TYPES, component_type

TYPES = ("E:SA", "D:SA", "D:EA")


def grid(values: dict[str, float], kind: str) -> tuple[list[list[float]], int, int]:
    """{'dec.1.ea.h3': v, ...} -> rows = layers, columns = heads, for one attention type (NaN = absent)."""
    cells = {}
    for name, v in values.items():
        if component_type(name) == kind:
            _, layer, _, head = name.split(".")
            cells[(int(layer), int(head[1:]))] = v
    if not cells:
        return [], 0, 0
    n_layers = 1 + max(layer for layer, _ in cells)
    n_heads = 1 + max(head for _, head in cells)
    return [[cells.get((i, j), float("nan")) for j in range(n_heads)] for i in range(n_layers)], n_layers, n_heads


def plot_head_heatmaps(path: Path, values: dict[str, float], title: str, cmap: str = "viridis") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = [k for k in TYPES if grid(values, k)[1]]
    fig, axes = plt.subplots(1, len(kinds), figsize=(4 * len(kinds), 3.6), squeeze=False, layout="constrained")
    finite = [v for v in values.values() if v == v]
    vmin, vmax = (min(finite), max(finite)) if finite else (0.0, 1.0)
    if cmap in ("RdBu", "RdBu_r", "coolwarm"):  # a change: centre the diverging map on 0
        vmax = max(abs(vmin), abs(vmax)) or 1.0
        vmin = -vmax
    colormap = plt.get_cmap(cmap)
    for ax, kind in zip(axes[0], kinds, strict=True):
        g, n_layers, n_heads = grid(values, kind)
        im = ax.imshow(g, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
        ax.set_title(kind)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_xticks(range(n_heads))
        ax.set_yticks(range(n_layers))
        annotate(ax, g, colormap, vmin, vmax)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.9)
    fig.suptitle(title)
    save_figure(fig, path)


def annotate(ax: Any, g: list[list[float]], colormap: Any, vmin: float, vmax: float) -> None:
    """Write each cell's value on it, in black or white, whichever reads on the cell's colour."""
    for i, row in enumerate(g):
        for j, v in enumerate(row):
            if v == v:
                r, gr, b, _ = colormap((v - vmin) / (vmax - vmin or 1.0))
                ink = "black" if 0.299 * r + 0.587 * gr + 0.114 * b > 0.5 else "white"
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color=ink)


COMPONENT_ROWS = tuple(COMPONENT_TYPES.values())  # E:SA, E:FF, D:SA, D:EA, D:FF


def component_grid(values: dict[str, float]) -> list[list[float]]:
    """{'dec.1.ea': v, ...} -> rows = component types (E:SA, E:FF, D:SA, D:EA, D:FF), columns = layers."""
    cells = {(component_type(n), int(n.split(".")[1])): v for n, v in values.items()}
    n_layers = 1 + max((layer for _, layer in cells), default=-1)
    return [[cells.get((t, i), float("nan")) for i in range(n_layers)] for t in COMPONENT_ROWS]


def plot_component_heatmaps(path: Path, panels: dict[str, dict[str, float]], title: str) -> None:
    """One panel per score (e.g. contribution, criticality), each component type x layer, values in [0, 1],
    darker = more important (Wang & Tu 2020, Figure 3). Removed or absent components are blank."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        1,
        len(panels),
        figsize=(1.2 + 1.1 * max(len(component_grid(v)[0]) for v in panels.values()) * len(panels), 3.4),
        squeeze=False,
        layout="constrained",
    )
    colormap = plt.get_cmap("Blues")
    for ax, (name, values) in zip(axes[0], panels.items(), strict=True):
        g = component_grid(values)
        im = ax.imshow(g, cmap=colormap, vmin=0.0, vmax=1.0, aspect="auto")
        ax.set_title(name)
        ax.set_xlabel("layer")
        ax.set_xticks(range(len(g[0])), [str(i + 1) for i in range(len(g[0]))])
        ax.set_yticks(range(len(COMPONENT_ROWS)), COMPONENT_ROWS)
        annotate(ax, g, colormap, 0.0, 1.0)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.9)
    fig.suptitle(title)
    save_figure(fig, path)


def plot_fraction_curves(
    path: Path,
    curves: dict[str, list[tuple[float, float]]],
    title: str,
    xlabel: str = "heads pruned (%)",
    x_scale: float = 100.0,
    ylabel: str = "BLEU",
) -> None:
    """The score (BLEU, or accuracy for a classifier) vs how much was pruned, one line per curve (e.g.
    global, per attention type)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, pts in curves.items():
        ax.plot([x_scale * x for x, _ in pts], [y for _, y in pts], marker="o", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    save_figure(fig, path)
