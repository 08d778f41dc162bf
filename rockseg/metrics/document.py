"""The score document: per-phase agreement, fractions and Euler numbers from a summed tally, and its CSV form.

:func:`score_document` and :func:`per_slice_document` turn the sums of :mod:`rockseg.metrics.tally` into the
document ``rockseg score --json`` prints (its layout is described in :func:`rockseg.metrics.score_volumes`);
:func:`score_csv` writes it as CSV rows, one per phase.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rockseg.metrics.euler import unscale
from rockseg.metrics.tally import NLABELS, Slices, Tally
from rockseg.vocabulary import AXES

__all__ = ["PHASE_KEYS", "SLICE_SUMMARY_KEYS", "neighbourhood", "per_slice_document", "score_csv", "score_document"]

#: Keys of a phase of the document, after ``label`` and ``name`` (those about truth only with truth).
PHASE_KEYS = ("iou", "dice", "precision", "recall", "fraction_pred", "fraction_true", "euler_pred", "euler_true")
#: Keys of the summaries of a phase in the document's ``per_slice`` entry.
SLICE_SUMMARY_KEYS = (
    "iou_mean", "iou_min", "iou_max", "euler_pred_mean", "euler_pred_min", "euler_pred_max", "euler_true_mean",
    "euler_true_min", "euler_true_max",
)


def _ratio(num: int, den: int) -> float | None:
    return float(num / den) if den else None


def _mean_iou(ious: Sequence[float | None]) -> float | None:
    defined = [v for v in ious if v is not None]
    return float(sum(defined) / len(defined)) if defined else None


def score_document(
    total: Tally, names: Mapping[int, str], connectivity: int, d: int, *, with_truth: bool, ignored: frozenset[int]
) -> dict:
    """The ``score --json`` document from the summed tally."""
    voxels = int(total.counts_pred.sum())
    present = set(np.flatnonzero(total.counts_pred).tolist())
    if with_truth:
        present |= set(np.flatnonzero(total.counts_true).tolist())
    labels = sorted(present | set(names))
    rows = []
    for label in labels:
        row: dict[str, Any] = {"label": label, "name": names.get(label, f"phase{label}")}
        n_pred = int(total.counts_pred[label])
        if with_truth:
            n_true = int(total.counts_true[label])
            k = total.confusion.shape[0]
            tp = int(total.confusion[label, label]) if label < k else 0
            fp, fn = n_pred - tp, n_true - tp
            row.update(
                iou=_ratio(tp, tp + fp + fn),
                dice=_ratio(2 * tp, 2 * tp + fp + fn),
                precision=_ratio(tp, tp + fp),
                recall=_ratio(tp, tp + fn),
                fraction_pred=n_pred / voxels,
                fraction_true=n_true / voxels,
                euler_pred=unscale(total.euler_pred.get(label, 0), d),
                euler_true=unscale(total.euler_true.get(label, 0), d),
            )
        else:
            row.update(fraction_pred=n_pred / voxels, euler_pred=unscale(total.euler_pred.get(label, 0), d))
        rows.append(row)
    doc: dict[str, Any] = {"phases": rows}
    if with_truth:
        k = total.confusion.shape[0]
        full = np.zeros((NLABELS, NLABELS), np.int64)
        full[:k, :k] = total.confusion
        doc["mean_iou"] = _mean_iou([r["iou"] for r in rows if r["label"] not in ignored])
        doc["accuracy"] = float(np.trace(total.confusion) / voxels)
        doc["confusion"] = full[np.ix_(labels, labels)].tolist()
    doc["connectivity"] = connectivity
    doc["voxels"] = voxels
    return doc


def _summary(values: Sequence[Any]) -> tuple[Any, Any, Any]:
    """Mean (float), min and max of the values that are not None; Nones when there are none."""
    defined = [v for v in values if v is not None]
    if not defined:
        return None, None, None
    return float(sum(defined) / len(defined)), min(defined), max(defined)


def per_slice_document(
    slices: Slices,
    doc: Mapping[str, Any],
    names: Mapping[int, str],
    connectivity: int,
    *,
    axis: int,
    first: int,
    ignored: frozenset[int],
) -> dict[str, Any]:
    """The ``per_slice`` entry of the document: per-slice lists and their summaries, per phase."""
    n = slices.voxels.shape[0]
    with_truth = slices.counts_true is not None
    voxels = slices.voxels.tolist()
    has_voxels = [v > 0 for v in voxels]

    def column(a: np.ndarray | None, label: int) -> list[int]:
        return a[:, label].tolist() if a is not None and label < a.shape[1] else [0] * n

    phases = []
    ious_by_label = {}
    for row in doc["phases"]:
        label = row["label"]
        n_pred = column(slices.counts_pred, label)
        euler_pred = [unscale(v, 2) for v in column(slices.euler_pred, label)]
        entry: dict[str, Any] = {"label": label, "name": names.get(label, f"phase{label}")}
        lists: dict[str, list[Any]] = {}
        if with_truth:
            n_true, tp = column(slices.counts_true, label), column(slices.tp, label)
            euler_true = [unscale(v, 2) for v in column(slices.euler_true, label)]
            iou = [_ratio(t, p + q - t) for t, p, q in zip(tp, n_pred, n_true)]
            ious_by_label[label] = iou
            entry.update(zip(("iou_mean", "iou_min", "iou_max"), _summary(iou)))
            lists["iou"] = iou
        scored_pred = [e for e, ok in zip(euler_pred, has_voxels) if ok]
        entry.update(zip(("euler_pred_mean", "euler_pred_min", "euler_pred_max"), _summary(scored_pred)))
        lists["fraction_pred"] = [_ratio(p, v) for p, v in zip(n_pred, voxels)]
        if with_truth:
            scored_true = [e for e, ok in zip(euler_true, has_voxels) if ok]
            entry.update(zip(("euler_true_mean", "euler_true_min", "euler_true_max"), _summary(scored_true)))
            lists["fraction_true"] = [_ratio(t, v) for t, v in zip(n_true, voxels)]
        lists["euler_pred"] = euler_pred
        if with_truth:
            lists["euler_true"] = euler_true
        entry.update(lists)
        phases.append(entry)
    out: dict[str, Any] = {
        "axis": AXES[axis],
        "neighbourhood": 8 if connectivity == 3 else 4,
        "index": list(range(first + slices.start, first + slices.start + n)),
        "voxels": voxels,
    }
    if with_truth:
        kept = [ious for label, ious in ious_by_label.items() if label not in ignored]
        out["mean_iou"] = [_mean_iou([ious[s] for ious in kept]) for s in range(n)]
    out["phases"] = phases
    return out


def neighbourhood(doc: Mapping[str, Any]) -> int:
    """Neighbourhood of a phase in the Euler numbers of a document: 26 (connectivity 3) or 6 (connectivity 1)."""
    return 26 if doc["connectivity"] == 3 else 6


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
    slice_keys = [key for key in SLICE_SUMMARY_KEYS if any(key in p for p in per_slice.values())]
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
