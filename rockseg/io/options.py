"""Checking the options of convert and export before any data is read: shapes, voxel types, plane ranges, chunk and
shard shapes, voxel sizes and phase names.

Each parser takes the text of a command-line option (or the Python value a caller passes instead) and returns a
checked value, or raises an :class:`~rockseg.errors.InputError` that names the option, the bad value and a good one,
so a misspelt option stops the command before an output exists (STYLE.md, "Check inputs before building a graph").
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rockseg.errors import InputError
from rockseg.io.stores import parse_phases

DEFAULT_CHUNKS_3D = (64, 64, 64)
DEFAULT_CHUNKS_2D = (512, 512)
DTYPE_NAMES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64", "float32", "float64")


def parse_shape(text: str | Sequence[int], *, name: str = "--shape") -> tuple[int, ...]:
    """Parse ``"Z,Y,X"`` (or ``"Y,X"``; commas, ``x`` or spaces between) into a tuple of positive ints.

    >>> parse_shape("400,500,600")
    (400, 500, 600)
    >>> parse_shape("64x64x64", name="--chunks")
    (64, 64, 64)
    """
    try:
        if isinstance(text, str):
            parts = re.split(r"\s*[,x×]\s*|\s+", text.strip().lower())
            if not all(re.fullmatch(r"[+-]?\d+", p) for p in parts):
                raise ValueError
        else:
            parts = list(text)
            if not all(isinstance(p, (int, np.integer)) and not isinstance(p, bool) for p in parts):
                raise ValueError
        values = tuple(int(p) for p in parts)
    except (TypeError, ValueError):
        raise InputError(f"{name} {text!r} is not a list of integers: give Z,Y,X, e.g. 400,500,600") from None
    if len(values) not in (2, 3) or any(v <= 0 for v in values):
        raise InputError(
            f"{name} {text!r} must be 3 positive integers Z,Y,X (or 2 for one image Y,X), e.g. 400,500,600"
        )
    return values


def parse_dtype(text: str | np.dtype | type, *, byte_order: str = "little", name: str = "--dtype") -> np.dtype:
    """Parse a voxel type name (``uint8``, ``uint16``, ``float32``...) with the byte order of a raw file.

    An explicit order in the name (``">u2"``, ``"<f4"``) wins over ``byte_order``.

    >>> parse_dtype("uint16", byte_order="big").str
    '>u2'
    """
    order = _parse_byte_order(byte_order)
    try:
        dtype = np.dtype(text)
    except TypeError:
        dtype = None
    if dtype is None or dtype.kind not in "biuf" or dtype.itemsize > 8:
        raise InputError(f"{name} {text!r} is not a voxel type rockseg knows: choose one of {', '.join(DTYPE_NAMES)}")
    explicit = isinstance(text, str) and text.strip()[:1] in "<>"
    if dtype.itemsize > 1 and not explicit:
        dtype = dtype.newbyteorder(order)
    return dtype


def _parse_byte_order(text: str) -> str:
    order = {"little": "<", "big": ">", "<": "<", ">": ">"}.get(str(text).strip().lower())
    if order is None:
        raise InputError(f"--byte-order {text!r} is not a byte order: choose little or big")
    return order


def _native(dtype: np.dtype) -> np.dtype:
    return dtype.newbyteorder("=") if dtype.byteorder not in "=|" else dtype


def parse_slices(text: str | slice) -> slice:
    """Parse a plane range ``"START:STOP[:STEP]"`` along Z (Python slice syntax, empty bounds allowed).

    One index ``"N"`` means the single plane N. Bounds may be negative (counted from the end); they are checked
    against the volume by :func:`select_region`.

    >>> parse_slices("0:400:50"), parse_slices("100:"), parse_slices("7")
    (slice(0, 400, 50), slice(100, None, None), slice(7, 8, None))
    """
    if isinstance(text, slice):
        parts: list[Any] = [text.start, text.stop, text.step]
    else:
        raw = str(text).strip().split(":")
        try:
            if len(raw) == 1:
                index = int(raw[0])
                return slice(index, index + 1 if index != -1 else None)
            if len(raw) > 3:
                raise ValueError
            parts = [int(p) if p.strip() else None for p in raw] + [None] * (3 - len(raw))
        except ValueError:
            raise InputError(
                f"--slices {text!r} is not START:STOP[:STEP] with integers: e.g. 100:200, or 0:400:50 for every "
                f"50th plane"
            ) from None
    if parts[2] is not None and parts[2] <= 0:
        raise InputError(f"--slices {text!r}: the step must be a positive number of planes, e.g. 0:400:50")
    return slice(*parts)


def _check_chunks(chunks: Any, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Chunk shape for an output of ``shape``: the default, or ``chunks`` checked and clipped to the shape."""
    if chunks is None:
        chunks = DEFAULT_CHUNKS_3D if len(shape) == 3 else DEFAULT_CHUNKS_2D
    else:
        chunks = parse_shape(chunks, name="--chunks")
        if len(chunks) != len(shape):
            raise InputError(
                f"--chunks {','.join(map(str, chunks))} has {len(chunks)} values but the volume has "
                f"{len(shape)} axes {tuple(shape)}: give one chunk length per axis"
            )
    return tuple(min(int(c), int(s)) for c, s in zip(chunks, shape))


def _check_shards(shards: Any, chunks: tuple[int, ...], shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """Shard shape (a whole number of chunks per axis), clipped to the chunks that cover ``shape``; or None."""
    if shards is None:
        return None
    shards = parse_shape(shards, name="--shards")
    given = ",".join(map(str, shards))
    if len(shards) != len(shape):
        raise InputError(
            f"--shards {given} has {len(shards)} values but the volume has {len(shape)} axes {tuple(shape)}: give "
            f"one shard length per axis"
        )
    if any(s % c for s, c in zip(shards, chunks)):
        example = ",".join(str(c * max(1, round(s / c))) for s, c in zip(shards, chunks))
        raise InputError(
            f"--shards {given} is not a whole number of chunks {','.join(map(str, chunks))} along every axis: give "
            f"multiples of the chunk shape, e.g. {example}"
        )
    return tuple(min(s, -(-n // c) * c) for s, c, n in zip(shards, chunks, shape))


def _check_voxel_size(voxel_size: Any, ndim: int) -> tuple[float, ...] | None:
    """``voxel_size`` (one float, micrometres, or one per axis) as one positive float per axis, or None."""
    if voxel_size is None:
        return None
    values = [voxel_size] * ndim if np.isscalar(voxel_size) else list(voxel_size)
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise InputError(f"--voxel-size {voxel_size!r} is not a number: give the voxel edge in micrometres") from None
    if len(out) != ndim or not all(math.isfinite(v) and v > 0 for v in out):
        raise InputError(
            f"--voxel-size {voxel_size!r} must be one positive number (micrometres) or one per axis ({ndim})"
        )
    return out


def _check_phases(phases: str | Mapping[Any, Any] | None) -> dict[int, str]:
    if phases is None or isinstance(phases, str):
        return parse_phases(phases)
    try:
        return {int(k): str(v) for k, v in phases.items()}
    except (TypeError, ValueError, AttributeError):
        raise InputError(f"--phases {phases!r} is not LABEL=NAME pairs, e.g. 0=pore,1=grain") from None
