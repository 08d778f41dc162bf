"""``rockseg score PRED [TRUTH]``: per-phase IoU, fractions and Euler numbers, as a table, JSON, CSV or a report."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from rockseg.cli.common import app, command, out_console
from rockseg.vocabulary import Connectivity


@app.command()
@command
def score(
    pred: Annotated[Path, typer.Argument(help="label store to score")],
    truth: Annotated[Optional[Path], typer.Argument(help="true labels of the same shape (optional)")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print one JSON document on stdout")] = False,
    csv_out: Annotated[bool, typer.Option("--csv", help="print CSV on stdout: a header, one row per phase")] = False,
    connectivity: Annotated[Connectivity, typer.Option(help="Euler number: 3 = 26-neighbourhood, 1 = 6-neighbourhood")] = Connectivity.twenty_six,
    crop: Annotated[Optional[str], typer.Option(help="score only Z0:Z1,Y0:Y1,X0:X1")] = None,
    phases: Annotated[Optional[str], typer.Option(help="phase names, e.g. 0=pore,1=grain; then any other label is an error")] = None,
    ignore: Annotated[Optional[list[int]], typer.Option(help="leave this label out of the mean IoU (repeatable)")] = None,
    mask: Annotated[Optional[Path], typer.Option(help="store of the same shape: voxels where it is 0 count for nothing")] = None,
    per_slice: Annotated[Optional[str], typer.Option(help="z, y or x: also IoU and 2D Euler numbers per slice across it")] = None,
    report: Annotated[Optional[Path], typer.Option(help="write pictures and index.html into this new folder")] = None,
    report_slice: Annotated[Optional[str], typer.Option(help="slice drawn in the report: z, y=120... (default: middle z)")] = None,
    workers: Annotated[Optional[int], typer.Option(min=1, help="threads (default: one per core)")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing --report folder")] = False,
) -> None:
    """Per-phase IoU, Dice, precision, recall, fractions and Euler numbers, chunk by chunk."""
    from rockseg.errors import InputError
    from rockseg.metrics import check_report_dir, parse_report_slice, score_csv, score_volumes, write_report
    from rockseg.io.stores import open_volume, parse_crop, parse_phases, phases_of

    if json_out and csv_out:
        raise InputError("--json and --csv both print on stdout: give one of them")
    p = open_volume(pred, name="prediction")
    t = open_volume(truth, name="truth") if truth is not None else None
    m = open_volume(mask, name="mask") if mask is not None else None
    named = parse_phases(phases)
    names = named or phases_of(p) or (phases_of(t) if t is not None else {})
    region = parse_crop(crop, p.shape) if crop else None
    if report is not None:  # checked now, not after an hour of scoring
        view = parse_report_slice(report_slice, p.shape, region)
        check_report_dir(report, overwrite=overwrite)
    result = score_volumes(
        p, t, connectivity=int(connectivity.value), phases=names, strict_phases=bool(named), ignore=ignore or (),
        mask=m, per_slice=per_slice, crop=region, num_workers=workers, pred_name=str(pred), truth_name=str(truth),
        mask_name=str(mask),
    )
    if report is not None:
        write_report(report, doc=result, pred=p, truth=t, mask=m, crop=region, view=view, pred_name=str(pred),
                     truth_name=str(truth), mask_name=str(mask), overwrite=overwrite)
    if json_out:
        print(json.dumps(result))
    elif csv_out:
        sys.stdout.write(score_csv(result))
    else:
        out_console.print(score_table(result))
        if report is not None:
            out_console.print(f"wrote {report / 'index.html'}")


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
