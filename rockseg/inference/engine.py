"""The block engine: one process's opened stores and loaded model for a :class:`BlockJob`, and
:func:`run_block`, which runs one block of it in any process (a local thread or a Dask worker).

A block reads its region plus the halo straight from the input store, runs its tiles (:mod:`.region`), writes
whole output chunks (one writer per shard file at a time, :func:`~.store.shard_lock`); the run records a shard as
done once all its blocks are written (:mod:`.scheduling`, :mod:`.store`). The
engine is built once per process and job; its model runs on one thread (:class:`~.runner.ModelThread`).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import queue
import threading
from collections.abc import Iterator, Sequence
from typing import Any
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import zarr
from zarr.core.buffer.cpu import NDBuffer

from rockseg.devices import available_cpus, release_free_memory, resolve_device, tune_malloc
from rockseg.errors import InputError
from rockseg.inference.durable import seal
from rockseg.inference.grid import TileGrid, Triple, block_region
from rockseg.inference.region import BlockBuffers, TilePool, predict_region
from rockseg.inference.runner import ModelThread, TileRunner
from rockseg.inference.store import shard_lock, unit_files
from rockseg.io.stores import ATTR_EVERY_CHUNK, open_volume
from rockseg.models import model_from_payload, read_model_file
from rockseg.specks import remove_specks


#: networks with at most this many weights run on one CPU thread (see :meth:`_Engine._runner`)
NEAR_FREE_WEIGHTS = 256


@dataclass(frozen=True)
class BlockJob:
    """Everything a worker needs to run blocks of one prediction; small and picklable for Dask distributed."""

    volume: str
    out: str
    model: str
    model_sha256: str
    grid: TileGrid
    block: Triple
    p_low: float
    p_high: float
    batch_size: int
    device: str
    precision: str
    spatial_dims: int
    axis: int = 0
    tta: bool = False
    probabilities: str | None = None
    mask: str | None = None
    specks: int = 0  # remove isolated pieces of a phase up to this many voxels (rockseg.specks)
    classes: int = 2


class _Engine:
    """The opened stores and the loaded model of one :class:`BlockJob` (one per process, shared by threads)."""

    def __init__(self, job: BlockJob, model_thread: ModelThread | None = None) -> None:
        """``model_thread`` runs the model (see :class:`ModelThread`); default a thread of the engine's own."""
        self.job = job
        self.volume = zarr.open_array(store=job.volume, mode="r")
        self.every_chunk = dict(self.volume.attrs).get(ATTR_EVERY_CHUNK) is True and Path(job.volume).is_dir()
        self.out = open_volume(job.out, mode="r+")  # an OME-Zarr output: its level 0
        self.probs = zarr.open_array(store=job.probabilities, mode="r+") if job.probabilities else None
        self.mask = zarr.open_array(store=job.mask, mode="r") if job.mask else None
        self.flat = self.volume.ndim == 2
        self.stats = {"p_low": job.p_low, "p_high": job.p_high}
        if model_thread is None:  # a Dask distributed worker (--devices or --scheduler): keep and reuse freed
            tune_malloc()  # memory as the rockseg command does (a no-op where the user set malloc options)
            model_thread = ModelThread()
            model_thread.start()
        self.runner: TileRunner = model_thread.call(self._runner)  # built on the thread that runs it
        self.pool = TilePool(functools.partial(model_thread.call, self.runner), job.batch_size)
        self.buffers: queue.SimpleQueue[BlockBuffers] = queue.SimpleQueue()

    def _runner(self) -> TileRunner:
        job = self.job
        device = resolve_device(job.device)
        model = model_from_payload(read_model_file(job.model))
        if device.type == "cpu":
            # a near-free network (a few multiply-adds a voxel, e.g. --arch linear) is bound by memory, not
            # arithmetic: a second OpenMP thread only adds barriers, and takes the core that reads and writes
            # blocks (measured on a busy 2-core machine: 173 ns a voxel of CPU time with 2 threads, 28 with one)
            near_free = sum(p.numel() for p in model.parameters()) <= NEAR_FREE_WEIGHTS
            torch.set_num_threads(1 if near_free else available_cpus())
        return TileRunner(
            model, spatial_dims=job.spatial_dims, device=device,
            precision=job.precision, probabilities=self.probs is not None, tta=job.tta, axis=job.axis,
            margin=job.grid.halo,
        )

    @contextlib.contextmanager
    def _buffers(self) -> Iterator[BlockBuffers]:
        """A free set of block buffers (made on first need: as many as blocks are ever in flight at once)."""
        try:
            buffers = self.buffers.get_nowait()
        except queue.Empty:
            classes = self.probs.shape[0] if self.probs is not None else 0
            buffers = BlockBuffers(self.job.grid, self.job.block, classes, with_mask=self.mask is not None,
                                   dtype=self.volume.dtype)
        try:
            yield buffers
        finally:
            self.buffers.put(buffers)

    def _global(self, box: Sequence[slice]) -> tuple[slice, ...]:
        """Region coordinates (Z, Y, X) -> the volume's own index (a 2D volume drops Z)."""
        g = tuple(slice(b.start + o, b.stop + o) for b, o in zip(box, self.job.grid.origin))
        return g[1:] if self.flat else g

    def read(self, box: tuple[slice, ...], out: np.ndarray | None = None) -> np.ndarray:
        """Read a (Z, Y, X) box of the input given in volume coordinates (a 2D input is one plane), into ``out``
        (C-contiguous, the box's shape) when given."""
        sel = box[1:] if self.flat else box
        if self.every_chunk:
            self._check_files(sel)
        try:
            if out is None:
                data = np.asarray(self.volume[sel])
            else:
                target = out[0] if self.flat else out
                data = np.asarray(self.volume.get_basic_selection(sel, out=NDBuffer.from_numpy_array(target)))
        except Exception as exc:  # a chunk that does not decode: zarr raises its codec's error
            if isinstance(exc, (OSError, MemoryError)):
                raise
            raise InputError(self._unreadable(sel, exc)) from None
        data = data[None] if self.flat else data
        if data.dtype.kind == "f" and not np.isfinite(data).all():
            where = ",".join(f"{b.start}:{b.stop}" for b in box)
            raise InputError(
                f"volume {self.job.volume} holds NaN or Inf values in region {where}: replace them (e.g. with "
                f"'rockseg convert' after fixing the source) before predicting"
            )
        return data

    def seal(self, unit: Triple) -> dict[str, Any]:
        """Flush the files of a written unit (shard) to disk; the fields of its completion record
        (:func:`~.durable.seal`)."""
        return seal(unit_files(self.job.out, self.out, self.job.probabilities, self.probs, unit))

    def _check_files(self, sel: tuple[slice, ...]) -> None:
        """On a volume that stores every chunk (:data:`~rockseg.io.stores.ATTR_EVERY_CHUNK`), the files of the
        chunks (or shards) ``sel`` reads must exist: zarr would read a lost one as the fill value, silently."""
        unit = getattr(self.volume, "shards", None) or self.volume.chunks
        ranges = [range(s.start // u, -(-s.stop // u)) for s, u in zip(sel, unit)]
        for coords in itertools.product(*ranges):
            key = self.volume.metadata.encode_chunk_key(coords)
            if not (Path(self.job.volume) / key).is_file():
                where = ",".join(f"{i * u}:{min((i + 1) * u, n)}" for i, u, n in zip(coords, unit, self.volume.shape))
                raise InputError(
                    f"volume {self.job.volume}: chunk {where} (file {key}) is missing, though the volume stores every "
                    f"chunk: restore it from a copy or convert the volume again"
                )

    def _unreadable(self, sel: tuple[slice, ...], exc: Exception) -> str:
        """The message naming the first chunk of the input in ``sel`` that cannot be read."""
        chunks = self.volume.chunks
        ranges = [range(s.start // c, -(-s.stop // c)) for s, c in zip(sel, chunks)]
        for index in np.ndindex(*[len(r) for r in ranges]):
            coords = tuple(r[i] for r, i in zip(ranges, index))
            region = tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(coords, chunks, self.volume.shape))
            try:
                self.volume[region]
            except Exception as err:  # noqa: BLE001 - any decoding error names this chunk
                per_file = [f // c for f, c in zip(getattr(self.volume, "shards", None) or chunks, chunks)]
                key = self.volume.metadata.encode_chunk_key(tuple(i // k for i, k in zip(coords, per_file)))
                where = ",".join(f"{r.start}:{r.stop}" for r in region)
                return (f"volume {self.job.volume}: chunk {where} (file {key}) cannot be read ({err}): restore it "
                        f"from a copy or convert the volume again")
        return f"volume {self.job.volume}: reading {sel} failed ({exc}): check the input"

    def run_block(self, index: Triple) -> tuple[int, str]:
        grid = self.job.grid
        region = block_region(index, grid.shape, self.job.block)
        with self._buffers() as buffers:
            keep = None
            if self.mask is not None:
                keep = buffers.keep([r.stop - r.start for r in region])
                np.not_equal(np.asarray(self.mask[self._global(region)]).reshape(keep.shape), 0, out=keep)
            with self.pool.block():
                labels, probs = predict_region(
                    region, grid=grid, read=self.read, stats=self.stats, run_tiles=self.pool, keep=keep,
                    buffers=buffers, cropped=self.runner.margin,
                )
            if self.job.specks:  # pieces reaching into a neighbouring block may be larger: kept
                faces = [(r.start > 0, r.stop < n) for r, n in zip(region, grid.shape)]
                remove_specks(labels, self.job.specks, classes=self.job.classes, open_faces=faces)
            target = region[1:] if self.flat else region
            if self.probs is not None and probs is not None:
                q = np.rint(probs * np.float32(255)).astype(np.uint8)
                with shard_lock(self.probs, target):
                    self.probs[(slice(None), *target)] = q[:, 0] if self.flat else q
            with shard_lock(self.out, target):
                self.out[target] = labels[0] if self.flat else labels
        release_free_memory()
        return int(labels.size), self.runner.precision or self.job.precision


_ENGINES: dict[BlockJob, _Engine] = {}
_ENGINES_LOCK = threading.Lock()


def engine_for(job: BlockJob, model_thread: ModelThread | None = None) -> _Engine:
    """This process's engine for ``job``, built at the first call (with ``model_thread``, see :class:`_Engine`)."""
    with _ENGINES_LOCK:
        engine = _ENGINES.get(job)
        if engine is None:
            engine = _ENGINES[job] = _Engine(job, model_thread)
    return engine


def run_block(job: BlockJob, index: Triple) -> tuple[int, str]:
    """Run one block of a job (in any process: the engine is built once per process and job)."""
    return engine_for(job).run_block(index)


def seal_unit(job: BlockJob, unit: Triple) -> dict[str, Any]:
    """Flush a written unit of a job to disk (in the process that wrote it); its record's fields."""
    return engine_for(job).seal(unit)


def drop_engine(job: BlockJob) -> None:
    """Forget this process's engine for ``job``, freeing its model (a local run's, once its blocks are done)."""
    _ENGINES.pop(job, None)

