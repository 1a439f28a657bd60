"""Layer x head heatmaps, one panel per attention type (E:SA, D:SA, D:EA). Observers: files only."""

from __future__ import annotations

from pathlib import Path

from prunelab.callbacks.curves import save_figure
from prunelab.models.addressing import component_type

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
        for i in range(n_layers):
            for j in range(n_heads):
                if g[i][j] == g[i][j]:
                    r, gr, b, _ = colormap((g[i][j] - vmin) / (vmax - vmin or 1.0))
                    ink = "black" if 0.299 * r + 0.587 * gr + 0.114 * b > 0.5 else "white"  # readable on the cell
                    ax.text(j, i, f"{g[i][j]:.2f}", ha="center", va="center", fontsize=7, color=ink)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.9)
    fig.suptitle(title)
    save_figure(fig, path)


def plot_fraction_curves(path: Path, curves: dict[str, list[tuple[float, float]]], title: str) -> None:
    """BLEU vs fraction of heads pruned, one line per curve (global, per attention type)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, pts in curves.items():
        ax.plot([100 * x for x, _ in pts], [y for _, y in pts], marker="o", label=name)
    ax.set_xlabel("heads pruned (%)")
    ax.set_ylabel("BLEU")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    save_figure(fig, path)
