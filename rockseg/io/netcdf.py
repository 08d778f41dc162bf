"""netCDF3 and netCDF4 files as sources: the one 2D or 3D numeric variable (or the one named by ``variable``), read
slab by slab with the stored values (no masking or scaling)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rockseg.errors import InputError
from rockseg.io.sources import Source, _voxel_from_attrs
from rockseg.io.stores import ATTR_VOXEL_SIZE, ATTR_VOXEL_UNIT

NETCDF_EXTENSIONS = (".nc", ".nc4", ".cdf")


class NetcdfSource(Source):
    """A netCDF3 or netCDF4 variable of 2 or 3 dimensions, read slab by slab.

    Values are the stored ones (no masking or scaling), with ``_Unsigned`` integers returned as unsigned types.
    """

    kind = "netcdf"

    def __init__(self, path: Path, variable: str | None) -> None:
        import netCDF4

        try:
            self._ds = netCDF4.Dataset(path, "r")
        except OSError as exc:
            raise InputError(
                f"{path} is not a readable netCDF file ({exc}): check the file, or give it the extension of its "
                f"real format"
            ) from None
        try:
            name = self._pick(path, variable)
            var = self._ds.variables[name]
            var.set_auto_maskandscale(False)
            dtype = np.dtype(var.dtype)
            if dtype.kind == "i" and str(getattr(var, "_Unsigned", "false")).lower() == "true":
                dtype = np.dtype(f"u{dtype.itemsize}")
            self._var = var
            voxel_size, unit = self._voxel_size(var, var.ndim)
            chunking = var.chunking() if var.ndim == 3 else None
            hint = int(chunking[0]) if isinstance(chunking, list) else None
            self.band_reads = chunking == "contiguous" or (hint is not None and int(chunking[1]) < var.shape[1])
            super().__init__(path, var.shape, dtype, voxel_size=voxel_size, voxel_unit=unit,
                             attrs={"variable": name}, slab_hint=hint)
        except BaseException:
            self.close()
            raise

    def _candidates(self) -> dict[str, Any]:
        return {
            n: v for n, v in self._ds.variables.items()
            if isinstance(v.dtype, np.dtype) and v.dtype.kind in "biuf"
        }

    def _describe(self) -> str:
        items = [f"{n} {tuple(v.shape)} {v.dtype}" for n, v in self._ds.variables.items()]
        return ", ".join(items) or "none"

    def _pick(self, path: Path, variable: str | None) -> str:
        numeric = self._candidates()
        if variable is not None:
            if variable not in self._ds.variables:
                raise InputError(
                    f"{path} has no variable {variable!r}: choose one of its variables with --variable: "
                    f"{self._describe()}"
                )
            if variable not in numeric or numeric[variable].ndim not in (2, 3):
                v = self._ds.variables[variable]
                raise InputError(
                    f"variable {variable!r} of {path} is {tuple(v.shape)} {v.dtype}: choose a 2D or 3D numeric "
                    f"variable with --variable: {self._describe()}"
                )
            return variable
        for ndim in (3, 2):
            found = [n for n, v in numeric.items() if v.ndim == ndim]
            if len(found) == 1:
                return found[0]
            if len(found) > 1:
                raise InputError(
                    f"{path} has {len(found)} {ndim}D variables ({', '.join(found)}): choose one with --variable"
                )
        raise InputError(f"{path} has no 2D or 3D numeric variable to convert (variables: {self._describe()})")

    def _voxel_size(self, var: Any, ndim: int) -> tuple[tuple[float, ...] | None, str | None]:
        for holder in (var, self._ds):
            names = holder.ncattrs()
            unit = holder.getncattr("voxel_unit") if "voxel_unit" in names else None
            values = None
            if "voxel_size_xyz" in names:
                values = list(reversed(np.atleast_1d(holder.getncattr("voxel_size_xyz")).tolist()))[-ndim:]
            elif ATTR_VOXEL_SIZE in names:
                raw = np.atleast_1d(holder.getncattr(ATTR_VOXEL_SIZE)).tolist()
                values = raw * ndim if len(raw) == 1 else raw
            if values is not None:
                size, unit = _voxel_from_attrs({ATTR_VOXEL_SIZE: values, ATTR_VOXEL_UNIT: unit}, ndim)
                if size is not None:
                    return size, unit
        return None, None

    def _read_region(self, region: tuple[slice, ...]) -> np.ndarray:
        block = np.asarray(self._var[region])
        if block.dtype.kind == "i" and self.dtype.kind == "u":
            block = block.view(block.dtype.str.replace("i", "u"))
        return block

    def close(self) -> None:
        ds = getattr(self, "_ds", None)
        if ds is not None and ds.isopen():
            ds.close()
