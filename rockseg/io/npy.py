"""NumPy ``.npy`` files as sources: C-ordered data read region by region from the file, Fortran-ordered data
memory-mapped."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rockseg.errors import InputError
from rockseg.io.sources import ArraySource, FileSource, Source


def _open_npy(path: Path) -> Source:
    """A ``.npy`` file: C-ordered data read region by region, Fortran-ordered data memory-mapped."""
    with open(path, "rb") as fh:
        magic = fh.read(6)
    if magic != b"\x93NUMPY":
        raise InputError(f"{path} is not a NumPy .npy file (no NumPy header): check the file or its extension")
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            shape, fortran, dtype = readers[version](fh) if version in readers else (None, True, None)
            offset = fh.tell()
    except (ValueError, SyntaxError) as exc:
        raise InputError(f"{path} has a broken NumPy header ({exc}): save the array again with numpy.save") from None
    if fortran or dtype is None or dtype.hasobject or len(shape) not in (2, 3):
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as exc:
            raise InputError(
                f"{path} is a .npy file rockseg cannot memory-map ({exc}): save a numeric array with numpy.save"
            ) from None
        return ArraySource(array, path=str(path), kind="npy")
    needed = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if path.stat().st_size < needed:
        raise InputError(
            f"{path} has {path.stat().st_size} bytes but its header ({shape} {dtype}) needs {needed}: the file is "
            f"truncated; copy or save it again"
        )
    return FileSource(path, offset=offset, shape=shape, dtype=dtype, kind="npy")
