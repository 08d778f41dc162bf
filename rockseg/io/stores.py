"""Zarr store conventions shared by every rockseg command.

A volume written by rockseg is a plain Zarr v3 array that ``zarr.open_array(path)`` opens directly, axes
(Z, Y, X) (or (Y, X) for one 2D image). Its attributes carry what a later step needs, under these keys:

``voxel_size``
    list of floats, one per axis, in ``voxel_unit`` (``"um"`` by default).
``source``
    the file the data came from.
``intensity``
    dict of intensity statistics (``min``, ``max``, ``mean``, ``std``, ``p_low``, ``p_high``...) used for global
    normalisation (see :func:`rockseg.io.intensity.intensity_stats`).
``phases``
    dict mapping a label (as a string, JSON keys are strings) to a phase name, for label volumes.
``dtype``
    the voxel type name of a converted volume (``uint16``...).
``source_region``
    for a store converted from a region of its source: ``start``, ``stop`` and ``step`` per axis, in source voxels.
``rockseg``
    provenance: ``version``, ``command`` and, for predictions, ``model_sha256`` and the run's settings.

Outputs that are written in one go (convert, tile, stitch) are built under a temporary name beside the target and
renamed into place only when complete (:func:`atomic_output`), so a crash never leaves a store that looks done.
Block-wise outputs (predict) record per-block completion markers instead (see :mod:`rockseg.inference`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr
import zarr.codecs

from rockseg import __version__
from rockseg.errors import InputError, MissingInputError, OutputExistsError
from rockseg.vocabulary import AXES, COMPRESSORS

ATTR_VOXEL_SIZE = "voxel_size"
ATTR_VOXEL_UNIT = "voxel_unit"
ATTR_SOURCE = "source"
ATTR_INTENSITY = "intensity"
ATTR_PHASES = "phases"
ATTR_PROVENANCE = "rockseg"
ATTR_DTYPE = "dtype"
ATTR_REGION = "source_region"
#: True on a volume whose every chunk is stored (``rockseg convert`` writes empty ones too): a missing chunk file
#: is then damage, not the fill value.
ATTR_EVERY_CHUNK = "every_chunk_stored"



def compressors_for(name: str = "blosc-zstd") -> list[Any] | None:
    """Return the zarr v3 codec list for a compressor name (one of :data:`COMPRESSORS`).

    ``blosc-zstd`` (the default) is Blosc with zstd at level 1, and the shuffle left to zarr, which picks it from the
    dtype: bit shuffle for 1-byte values (labels: runs of equal bits), byte shuffle for wider ones (grey values).
    Against the former zstd level 3 with bit shuffle, on 64³ chunks measured on one core: noisy 16-bit CT is
    encoded 1.3-1.6x faster and stored in 91-93% of its size instead of 90%, but decoded at ~680 MB/s instead of
    ~1800; 8-bit labels take 3.4% instead of 3.3%. ``lz4`` (Blosc lz4 with bit shuffle) encodes about 3x faster
    again and decodes fastest, with 91% on the same 16-bit data but twice the size on labels (6.7%).
    """
    if name == "blosc-zstd":
        return [zarr.codecs.BloscCodec(cname="zstd", clevel=1)]
    if name == "zstd":
        return [zarr.codecs.ZstdCodec(level=3)]
    if name == "lz4":
        return [zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")]
    if name == "none":
        return None
    raise InputError(f"unknown compressor {name!r}: choose one of {', '.join(COMPRESSORS)}")


def provenance(**extra: Any) -> dict[str, Any]:
    """The ``rockseg`` provenance attribute: version and command line, plus ``extra``."""
    return {"version": __version__, "command": " ".join(sys.argv), **extra}


def open_volume(path: str | os.PathLike[str], *, name: str = "volume", mode: str = "r") -> zarr.Array:
    """Open an existing Zarr array (v2 or v3, written by rockseg or any other tool) for reading.

    Parameters
    ----------
    path : path of a Zarr array store (a directory), or of an OME-Zarr image (its level 0 is opened).
    name : what the store is, for error messages ("image", "labels", "prediction"...).
    mode : ``"r"`` (read only) or ``"r+"`` (read and write an existing array).

    Raises
    ------
    MissingInputError
        if ``path`` does not exist.
    InputError
        if ``path`` is not a Zarr array.
    """
    p = Path(path)
    if not p.exists():
        raise MissingInputError(f"{name} {p} does not exist: check the path")
    try:
        return zarr.open_array(store=str(p), mode=mode)
    except Exception as exc:  # zarr raises several types for "not an array"
        from rockseg.io.omezarr import ome_levels

        if ome_levels(p) is not None:  # an OME-Zarr image: its full-resolution level
            return zarr.open_array(store=str(p / ome_levels(p)[0]["path"]), mode=mode)
        raise InputError(
            f"{name} {p} is not a Zarr array ({type(exc).__name__}): give a .zarr array store, "
            f"or make one with 'rockseg convert'"
        ) from None


def check_new_output(path: str | os.PathLike[str], *, overwrite: bool) -> Path:
    """Check that ``path`` may be written: refuse an existing output unless ``overwrite``."""
    p = Path(path)
    if p.exists() and not overwrite:
        raise OutputExistsError(f"{p} exists already: choose another output or pass --overwrite")
    if not p.parent.exists():
        raise MissingInputError(f"the folder of output {p} does not exist: create {p.parent} first")
    return p


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Build an output under a temporary name beside ``path`` and move it into place when complete.

    Yields the temporary path to write to. If the block raises, the temporary output is removed and ``path`` is
    left untouched, so a failed run never leaves something that looks like a result.
    """
    final = check_new_output(path, overwrite=overwrite)
    tmp = final.with_name(f".{final.name}.partial-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    if final.exists():
        _remove(final)
    os.replace(tmp, final)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def parse_crop(text: str | None, shape: Sequence[int], *, name: str = "--crop",
               volume: object = None) -> tuple[slice, ...]:
    """Parse a region ``"Z0:Z1,Y0:Y1,X0:X1"`` (Python slice syntax, empty bounds allowed) into slices.

    ``None`` or ``""`` means the whole volume. Bounds may be negative (counted from the end) and are checked
    against ``shape``: a bound past the end of its axis is refused, not clipped as Python slices are (``200:400``
    of a 300-voxel axis is a mistake, and scoring 200:300 in its place would report a region not asked for).
    ``volume`` names the volume in error messages.

    >>> parse_crop("0:10,:,5:", (20, 30, 40))
    (slice(0, 10, None), slice(0, 30, None), slice(5, 40, None))
    """
    shape = tuple(int(s) for s in shape)
    if not text:
        return tuple(slice(0, s) for s in shape)
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != len(shape):
        raise InputError(
            f"{name} {text!r} has {len(parts)} ranges but the volume has {len(shape)} axes {shape}: "
            f"give one START:STOP per axis, e.g. {','.join(['0:10'] * len(shape))}"
        )
    of_volume = f" of {volume}" if volume else ""
    out = []
    for part, n in zip(parts, shape):
        bounds = part.split(":")
        if len(bounds) != 2:
            raise InputError(f"{name} {text!r}: range {part!r} is not START:STOP")
        try:
            lo = int(bounds[0]) if bounds[0].strip() else 0
            hi = int(bounds[1]) if bounds[1].strip() else n
        except ValueError:
            raise InputError(f"{name} {text!r}: range {part!r} is not START:STOP with integers") from None
        if not (-n <= lo <= n and -n <= hi <= n):
            axis = AXES[len(AXES) - len(shape) + len(out)] if len(shape) <= len(AXES) else str(len(out))
            raise InputError(
                f"{name} {text!r}: range {part!r} reaches past axis {axis}{of_volume}, which has {n} voxels: give "
                f"bounds within -{n}..{n}, or leave one empty for the axis' end"
            )
        lo, hi, _ = slice(lo, hi).indices(n)
        if hi <= lo:
            raise InputError(f"{name} {text!r}: range {part!r} is empty for an axis of length {n}{of_volume}")
        out.append(slice(lo, hi))
    return tuple(out)


def check_crop(crop: Sequence[slice] | None, shape: Sequence[int], *, name: str) -> tuple[slice, ...]:
    """Normalise ``crop`` (one slice per axis, or None for all of ``shape``) to in-range START:STOP slices.

    ``name`` names the volume in error messages.
    """
    shape = tuple(int(s) for s in shape)
    if crop is None:
        return tuple(slice(0, n) for n in shape)
    crop = tuple(crop)
    if len(crop) != len(shape):
        raise InputError(
            f"--crop has {len(crop)} ranges but {name} has {len(shape)} axes {shape}: give one slice per axis "
            f"(START:STOP)"
        )
    out = []
    for s, n in zip(crop, shape):
        if not isinstance(s, slice):
            raise InputError(f"--crop range {s!r} for {name} is not a START:STOP range with step 1")
        lo, hi, step = s.indices(n)
        if step != 1:
            raise InputError(f"--crop range {s!r} for {name} is not a START:STOP range with step 1")
        if hi <= lo:
            raise InputError(f"--crop range {lo}:{hi} is empty for an axis of length {n} of {name}")
        out.append(slice(lo, hi))
    return tuple(out)


# The colour of each label, shared by every picture and viewer metadata rockseg writes (the score report's figures and
# the OME-Zarr ``image-label`` colours): Matplotlib's tab10 without its red and pink, which mark errors in figures.
PHASE_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#7f7f7f", "#bcbd22", "#17becf")


def phase_colour(label: int) -> str:
    """The colour (``"#rrggbb"``) of label ``label``, the same in every figure and viewer."""
    return PHASE_COLOURS[int(label) % len(PHASE_COLOURS)]


def phases_of(array: Any) -> dict[int, str]:
    """The phase names of a label volume, ``{label: name}``, or ``{}`` when it has none (or no attributes)."""
    attrs = getattr(array, "attrs", None)
    raw = (dict(attrs).get(ATTR_PHASES) if attrs is not None else None) or {}
    try:
        return {int(k): str(v) for k, v in raw.items()}
    except (AttributeError, TypeError, ValueError):
        return {}


def parse_phases(text: str | None) -> dict[int, str]:
    """Parse ``"0=pore,1=clay,2=quartz"`` into ``{0: "pore", 1: "clay", 2: "quartz"}``."""
    if not text:
        return {}
    out: dict[int, str] = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        try:
            if not sep or not value.strip():
                raise ValueError
            out[int(key)] = value.strip()
        except ValueError:
            raise InputError(f"--phases {text!r}: item {item!r} is not LABEL=NAME, e.g. 0=pore,1=grain") from None
    return out


def as_label_array(block: np.ndarray, *, path: str) -> np.ndarray:
    """Check that ``block`` holds integer labels; return it unchanged."""
    if not np.issubdtype(block.dtype, np.integer) and block.dtype != np.bool_:
        raise InputError(f"{path} has dtype {block.dtype} but labels must be integers: convert labels to uint8")
    return block
