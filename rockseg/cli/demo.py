"""``rockseg demo [DIR]``: the whole pipeline on a built-in synthetic rock."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from rockseg.cli.common import app, command, log, out_console, tune_allocator
from rockseg.cli.tables import score_table
from rockseg.progress import interactive
from rockseg.vocabulary import DEMO_EPOCHS


@app.command()
@command
def demo(
    directory: Annotated[Path, typer.Argument(help="folder for the demo's stores, model and score.json")] = Path("rockseg-demo"),
    size: Annotated[int, typer.Option(min=64, help="edge of the synthetic rock in voxels")] = 128,
    epochs: Annotated[int, typer.Option(min=1, help="training epochs (the same model on a busy machine as on a quiet one)")] = DEMO_EPOCHS,
    minutes: Annotated[Optional[float], typer.Option(help="train for this wall time instead of --epochs")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N")] = "auto",
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Run the whole pipeline on a built-in synthetic rock: generate, convert, tile, train, predict, stitch, score."""
    from rockseg.demo import run_demo

    tune_allocator()
    result = run_demo(directory, size=size, epochs=epochs, minutes=minutes, device=device, seed=seed, log=log,
                      progress=interactive())
    out_console.print(score_table(result["score"]))
    out_console.print(f"demo finished in {result['seconds']:.0f} s; everything is in {directory}/ (score.json)")
