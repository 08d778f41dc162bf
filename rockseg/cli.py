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
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from rockseg import __version__
from rockseg.errors import RocksegError
from rockseg.progress import interactive
from rockseg.vocabulary import (
    Act, Arch, Augment, Axis, ByteOrder, Compressor, Connectivity, Loss, Norm, Normalization, Optimizer, Precision,
    Schedule,
)

app = typer.Typer(
    name="rockseg", add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    help="Segment X-ray micro-CT volumes of rocks with UNet networks, and score them by IoU and physics.\n\n"
    "Pipeline: convert -> tile -> train -> predict -> stitch -> score (or all at once: rockseg demo).",
)
out_console = Console(soft_wrap=True)
err_console = Console(stderr=True)
_debug = False
_own_process = False  # set by main(): the process is the rockseg command, so it may tune the allocator


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


def _tune_allocator() -> None:
    """For the commands that run a network (train, predict, demo): :func:`rockseg.devices.tune_malloc`, only in
    the rockseg command's own process, never in a library caller's."""
    if _own_process:
        from rockseg.devices import tune_malloc

        tune_malloc()


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
    from rockseg.io import convert as run

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
    overwrite: Annotated[bool, typer.Option(help="replace an existing output")] = False,
) -> None:
    """Sample training patches with a validation split spatially disjoint from training."""
    from rockseg.io.stores import parse_phases
    from rockseg.tiling import make_tiles, split_pairs

    images, labels = split_pairs(pairs)
    s = make_tiles(
        images, labels, out, dims=dims, size=size, count=count, val_fraction=val_fraction, crop=crop or None,
        seed=seed, phases=parse_phases(phases) or None, axis=axis.value if axis else None, balance=balance,
        overwrite=overwrite,
    )
    across = f" across {s['slice_axis']}" if dims == 2 else ""
    out_console.print(
        f"wrote {out}: {s['train']} training and {s['val']} validation {dims}D patches{across} of edge {size} "
        f"from {s['sources']} image/label pair(s), {s['sampling']} sampling"
    )


