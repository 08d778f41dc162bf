"""``rockseg tile IMAGE LABELS -o TILES``: training patches with a spatially disjoint validation split."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from rockseg.cli.common import JsonOption, app, command, out_console
from rockseg.vocabulary import Axis


@app.command()
@command
def tile(
    pairs: Annotated[list[Path], typer.Argument(
        metavar="IMAGE LABELS",
        help="grey-value image store (.zarr), then its label store of the same shape; more pairs may follow")],
    out: Annotated[Path, typer.Option("-o", "--out", help="tile set to write (.zarr)")],
    dims: Annotated[int, typer.Option(min=2, max=3, help="2: slices, 3: sub-volumes")] = 3,
    axis: Annotated[Optional[Axis], typer.Option(help="--dims 2 on a (Z, Y, X) volume: cut slices across this axis (default z)")] = None,
    size: Annotated[int, typer.Option(min=8, help="patch edge in voxels (a multiple of 8)")] = 48,
    count: Annotated[Optional[int], typer.Option(min=1, help="training patches in all (default from the volume size)")] = None,
    val_fraction: Annotated[float, typer.Option(min=0.01, max=0.9, help="share of the volume kept for validation")] = 0.2,
    crop: Annotated[Optional[list[str]], typer.Option(help="sample only from Z0:Z1,Y0:Y1,X0:X1; once for all pairs, or once per pair")] = None,
    phases: Annotated[Optional[str], typer.Option(help="phase names, e.g. 0=pore,1=clay,2=quartz")] = None,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    balance: Annotated[bool, typer.Option(help="centre half the patches on voxels of a phase drawn uniformly, so rare phases are seen (--no-balance: uniform positions)")] = True,
    unlabelled: Annotated[int, typer.Option(min=-1, max=255, help="label value of unlabelled voxels (sparse labels: a few labelled slices or scribbles): patches are centred on labelled voxels and training ignores the rest; -1: none, every value is a phase")] = 255,
    overwrite: Annotated[bool, typer.Option(help="replace an existing output")] = False,
    json_out: JsonOption = False,
) -> dict:
    """Sample training patches with a validation split spatially disjoint from training.

    \b
    Sparse labels: mark the voxels nobody labelled with 255 (--unlabelled sets
    another value), e.g. label every 10th slice; the patches are then centred on
    labelled voxels and training and validation ignore the unlabelled ones.
    """
    from rockseg.io.stores import parse_phases
    from rockseg.training import make_tiles, split_pairs
    from rockseg.training.tileset import REGION_MAX_BYTES

    images, labels = split_pairs(pairs)
    s = make_tiles(
        images, labels, out, dims=dims, size=size, count=count, val_fraction=val_fraction, crop=crop or None,
        seed=seed, phases=parse_phases(phases) or None, axis=axis.value if axis else None, balance=balance,
        unlabelled=None if unlabelled < 0 else unlabelled, overwrite=overwrite,
    )
    across = f" across {s['slice_axis']}" if dims == 2 else ""
    out_console.print(
        f"wrote {out}: {s['train']} training and {s['val']} validation {dims}D patches{across} of edge {size} "
        f"from {s['sources']} image/label pair(s), {s['sampling']} sampling"
    )
    if s["unlabelled_voxels"]:
        out_console.print(f"sparse labels: {s['unlabelled_voxels']} unlabelled voxels (label {unlabelled}) in the tiles and "
                          f"training regions, ignored by training; patches centred on labelled voxels")
    mib = s["region_bytes"] / 2**20
    if s["regions"]:
        out_console.print(f"stored the training regions ({mib:.0f} MiB): train draws fresh random patches from them")
    else:
        out_console.print(
            f"the training regions ({mib:.0f} MiB) are over the {REGION_MAX_BYTES // 2**30} GiB bound and are not "
            f"stored: train will use the fixed patches (a smaller --crop keeps them)"
        )
    return {"out": str(out), **s}
