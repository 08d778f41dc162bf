"""Moving a volume through memory in slabs: every writer reads its source here, so memory stays bounded by a few slabs
whatever the size of the volume.

A slab is whole planes along axis 0 (:func:`_slabs`), or a band of rows of them (:func:`_bands`) when whole planes
would be too big; the next one is read in a thread while the caller writes the current one (:func:`_prefetch`). A
failed read becomes an :class:`~rockseg.errors.InputError` naming the plane; a failed write (a full disk...) becomes
one :class:`~rockseg.errors.OutputWriteError` naming the output (:func:`_writing`). :func:`_progress_bar` shows the
bytes done on stderr.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from rockseg.errors import InputError, OutputWriteError, RocksegError
from rockseg.io.sources import Source

# The next slab is read ahead while the current one is written when a slab is at most this big (two slabs are then
# in memory at once); bigger ones (deep shards of planes read whole) are read in turn, to keep memory bounded.
_PREFETCH_BYTES = 256 << 20


@contextlib.contextmanager
def _progress_bar(description: str, total: int,
                  enabled: bool | Callable[[str], None]) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(nbytes)``; a rich progress bar on stderr when ``enabled`` is True, one log line per 5 % of
    ``total`` with an ETA when it is a callable taking a line (no terminal: cron, Slurm)."""
    if callable(enabled):
        from rockseg.progress import LogLines

        yield LogLines(description, total, enabled)
        return
    if not enabled:
        yield lambda n: None
        return
    from rich.progress import BarColumn, DownloadColumn, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    from rockseg.progress import stderr_progress

    with stderr_progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                         TimeRemainingColumn()) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


def _read_checked(source: Source, z0: int, z1: int, rows: tuple[int, int] | None = None) -> np.ndarray:
    """Planes ``z0:z1`` (only ``rows`` of them when given); a failed read is an InputError naming where."""
    try:
        if rows is None:
            return source.read(z0, z1)
        return source.read_region((slice(z0, z1), slice(*rows), slice(0, source.shape[2])))
    except RocksegError:
        raise
    except (OSError, RuntimeError) as exc:  # netCDF and HDF5 report broken data as RuntimeError
        raise InputError(
            f"cannot read {source.plane_name(z0)}: {exc}; check the file (and that nothing is still writing it)"
        ) from None


def _check_block(source: Source, block: np.ndarray, shape: tuple[int, ...]) -> None:
    if block.shape != shape:
        raise InputError(f"{source.path} gave a block of shape {block.shape} where {shape} was expected")


def _slabs(source: Source, slab: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """``(z0, z1, block)`` over the whole source, ``slab`` planes at a time (one block for a 2D source)."""
    for z0, z1, _y0, _y1, block in _bands(source, slab, None):
        yield z0, z1, block


def _bands(source: Source, slab: int, band: int | None) -> Iterator[tuple[int, int, int, int, np.ndarray]]:
    """``(z0, z1, y0, y1, block)`` over the whole source: ``slab`` planes at a time, in bands of ``band`` rows
    (whole planes when ``band`` is None)."""
    if source.ndim == 2:
        block = _read_checked(source, 0, 1)
        _check_block(source, block, source.shape)
        yield 0, 1, 0, source.shape[0], block
        return
    depth, rows, cols = source.shape
    band = rows if band is None else min(band, rows)
    for z0 in range(0, depth, slab):
        z1 = min(depth, z0 + slab)
        for y0 in range(0, rows, band):
            y1 = min(rows, y0 + band)
            block = _read_checked(source, z0, z1, None if band == rows else (y0, y1))
            _check_block(source, block, (z1 - z0, y1 - y0, cols))
            yield z0, z1, y0, y1, block


_END = object()


def _prefetch(items: Iterator[Any], nbytes: int | None) -> Iterator[Any]:
    """``items``, each produced in a thread while the caller handles the previous one.

    Reading (a system call or a decoder, both without the GIL) then overlaps compression and writing. Items of
    more than ``_PREFETCH_BYTES`` (or of unknown size, None) are produced in turn instead, so that two of them are
    never in memory at once.
    """
    if nbytes is None or nbytes > _PREFETCH_BYTES:
        yield from items
        return
    pool = ThreadPoolExecutor(1, thread_name_prefix="rockseg-read")
    try:
        pending = pool.submit(next, items, _END)
        while True:
            item = pending.result()
            if item is _END:
                break
            pending = pool.submit(next, items, _END)
            yield item
    finally:
        pool.shutdown(wait=True)  # a read still running finishes before its generator is closed
        close = getattr(items, "close", None)
        if close is not None:
            close()


def _stream(source: Source, slab: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """:func:`_slabs` with the next slab read ahead (see :func:`_prefetch`)."""
    plane = int(np.prod(source.shape[1:], dtype=np.int64)) * source.dtype.itemsize
    several = source.ndim == 3 and slab < source.shape[0]
    return _prefetch(_slabs(source, slab), slab * plane if several else None)


def _stream_into(target: Any, source: Source, slab: int, dtype: Any, advance: Callable[[int], None]) -> None:
    """Copy the whole source into ``target`` (an HDF5 dataset or a netCDF variable of its shape), slab by slab."""
    for z0, z1, block in _stream(source, slab):
        block = block.astype(dtype, copy=False)
        if source.ndim == 2:
            target[...] = block
        else:
            target[z0:z1] = block
        advance(block.nbytes)


def _write_error(dest: Path, exc: OSError) -> OutputWriteError:
    code = exc.errno
    reason = exc.strerror or str(exc) or type(exc).__name__
    name = errno.errorcode.get(code, "") if code else ""
    if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        fix = (f"free space on the disk of {dest.parent.absolute()} (or raise the quota), or write the output to "
               f"another disk, then run again")
    elif code in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "write the output to a folder you may write to"
    else:
        fix = "check the disk and run again"
    return OutputWriteError(
        f"cannot write {dest}: {reason}{f' ({name})' if name else ''}; the partial output was removed: {fix}"
    )


@contextlib.contextmanager
def _writing(dest: Path) -> Iterator[None]:
    """Turn a failed write (full disk, quota, permissions...) into one OutputWriteError naming ``dest``."""
    try:
        yield
    except RocksegError:
        raise
    except OSError as exc:
        raise _write_error(dest, exc) from None
