"""``predict``: segment a volume with a model, block by block, in three steps that can be read alone.

1. check (:func:`_check`): every option against the volume, the model and the output's place, before anything
   is written or any block runs;
2. plan (:func:`_plan`): the normalisation statistics, the settings recorded in the output, the prediction store
   (created, or reopened to resume) and the :class:`~rockseg.inference.engine.BlockJob` every worker runs;
3. run (:func:`_run`): the blocks of this part that are not done yet, under the part's lock
   (:mod:`.scheduling` says where), then the summary.

A 2D model on a 3D volume segments it slice by slice (its tiles are one voxel thick along the chosen axis).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zarr

from rockseg.devices import resolve_device
from rockseg.errors import InputError, MissingInputError, OutputWriteError
from rockseg.cluster import connect, map_batches
from rockseg.inference.config import DEFAULT_BLOCK, PredictConfig
from rockseg.inference.engine import BlockJob
from rockseg.inference.claims import Claims
from rockseg.inference.grid import TileGrid, Triple, part_blocks
from rockseg.inference.identity import input_identity
from rockseg.inference.scheduling import run_blocks
from rockseg.inference.store import MARKER_DIR, STATS_FILE, Prediction, RunLock, create_prediction
from rockseg.io.intensity import intensity_stats, load_stats, save_stats
from rockseg.io.omezarr import is_ome_zarr, write_pyramid
from rockseg.io.stores import (
    ATTR_PHASES, ATTR_PROVENANCE, ATTR_SOURCE, ATTR_VOXEL_SIZE, ATTR_VOXEL_UNIT, open_volume,
    parse_crop, provenance,
)
from rockseg.models import file_sha256, read_model_file, resolve_model, tile_multiple
from rockseg.progress import Reporter
from rockseg.vocabulary import AXES, NORMALIZATIONS, OUTSIDE, PRECISIONS


def predict(
    volume: str | os.PathLike[str], out: str | os.PathLike[str] | None = None, *,
    model: str | os.PathLike[str] | None = None, config: PredictConfig = PredictConfig(), overwrite: bool = False,
    progress: bool = False, log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Segment a volume with a model, block by block; resumable, and split into parts for job arrays.

    Parameters
    ----------
    volume : path of a Zarr array, (Z, Y, X) or (Y, X), any numeric dtype.
    out : path of the label store to write; default ``<volume stem>-labels.zarr`` beside the volume.
    model : path of a rockseg model file, or the name of a shipped one (``rockseg models``); default the
        pore/solid model shipped with rockseg.
    config : the run's settings (:class:`PredictConfig`).
    overwrite : start again even if ``out`` holds a (possibly different) prediction.
    progress : show a progress bar; ``log`` gets log lines otherwise.

    Returns
    -------
    summary : dict with ``out``, ``voxels``, ``seconds``, ``voxels_per_second``, ``blocks_done``,
        ``blocks_skipped``, ``blocks_missing`` (blocks of other parts not yet done), ``complete``, ``precision``.
    """
    checked = _check(volume, out, model, config)
    pred, job = _plan(checked, config, overwrite=overwrite)
    return _run(pred, job, config, progress=progress, log=log)


# ------------------------------------------------------------------------------------------------------ check
@dataclass(frozen=True)
class _Checked:
    """The inputs of a run once every option has been checked against them."""

    volume: Path
    array: zarr.Array
    out: Path
    model: Path
    payload: dict[str, Any]
    grid: TileGrid
    block: Triple
    axis: int
    device: str  # what each worker resolves: with --devices, their kind ("cuda" or "cpu")
    mask: str | None  # resolved path


