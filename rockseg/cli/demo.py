"""``rockseg demo [DIR]``: the whole pipeline on a built-in synthetic rock."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rockseg.cli.common import app, command, log, out_console, tune_allocator
from rockseg.cli.tables import score_table
from rockseg.progress import interactive


@app.command()
@command
def demo(
    directory: Annotated[Path, typer.Argument(help="folder for the demo's stores, model and score.json")] = Path("rockseg-demo"),
    size: Annotated[int, typer.Option(min=64, help="edge of the synthetic rock in voxels")] = 128,
    minutes: Annotated[float, typer.Option(help="training wall time in minutes")] = 2.5,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N")] = "auto",
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Run the whole pipeline on a built-in synthetic rock: generate, convert, tile, train, predict, stitch, score."""
    from rockseg.demo import run_demo

    tune_allocator()
    result = run_demo(directory, size=size, minutes=minutes, device=device, seed=seed, log=log,
                      progress=interactive())
    out_console.print(score_table(result["score"]))
    out_console.print(f"demo finished in {result['seconds']:.0f} s; everything is in {directory}/ (score.json)")
