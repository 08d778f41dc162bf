"""``rockseg score PRED [TRUTH]``: per-phase IoU, fractions and Euler numbers, as a table, JSON, CSV or a report."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from rockseg.cli.common import app, command, out_console, tune_allocator
from rockseg.cli.tables import score_table
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
    workers: Annotated[Optional[int], typer.Option(min=1, help="threads (default: one per core; not used with --scheduler)")] = None,
    scheduler: Annotated[Optional[str], typer.Option(help="address of a Dask scheduler (tcp://HOST:8786) to score on, instead of this machine's threads")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing --report folder")] = False,
    unlabelled: Annotated[Optional[int], typer.Option(min=0, max=255, help="truth voxels of this label are unlabelled (sparse labels, e.g. 255) and count for nothing, as outside a --mask")] = None,
) -> None:
    """Per-phase IoU, Dice, precision, recall, fractions and Euler numbers, chunk by chunk."""
    from rockseg.errors import InputError
    from rockseg.metrics import score_csv, score_stores

    if json_out and csv_out:
        raise InputError("--json and --csv both print on stdout: give one of them")
    tune_allocator()  # every block allocates the same large arrays: reuse them (peak RSS 1.14x at 2048^3 vs 1024^3 without)
    result = score_stores(
        pred, truth, connectivity=int(connectivity.value), crop=crop, phases=phases, ignore=ignore or (), mask=mask,
        per_slice=per_slice, report=report, report_slice=report_slice, num_workers=workers, overwrite=overwrite,
        scheduler=scheduler,
        unlabelled=unlabelled,
    )
    if json_out:
        print(json.dumps(result))
    elif csv_out:
        sys.stdout.write(score_csv(result))
    else:
        out_console.print(score_table(result))
        if report is not None:
            out_console.print(f"wrote {report / 'index.html'}")
