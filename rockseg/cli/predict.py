"""``rockseg predict VOLUME``: block-wise, resumable segmentation of a volume (one part of a job array with --part)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from rockseg.cli.common import JsonOption, app, command, log, out_console, tune_allocator
from rockseg.progress import interactive
from rockseg.vocabulary import Axis, Normalization, Precision


@app.command()
@command
def predict(
    volume: Annotated[Path, typer.Argument(help="grey-value volume (.zarr)")],
    model: Annotated[Optional[Path], typer.Option("-m", "--model", help="model file, or a shipped model's name (rockseg models); default: the shipped pore/solid model")] = None,
    out: Annotated[Optional[Path], typer.Option("-o", "--out", help="label store to write (default: VOLUME-labels.zarr)")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N")] = "auto",
    tile: Annotated[Optional[int], typer.Option(help="network input edge in voxels (default: the model's)")] = None,
    halo: Annotated[Optional[int], typer.Option(help="context voxels cut off each side of a tile (default: the model's)")] = None,
    block: Annotated[Optional[int], typer.Option(help="block edge = output chunk edge (default: a multiple of the tile step near 128)")] = None,
    shard_blocks: Annotated[Optional[int], typer.Option(min=1, help="blocks per shard edge: each output shard file, the unit of resuming, holds K^3 blocks (default: the smallest K keeping <= 16384 shards)")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="tiles per forward pass")] = 4,
    part: Annotated[Optional[str], typer.Option("--part", "--shard", help="I/N: run only part I of N (0-based), one task of a job array (--shard: the old spelling)")] = None,
    probabilities: Annotated[Optional[Path], typer.Option(help="also write class probabilities (uint8) to this store")] = None,
    precision: Annotated[Precision, typer.Option(help="auto: bf16 on CUDA, float32 on CPU")] = Precision.auto,
    normalize: Annotated[Normalization, typer.Option(help="intensity statistics of the volume or of the training image")] = Normalization.volume,
    workers: Annotated[int, typer.Option(min=1, help="blocks in flight at once")] = 2,
    tta: Annotated[bool, typer.Option(help="test-time augmentation: average over all flips of each tile")] = False,
    crop: Annotated[Optional[str], typer.Option(help="segment only Z0:Z1,Y0:Y1,X0:X1")] = None,
    mask: Annotated[Optional[Path], typer.Option(help="Zarr mask of the volume's shape: nothing is computed where it is 0 (label 255 there)")] = None,
    axis: Annotated[Axis, typer.Option(help="axis a 2D model runs along on a 3D volume")] = Axis.z,
    scheduler: Annotated[Optional[str], typer.Option(help="address of a Dask distributed scheduler, e.g. tcp://host:8786")] = None,
    devices: Annotated[Optional[str], typer.Option(help="several devices of this node, one worker each, e.g. cuda:0,cuda:1")] = None,
    specks: Annotated[Optional[int], typer.Option(min=0, help="relabel isolated pieces of a phase of up to N voxels as the phase around them (default: the model's choice, made on its validation tiles; 0: keep them)")] = None,
    overwrite: Annotated[bool, typer.Option(help="discard an existing prediction and start again")] = False,
    json_out: JsonOption = False,
) -> dict:
    """Segment a volume block by block (out-of-core, resumable, split into parts for job arrays)."""
    from rockseg.inference import PredictConfig, parse_part, predict as run

    tune_allocator()

    config = PredictConfig(
        tile=tile, halo=halo, block=block, shard_blocks=shard_blocks, batch_size=batch_size, device=device, precision=precision.value,
        normalization=normalize.value, part=parse_part(part), workers=workers,
        probabilities=str(probabilities) if probabilities else None, tta=tta, crop=crop,
        mask=str(mask) if mask else None, axis=axis.value, scheduler=scheduler,
        devices=tuple(d.strip() for d in devices.split(",")) if devices else None, specks=specks,
    )
    s = run(volume, out, model=model, config=config, overwrite=overwrite, progress=interactive(), log=log)
    state = "complete" if s["complete"] else f"{s['blocks_missing']} blocks still missing (other parts)"
    out_console.print(
        f"wrote {s['out']}: {s['voxels']} voxels in {s['seconds']:.1f} s ({s['voxels_per_second'] / 1e6:.2f} Mvoxel/s), "
        f"{s['blocks_done']} blocks done, {s['blocks_skipped']} already done; {state}"
        + (f" [{s['precision']}]" if s["precision"] else "")
    )
    if s.get("claimed_by_others"):  # shards another live run holds: it computes them
        holders = sorted(set(s["claimed_by_others"].values()))
        out_console.print(
            f"{len(s['claimed_by_others'])} shard(s) left to other runs still computing them ({'; '.join(holders[:3])}"
            f"{' ...' if len(holders) > 3 else ''}): run the same command again once they end"
        )
    return s