def _check(volume: str | os.PathLike[str], out: str | os.PathLike[str] | None,
           model: str | os.PathLike[str] | None, config: PredictConfig) -> _Checked:
    """Check every option against the volume, the model and the output's place; nothing is written."""
    vpath = Path(volume)
    array = open_volume(vpath, name="volume")
    if array.dtype.kind not in "uifb":
        raise InputError(f"volume {vpath} has dtype {array.dtype}: give grey values (integers or floats)")
    out_path = Path(out) if out is not None else vpath.with_name(f"{vpath.name.removesuffix('.zarr')}-labels.zarr")
    model_path = resolve_model(model)  # a file, or a shipped model by name; None: the default
    payload = read_model_file(model_path)
    if int(payload.get("in_channels", 1)) != 1:
        raise InputError(f"model {model_path} takes {payload['in_channels']} channels but the volume has one")
    if config.precision not in PRECISIONS:
        raise InputError(f"--precision {config.precision!r}: choose one of {', '.join(PRECISIONS)}")
    if config.normalization not in NORMALIZATIONS:
        raise InputError(f"--normalize {config.normalization!r}: choose volume or model")
    if config.shard_blocks is not None and config.shard_blocks < 1:
        raise InputError(f"--shard-blocks {config.shard_blocks}: give a positive number of blocks per shard edge")
    if config.batch_size < 1 or config.workers < 1:
        raise InputError("--batch-size and --workers must be at least 1")
    if config.specks is not None and config.specks < 0:
        raise InputError(f"--specks {config.specks}: give a speck size in voxels (0 removes nothing)")
    grid, block, axis = _geometry(payload, array.shape, config, str(vpath))
    device = _check_devices(config)
    if config.probabilities and Path(config.probabilities).resolve() == out_path.resolve():
        raise InputError("--probabilities must be another path than the output")
    mask_path = None
    if config.mask:
        mask = open_volume(config.mask, name="mask")
        if mask.shape != array.shape:
            raise InputError(
                f"mask {config.mask} has shape {mask.shape} but volume {vpath} has {array.shape}: the mask must "
                f"cover the whole volume"
            )
        mask_path = str(Path(config.mask).resolve())
    _check_output(out_path)
    if config.scheduler or config.devices:
        try:
            import distributed  # noqa: F401
        except ImportError:
            raise InputError("--scheduler and --devices need Dask distributed: pip install 'rockseg[distributed]'") from None
    if config.scheduler:
        connect(config.scheduler).close()  # an unreachable scheduler is refused now, before anything is written
    return _Checked(vpath, array, out_path, model_path, payload, grid, block, axis, device, mask_path)


def _check_devices(config: PredictConfig) -> str:
    """Check ``device`` (or ``devices``) and return the device each worker asks for."""
    device = config.device
    if config.devices:
        if config.scheduler:
            raise InputError("--devices starts its own workers: give either --devices or --scheduler, not both")
        for d in config.devices:
            resolve_device(d)
        kinds = {d.split(":")[0] for d in config.devices}
        if len(kinds) != 1 or kinds - {"cpu", "cuda"}:
            raise InputError(f"--devices {','.join(config.devices)}: list devices of one kind, e.g. cuda:0,cuda:1")
        device = kinds.pop()  # each worker sees only its own GPU, as cuda:0
    elif config.scheduler is None:
        resolve_device(config.device)
    return device


