"""Overlap-tile inference over volumes larger than memory, block by block, scheduled by Dask.

Vocabulary: a *tile* is one network input (edge ``tile``); its outer ``halo`` voxels on each side are context
and are cut off, so each tile contributes its centre of edge ``step = tile - 2 * halo``. A *block* (edge
``block``) is the unit of scheduling and writing and is also the output chunk.

Tiles sit on one grid for the whole volume: tile ``k`` along an axis keeps voxels ``[k * step, (k + 1) * step)``
and reads ``[k * step - halo, k * step - halo + tile)``, with the volume mirrored (NumPy's ``reflect``) beyond
its faces. A block runs every tile whose kept centre meets it, so a voxel's label depends only on that one tile:
the result is the same for any block size, shard split or worker count, and equal to running the grid over the
whole volume in memory. A block is fastest when its edge is a multiple of ``step`` (no tile runs twice).

Each block reads its region plus the halo straight from the input store, normalises it with global statistics
(never per tile or per block, which would make seams), runs its tiles in batches, writes whole output chunks and
then a completion marker ``PRED.zarr/.rockseg/done/<z>.<y>.<x>``. Re-running the same command skips blocks with a
marker, so a killed run resumes; ``shard=(i, n)`` takes every n-th block for Slurm job arrays. A 2D model on a 3D
volume segments it slice by slice (its tiles are one voxel thick along Z).
"""

from __future__ import annotations

import itertools
import math
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import numpy as np
import torch
import zarr

from rockseg.devices import resolve_device
from rockseg.errors import IncompleteError, InputError, MissingInputError, OutputExistsError
from rockseg.models import file_sha256, model_from_payload, read_model_file
from rockseg.normalization import intensity_stats, normalize
from rockseg.progress import Reporter
from rockseg.stores import (
    ATTR_INTENSITY, ATTR_PHASES, ATTR_PROVENANCE, ATTR_SOURCE, ATTR_VOXEL_SIZE, ATTR_VOXEL_UNIT,
    compressors_for, open_volume, provenance,
)

MARKER_DIR = ".rockseg"
DEFAULT_MODEL = Path(__file__).parent / "data" / "pore-solid-3d.pt"
DEFAULT_BLOCK = 128
PRECISIONS = ("auto", "float32", "bf16")
NORMALIZATIONS = ("volume", "model")

Triple = tuple[int, int, int]


# --------------------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class PredictConfig:
    """Settings of a prediction run; the ones that change the result are recorded in the output store.

    Attributes
    ----------
    tile, halo : tile edge and halo in voxels; ``None`` takes the model's recommendation.
    block : block (and output chunk) edge in voxels; ``None`` picks a multiple of the tile step near 128.
    batch_size : tiles per forward pass.
    device : ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    precision : ``"auto"`` (bf16 autocast on CUDA, float32 on CPU), ``"float32"`` or ``"bf16"``.
    normalization : ``"volume"`` (the volume's own global statistics, from its attributes or one pass) or
        ``"model"`` (the training image's statistics stored in the model).
    shard : ``(i, n)``: run only blocks ``i, i + n, i + 2n...`` (0-based ``i``), for job arrays.
    workers : blocks in flight at once (reading the next block overlaps the model's work on this one).
    probabilities : path of an optional class-probability store, (C, *volume shape) uint8 (probability * 255).
    """

    tile: int | None = None
    halo: int | None = None
    block: int | None = None
    batch_size: int = 4
    device: str = "auto"
    precision: str = "auto"
    normalization: str = "volume"
    shard: tuple[int, int] | None = None
    workers: int = 2
    probabilities: str | None = None


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """Parse ``"I/N"`` (0 <= I < N) into ``(I, N)``; ``None`` for no sharding."""
    if not text:
        return None
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise InputError(f"--shard {text!r} is not I/N (e.g. 0/4 for the first of four shards)") from None
    if n < 1 or not 0 <= i < n:
        raise InputError(f"--shard {text!r}: need 0 <= I < N (shards are numbered from 0, e.g. 0/4 ... 3/4)")
    return i, n


