"""The ``rockseg`` command line: a thin skin over the library.

Each command reads its options, calls one keyword-only library function and prints the result. A user error
(:class:`rockseg.errors.RocksegError`) prints one line on stderr and exits with its code (2 for bad input, 1 for
an incomplete run), without a traceback; ``--debug`` (anywhere on the line) shows the traceback instead.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from rockseg import __version__
from rockseg.errors import RocksegError
from rockseg.progress import interactive

app = typer.Typer(
    name="rockseg", add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    help="Segment X-ray micro-CT volumes of rocks with UNet networks, and score them by IoU and physics.\n\n"
    "Pipeline: convert -> tile -> train -> predict -> stitch -> score (or all at once: rockseg demo).",
)
out_console = Console(soft_wrap=True)
err_console = Console(stderr=True)
_debug = False


def _log(line: str) -> None:
    """One timestamped log line on stderr (used when stderr is not a terminal: cron, Slurm)."""
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}", file=sys.stderr, flush=True)


def _command(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a RocksegError into one line on stderr and its exit code (a traceback only with --debug)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RocksegError as exc:
            if _debug:
                raise
            err_console.print(f"rockseg {fn.__name__}: error: {exc}", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None

    return wrapper


class Compressor(str, Enum):
    blosc_zstd = "blosc-zstd"
    zstd = "zstd"
    lz4 = "lz4"
    none = "none"


class ByteOrder(str, Enum):
    little = "little"
    big = "big"


class Arch(str, Enum):
    unet = "unet"


class Loss(str, Enum):
    ce = "ce"
    dice = "dice"
    ce_dice = "ce+dice"


class Precision(str, Enum):
    auto = "auto"
    float32 = "float32"
    bf16 = "bf16"


class Normalization(str, Enum):
    volume = "volume"
    model = "model"


class Axis(str, Enum):
    z = "z"
    y = "y"
    x = "x"


class Connectivity(str, Enum):
    six = "1"
    twenty_six = "3"


def _version(value: bool) -> None:
    if value:
        out_console.print(f"rockseg {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Segment X-ray micro-CT volumes of rocks with UNet networks, and score them by IoU and physics."""