def _check_output(out_path: Path) -> None:
    """Check that the output can be written where it is asked for."""
    parent = out_path.resolve().parent
    if not parent.exists():
        raise MissingInputError(f"the folder of output {out_path} does not exist: create {parent} first")
    if not parent.is_dir():
        raise InputError(f"cannot write output {out_path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK) or (out_path.exists() and not os.access(out_path, os.W_OK)):
        raise InputError(f"cannot write output {out_path}: choose a writable place (-o) or fix its permissions")


def _geometry(payload: dict[str, Any], volume_shape: Sequence[int], config: PredictConfig,
              volume_name: str) -> tuple[TileGrid, Triple, int]:
    """Check tile/halo/block/crop/axis against the model and the volume; return the grid, block and axis."""
    dims = int(payload["spatial_dims"])
    if len(volume_shape) not in (2, 3):
        raise InputError(f"{volume_name} has shape {tuple(volume_shape)}: rockseg predicts 2D (Y, X) or 3D (Z, Y, X)")
    if dims == 3 and len(volume_shape) == 2:
        raise InputError(
            f"{volume_name} is a 2D image {tuple(volume_shape)} but the model is 3D: use a 2D model "
            f"(rockseg train --dims 2)"
        )
    if config.axis not in AXES:
        raise InputError(f"--axis {config.axis!r}: choose z, y or x")
    axis = AXES.index(config.axis)
    if len(volume_shape) == 2 and axis != 0:
        raise InputError(f"--axis {config.axis}: a 2D image has only the z direction")
    full: Triple = (1, *volume_shape) if len(volume_shape) == 2 else tuple(volume_shape)  # type: ignore[assignment]
    crop = (parse_crop(config.crop, volume_shape, volume=volume_name) if config.crop
            else tuple(slice(0, n) for n in volume_shape))
    if len(volume_shape) == 2:
        crop = (slice(0, 1), *crop)
    shape3: Triple = tuple(c.stop - c.start for c in crop)  # type: ignore[assignment]
    origin: Triple = tuple(c.start for c in crop)  # type: ignore[assignment]
    tile = int(config.tile or payload["tile"])
    halo = int(config.halo if config.halo is not None else payload["halo"])
    divisor = tile_multiple(payload["arch"], payload["arch_args"])
    if tile <= 0 or tile % divisor:
        raise InputError(f"--tile {tile}: this model needs a tile edge that is a positive multiple of {divisor}")
    in_plane = [n for ax, n in enumerate(full) if not (dims == 2 and ax == axis)]
    if config.tile is None and min(in_plane) < tile:
        # the model's recommended tile does not fit this small volume: take the largest tile that does
        tile = max(divisor, min(in_plane) // divisor * divisor)
        if config.halo is None:
            halo = min(halo, (tile - 1) // 4)
    if halo < 0 or tile - 2 * halo < 1:
        raise InputError(f"--halo {halo}: with --tile {tile} the halo must be between 0 and {(tile - 1) // 2}")
    tile3 = [tile] * 3
    halo3 = [halo] * 3
    if dims == 2:
        tile3[axis], halo3[axis] = 1, 0
    for ax, (n, t) in enumerate(zip(full, tile3)):
        if n < t:
            raise InputError(
                f"{volume_name} has {n} voxels along axis {'ZYX'[ax]}, fewer than the tile edge {t}: use a "
                f"smaller --tile (a multiple of {divisor})" + (" or a 2D model" if dims == 3 else "")
            )
    step = tile - 2 * halo
    if config.block is not None:
        if config.block < 1:
            raise InputError(f"--block {config.block}: give a positive block edge in voxels (e.g. 128)")
        edge = config.block
    else:
        edge = max(step, round(DEFAULT_BLOCK / step) * step)
    block: Triple = tuple(min(edge, n) for n in shape3)  # type: ignore[assignment]
    grid = TileGrid(shape3, tuple(tile3), tuple(halo3), origin, full)  # type: ignore[arg-type]
    return grid, block, axis


# ------------------------------------------------------------------------------------------------------ plan
def _plan(c: _Checked, config: PredictConfig, *, overwrite: bool) -> tuple[Prediction, BlockJob]:
    """The prediction store (created, or reopened to resume) and the job every worker runs."""
    stats, save_beside = _normalization_stats(c, config)
    phases = {int(k): v for k, v in c.payload["phases"].items()}
    sha = file_sha256(c.model)
    probabilities = str(Path(config.probabilities).resolve()) if config.probabilities else None
    settings = {
        "model_sha256": sha, "tile": list(c.grid.tile), "halo": list(c.grid.halo), "precision": config.precision,
        "normalization": {k: stats[k] for k in ("p_low", "p_high")}, "volume_shape": list(c.array.shape),
        "probabilities": bool(config.probabilities), "tta": config.tta,
        "crop": [list(c.grid.origin), list(c.grid.shape)], "mask": c.mask, "specks": _specks(c.payload, config),
        "input": input_identity(c.array, f"volume {c.volume}"),
    }
    if c.mask:
        settings["mask_input"] = input_identity(open_volume(c.mask, name="mask"), f"mask {c.mask}")
    src_attrs = dict(c.array.attrs)
    attrs = {
        ATTR_PHASES: {str(k): v for k, v in phases.items()},
        ATTR_SOURCE: str(c.volume.resolve()),
        ATTR_PROVENANCE: provenance(
            model=str(c.model), model_sha256=sha, settings=settings, block=list(c.block), shape3=list(c.grid.shape),
            probabilities=probabilities, outside_mask=OUTSIDE if c.mask else None,
        ),
    }
    for key in (ATTR_VOXEL_SIZE, ATTR_VOXEL_UNIT):
        if key in src_attrs:
            attrs[key] = src_attrs[key]
    out_shape = c.grid.shape[1:] if c.array.ndim == 2 else c.grid.shape
    counts = [-(-n // b) for n, b in zip(c.grid.shape, c.block)]
    shard = tuple(min(config.shard_blocks, n) for n in counts) if config.shard_blocks else None
    pred = create_prediction(
        c.out, shape=out_shape, block=c.block, classes=len(phases), attrs=attrs,
        probabilities=config.probabilities, overwrite=overwrite, shard=shard,  # type: ignore[arg-type]
    )
    if save_beside:  # the volume is read-only: keep them where the next part of this prediction looks
        save_stats(c.array, c.volume, stats, beside=pred.path / MARKER_DIR / STATS_FILE)
    job = BlockJob(
        volume=str(c.volume.resolve()), out=str(c.out.resolve()), model=str(c.model.resolve()),
        model_sha256=sha, grid=c.grid,
        block=c.block, p_low=float(stats["p_low"]), p_high=float(stats["p_high"]), batch_size=config.batch_size,
        device=c.device, precision=config.precision, spatial_dims=int(c.payload["spatial_dims"]), axis=c.axis,
        tta=config.tta, probabilities=probabilities, mask=c.mask, specks=settings["specks"], classes=len(phases),
    )
    return pred, job


def _specks(payload: dict[str, Any], config: PredictConfig) -> int:
    """The speck size of the run: ``--specks``, else the model's choice (0 for a model file without one)."""
    if config.specks is not None:
        return int(config.specks)
    return int((payload.get("postprocess") or {}).get("specks", 0))


def _normalization_stats(c: _Checked, config: PredictConfig) -> tuple[dict[str, Any], bool]:
    """The statistics the input is normalised with, and whether they still have to be stored beside the output.

    The volume's own are computed once (chunk-parallel, on the cluster with ``--scheduler``) and stored in its
    attributes, or beside the prediction where the volume is read-only, so that later runs and the other parts
    of a job array find them instead of reading the volume again.
    """
    if config.normalization == "model":
        return dict(c.payload["normalization"]), False
    beside = c.out / MARKER_DIR / STATS_FILE
    stored = load_stats(c.array, beside)
    if stored is not None:
        return stored, False
    if config.scheduler:
        def mapper(fn: Any, items: Any, done: Any) -> None:
            with connect(config.scheduler) as client:  # type: ignore[arg-type]
                map_batches(fn, items, batch=8, client=client, done=lambda rs: done(rs))

        stats = intensity_stats(c.array, mapper=mapper)
    else:
        stats = intensity_stats(c.array)
    return stats, save_stats(c.array, c.volume, stats) is None


# ------------------------------------------------------------------------------------------------------ run
def _run(pred: Prediction, job: BlockJob, config: PredictConfig, *, progress: bool,
         log: Callable[[str], None] | None) -> dict[str, Any]:
    """Run this part's units (shards) that are not done yet, under its lock; the summary of :func:`predict`."""
    mine = part_blocks(pred.units(), config.part)
    start = time.perf_counter()
    voxels = 0
    precisions: set[str] = set()
    claims = Claims(pred.path / MARKER_DIR)
    with RunLock(pred.path, config.part):
        done = pred.done(check_files=True)  # a record whose files are gone or cut short is redone
        todo = [(u, pred.unit_blocks(u)) for u in mine if u not in done]
        n_todo = sum(len(blocks) for _, blocks in todo)
        ran: list[int] = []
        with pred.recorder(config.part) as log_file, Reporter(n_todo, "predict", bar=progress, log=log) as report:
            def record(unit: Triple, **fields: Any) -> None:
                log_file.record(unit, **fields)
                claims.keep(unit)

            try:
                for n, precision in run_blocks(job, _claimed(pred, todo, claims, ran), config, report, record):
                    voxels += n
                    precisions.add(precision)
            except OSError as exc:  # full disk, quota, read-only file system...
                raise OutputWriteError(
                    f"writing {pred.path} failed ({exc.strerror or exc}): free space or fix permissions, then run "
                    f"the same command again to resume"
                ) from None
            finally:
                claims.release_all()
    seconds = time.perf_counter() - start
    n_todo = sum(ran)
    missing = pred.missing()
    if not missing:
        if is_ome_zarr(pred.path):  # the viewers' pyramid, once every block is in
            write_pyramid(pred.path, workers=config.workers)
        pred.mark_complete()
    n_mine = sum(len(pred.unit_blocks(u)) for u in mine)
    return {
        "out": str(pred.path), "voxels": voxels, "seconds": seconds,
        "voxels_per_second": voxels / seconds if seconds > 0 else 0.0,
        "blocks_done": n_todo, "blocks_skipped": n_mine - n_todo,
        "blocks_missing": sum(len(pred.unit_blocks(u)) for u in missing),
        "blocks_total": len(pred.blocks()), "complete": not missing, "precision": ",".join(sorted(precisions)) or None,
        "shards_total": len(pred.units()), "shards_done": len(ran),
        "claimed_by_others": dict(claims.held_by_others),
    }


def _claimed(pred: Prediction, todo: list[tuple[Triple, list[Triple]]], claims: Claims,
             ran: list[int]) -> Iterator[tuple[Triple, list[Triple]]]:
    """The units of ``todo`` this run claims (:mod:`.claims`), as they are drawn; a unit another live run holds
    is left to it. A claim taken over from a dead run may be of a unit that run finished after this one read the
    records: they are read again (once per dead run). ``ran`` gets the block count of each unit yielded."""
    done: set[Triple] = set()
    refreshed: set[str] = set()
    for unit, blocks in todo:
        if not claims.take(unit):
            continue
        if claims.stale is not None:
            if claims.stale not in refreshed:
                refreshed.add(claims.stale)
                done = pred.done(check_files=True)
            if unit in done:
                claims.keep(unit)
                continue
        for path in pred.unit_files(unit):  # what a killed run or a lost disk left is redone whole: a shard
            path.unlink(missing_ok=True)  # file that does not decode must not be read back to write into it
        ran.append(len(blocks))
        yield unit, blocks
