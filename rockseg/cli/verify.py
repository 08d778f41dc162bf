"""``rockseg verify PRED [PRED ...]``: re-read every unit of predictions and check it against its records."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rockseg.cli.common import JsonOption, app, command, log, out_console
from rockseg.progress import interactive


@app.command()
@command
def verify(
    preds: Annotated[list[Path], typer.Argument(help="prediction stores written by 'rockseg predict'")],
    workers: Annotated[int, typer.Option(min=1, help="threads that re-read units")] = 2,
    json_out: JsonOption = False,
) -> dict:
    """Check every shard of predictions against its completion record (exit 1 listing what is missing or
    corrupt; re-running the same 'rockseg predict' redoes exactly those)."""
    from rockseg.inference.verifying import raise_unverified, verify as run

    results = [run(p, workers=workers, progress=interactive(), log=log) for p in preds]
    for r in results:
        if r["complete"]:
            out_console.print(f"{r['path']}: all {r['units']} {r['unit_name']} verified")
    raise_unverified(results)
    return {"predictions": results, "complete": True}
