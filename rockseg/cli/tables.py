"""Rich tables of rockseg's documents for the terminal (score, and the demo's score)."""

from __future__ import annotations

from typing import Any

from rich.table import Table


def score_table(result: dict[str, Any]) -> Any:
    """A rich table of a score document (fits an 80-column terminal); with per-slice scores, a group of two."""
    from rich.console import Group
    from rich.markup import escape

    with_truth = "iou" in (result["phases"][0] if result["phases"] else {})
    ignored = set(result.get("ignore", []))
    where = " in the mask" if "voxels_outside_mask" in result else ""
    table = Table(title=f"rockseg score: {result['voxels']} voxels{where}, Euler connectivity {result['connectivity']}")
    cols = {"iou": "IoU", "dice": "Dice", "precision": "prec.", "recall": "recall", "fraction_pred": "frac.",
            "fraction_true": "frac. true", "euler_pred": "Euler", "euler_true": "Euler true"}
    if not with_truth:
        cols = {"fraction_pred": "fraction", "euler_pred": "Euler"}
    table.add_column("phase", no_wrap=True)
    for title in cols.values():
        table.add_column(title, justify="right")
    for ph in result["phases"]:
        cells = [escape(f"{ph['label']} {ph['name']}") + ("*" if ph["label"] in ignored else "")]
        for key in cols:
            v = ph.get(key)
            cells.append("-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v)))
        table.add_row(*cells)
    if with_truth:
        mean = "-" if result["mean_iou"] is None else f"{result['mean_iou']:.4f}"
        table.caption = f"mean IoU {mean}" + (" (* left out)" if ignored else "") + f", accuracy {result['accuracy']:.4f}"
    if "per_slice" not in result:
        return table
    per = result["per_slice"]

    def span(ph: dict[str, Any], key: str, fmt: str, mean_fmt: str) -> str:
        if ph.get(f"{key}_mean") is None:
            return "-"
        return escape(f"{ph[key + '_mean']:{mean_fmt}} [{ph[key + '_min']:{fmt}}, {ph[key + '_max']:{fmt}}]")

    slices = Table(title=escape(f"per slice across {per['axis']}: {len(per['index'])} slices, "
                                f"{per['neighbourhood']}-neighbourhood; mean [min, max]"))
    keys = [("iou", "IoU", ".3f", ".3f"), ("euler_pred", "Euler", "d", ".1f"), ("euler_true", "Euler true", "d", ".1f")]
    keys = [k for k in keys if with_truth or k[0] == "euler_pred"]
    slices.add_column("phase", no_wrap=True)
    for _, title, _, _ in keys:
        slices.add_column(title, justify="right")
    for ph in per["phases"]:
        slices.add_row(escape(f"{ph['label']} {ph['name']}"), *(span(ph, key, f, m) for key, _, f, m in keys))
    return Group(table, slices)