# --------------------------------------------------------------------------------------------------- geometry
def reflect_index(index: np.ndarray, n: int) -> np.ndarray:
    """Map coordinates (any integers) onto ``[0, n)`` by mirroring at the faces, as ``np.pad(mode="reflect")``.

    >>> reflect_index(np.arange(-3, 7), 4).tolist()
    [3, 2, 1, 0, 1, 2, 3, 2, 1, 0]
    """
    if n == 1:
        return np.zeros_like(index)
    period = 2 * (n - 1)
    m = np.mod(index, period)
    return np.where(m < n, m, period - m)


@dataclass(frozen=True)
class TileGrid:
    """The global tile grid of a (Z, Y, X) volume.

    Tile ``k`` along an axis keeps ``[k * step, (k + 1) * step)`` and reads ``[k * step - halo, ... + tile)``.
    """

    shape: Triple
    tile: Triple
    halo: Triple

    @property
    def step(self) -> Triple:
        return tuple(t - 2 * h for t, h in zip(self.tile, self.halo))  # type: ignore[return-value]

    def tiles_meeting(self, region: Sequence[slice]) -> list[range]:
        """Per axis, the tile indices whose kept centre meets ``region`` (slices of the volume)."""
        return [range(r.start // s, -(-r.stop // s)) for r, s in zip(region, self.step)]

    def input_index(self, ks: Sequence[range]) -> list[np.ndarray]:
        """Per axis, the volume coordinates (mirrored at the faces) that the tiles ``ks`` read, in order."""
        out = []
        for k, s, h, t, n in zip(ks, self.step, self.halo, self.tile, self.shape):
            lo = k.start * s - h
            hi = (k.stop - 1) * s - h + t
            out.append(reflect_index(np.arange(lo, hi), n))
        return out


def block_grid(shape: Sequence[int], block: Sequence[int]) -> list[Triple]:
    """All block indices (z, y, x) of a volume, in C order."""
    counts = [math.ceil(n / b) for n, b in zip(shape, block)]
    return list(itertools.product(*(range(c) for c in counts)))  # type: ignore[arg-type]


def block_region(index: Sequence[int], shape: Sequence[int], block: Sequence[int]) -> tuple[slice, ...]:
    """The slices of the volume that block ``index`` covers."""
    return tuple(slice(i * b, min((i + 1) * b, n)) for i, b, n in zip(index, block, shape))


# --------------------------------------------------------------------------------------------------- the model
class TileRunner:
    """Runs batches of tiles through the network and returns labels (and probabilities when asked).

    One runner holds the model once; calls are serialised with a lock so that several blocks can be read and
    written by other threads while one batch runs.
    """

    def __init__(
        self, model: torch.nn.Module, *, spatial_dims: int, device: torch.device, precision: str,
        probabilities: bool,
    ) -> None:
        self.device = device
        self.spatial_dims = spatial_dims
        self.probabilities = probabilities
        self.autocast = precision == "bf16" or (precision == "auto" and device.type == "cuda")
        self.model = model.to(device).eval()
        self.lock = threading.Lock()

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """batch: (N, 1, Tz, Ty, Tx) float32 -> labels (N, Tz, Ty, Tx) uint8, probabilities (N, C, ...) or None."""
        with self.lock, torch.inference_mode():
            x = torch.from_numpy(batch).to(self.device, non_blocking=True)
            if self.spatial_dims == 2:
                x = x[:, :, 0]
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                logits = self.model(x)
            logits = logits.float()
            if self.spatial_dims == 2:
                logits = logits.unsqueeze(2)
            labels = logits.argmax(dim=1).to(torch.uint8).cpu().numpy()
            probs = torch.softmax(logits, dim=1).cpu().numpy() if self.probabilities else None
        return labels, probs


# --------------------------------------------------------------------------------------------------- the output
class Prediction:
    """A block-wise prediction store: the label array plus its completion markers.

    The label array is a plain Zarr array (``zarr.open_array(path)`` opens it); its attributes hold the run's
    settings under ``rockseg.settings`` and the block edge under ``rockseg.block``.
    """

    def __init__(self, path: str | os.PathLike[str], *, writable: bool = False) -> None:
        self.path = Path(path)
        self.array = open_volume(self.path, name="prediction")
        if writable:
            self.array = zarr.open_array(store=str(self.path), mode="r+")
        meta = dict(self.array.attrs).get(ATTR_PROVENANCE) or {}
        if "block" not in meta or "settings" not in meta:
            raise InputError(
                f"{self.path} is not a rockseg prediction (no block records): give a store written by "
                f"'rockseg predict'"
            )
        self.settings: dict[str, Any] = meta["settings"]
        self.block: Triple = tuple(meta["block"])  # type: ignore[assignment]
        self.shape3: Triple = tuple(meta["shape3"])  # type: ignore[assignment]
        self.probabilities: str | None = meta.get("probabilities")

    @property
    def marker_dir(self) -> Path:
        return self.path / MARKER_DIR / "done"

    def blocks(self) -> list[Triple]:
        return block_grid(self.shape3, self.block)

    def done(self) -> set[Triple]:
        out = set()
        for name in os.listdir(self.marker_dir) if self.marker_dir.exists() else ():
            try:
                out.add(tuple(int(v) for v in name.split(".")))
            except ValueError:
                continue
        return out  # type: ignore[return-value]

    def missing(self) -> list[Triple]:
        done = self.done()
        return [b for b in self.blocks() if b not in done]

    def mark_done(self, index: Triple) -> None:
        (self.marker_dir / ".".join(map(str, index))).touch()


def _create_prediction(
    out: Path, *, shape: Sequence[int], shape3: Triple, block: Triple, classes: int, attrs: dict[str, Any],
    probabilities: str | None, overwrite: bool,
) -> Prediction:
    """Create the output store, or reopen it to resume when it holds a run with the same settings."""
    settings = attrs[ATTR_PROVENANCE]["settings"]
    if out.exists() and overwrite:
        shutil.rmtree(out) if out.is_dir() else out.unlink()
        if probabilities and Path(probabilities).exists():
            shutil.rmtree(probabilities)
    if not out.exists():
        if not out.parent.exists():
            raise MissingInputError(f"the folder of output {out} does not exist: create {out.parent} first")
        tmp = out.with_name(f".{out.name}.partial-{uuid.uuid4().hex[:8]}")
        chunks = block if len(shape) == 3 else block[1:]
        zarr.create_array(
            store=str(tmp), shape=tuple(shape), chunks=tuple(chunks), dtype="uint8", fill_value=0,
            compressors=compressors_for("blosc-zstd"), attributes=attrs,
        )
        (tmp / MARKER_DIR / "done").mkdir(parents=True)
        if probabilities:
            _create_probabilities(Path(probabilities), shape=shape, chunks=chunks, classes=classes, attrs=attrs)
        try:
            os.rename(tmp, out)
        except OSError:  # another shard created it first: use theirs
            shutil.rmtree(tmp, ignore_errors=True)
    try:
        pred = Prediction(out, writable=True)
    except InputError:
        raise OutputExistsError(
            f"{out} exists and is not a rockseg prediction: choose another output or pass --overwrite"
        ) from None
    if pred.settings != settings:
        changed = sorted(k for k in set(settings) | set(pred.settings) if settings.get(k) != pred.settings.get(k))
        raise OutputExistsError(
            f"{out} holds a prediction made with other settings ({', '.join(changed)}): re-run with the same "
            f"model and options to resume it, or pass --overwrite to start again"
        )
    if pred.block != block:
        raise OutputExistsError(
            f"{out} was written with --block {pred.block[-1]}, not {block[-1]}: use the same block to resume it, "
            f"or pass --overwrite"
        )
    return pred


def _create_probabilities(path: Path, *, shape: Sequence[int], chunks: Sequence[int], classes: int,
                          attrs: dict[str, Any]) -> None:
    if path.exists():
        return
    tmp = path.with_name(f".{path.name}.partial-{uuid.uuid4().hex[:8]}")
    zarr.create_array(
        store=str(tmp), shape=(classes, *shape), chunks=(classes, *chunks), dtype="uint8", fill_value=0,
        compressors=compressors_for("blosc-zstd"),
        attributes={**attrs, "scale": "probability * 255, rounded", "axes": "C" + "ZYX"[-len(shape):]},
    )
    try:
        os.rename(tmp, path)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------------------------------- the engine
class _Engine:
    """Everything one block needs: the input, the grid, the runner, the outputs."""

    def __init__(self, volume: zarr.Array, grid: TileGrid, runner: TileRunner, stats: dict[str, Any],
                 pred: Prediction, probs: zarr.Array | None, batch_size: int) -> None:
        self.volume, self.grid, self.runner, self.stats = volume, grid, runner, stats
        self.pred, self.probs, self.batch_size = pred, probs, batch_size
        self.flat = volume.ndim == 2

    def read(self, box: tuple[slice, ...]) -> np.ndarray:
        """Read a (Z, Y, X) box of the input (a 2D input is one plane)."""
        return np.asarray(self.volume[box[1:]])[None] if self.flat else np.asarray(self.volume[box])

    def write(self, region: tuple[slice, ...], labels: np.ndarray, probs: np.ndarray | None) -> None:
        if probs is not None and self.probs is not None:
            probs = np.rint(probs * np.float32(255)).astype(np.uint8)
            self.probs[(slice(None), *(region[1:] if self.flat else region))] = probs[:, 0] if self.flat else probs
        if self.flat:
            self.pred.array[region[1:]] = labels[0]
        else:
            self.pred.array[region] = labels

    def run_block(self, index: Triple) -> int:
        region = block_region(index, self.grid.shape, self.pred.block)
        labels, probs = predict_region(
            region, grid=self.grid, read=self.read, stats=self.stats, runner=self.runner,
            batch_size=self.batch_size,
        )
        self.write(region, labels, probs)
        self.pred.mark_done(index)
        return int(labels.size)


def predict_region(
    region: tuple[slice, ...], *, grid: TileGrid, read: Callable[[tuple[slice, ...]], np.ndarray],
    stats: dict[str, Any], runner: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]],
    batch_size: int,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Labels (and probabilities) of one region of the volume from the global tile grid.

    Parameters
    ----------
    region : three slices of the (Z, Y, X) volume.
    read : reads a box (three slices) of the raw volume.
    runner : maps a batch (N, 1, Tz, Ty, Tx) of normalised tiles to (labels, probabilities or None).

    Returns
    -------
    labels : (z, y, x) uint8 array of the region; probabilities : (C, z, y, x) float32 or None.
    """
    ks = grid.tiles_meeting(region)
    index = grid.input_index(ks)
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in index)
    raw = read(box)
    data = raw[np.ix_(*(i - b.start for i, b in zip(index, box)))]
    data = normalize(data, stats)
    del raw
    step, halo, tile = grid.step, grid.halo, grid.tile
    rshape = tuple(r.stop - r.start for r in region)
    labels = np.empty(rshape, np.uint8)
    probs: np.ndarray | None = None
    origins = list(itertools.product(*ks))
    for start in range(0, len(origins), batch_size):
        chunk = origins[start : start + batch_size]
        batch = np.empty((len(chunk), 1, *tile), np.float32)
        for n, k in enumerate(chunk):
            sl = tuple(slice((kk - kr.start) * s, (kk - kr.start) * s + t) for kk, kr, s, t in zip(k, ks, step, tile))
            batch[n, 0] = data[sl]
        tile_labels, tile_probs = runner(batch)
        if tile_probs is not None and probs is None:
            probs = np.empty((tile_probs.shape[1], *rshape), np.float32)
        for n, k in enumerate(chunk):
            # the kept centre of tile k, clipped to the region, in region and in tile coordinates
            lo = [max(kk * s, r.start) for kk, s, r in zip(k, step, region)]
            hi = [min((kk + 1) * s, r.stop) for kk, s, r in zip(k, step, region)]
            dst = tuple(slice(a - r.start, b - r.start) for a, b, r in zip(lo, hi, region))
            src = tuple(slice(a - (kk * s - h), b - (kk * s - h)) for a, b, kk, s, h in zip(lo, hi, k, step, halo))
            labels[dst] = tile_labels[n][src]
            if probs is not None and tile_probs is not None:
                probs[(slice(None), *dst)] = tile_probs[n][(slice(None), *src)]
    return labels, probs


def _geometry(payload: dict[str, Any], volume_shape: Sequence[int], config: PredictConfig,
              volume_name: str) -> tuple[TileGrid, Triple]:
    """Check tile/halo/block against the model and the volume; return the grid and the block shape."""
    dims = int(payload["spatial_dims"])
    shape3: Triple = (1, *volume_shape) if len(volume_shape) == 2 else tuple(volume_shape)  # type: ignore[assignment]
    if len(volume_shape) not in (2, 3):
        raise InputError(f"{volume_name} has shape {tuple(volume_shape)}: rockseg predicts 2D (Y, X) or 3D (Z, Y, X)")
    if dims == 3 and len(volume_shape) == 2:
        raise InputError(
            f"{volume_name} is a 2D image {tuple(volume_shape)} but the model is 3D: use a 2D model "
            f"(rockseg train --dims 2)"
        )
    tile = int(config.tile or payload["tile"])
    halo = int(config.halo if config.halo is not None else payload["halo"])
    divisor = 2 ** int(payload["arch_args"].get("depth", 3))
    if tile <= 0 or tile % divisor:
        raise InputError(f"--tile {tile}: this model needs a tile edge that is a positive multiple of {divisor}")
    if halo < 0 or tile - 2 * halo < 1:
        raise InputError(f"--halo {halo}: with --tile {tile} the halo must be between 0 and {(tile - 1) // 2}")
    tile3: Triple = (tile,) * 3 if dims == 3 else (1, tile, tile)  # type: ignore[assignment]
    halo3: Triple = (halo,) * 3 if dims == 3 else (0, halo, halo)  # type: ignore[assignment]
    for axis, (n, t) in enumerate(zip(shape3, tile3)):
        if n < t:
            raise InputError(
                f"{volume_name} has {n} voxels along axis {'ZYX'[axis]}, fewer than the tile edge {t}: use a "
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
    return TileGrid(shape3, tile3, halo3), block


def predict(
    volume: str | os.PathLike[str], out: str | os.PathLike[str] | None = None, *,
    model: str | os.PathLike[str] | None = None, config: PredictConfig = PredictConfig(), overwrite: bool = False,
    progress: bool = False, log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Segment a volume with a model, block by block; resumable and shardable.

    Parameters
    ----------
    volume : path of a Zarr array, (Z, Y, X) or (Y, X), any numeric dtype.
    out : path of the label store to write; default ``<volume stem>-labels.zarr`` beside the volume.
    model : path of a rockseg model file; default the pore/solid model shipped with rockseg.
    config : the run's settings (:class:`PredictConfig`).
    overwrite : start again even if ``out`` holds a (possibly different) prediction.
    progress : show a progress bar; ``log`` gets log lines otherwise.

    Returns
    -------
    summary : dict with ``out``, ``voxels``, ``seconds``, ``voxels_per_second``, ``blocks_done``,
        ``blocks_skipped``, ``blocks_missing`` (blocks of other shards not yet done), ``complete``.
    """
    vpath = Path(volume)
    array = open_volume(vpath, name="volume")
    if array.dtype.kind not in "uifb":
        raise InputError(f"volume {vpath} has dtype {array.dtype}: give grey values (integers or floats)")
    out_path = Path(out) if out is not None else vpath.with_name(f"{vpath.name.removesuffix('.zarr')}-labels.zarr")
    model_path = Path(model) if model is not None else DEFAULT_MODEL
    payload = read_model_file(model_path)
    if int(payload.get("in_channels", 1)) != 1:
        raise InputError(f"model {model_path} takes {payload['in_channels']} channels but the volume has one")
    if config.precision not in PRECISIONS:
        raise InputError(f"--precision {config.precision!r}: choose one of {', '.join(PRECISIONS)}")
    if config.normalization not in NORMALIZATIONS:
        raise InputError(f"--normalize {config.normalization!r}: choose volume or model")
    if config.batch_size < 1 or config.workers < 1:
        raise InputError("--batch-size and --workers must be at least 1")
    grid, block = _geometry(payload, array.shape, config, str(vpath))
    device = resolve_device(config.device)
    if config.probabilities and Path(config.probabilities).resolve() == out_path.resolve():
        raise InputError("--probabilities must be another path than the output")

    stats = _normalization_stats(array, payload, config.normalization)
    phases = {int(k): v for k, v in payload["phases"].items()}
    sha = file_sha256(model_path)
    precision = config.precision if config.precision != "auto" else ("bf16" if device.type == "cuda" else "float32")
    settings = {
        "model_sha256": sha, "tile": list(grid.tile), "halo": list(grid.halo), "precision": precision,
        "normalization": {k: stats[k] for k in ("p_low", "p_high")}, "volume_shape": list(array.shape),
        "probabilities": bool(config.probabilities),
    }
    src_attrs = dict(array.attrs)
    attrs = {
        ATTR_PHASES: {str(k): v for k, v in phases.items()},
        ATTR_SOURCE: str(vpath.resolve()),
        ATTR_PROVENANCE: provenance(
            model=str(model_path), model_sha256=sha, settings=settings, block=list(block), shape3=list(grid.shape),
            probabilities=str(Path(config.probabilities).resolve()) if config.probabilities else None,
        ),
    }
    for key in (ATTR_VOXEL_SIZE, ATTR_VOXEL_UNIT):
        if key in src_attrs:
            attrs[key] = src_attrs[key]
    pred = _create_prediction(
        out_path, shape=array.shape, shape3=grid.shape, block=block, classes=len(phases), attrs=attrs,
        probabilities=config.probabilities, overwrite=overwrite,
    )
    probs = zarr.open_array(store=config.probabilities, mode="r+") if config.probabilities else None

    blocks = pred.blocks()
    mine = blocks[config.shard[0] :: config.shard[1]] if config.shard else blocks
    done = pred.done()
    todo = [b for b in mine if b not in done]

    if device.type == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    runner = TileRunner(
        model_from_payload(payload), spatial_dims=int(payload["spatial_dims"]), device=device,
        precision=precision, probabilities=probs is not None,
    )
    engine = _Engine(array, grid, runner, stats, pred, probs, config.batch_size)
    start = time.perf_counter()
    voxels = 0
    with Reporter(len(todo), "predict", bar=progress, log=log) as report:

        def run(index: Triple) -> int:
            n = engine.run_block(index)
            report.advance(n)
            return n

        # Dask's threaded scheduler keeps at most `workers` blocks in flight: while one block's tiles run through
        # the model (serialised by the runner's lock), the next block is read and decompressed.
        tasks = [dask.delayed(run, pure=False)(b) for b in todo]
        for batch in _batched(tasks, 4096):
            voxels += sum(dask.compute(*batch, scheduler="threads", num_workers=config.workers))
    seconds = time.perf_counter() - start
    missing = pred.missing()
    if not missing:
        (pred.path / MARKER_DIR / "complete").touch()
    return {
        "out": str(out_path), "voxels": voxels, "seconds": seconds,
        "voxels_per_second": voxels / seconds if seconds > 0 else 0.0,
        "blocks_done": len(todo), "blocks_skipped": len(mine) - len(todo), "blocks_missing": len(missing),
        "blocks_total": len(blocks), "complete": not missing, "device": str(device), "precision": precision,
    }


def _batched(items: list[Any], n: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def _normalization_stats(array: zarr.Array, payload: dict[str, Any], mode: str) -> dict[str, Any]:
    if mode == "model":
        return dict(payload["normalization"])
    stored = dict(array.attrs).get(ATTR_INTENSITY)
    if isinstance(stored, dict) and {"p_low", "p_high"} <= stored.keys():
        return stored
    return intensity_stats(array)


def check_complete(path: str | os.PathLike[str], *, limit: int = 20) -> Prediction:
    """Open a prediction and raise :class:`IncompleteError` listing missing blocks if it is not complete."""
    pred = Prediction(path)
    missing = pred.missing()
    if missing:
        shown = ", ".join(".".join(map(str, b)) for b in missing[:limit])
        more = f" and {len(missing) - limit} more" if len(missing) > limit else ""
        raise IncompleteError(
            f"{pred.path} is incomplete: {len(missing)} of {len(pred.blocks())} blocks missing ({shown}{more}): "
            f"run the same 'rockseg predict' command (or the missing shards) again to finish it"
        )
    return pred


