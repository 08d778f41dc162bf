"""``rockseg stitch PRED [PRED ...] -o OUT``: the final labels from complete predictions, fused and exported."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from rockseg.cli.common import JsonOption, app, command, log, out_console
from rockseg.progress import interactive


@app.command()
@command
def stitch(
    preds: Annotated[list[Path], typer.Argument(help="prediction stores written by 'rockseg predict'")],
    out: Annotated[Path, typer.Option("-o", "--out", help="final labels: .zarr (.ome.zarr: an OME-Zarr image for viewers), or an export .tif/.nc/.h5/.raw/.npy")],
    preview: Annotated[Optional[Path], typer.Option(help="also write an OME-Zarr image (NGFF 0.5: full resolution and a pyramid) for viewers, e.g. prev.ome.zarr")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing output")] = False,
    scheduler: Annotated[Optional[str], typer.Option(help="address of a Dask distributed scheduler whose workers copy or fuse the shards, e.g. tcp://host:8786")] = None,
    workers: Annotated[int, typer.Option(min=1, help="threads that copy or fuse shards (without --scheduler)")] = 2,
    verify: Annotated[bool, typer.Option("--verify", help="first re-read every shard of the predictions and check it against its completion record (as 'rockseg verify')")] = False,
    json_out: JsonOption = False,
) -> dict:
    """Check every block is done, fuse several predictions, and write the final labels."""
    from rockseg.inference import stitch as run

    s = run(preds, out, overwrite=overwrite, preview=preview, workers=workers, scheduler=scheduler,
            verify=verify, progress=interactive(), log=log)
    out_console.print(f"wrote {s['out']} ({s['method']} of {len(s['predictions'])} prediction(s)) in {s['seconds']:.1f} s")
    return s
