"""Score documents for pipelines and for people: CSV rows, pictures and an HTML page.

:func:`score_csv` turns a score document (:func:`rockseg.metrics.score_volumes`) into CSV, one row per phase.
:func:`write_report` writes a folder a person would rather look at than read:

``index.html``
    the numbers (per-phase table, confusion matrix, per-slice summary) with the pictures below.
``slice.png``
    one slice (the middle one across z by default): with truth, the true and predicted phases, the voxels where
    they disagree, and per phase its false positives (red) and false negatives (blue); without truth, the
    predicted phases.
``iou.png``
    per-phase IoU bars (with truth).
``fractions.png``
    per-phase volume fractions, predicted beside true.
``euler.png``
    Euler numbers, predicted against true per phase with the y = x line (with truth), else bars.
``per_slice.png``
    per-slice IoU and Euler numbers along the slices, when the document has them.
``score.json``, ``score.csv``
    the document itself.

The folder is built under a temporary name and renamed when complete (:func:`rockseg.io.stores.atomic_output`), so
a report that exists is whole. Pictures are drawn with Matplotlib's Agg renderer, never a window; a slice larger
than :data:`MAX_PIXELS` along an axis is read with a stride, so drawing costs little whatever the volume size.
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rockseg.errors import InputError
from rockseg.metrics import AXES, MAX_LABEL
from rockseg.io.stores import atomic_output, check_new_output

__all__ = ["MAX_PIXELS", "check_report_dir", "parse_report_slice", "score_csv", "write_report"]

#: Largest number of pixels along each axis of the drawn slice; larger slices are read with a stride.
MAX_PIXELS = 1024

# Phase colours: Matplotlib's tab10 without its red and pink, which mark errors.
_PHASE_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#7f7f7f", "#bcbd22", "#17becf")
_FALSE_POSITIVE = "#d62728"
_FALSE_NEGATIVE = "#1f3fbf"
_TRUE_POSITIVE = "#c8c8c8"
_OUTSIDE = "#404040"
_UNKNOWN = "#000000"
# At most this many per-phase error panels in slice.png (the phases with the most errors first).
_MAX_PHASE_PANELS = 6
_DPI = 100

_PHASE_KEYS = ("iou", "dice", "precision", "recall", "fraction_pred", "fraction_true", "euler_pred", "euler_true")
_SLICE_SUMMARY_KEYS = (
    "iou_mean", "iou_min", "iou_max", "euler_pred_mean", "euler_pred_min", "euler_pred_max", "euler_true_mean",
    "euler_true_min", "euler_true_max",
)


# --------------------------------------------------------------------------------------------------------------
# CSV
# --------------------------------------------------------------------------------------------------------------


def score_csv(doc: Mapping[str, Any]) -> str:
    """CSV text of a score document: a header line, then one row per phase.

    Parameters
    ----------
    doc : dict
        A document of :func:`rockseg.metrics.score_volumes`.

    Returns
    -------
    str
        Columns: the keys of the document's phases (``label``, ``name``, then with truth ``iou``, ``dice``,
        ``precision``, ``recall``, ``fraction_pred``, ``fraction_true``, ``euler_pred``, ``euler_true``; without,
        ``fraction_pred`` and ``euler_pred``); with per-slice scores their summaries prefixed by ``slice_``
        (``slice_iou_mean``, ...); with ignored labels an ``ignored`` column (1 or 0). Floats are written in full
        precision (Python's shortest round-trip form), undefined values (``None``) as empty fields. Lines end with
        ``\\n``.

    Examples
    --------
    >>> doc = {"phases": [{"label": 0, "name": "pore", "fraction_pred": 0.25, "euler_pred": -3}],
    ...        "connectivity": 3, "voxels": 8}
    >>> print(score_csv(doc), end="")
    label,name,fraction_pred,euler_pred
    0,pore,0.25,-3
    """
    columns: list[str] = []
    for row in doc["phases"]:
        columns += [key for key in row if key not in columns]
    per_slice = {p["label"]: p for p in doc.get("per_slice", {}).get("phases", [])}
    slice_keys = [key for key in _SLICE_SUMMARY_KEYS if any(key in p for p in per_slice.values())]
    ignored = set(doc.get("ignore", []))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns + [f"slice_{key}" for key in slice_keys] + (["ignored"] if "ignore" in doc else []))
    for row in doc["phases"]:
        cells = [row.get(key) for key in columns]
        cells += [per_slice.get(row["label"], {}).get(key) for key in slice_keys]
        if "ignore" in doc:
            cells.append(int(row["label"] in ignored))
        writer.writerow(["" if v is None else repr(v) if isinstance(v, float) else v for v in cells])
    return out.getvalue()


# --------------------------------------------------------------------------------------------------------------
# Checks made before scoring
# --------------------------------------------------------------------------------------------------------------


def check_report_dir(path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Check that a report folder may be written (before an hour of scoring, not after); return it.

    Raises
    ------
    OutputExistsError
        ``path`` exists and ``overwrite`` is false.
    MissingInputError
        the parent folder of ``path`` does not exist.
    """
    return check_new_output(path, overwrite=overwrite)


def parse_report_slice(
    text: str | None, shape: Sequence[int], crop: Sequence[slice] | None = None
) -> tuple[int, int] | None:
    """Parse the slice to draw: ``"z"``, ``"y=120"``, ... (default: the middle slice across z).

    Parameters
    ----------
    text : str or None
        ``AXIS`` (its middle slice in the scored region) or ``AXIS=INDEX`` (index in the volume), AXIS one of z, y, x.
    shape : (Z, Y, X) or (Y, X) shape of the volume
    crop : tuple of slices, optional
        The scored region (:func:`rockseg.io.stores.parse_crop`); the slice must cut it.

    Returns
    -------
    (axis, index) or None
        ``None`` for a 2D image, which is drawn whole.

    Examples
    --------
    >>> parse_report_slice(None, (100, 50, 50))
    (0, 50)
    >>> parse_report_slice("x=7", (100, 50, 50), (slice(0, 100), slice(0, 50), slice(5, 20)))
    (2, 7)
    """
    shape = tuple(int(n) for n in shape)
    region = tuple(crop) if crop is not None else tuple(slice(0, n) for n in shape)
    if len(shape) == 2:
        if text:
            raise InputError(f"--report-slice {text!r}: a 2D image is drawn whole; drop --report-slice")
        return None
    name, sep, number = (text or "z").partition("=")
    name = name.strip().lower()
    if name not in AXES:
        raise InputError(f"--report-slice {text!r}: the axis must be one of {', '.join(AXES)}, e.g. z or y=120")
    axis = AXES.index(name)
    lo, hi, _ = region[axis].indices(shape[axis])
    if not sep:
        return axis, (lo + hi) // 2
    try:
        index = int(number)
    except ValueError:
        raise InputError(f"--report-slice {text!r}: {number!r} is not a slice index, e.g. {name}={lo}") from None
    if not lo <= index < hi:
        raise InputError(
            f"--report-slice {text!r}: slice {index} is outside the scored {name} range {lo}..{hi - 1}; "
            f"give an index in it"
        )
    return axis, index


# --------------------------------------------------------------------------------------------------------------
# The report folder
# --------------------------------------------------------------------------------------------------------------


def write_report(
    directory: str | os.PathLike[str],
    *,
    doc: Mapping[str, Any],
    pred: Any,
    truth: Any = None,
    mask: Any = None,
    crop: Sequence[slice] | None = None,
    view: tuple[int, int] | None = None,
    pred_name: str = "prediction",
    truth_name: str | None = None,
    mask_name: str | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write the pictures, ``index.html``, ``score.json`` and ``score.csv`` of a score into a new folder.

    Parameters
    ----------
    directory : path
        The folder to create. It appears only when complete.
    doc : dict
        The document :func:`rockseg.metrics.score_volumes` returned for these volumes.
    pred, truth, mask : (Z, Y, X) or (Y, X) zarr.Array or NumPy array
        The volumes that were scored (``truth`` and ``mask`` optional); only one slice of each is read.
    crop : tuple of slices, optional
        The scored region, as given to the score.
    view : (axis, index), optional
        The slice to draw (see :func:`parse_report_slice`; index in the volume); default the middle slice across
        z of the scored region. Ignored for a 2D image.
    pred_name, truth_name, mask_name : str
        What to call the volumes on the page (the CLI passes their paths).
    overwrite : bool
        Replace an existing folder.

    Returns
    -------
    dict
        ``{"dir": str, "files": [file names]}``.

    Raises
    ------
    OutputExistsError
        ``directory`` exists and ``overwrite`` is false.
    """
    shape = tuple(int(n) for n in pred.shape)
    region = tuple(crop) if crop is not None else tuple(slice(0, n) for n in shape)
    region = tuple(slice(*s.indices(n)[:2]) for s, n in zip(region, shape))
    if len(shape) == 3 and view is None:
        view = parse_report_slice(None, shape, region)
    with_truth = truth is not None and "mean_iou" in doc
    phases = list(doc["phases"])
    colours = {p["label"]: _PHASE_COLOURS[i % len(_PHASE_COLOURS)] for i, p in enumerate(phases)}

    where, plane = _plane(region, view if len(shape) == 3 else None)
    pictures: list[tuple[str, str]] = []
    with atomic_output(directory, overwrite=overwrite) as tmp:
        tmp.mkdir()
        slice_pred = np.asarray(pred[plane])
        slice_true = np.asarray(truth[plane]) if truth is not None else None
        inside = (np.asarray(mask[plane]) != 0) if mask is not None else None
        _draw_slice(tmp / "slice.png", phases, colours, slice_pred, slice_true, inside, where)
        pictures.append(("slice.png", _slice_caption(where, with_truth, mask is not None)))
        if with_truth:
            _draw_iou(tmp / "iou.png", doc, colours)
            pictures.append(("iou.png", "IoU per phase (hatched: left out of the mean IoU)."))
        _draw_fractions(tmp / "fractions.png", phases, colours, with_truth)
        pictures.append(
            ("fractions.png", "Volume fraction per phase" + (", predicted and true." if with_truth else "."))
        )
        _draw_euler(tmp / "euler.png", doc, colours, with_truth)
        pictures.append((
            "euler.png",
            f"Euler number per phase ({_neighbourhood(doc)}-neighbourhood)"
            + (", predicted against true: points on the line are right." if with_truth else "."),
        ))
        if "per_slice" in doc:
            _draw_per_slice(tmp / "per_slice.png", doc, colours, with_truth)
            per = doc["per_slice"]
            pictures.append((
                "per_slice.png",
                f"Per slice across {per['axis']}: " + ("IoU and " if with_truth else "")
                + f"2D Euler numbers ({per['neighbourhood']}-neighbourhood)"
                + (", predicted (solid) and true (dashed)." if with_truth else "."),
            ))
        (tmp / "score.json").write_text(json.dumps(doc, indent=1) + "\n")
        (tmp / "score.csv").write_text(score_csv(doc))
        sources = {"prediction": pred_name, "truth": truth_name if truth is not None else None,
                   "mask": mask_name if mask is not None else None}
        (tmp / "index.html").write_text(_html(doc, pictures, sources, region, with_truth))
        files = sorted(p.name for p in tmp.iterdir())
    return {"dir": str(directory), "files": files}


def _plane(region: tuple[slice, ...], view: tuple[int, int] | None) -> tuple[str, tuple[slice | int, ...]]:
    """A description of the slice and the selection that reads it (strided down to MAX_PIXELS per axis)."""
    sizes = [s.stop - s.start for i, s in enumerate(region) if view is None or i != view[0]]
    step = max(1, math.ceil(max(sizes) / MAX_PIXELS))
    plane: list[slice | int] = []
    for i, s in enumerate(region):
        plane.append(view[1] if view is not None and i == view[0] else slice(s.start, s.stop, step))
    where = "the image" if view is None else f"slice {AXES[view[0]]} = {view[1]}"
    if step > 1:
        where += f" (1 voxel in {step} along each axis)"
    return where, tuple(plane)


def _slice_caption(where: str, with_truth: bool, masked: bool) -> str:
    text = f"Phases on {where}"
    if with_truth:
        text += ("; where prediction and truth disagree (red); per phase, false positives (red: predicted, not "
                 "true) and false negatives (blue: true, not predicted), true positives grey")
    if masked:
        text += "; outside the mask dark grey"
    return text + "."


def _neighbourhood(doc: Mapping[str, Any]) -> int:
    return 26 if doc["connectivity"] == 3 else 6


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


def _draw_slice(
    path: Path,
    phases: Sequence[Mapping[str, Any]],
    colours: Mapping[int, str],
    pred: np.ndarray,
    truth: np.ndarray | None,
    inside: np.ndarray | None,
    where: str,
) -> None:
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


def _draw_iou(path: Path, doc: Mapping[str, Any], colours: Mapping[int, str]) -> None:
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


def _draw_fractions(
    path: Path, phases: Sequence[Mapping[str, Any]], colours: Mapping[int, str], with_truth: bool
) -> None:
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


def _draw_euler(path: Path, doc: Mapping[str, Any], colours: Mapping[int, str], with_truth: bool) -> None:
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
        ax.set_xlabel(f"Euler number ({_neighbourhood(doc)}-neighbourhood)")
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
    ax.set_title(f"Euler number per phase ({_neighbourhood(doc)}-neighbourhood): predicted / true", fontsize=10)
    ax.legend(fontsize=8, loc="best")
    ax.grid(True, linewidth=0.3)
    fig.savefig(path)


def _draw_per_slice(path: Path, doc: Mapping[str, Any], colours: Mapping[int, str], with_truth: bool) -> None:
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


# --------------------------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------------------------

_STYLE = """
body { font-family: sans-serif; margin: 2em; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em 0; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.6em; text-align: right; }
th { background: #eee; }
td.name, th.name { text-align: left; }
figure { margin: 1.5em 0; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { color: #555; font-size: 0.9em; }
"""


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, int):
        return str(value)
    return html.escape(str(value))


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], left: int = 1) -> str:
    def line(cells: Sequence[Any], tag: str) -> str:
        out = []
        for i, c in enumerate(cells):
            attr = ' class="name"' if i < left else ""
            out.append(f"<{tag}{attr}>{c if tag == 'th' else _cell(c)}</{tag}>")
        return "<tr>" + "".join(out) + "</tr>"

    head = line([html.escape(h) for h in header], "th")
    return "<table>\n" + head + "\n" + "\n".join(line(r, "td") for r in rows) + "\n</table>"


def _html(
    doc: Mapping[str, Any],
    pictures: Sequence[tuple[str, str]],
    sources: Mapping[str, str | None],
    region: Sequence[slice],
    with_truth: bool,
) -> str:
    ignored = set(doc.get("ignore", []))
    facts = [f"{html.escape(k)}: <code>{html.escape(str(v))}</code>" for k, v in sources.items() if v is not None]
    facts.append("region: " + html.escape(",".join(f"{s.start}:{s.stop}" for s in region)))
    facts.append(f"voxels scored: {doc['voxels']}")
    if "voxels_outside_mask" in doc:
        facts.append(f"voxels outside the mask: {doc['voxels_outside_mask']}")
    facts.append(
        f"Euler numbers: {_neighbourhood(doc)}-neighbourhood of each phase (connectivity {doc['connectivity']})"
    )
    if with_truth:
        facts.append(f"mean IoU: <b>{_cell(doc['mean_iou'])}</b>"
                     + (f" (without {', '.join(map(str, sorted(ignored)))})" if ignored else ""))
        facts.append(f"accuracy: <b>{_cell(doc['accuracy'])}</b>")
    keys = [k for k in _PHASE_KEYS if any(k in p for p in doc["phases"])]
    rows = [[f"{p['label']} {p['name']}" + (" (ignored)" if p["label"] in ignored else "")] + [p.get(k) for k in keys]
            for p in doc["phases"]]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>rockseg score</title>',
        f"<style>{_STYLE}</style></head><body>",
        "<h1>rockseg score</h1>",
        "<ul>" + "".join(f"<li>{f}</li>" for f in facts) + "</ul>",
        "<h2>Per phase</h2>",
        _table(["phase"] + keys, rows),
    ]
    if with_truth:
        labels = [f"{p['label']} {p['name']}" for p in doc["phases"]]
        parts += [
            "<h2>Confusion matrix</h2><p>Voxels; rows: truth, columns: prediction.</p>",
            _table(["truth \\ prediction"] + labels, [[name] + row for name, row in zip(labels, doc["confusion"])]),
        ]
    if "per_slice" in doc:
        per = doc["per_slice"]
        keys = [k for k in _SLICE_SUMMARY_KEYS if any(k in p for p in per["phases"])]
        parts += [
            f"<h2>Per slice across {html.escape(per['axis'])}</h2>",
            f"<p>{len(per['index'])} slices; 2D Euler numbers with the {per['neighbourhood']}-neighbourhood; IoU "
            "summaries over the slices where a phase is present, Euler summaries over the slices with a scored "
            "voxel. The lists are in score.json.</p>",
            _table(["phase"] + keys, [[f"{p['label']} {p['name']}"] + [p.get(k) for k in keys] for p in per["phases"]]),
        ]
    parts.append("<h2>Pictures</h2>")
    for name, caption in pictures:
        parts.append(f'<figure><img src="{name}" alt="{html.escape(caption)}"><figcaption>{html.escape(caption)}'
                     "</figcaption></figure>")
    parts.append('<p>The numbers: <a href="score.json">score.json</a>, <a href="score.csv">score.csv</a>.</p>')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
