"""The score report: a folder a person would rather look at than read.

:func:`write_report` writes

``index.html``
    the numbers (per-phase table, confusion matrix, per-slice summary) with the pictures below.
``slice.png``
    one slice (the middle one across z by default): with truth, the true and predicted phases, the voxels where
    they disagree, and per phase its false positives (red) and false negatives (blue); without truth, the
    predicted phases.
``worst-slice.png``
    with truth and per-slice scores, the same for the slice of lowest mean IoU, where the errors are (unless it
    is the slice above).
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
a report that exists is whole. The pictures are drawn by :mod:`rockseg.metrics.figures`; a slice larger than
:data:`MAX_PIXELS` along an axis is read with a stride, so drawing costs little whatever the volume size.
:func:`check_report_dir` and :func:`parse_report_slice` check the report's options before an hour of scoring.
"""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rockseg.errors import InputError
from rockseg.io.stores import atomic_output, check_new_output
from rockseg.metrics.document import PHASE_KEYS, SLICE_SUMMARY_KEYS, neighbourhood, score_csv
from rockseg.metrics.figures import (
    draw_euler,
    draw_fractions,
    draw_iou,
    draw_per_slice,
    draw_slice,
    phase_colours,
)
from rockseg.vocabulary import AXES

__all__ = ["MAX_PIXELS", "check_report_dir", "parse_report_slice", "write_report"]

#: Largest number of pixels along each axis of the drawn slice; larger slices are read with a stride.
MAX_PIXELS = 1024


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

    where, plane = _plane(region, view if len(shape) == 3 else None)
    with atomic_output(directory, overwrite=overwrite) as tmp:
        tmp.mkdir()
        slice_pred = np.asarray(pred[plane])
        slice_true = np.asarray(truth[plane]) if truth is not None else None
        inside = (np.asarray(mask[plane]) != 0) if mask is not None else None
        pictures = _draw_pictures(tmp, doc, slice_pred, slice_true, inside, where, with_truth)
        worst = _worst_slice(doc, view) if with_truth and len(shape) == 3 else None
        if worst is not None:
            pictures.insert(1, _draw_worst(tmp, doc, worst, region, pred, truth, mask))
        (tmp / "score.json").write_text(json.dumps(doc, indent=1) + "\n")
        (tmp / "score.csv").write_text(score_csv(doc))
        sources = {"prediction": pred_name, "truth": truth_name if truth is not None else None,
                   "mask": mask_name if mask is not None else None}
        (tmp / "index.html").write_text(_html(doc, pictures, sources, region, with_truth))
        files = sorted(p.name for p in tmp.iterdir())
    return {"dir": str(directory), "files": files}


def _draw_pictures(
    folder: Path,
    doc: Mapping[str, Any],
    pred: np.ndarray,
    truth: np.ndarray | None,
    inside: np.ndarray | None,
    where: str,
    with_truth: bool,
) -> list[tuple[str, str]]:
    """Draw the pictures of a report into ``folder``; return their ``(file name, caption)`` in page order."""
    phases = list(doc["phases"])
    colours = phase_colours(phases)
    pictures: list[tuple[str, str]] = []
    draw_slice(folder / "slice.png", phases, colours, pred, truth, inside, where)
    pictures.append(("slice.png", _slice_caption(where, with_truth, inside is not None)))
    if with_truth:
        draw_iou(folder / "iou.png", doc, colours)
        pictures.append(("iou.png", "IoU per phase (hatched: left out of the mean IoU)."))
    draw_fractions(folder / "fractions.png", phases, colours, with_truth)
    pictures.append(
        ("fractions.png", "Volume fraction per phase" + (", predicted and true." if with_truth else "."))
    )
    draw_euler(folder / "euler.png", doc, colours, with_truth)
    pictures.append((
        "euler.png",
        f"Euler number per phase ({neighbourhood(doc)}-neighbourhood)"
        + (", predicted against true: points on the line are right." if with_truth else "."),
    ))
    if "per_slice" in doc:
        draw_per_slice(folder / "per_slice.png", doc, colours, with_truth)
        per = doc["per_slice"]
        pictures.append((
            "per_slice.png",
            f"Per slice across {per['axis']}: " + ("IoU and " if with_truth else "")
            + f"2D Euler numbers ({per['neighbourhood']}-neighbourhood)"
            + (", predicted (solid) and true (dashed)." if with_truth else "."),
        ))
    return pictures


def _worst_slice(doc: Mapping[str, Any], view: tuple[int, int] | None) -> tuple[tuple[int, int], float] | None:
    """The slice of lowest per-slice mean IoU (``((axis, index), IoU)``), when the document has per-slice scores
    and it is not the slice ``view`` already drawn."""
    per = doc.get("per_slice")
    if not per or not per.get("mean_iou"):
        return None
    scores = [(v, i) for v, i in zip(per["mean_iou"], per["index"]) if v is not None and math.isfinite(v)]
    if not scores:
        return None
    value, index = min(scores)
    worst = (AXES.index(per["axis"]), int(index))
    return None if worst == view else (worst, float(value))


def _draw_worst(folder: Path, doc: Mapping[str, Any], worst: tuple[tuple[int, int], float],
                region: tuple[slice, ...], pred: Any, truth: Any, mask: Any) -> tuple[str, str]:
    """Draw ``worst-slice.png``, the slice where prediction and truth disagree most; its (file name, caption)."""
    view, value = worst
    where, plane = _plane(region, view)
    inside = (np.asarray(mask[plane]) != 0) if mask is not None else None
    phases = list(doc["phases"])
    draw_slice(folder / "worst-slice.png", phases, phase_colours(phases), np.asarray(pred[plane]),
               np.asarray(truth[plane]), inside, where)
    caption = (f"Where the errors are: {where}, the slice of lowest mean IoU ({value:.4f}) across "
               f"{AXES[view[0]]}. " + _slice_caption(where, True, inside is not None))
    return "worst-slice.png", caption


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


# --------------------------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------------------------


_STYLE = """
body { font-family: sans-serif; margin: 2em; max-width: 1200px; color: #222; }
div.table { overflow-x: auto; }
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

    # header words may wrap (euler pred mean), and a table wider than the page scrolls instead of being cut off
    head = line([html.escape(h.replace("_", " ")) for h in header], "th")
    return '<div class="table"><table>\n' + head + "\n" + "\n".join(line(r, "td") for r in rows) + "\n</table></div>"


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
        f"Euler numbers: {neighbourhood(doc)}-neighbourhood of each phase (connectivity {doc['connectivity']})"
    )
    if with_truth:
        facts.append(f"mean IoU: <b>{_cell(doc['mean_iou'])}</b>"
                     + (f" (without {', '.join(map(str, sorted(ignored)))})" if ignored else ""))
        facts.append(f"accuracy: <b>{_cell(doc['accuracy'])}</b>")
    keys = [k for k in PHASE_KEYS if any(k in p for p in doc["phases"])]
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
        keys = [k for k in SLICE_SUMMARY_KEYS if any(k in p for p in per["phases"])]
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
