"""The training curve ``MODEL.curve.png``: loss, and validation mean and per-phase IoU, per epoch."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

def write_curve(path: str | os.PathLike[str], history: Sequence[Mapping[str, Any]], *, title: str = "") -> Path:
    """Draw the training curve (loss; validation mean and per-phase IoU, per epoch) as a PNG, atomically.

    Parameters
    ----------
    path : the PNG to write.
    history : the epoch records of the training log (``epoch``, ``loss``, ``val_mean_iou``, ``val_iou``).
    title : the figure's title.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    p = Path(path)
    epochs = [r["epoch"] for r in history]
    fig = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(fig)  # a bare Figure with the Agg canvas: no pyplot state, never a window
    ax_loss, ax_iou = fig.subplots(1, 2)
    ax_loss.plot(epochs, [r["loss"] for r in history], "o-", color="black", markersize=3)
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="loss")
    ax_iou.plot(epochs, [r["val_mean_iou"] for r in history], "o-", color="black", linewidth=2, markersize=3,
                label="mean")
    names = {p_["label"]: p_["name"] for r in history for p_ in r["val_iou"]}
    for label, name in sorted(names.items()):
        values = [next((q["iou"] for q in r["val_iou"] if q["label"] == label), None) for r in history]
        ax_iou.plot(epochs, [np.nan if v is None else v for v in values], ".-", linewidth=1, label=f"{label} {name}")
    ax_iou.set(xlabel="epoch", ylabel="validation IoU", title="validation IoU", ylim=(0, 1.02))
    ax_iou.legend(fontsize=8, loc="lower right")
    for ax in (ax_loss, ax_iou):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if epochs:
            ax.set_xlim(0.5, max(epochs) + 0.5)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.13, top=0.86, wspace=0.22)  # fixed: layout engines are slow
    tmp = p.with_name(f".{p.name}.partial")
    fig.savefig(tmp, format="png")
    os.replace(tmp, p)
    return p
