"""The pictures of a score report, drawn with Matplotlib's Agg renderer (never a window, no pyplot state).

One function per picture: :func:`draw_slice` (phases and errors on one slice), :func:`draw_iou`,
:func:`draw_fractions`, :func:`draw_euler` and :func:`draw_per_slice`; each writes one PNG file. Matplotlib is
imported only when a picture is drawn.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rockseg.io.stores import phase_colour

from rockseg.metrics.document import neighbourhood
from rockseg.vocabulary import MAX_LABEL

__all__ = ["draw_euler", "draw_fractions", "draw_iou", "draw_per_slice", "draw_slice", "phase_colours"]

_FALSE_POSITIVE = "#d62728"
_FALSE_NEGATIVE = "#1f3fbf"
_TRUE_POSITIVE = "#c8c8c8"
_OUTSIDE = "#404040"
_UNKNOWN = "#000000"
# At most this many per-phase error panels in slice.png (the phases with the most errors first).
_MAX_PHASE_PANELS = 6
_DPI = 100


def phase_colours(phases: Sequence[Mapping[str, Any]]) -> dict[int, str]:
    """Colour of each phase of a document (``{label: "#rrggbb"}``): the colour of its label in every rockseg
    picture and in the ``image-label`` metadata of OME-Zarr outputs (:func:`rockseg.io.stores.phase_colour`)."""
    return {p["label"]: phase_colour(p["label"]) for p in phases}


def _rgb(hex_colour: str) -> np.ndarray:
    return np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)], np.uint8)


def _phase_image(labels: np.ndarray, colours: Mapping[int, str], inside: np.ndarray | None) -> np.ndarray:
    lut = np.tile(_rgb(_UNKNOWN), (MAX_LABEL + 1, 1))
    for label, colour in colours.items():
        lut[label] = _rgb(colour)
    image = lut[np.clip(labels, 0, MAX_LABEL).astype(np.intp)]
    if inside is not None:
        image[~inside] = _rgb(_OUTSIDE)
    return image


def _figure(width: float, height: float) -> Any:
    # A bare Figure with the Agg canvas: no pyplot state, never a window.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _show(ax: Any, image: np.ndarray, title: str) -> None:
    ax.imshow(image, interpolation="nearest")
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])


def draw_slice(
    path: Path,
    phases: Sequence[Mapping[str, Any]],
    colours: Mapping[int, str],
    pred: np.ndarray,
    truth: np.ndarray | None,
    inside: np.ndarray | None,
    where: str,
) -> None:
    """One slice: the predicted phases; with truth also the true ones, the disagreement and per-phase errors."""
    from matplotlib.patches import Patch

    scored = np.ones(pred.shape, bool) if inside is None else inside
    aspect = pred.shape[0] / max(pred.shape[1], 1)
    panel = 4.0
    if truth is None:
        fig = _figure(panel + 2.0, min(max(panel * aspect, 2.0), 12.0) + 0.6)
        _show(fig.add_subplot(1, 1, 1), _phase_image(pred, colours, inside), f"prediction, {where}")
    else:
        wrong = (pred != truth) & scored
        # The phases with the most errors on this slice get a panel of their own.
        errors = {p["label"]: int(np.count_nonzero(wrong & ((pred == p["label"]) | (truth == p["label"]))))
                  for p in phases}
        shown = sorted(sorted(errors, key=lambda label: -errors[label])[:_MAX_PHASE_PANELS])
        rows = 1 + math.ceil(len(shown) / 3)
        fig = _figure(3 * panel, min(max(panel * aspect, 2.0) * rows, 24.0) + 0.8)
        _show(fig.add_subplot(rows, 3, 1), _phase_image(truth, colours, inside), f"truth, {where}")
        _show(fig.add_subplot(rows, 3, 2), _phase_image(pred, colours, inside), "prediction")
        agree = _phase_image(truth, colours, inside).astype(np.float32)
        agree = (0.35 * agree + 0.65 * 255).astype(np.uint8)  # correct voxels: their phase, faded
        agree[wrong] = _rgb(_FALSE_POSITIVE)
        if inside is not None:
            agree[~inside] = _rgb(_OUTSIDE)
        share = np.count_nonzero(wrong) / max(np.count_nonzero(scored), 1)
        _show(fig.add_subplot(rows, 3, 3), agree, f"disagreement (red): {share:.2%} of the slice")
        names = {p["label"]: p["name"] for p in phases}
        for i, label in enumerate(shown):
            is_pred, is_true = (pred == label) & scored, (truth == label) & scored
            image = np.full((*pred.shape, 3), 255, np.uint8)
            image[is_pred & is_true] = _rgb(_TRUE_POSITIVE)
            image[is_pred & ~is_true] = _rgb(_FALSE_POSITIVE)
            image[is_true & ~is_pred] = _rgb(_FALSE_NEGATIVE)
            if inside is not None:
                image[~inside] = _rgb(_OUTSIDE)
            n_fp, n_fn = int(np.count_nonzero(is_pred & ~is_true)), int(np.count_nonzero(is_true & ~is_pred))
            _show(fig.add_subplot(rows, 3, 4 + i), image, f"{label} {names[label]}: FP {n_fp}, FN {n_fn}")
    handles = [Patch(facecolor=colours[p["label"]], label=f"{p['label']} {p['name']}") for p in phases]
    if truth is not None:
        handles += [Patch(facecolor=_FALSE_POSITIVE, label="false positive / wrong"),
                    Patch(facecolor=_FALSE_NEGATIVE, label="false negative")]
    if inside is not None:
        handles.append(Patch(facecolor=_OUTSIDE, label="outside the mask"))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 5), fontsize=9, frameon=False)
    fig.savefig(path)


def _bar_labels(phases: Sequence[Mapping[str, Any]], ignored: set[int] = frozenset()) -> list[str]:
    return [f"{p['label']} {p['name']}" + (" (ignored)" if p["label"] in ignored else "") for p in phases]


def draw_iou(path: Path, doc: Mapping[str, Any], colours: Mapping[int, str]) -> None:
    """IoU bars per phase, the mean IoU as a dashed line; ignored labels hatched."""
    phases = doc["phases"]
    ignored = set(doc.get("ignore", []))
    fig = _figure(7.0, 1.2 + 0.45 * len(phases))
    ax = fig.add_subplot(1, 1, 1)
    y = np.arange(len(phases))
    values = [p["iou"] if p["iou"] is not None else 0.0 for p in phases]
    bars = ax.barh(y, values, color=[colours[p["label"]] for p in phases])
    for bar, p in zip(bars, phases):
        if p["label"] in ignored:
            bar.set_hatch("//")
            bar.set_alpha(0.5)
        text = "n/a" if p["iou"] is None else f"{p['iou']:.4f}"
        ax.text(min(bar.get_width(), 1.0) + 0.01, bar.get_y() + bar.get_height() / 2, text, va="center", fontsize=9)
    if doc.get("mean_iou") is not None:
        ax.axvline(doc["mean_iou"], color="black", linestyle="--", linewidth=1)
        ax.text(doc["mean_iou"], -0.6, f" mean {doc['mean_iou']:.4f}", fontsize=9, va="center")
    ax.set_yticks(y, _bar_labels(phases, ignored))
    ax.invert_yaxis()
    ax.set_xlim(0, 1.15)
    ax.set_ylim(len(phases) - 0.4, -0.9)
    ax.set_xlabel("IoU (intersection over union)")
    ax.set_title("IoU per phase", fontsize=11)
    fig.savefig(path)


def draw_fractions(
    path: Path, phases: Sequence[Mapping[str, Any]], colours: Mapping[int, str], with_truth: bool
) -> None:
    """Volume fraction bars per phase: predicted, and true beside them (hatched) with truth."""
    fig = _figure(7.0, 1.2 + (0.6 if with_truth else 0.45) * len(phases))
    ax = fig.add_subplot(1, 1, 1)
    y = np.arange(len(phases), dtype=float)
    height = 0.4 if with_truth else 0.8
    series = [("fraction_pred", "predicted", None)] + ([("fraction_true", "true", "//")] if with_truth else [])
    top = max([p[key] for p in phases for key, _, _ in series] + [1e-9])
    for i, (key, name, hatch) in enumerate(series):
        offset = (i - (len(series) - 1) / 2) * height
        bars = ax.barh(y + offset, [p[key] for p in phases], height=height, hatch=hatch, label=name,
                       color=[colours[p["label"]] for p in phases], edgecolor="white" if hatch else None)
        for bar, p in zip(bars, phases):
            ax.text(bar.get_width() + top * 0.01, bar.get_y() + bar.get_height() / 2, f"{p[key]:.4f}",
                    va="center", fontsize=8)
    ax.set_yticks(y, _bar_labels(phases))
    ax.invert_yaxis()
    ax.set_xlim(0, top * 1.2)
    ax.set_xlabel("volume fraction of the scored voxels")
    ax.set_title("Phase fractions" + (" (plain: predicted, hatched: true)" if with_truth else ""), fontsize=11)
    fig.savefig(path)


def draw_euler(path: Path, doc: Mapping[str, Any], colours: Mapping[int, str], with_truth: bool) -> None:
    """Euler numbers per phase: predicted against true with the y = x line (with truth), else bars."""
    phases = doc["phases"]
    if not with_truth:
        fig = _figure(7.0, 1.2 + 0.45 * len(phases))
        ax = fig.add_subplot(1, 1, 1)
        y = np.arange(len(phases))
        values = [p["euler_pred"] for p in phases]
        bars = ax.barh(y, values, color=[colours[p["label"]] for p in phases])
        for bar, value in zip(bars, values):
            ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {value} ", va="center", fontsize=9,
                    ha="left" if value >= 0 else "right")
        ax.axvline(0, color="black", linewidth=0.8)
        span = max([abs(v) for v in values] + [1])
        ax.set_xlim(-span * 1.3 if min(values) < 0 else -span * 0.05, span * 1.3 if max(values) > 0 else span * 0.05)
        ax.set_yticks(y, _bar_labels(phases))
        ax.invert_yaxis()
        ax.set_xlabel(f"Euler number ({neighbourhood(doc)}-neighbourhood)")
        ax.set_title("Euler number per phase", fontsize=11)
        fig.savefig(path)
        return
    fig = _figure(6.0, 5.6)
    ax = fig.add_subplot(1, 1, 1)
    xs = [p["euler_true"] for p in phases]
    ys = [p["euler_pred"] for p in phases]
    span = max([abs(v) for v in xs + ys] + [1])
    lo, hi = min(xs + ys + [0]), max(xs + ys + [0])
    pad = 0.1 * (hi - lo) + 1
    ax.plot([3 * lo - pad, 3 * hi + pad], [3 * lo - pad, 3 * hi + pad], color="black", linewidth=1, linestyle="--",
            label="y = x")
    for p, x, y in zip(phases, xs, ys):
        ax.scatter([x], [y], s=60, color=colours[p["label"]], edgecolor="black", zorder=3,
                   label=f"{p['label']} {p['name']}: {y} / {x}")
    limits = (lo - pad, hi + pad)
    if span > 100:
        # Euler numbers of rocks span orders of magnitude, of both signs: a symmetric log scale, padded by a factor.
        ax.set_xscale("symlog", linthresh=10)
        ax.set_yscale("symlog", linthresh=10)
        limits = (3 * lo if lo < -10 else -30, 3 * hi if hi > 10 else 30)
    ax.set_xlim(*limits)
    ax.set_ylim(*limits)
    ax.set_xlabel("true Euler number")
    ax.set_ylabel("predicted Euler number")
    ax.set_title(f"Euler number per phase ({neighbourhood(doc)}-neighbourhood): predicted / true", fontsize=10)
    ax.legend(fontsize=8, loc="best")
    ax.grid(True, linewidth=0.3)
    fig.savefig(path)


def draw_per_slice(path: Path, doc: Mapping[str, Any], colours: Mapping[int, str], with_truth: bool) -> None:
    """Per-slice IoU (with truth) and 2D Euler numbers along the slices of the document's ``per_slice`` entry."""
    per = doc["per_slice"]
    rows = 2 if with_truth else 1
    fig = _figure(8.0, 3.0 * rows + 0.6)
    index = per["index"]
    axes = [fig.add_subplot(rows, 1, i + 1) for i in range(rows)]
    if with_truth:
        ax = axes[0]
        for p in per["phases"]:
            values = [np.nan if v is None else v for v in p["iou"]]
            ax.plot(index, values, color=colours[p["label"]], label=f"{p['label']} {p['name']}")
        ax.set_ylabel("IoU")
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=8, loc="lower left", ncols=min(len(per["phases"]), 4))
        ax.grid(True, linewidth=0.3)
    ax = axes[-1]
    for p in per["phases"]:
        ax.plot(index, p["euler_pred"], color=colours[p["label"]], label=f"{p['label']} {p['name']}")
        if with_truth:
            ax.plot(index, p["euler_true"], color=colours[p["label"]], linestyle="--", linewidth=1)
    ax.set_ylabel(f"2D Euler number ({per['neighbourhood']}-nbh.)")
    ax.set_xlabel(f"slice index along {per['axis']}")
    if not with_truth:
        ax.legend(fontsize=8, ncols=min(len(per["phases"]), 4))
    ax.grid(True, linewidth=0.3)
    fig.savefig(path)