# ------------------------------------------------------------------------------------------------------ train
@app.command()
@_command
def train(
    tiles: Annotated[Path, typer.Argument(help="tile set written by 'rockseg tile'")],
    out: Annotated[Path, typer.Option("-o", "--out", help="model file to write (.pt); MODEL.log.jsonl, MODEL.ckpt and MODEL.curve.png go beside it")],
    dims: Annotated[Optional[int], typer.Option(min=2, max=3, help="2 or 3; must match the tile set (default: its dims)")] = None,
    arch: Annotated[Arch, typer.Option(help="network architecture")] = Arch.unet,
    encoder: Annotated[Optional[str], typer.Option(help="encoder backbone: resnet18, resnet34, vgg11 or vgg16 (default: the architecture's own)")] = None,
    encoder_weights: Annotated[Optional[Path], typer.Option(help="local file of pretrained encoder weights (nothing is downloaded)")] = None,
    freeze_encoder: Annotated[bool, typer.Option(help="train only the decoder; the encoder stays as loaded")] = False,
    base_channels: Annotated[int, typer.Option(min=1, help="channels of the first level")] = 16,
    depth: Annotated[int, typer.Option(min=1, max=6, help="down-sampling steps")] = 3,
    norm: Annotated[Norm, typer.Option(help="normalisation layers")] = Norm.batch,
    act: Annotated[Act, typer.Option(help="activation")] = Act.relu,
    epochs: Annotated[int, typer.Option(min=1, help="maximum epochs")] = 50,
    max_minutes: Annotated[Optional[float], typer.Option(help="stop after this wall time, keeping the best model")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="tiles per forward pass (per process under torchrun)")] = 4,
    accumulate: Annotated[int, typer.Option(min=1, help="forward passes summed into each optimizer step")] = 1,
    fraction: Annotated[float, typer.Option(help="share of the training tiles used per epoch, 0 < F <= 1 (huge tile sets)")] = 1.0,
    steps_per_epoch: Annotated[Optional[int], typer.Option(min=1, help="optimizer steps per epoch (default: one pass over the tiles)")] = None,
    lr: Annotated[float, typer.Option(help="(initial) learning rate")] = 1e-3,
    optimizer: Annotated[Optimizer, typer.Option(help="adam, adamw or sgd (momentum 0.9, Nesterov)")] = Optimizer.adam,
    weight_decay: Annotated[Optional[float], typer.Option(help="weight decay (default 0; 0.01 for adamw)")] = None,
    schedule: Annotated[Schedule, typer.Option(help="plateau: halve on a flat val IoU; exp: decay to --min-lr by the last epoch; cosine: warm restarts")] = Schedule.none,
    min_lr: Annotated[float, typer.Option(help="floor of the learning-rate schedule")] = 1e-5,
    cosine_epochs: Annotated[int, typer.Option(min=1, help="epochs between warm restarts of --schedule cosine")] = 10,
    warmup_epochs: Annotated[int, typer.Option(min=0, help="epochs of linear learning-rate warm-up")] = 0,
    patience: Annotated[int, typer.Option(min=0, help="epochs without improvement before --schedule plateau lowers the rate")] = 5,
    loss: Annotated[str, typer.Option(help=f"{', '.join(t.value for t in Loss)}, or a '+'-sum: ce+dice, ce+logiou, focal+dice...")] = "ce+dice",
    focal_gamma: Annotated[float, typer.Option(help="focusing exponent of the focal loss")] = 2.0,
    iou_alpha: Annotated[float, typer.Option(help="weight of the logiou term (ce+logiou = CE - alpha log soft IoU)")] = 1.0,
    class_weights: Annotated[Optional[str], typer.Option(help="for ce and focal: 'balanced' (inverse frequency) or one per class, e.g. 1,2,5,5")] = None,
    augment: Annotated[Augment, typer.Option(help="basic: flips and 90-degree rotations; strong: also small rotations, intensity, noise, blur")] = Augment.basic,
    precision: Annotated[Precision, typer.Option(help="auto: bf16 on CUDA and on CPUs with bf16 instructions, else float32")] = Precision.auto,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N")] = "auto",
    seed: Annotated[int, typer.Option(min=0)] = 0,
    threads: Annotated[Optional[int], typer.Option(min=1, help="CPU threads (default: all cores)")] = None,
    loader_threads: Annotated[int, typer.Option(min=1, help="threads preparing batches while the network steps")] = 1,
    resume: Annotated[bool, typer.Option(help="continue from MODEL.ckpt if it is there (same settings), else start")] = False,
    overwrite: Annotated[bool, typer.Option(help="replace an existing model file and checkpoint")] = False,
) -> None:
    """Train a network on a tile set; keeps the best model by validation mean IoU.

    \b
    Recipes:
      2D UNet on slices (base 32, ELU, cross-entropy + log IoU, Adam 1e-3 decayed to 1e-5):
        rockseg tile image.zarr labels.zarr -o t2.zarr --dims 2 --size 64
        rockseg train t2.zarr -o unet2d.pt --arch unet --base-channels 32 --act elu
          --loss ce+logiou --schedule exp --min-lr 1e-5 --fraction 0.2 --epochs 100
    \b
      3D UNet on sub-volumes (keeps the connectivity 2D models lose):
        rockseg tile image.zarr labels.zarr -o t3.zarr --dims 3 --size 48
        rockseg train t3.zarr -o unet3d.pt --arch unet --base-channels 16
          --loss ce+dice --max-minutes 120
    \b
      UNet with a pretrained encoder (a local weights file), frozen, rare phases weighted:
        rockseg train t2.zarr -o unet-resnet34.pt --arch unet --encoder resnet34
          --encoder-weights resnet34.pth --freeze-encoder --loss focal+dice
          --class-weights balanced --schedule cosine --augment strong
    \b
    Several GPUs or processes: torchrun --standalone --nproc_per_node 4 -m rockseg train ...
    A killed job continues where its last epoch ended: the same command plus --resume.
    """
    from rockseg.training import TrainConfig, train as run

    _tune_allocator()
    config = TrainConfig(
        arch=arch.value, encoder=encoder, encoder_weights=str(encoder_weights) if encoder_weights else None,
        freeze_encoder=freeze_encoder, base_channels=base_channels, depth=depth, norm=norm.value, act=act.value,
        epochs=epochs, max_minutes=max_minutes, batch_size=batch_size, accumulate=accumulate, fraction=fraction,
        steps_per_epoch=steps_per_epoch, lr=lr, optimizer=optimizer.value, weight_decay=weight_decay,
        schedule=schedule.value, min_lr=min_lr, cosine_epochs=cosine_epochs, warmup_epochs=warmup_epochs,
        patience=patience, loss=loss, focal_gamma=focal_gamma, iou_alpha=iou_alpha, class_weights=class_weights,
        augment=augment.value, precision=precision.value, device=device, seed=seed, num_threads=threads,
        loader_threads=loader_threads,
    )
    summary = run(tiles, out, config=config, dims=dims, progress=interactive(), log=_log, overwrite=overwrite,
                  resume=resume)
    if summary["rank"] == 0:  # under torchrun, one line for the job, not one per process
        out_console.print(
            f"wrote {out}: best validation mean IoU {summary['best_val_mean_iou']:.4f} at epoch "
            f"{summary['best_epoch']} ({summary['epochs']} epochs, {summary['seconds']:.0f} s)"
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

    _tune_allocator()

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
    from rockseg.io.stores import open_volume, parse_crop, parse_phases, phases_of

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

    _tune_allocator()
    result = run_demo(directory, size=size, minutes=minutes, device=device, seed=seed, log=_log,
                      progress=interactive())
    out_console.print(score_table(result["score"]))
    out_console.print(f"demo finished in {result['seconds']:.0f} s; everything is in {directory}/ (score.json)")


def main() -> None:
    """Console entry point: ``--debug`` anywhere on the line shows tracebacks."""
    global _debug, _own_process
    _own_process = True
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


if __name__ == "__main__":  # torchrun -m rockseg.cli train ...
    main()
