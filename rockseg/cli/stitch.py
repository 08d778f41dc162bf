"""``rockseg stitch PRED [PRED ...] -o OUT``: the final labels from complete predictions, fused and exported."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from rockseg.cli.common import app, command, log, out_console
from rockseg.progress import interactive


@app.command()
@command
def stitch(
    preds: Annotated[list[Path], typer.Argument(help="prediction stores written by 'rockseg predict'")],
    out: Annotated[Path, typer.Option("-o", "--out", help="final labels: .zarr, or an export .tif/.nc/.raw/.npy")],
    preview: Annotated[Optional[Path], typer.Option(help="also write a downsampled preview pyramid (Zarr group) for viewers")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing output")] = False,
    scheduler: Annotated[Optional[str], typer.Option(help="address of a Dask distributed scheduler whose workers copy or fuse the shards, e.g. tcp://host:8786")] = None,
    workers: Annotated[int, typer.Option(min=1, help="threads that copy or fuse shards (without --scheduler)")] = 2,
) -> None:
    """Check every block is done, fuse several predictions, and write the final labels."""
    from rockseg.inference import stitch as run

    s = run(preds, out, overwrite=overwrite, preview=preview, workers=workers, scheduler=scheduler,
            progress=interactive(), log=log)
    out_console.print(f"wrote {s['out']} ({s['method']} of {len(s['predictions'])} prediction(s)) in {s['seconds']:.1f} s")
