"""``rockseg convert SRC DEST``: a tomogram to a chunked Zarr store, or a store to an export."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from rockseg.cli.common import JsonOption, app, command, log, out_console
from rockseg.progress import interactive
from rockseg.vocabulary import ByteOrder, Compressor


@app.command()
@command
def convert(
    src: Annotated[Path, typer.Argument(help="netCDF .nc, HDF5 .h5/.nxs, TIFF (file, folder or glob of slices), .png, .raw/.bin/.vol, .mhd, .nhdr, .npy or .zarr")],
    dest: Annotated[Path, typer.Argument(help="Output .zarr store, or an export: .tif, .nc, .h5, .raw (+ .mhd), .npy")],
    shape: Annotated[Optional[str], typer.Option(help="Z,Y,X shape of a raw file (default: from a .mhd/.nhdr header beside it)")] = None,
    dtype: Annotated[Optional[str], typer.Option(help="dtype of a raw file: uint8, uint16, int16, float32...")] = None,
    byte_order: Annotated[ByteOrder, typer.Option(help="byte order of a raw file")] = ByteOrder.little,
    header_bytes: Annotated[int, typer.Option(min=0, help="bytes to skip at the start of a raw file")] = 0,
    variable: Annotated[Optional[str], typer.Option(help="netCDF variable to read (default: the one 3D variable)")] = None,
    dataset: Annotated[Optional[str], typer.Option(help="HDF5 dataset to read, e.g. /exchange/data (default: the one 3D dataset)")] = None,
    level: Annotated[Optional[int], typer.Option(min=0, help="level of an OME-Zarr image to read (default 0, full resolution)")] = None,
    colormap: Annotated[Optional[str], typer.Option(help="colour-coded labels: COLOUR=LABEL[:NAME];..., e.g. '0,0,255=0:pore;0,255,0=1:clay' (grey masks: '33=0;201=1')")] = None,
    phases: Annotated[Optional[str], typer.Option(help="phase names stored with the labels, e.g. 0=pore,1=clay")] = None,
    crop: Annotated[Optional[str], typer.Option(help="take only the region Z0:Z1,Y0:Y1,X0:X1")] = None,
    slices: Annotated[Optional[str], typer.Option(help="take only the planes START:STOP[:STEP] along Z, e.g. 100:200 or 0:400:50")] = None,
    chunks: Annotated[Optional[str], typer.Option(help="output chunk shape, e.g. 64,64,64")] = None,
    shards: Annotated[Optional[str], typer.Option(help="store chunks in shard files of this shape, a multiple of the chunks, e.g. 64,1024,1024 (fewer files)")] = None,
    compressor: Annotated[Compressor, typer.Option(help="output compressor")] = Compressor.blosc_zstd,
    voxel_size: Annotated[Optional[float], typer.Option(help="voxel size in micrometres (else read from SRC)")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing DEST")] = False,
    json_out: JsonOption = False,
) -> dict:
    """Convert a tomogram to a chunked Zarr store (or export a store), streaming with bounded memory."""
    from rockseg.io import convert as run

    summary = run(
        src, dest, shape=shape, dtype=dtype, byte_order=byte_order.value, header_bytes=header_bytes,
        variable=variable, dataset=dataset, level=level, colormap=colormap, phases=phases, crop=crop, slices=slices, chunks=chunks, shards=shards,
        compressor=compressor.value, voxel_size=voxel_size, overwrite=overwrite, progress=interactive() or log,
    )
    out_console.print(
        f"wrote {summary['dest']}: shape {tuple(summary['shape'])} {summary['dtype']} "
        f"in {summary['seconds']:.1f} s ({summary.get('mb_per_s', 0):.0f} MB/s)"
    )
    return summary