# ------------------------------------------------------------------------------------------------------ convert
@app.command()
@_command
def convert(
    src: Annotated[Path, typer.Argument(help="netCDF .nc, TIFF (file, folder or glob of slices), .png, .raw/.bin/.vol, .mhd, .nhdr, .npy or .zarr")],
    dest: Annotated[Path, typer.Argument(help="Output .zarr store, or an export: .tif, .nc, .raw (+ .mhd), .npy")],
    shape: Annotated[Optional[str], typer.Option(help="Z,Y,X shape of a raw file (default: from a .mhd/.nhdr header beside it)")] = None,
    dtype: Annotated[Optional[str], typer.Option(help="dtype of a raw file: uint8, uint16, int16, float32...")] = None,
    byte_order: Annotated[ByteOrder, typer.Option(help="byte order of a raw file")] = ByteOrder.little,
    header_bytes: Annotated[int, typer.Option(min=0, help="bytes to skip at the start of a raw file")] = 0,
    variable: Annotated[Optional[str], typer.Option(help="netCDF variable to read (default: the one 3D variable)")] = None,
    colormap: Annotated[Optional[str], typer.Option(help="colour-coded labels: COLOUR=LABEL[:NAME];..., e.g. '0,0,255=0:pore;0,255,0=1:clay' (grey masks: '33=0;201=1')")] = None,
    phases: Annotated[Optional[str], typer.Option(help="phase names stored with the labels, e.g. 0=pore,1=clay")] = None,
    crop: Annotated[Optional[str], typer.Option(help="take only the region Z0:Z1,Y0:Y1,X0:X1")] = None,
    slices: Annotated[Optional[str], typer.Option(help="take only the planes START:STOP[:STEP] along Z, e.g. 100:200 or 0:400:50")] = None,
    chunks: Annotated[Optional[str], typer.Option(help="output chunk shape, e.g. 64,64,64")] = None,
    shards: Annotated[Optional[str], typer.Option(help="store chunks in shard files of this shape, a multiple of the chunks, e.g. 64,1024,1024 (fewer files)")] = None,
    compressor: Annotated[Compressor, typer.Option(help="output compressor")] = Compressor.blosc_zstd,
    voxel_size: Annotated[Optional[float], typer.Option(help="voxel size in micrometres (else read from SRC)")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing DEST")] = False,
) -> None:
    """Convert a tomogram to a chunked Zarr store (or export a store), streaming with bounded memory."""
    from rockseg.formats import convert as run

    summary = run(
        src, dest, shape=shape, dtype=dtype, byte_order=byte_order.value, header_bytes=header_bytes,
        variable=variable, colormap=colormap, phases=phases, crop=crop, slices=slices, chunks=chunks, shards=shards,
        compressor=compressor.value, voxel_size=voxel_size, overwrite=overwrite, progress=interactive(),
    )
    out_console.print(
        f"wrote {summary['dest']}: shape {tuple(summary['shape'])} {summary['dtype']} "
        f"in {summary['seconds']:.1f} s ({summary.get('mb_per_s', 0):.0f} MB/s)"
    )


# ------------------------------------------------------------------------------------------------------ tile
@app.command()
@_command
def tile(
    image: Annotated[Path, typer.Argument(help="grey-value image store (.zarr)")],
    labels: Annotated[Path, typer.Argument(help="label store (.zarr) of the same shape")],
    out: Annotated[Path, typer.Option("-o", "--out", help="tile set to write (.zarr)")],
    dims: Annotated[int, typer.Option(min=2, max=3, help="2: slices, 3: sub-volumes")] = 3,
    size: Annotated[int, typer.Option(min=8, help="patch edge in voxels (a multiple of 8)")] = 48,
    count: Annotated[Optional[int], typer.Option(min=1, help="training patches (default from the volume size)")] = None,
    val_fraction: Annotated[float, typer.Option(min=0.01, max=0.9, help="share of the volume kept for validation")] = 0.2,
    crop: Annotated[Optional[str], typer.Option(help="sample only from Z0:Z1,Y0:Y1,X0:X1")] = None,
    phases: Annotated[Optional[str], typer.Option(help="phase names, e.g. 0=pore,1=clay,2=quartz")] = None,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    overwrite: Annotated[bool, typer.Option(help="replace an existing output")] = False,
) -> None:
    """Sample training patches with a validation split spatially disjoint from training."""
    from rockseg.stores import open_volume, parse_crop, parse_phases
    from rockseg.tiling import make_tiles

    region = parse_crop(crop, open_volume(image, name="image").shape) if crop else None
    summary = make_tiles(
        image, labels, out, dims=dims, size=size, count=count, val_fraction=val_fraction, crop=region, seed=seed,
        phases=parse_phases(phases) or None, overwrite=overwrite,
    )
    out_console.print(
        f"wrote {out}: {summary['train']} training and {summary['val']} validation {dims}D patches of edge {size}"
    )


# ------------------------------------------------------------------------------------------------------ train
@app.command()
@_command
def train(
    tiles: Annotated[Path, typer.Argument(help="tile set written by 'rockseg tile'")],
    out: Annotated[Path, typer.Option("-o", "--out", help="model file to write (.pt)")],
    dims: Annotated[Optional[int], typer.Option(min=2, max=3, help="2 or 3; must match the tile set (default: its dims)")] = None,
    arch: Annotated[Arch, typer.Option(help="network architecture")] = Arch.unet,
    base_channels: Annotated[int, typer.Option(min=1, help="channels of the first level")] = 16,
    depth: Annotated[int, typer.Option(min=1, max=6, help="down-sampling steps")] = 3,
    epochs: Annotated[int, typer.Option(min=1, help="maximum epochs")] = 50,
    max_minutes: Annotated[Optional[float], typer.Option(help="stop after this wall time, keeping the best model")] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 4,
    lr: Annotated[float, typer.Option(help="Adam learning rate")] = 1e-3,
    loss: Annotated[Loss, typer.Option(help="training loss (ce+dice keeps rare phases from being ignored)")] = Loss.ce_dice,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N")] = "auto",
    seed: Annotated[int, typer.Option()] = 0,
    threads: Annotated[Optional[int], typer.Option(min=1, help="CPU threads (default: all cores)")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing model file")] = False,
) -> None:
    """Train a network on a tile set; keeps the best model by validation mean IoU."""
    from rockseg.training import TrainConfig, train as run

    config = TrainConfig(
        arch=arch.value, base_channels=base_channels, depth=depth, epochs=epochs, max_minutes=max_minutes,
        batch_size=batch_size, lr=lr, loss=loss.value, device=device, seed=seed, num_threads=threads,
    )
    summary = run(tiles, out, config=config, dims=dims, progress=interactive(), log=_log, overwrite=overwrite)
    out_console.print(
        f"wrote {out}: best validation mean IoU {summary['best_val_mean_iou']:.4f} at epoch {summary['best_epoch']} "
        f"({summary['epochs']} epochs, {summary['seconds']:.0f} s)"
    )


# ------------------------------------------------------------------------------------------------------ predict
@app.command()
@_command
def predict(
    volume: Annotated[Path, typer.Argument(help="grey-value volume (.zarr)")],
    model: Annotated[Optional[Path], typer.Option("-m", "--model", help="model file (default: the shipped pore/solid model)")] = None,
    out: Annotated[Optional[Path], typer.Option("-o", "--out", help="label store to write (default: VOLUME-labels.zarr)")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N")] = "auto",
    tile: Annotated[Optional[int], typer.Option(help="network input edge in voxels (default: the model's)")] = None,
    halo: Annotated[Optional[int], typer.Option(help="context voxels cut off each side of a tile (default: the model's)")] = None,
    block: Annotated[Optional[int], typer.Option(help="block edge = output chunk edge (default: a multiple of the tile step near 128)")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="tiles per forward pass")] = 4,
    shard: Annotated[Optional[str], typer.Option(help="I/N: run only the I-th of N shards (0-based), for job arrays")] = None,
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
    overwrite: Annotated[bool, typer.Option(help="discard an existing prediction and start again")] = False,
) -> None:
    """Segment a volume block by block (out-of-core, resumable, shardable)."""
    from rockseg.inference import PredictConfig, parse_shard, predict as run

    config = PredictConfig(
        tile=tile, halo=halo, block=block, batch_size=batch_size, device=device, precision=precision.value,
        normalization=normalize.value, shard=parse_shard(shard), workers=workers,
        probabilities=str(probabilities) if probabilities else None, tta=tta, crop=crop,
        mask=str(mask) if mask else None, axis=axis.value, scheduler=scheduler,
        devices=tuple(d.strip() for d in devices.split(",")) if devices else None,
    )
    s = run(volume, out, model=model, config=config, overwrite=overwrite, progress=interactive(), log=_log)
    state = "complete" if s["complete"] else f"{s['blocks_missing']} blocks still missing (other shards)"
    out_console.print(
        f"wrote {s['out']}: {s['voxels']} voxels in {s['seconds']:.1f} s ({s['voxels_per_second'] / 1e6:.2f} Mvoxel/s), "
        f"{s['blocks_done']} blocks done, {s['blocks_skipped']} already done; {state}"
        + (f" [{s['precision']}]" if s["precision"] else "")
    )


# ------------------------------------------------------------------------------------------------------ stitch
@app.command()
@_command
def stitch(
    preds: Annotated[list[Path], typer.Argument(help="prediction stores written by 'rockseg predict'")],
    out: Annotated[Path, typer.Option("-o", "--out", help="final labels: .zarr, or an export .tif/.nc/.raw/.npy")],
    preview: Annotated[Optional[Path], typer.Option(help="also write a downsampled preview pyramid (Zarr group) for viewers")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing output")] = False,
) -> None:
    """Check every block is done, fuse several predictions, and write the final labels."""
    from rockseg.stitching import stitch as run

    s = run(preds, out, overwrite=overwrite, preview=preview, progress=interactive(), log=_log)
    out_console.print(f"wrote {s['out']} ({s['method']} of {len(s['predictions'])} prediction(s)) in {s['seconds']:.1f} s")


# ------------------------------------------------------------------------------------------------------ score
@app.command()
@_command
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
    from rockseg.metrics import score_volumes
    from rockseg.report import check_report_dir, parse_report_slice, score_csv, write_report
    from rockseg.stores import open_volume, parse_crop, parse_phases, phases_of

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


# ------------------------------------------------------------------------------------------------------ demo
@app.command()
@_command
def demo(
    directory: Annotated[Path, typer.Argument(help="folder for the demo's stores, model and score.json")] = Path("rockseg-demo"),
    size: Annotated[int, typer.Option(min=64, help="edge of the synthetic rock in voxels")] = 128,
    minutes: Annotated[float, typer.Option(help="training wall time in minutes")] = 2.5,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N")] = "auto",
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Run the whole pipeline on a built-in synthetic rock: generate, convert, tile, train, predict, stitch, score."""
    from rockseg.demo import run_demo

    result = run_demo(directory, size=size, minutes=minutes, device=device, seed=seed, log=_log,
                      progress=interactive())
    out_console.print(score_table(result["score"]))
    out_console.print(f"demo finished in {result['seconds']:.0f} s; everything is in {directory}/ (score.json)")


def main() -> None:
    """Console entry point: ``--debug`` anywhere on the line shows tracebacks."""
    global _debug
    if "--debug" in sys.argv[1:]:
        _debug = True
        sys.argv.remove("--debug")
    try:
        app()
    except KeyboardInterrupt:
        err_console.print("rockseg: interrupted")
        sys.exit(130)
    except Exception as exc:  # an unexpected failure: one line, exit 1; --debug shows where
        if _debug:
            raise
        err_console.print(
            f"rockseg: error: {type(exc).__name__}: {exc} (run again with --debug for the traceback)",
            markup=False, highlight=False, soft_wrap=True,
        )
        sys.exit(1)
