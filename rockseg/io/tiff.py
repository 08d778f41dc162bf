"""TIFF files and other 2D images as sources: multi-page TIFF stacks, folders (or globs) of TIFF or PNG slices, and
single PNG images.

tifffile reads the TIFF headers and the data it can decode; Pillow decodes the rest (the compressions tifffile leaves
to the optional imagecodecs package, and PNG). Voxel sizes come from rockseg's own TIFF metadata, ImageJ metadata or
the resolution tags. Colour images are read only for a colour map (:mod:`rockseg.io.colour`); a source of them
reads (..., channels) blocks.
"""

from __future__ import annotations

import math
import os
import re
import struct
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from rockseg.errors import InputError
from rockseg.io.options import _native
from rockseg.io.sources import _UNIT_TO_UM, Source, _FileVoxels, _voxel_from_attrs
from rockseg.io.stores import ATTR_VOXEL_SIZE

TIFF_EXTENSIONS = (".tif", ".tiff")
PNG_EXTENSIONS = (".png",)

# Slice files decoded at once by a folder or glob of slices.
_SLICE_THREADS = 4


def _tiff_error(path: Path | str, exc: Exception) -> InputError:
    return InputError(
        f"{path} is not a readable TIFF file ({type(exc).__name__}: {exc}): check the file, or give it the "
        f"extension of its real format"
    )


def _image_error(path: Path | str, exc: Exception) -> InputError:
    return InputError(
        f"{path} is not a readable image ({type(exc).__name__}: {exc}): check the file, or give it the extension "
        f"of its real format"
    )


def _needs_imagecodecs(exc: Exception) -> bool:
    """True for tifffile's error on a compression it cannot decode without the optional imagecodecs package."""
    return "imagecodecs" in str(exc)


def _codec_error(path: Path | str, exc: Exception) -> InputError:
    """The error for a TIFF whose compression neither tifffile (through imagecodecs) nor Pillow can decode here."""
    found = re.search(r"(COMPRESSION|PREDICTOR)\.(\w+)", str(exc))
    codec = f"{found.group(2)} {found.group(1).lower()}" if found else "a compression"
    return InputError(
        f"{path} uses {codec}, which this installation cannot decode: install the imagecodecs package "
        f"(tifffile's codecs: pip install imagecodecs), or re-save the file uncompressed or with LZW"
    )


def _tiff_voxel_size(tif: Any, ndim: int) -> tuple[tuple[float, ...] | None, str | None]:
    """Voxel size from rockseg's own TIFF metadata, ImageJ metadata or the TIFF resolution tags.

    A Z spacing missing from a 3D file is taken equal to the X size: CT voxels are nearly always cubic.
    Resolutions in inches are ignored: they are print settings (72 dpi...) that image tools write by default.
    """
    shaped = tif.shaped_metadata
    if shaped and isinstance(shaped[0], dict) and ATTR_VOXEL_SIZE in shaped[0]:
        size, unit = _voxel_from_attrs(shaped[0], ndim)
        if size is not None:
            return size, unit
    if tif.is_ome:
        size, unit = _ome_tiff_voxel_size(tif, ndim)
        if size is not None:
            return size, unit
    page = tif.pages.first
    ij = tif.imagej_metadata or {}
    factor = _UNIT_TO_UM.get(str(ij.get("unit", "")).strip().lower())
    if factor is None:
        tag = page.tags.get("ResolutionUnit")
        factor = {3: 1e4, 4: 1e3, 5: 1.0}.get(int(tag.value) if tag is not None else 1)
    xres, yres = _rational(page.tags.get("XResolution")), _rational(page.tags.get("YResolution"))
    if factor is None or not xres:
        return None, None
    x = factor / xres
    y = factor / yres if yres else x
    if ndim == 2:
        return (y, x), "um"
    spacing = ij.get("spacing")
    z = float(spacing) * factor if isinstance(spacing, (int, float)) and spacing > 0 else x
    return (z, y, x), "um"


def _ome_tiff_voxel_size(tif: Any, ndim: int) -> tuple[tuple[float, ...] | None, str | None]:
    """Voxel size from the OME-XML of an OME-TIFF (``PhysicalSizeX/Y/Z`` and their units, micrometres by default)."""
    import tifffile

    try:
        image = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]
        pixels = (image[0] if isinstance(image, list) else image)["Pixels"]
    except (KeyError, IndexError, TypeError, ValueError):
        return None, None
    sizes = []
    for axis in "ZYX"[-ndim:]:
        value = pixels.get(f"PhysicalSize{axis}")
        factor = _UNIT_TO_UM.get(str(pixels.get(f"PhysicalSize{axis}Unit", "um")).strip().lower())
        if value is None and axis == "Z" and sizes == []:
            value, factor = None, None  # filled from X below: CT voxels are nearly always cubic
        elif not isinstance(value, (int, float)) or value <= 0 or factor is None:
            return None, None
        sizes.append(float(value) * factor if value is not None else None)
    if sizes[0] is None:
        sizes[0] = sizes[-1]
    return tuple(sizes), "um"


def _rational(tag: Any) -> float | None:
    if tag is None:
        return None
    value = tag.value
    try:
        num, den = value if isinstance(value, tuple) else (value, 1)
        out = float(num) / float(den)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return out if math.isfinite(out) and out > 0 else None


def _grey_or_colours(path: Any, shape: tuple[int, ...], axes: str, colours: bool, what: str) -> None:
    """Refuse colour images unless a colour map reads them, and anything that is not 2D/3D."""
    spatial = len(axes.replace("S", ""))
    channels = shape[axes.index("S")] if "S" in axes else 1
    if "S" in axes and not colours:
        raise InputError(
            f"{path} holds {what} of shape {shape} (axes {axes}): rockseg reads one grey value per voxel in 2D "
            f"images or 3D stacks; save it as single-channel grayscale, or map its colours to labels with "
            f"--colormap"
        )
    if spatial not in (2, 3) or channels not in (1, 2, 3, 4):
        raise InputError(
            f"{path} holds {what} of shape {shape} (axes {axes}): rockseg reads 2D images and 3D stacks of one "
            f"grey value (or one colour) per voxel; save each channel or time point as its own file"
        )


# Pillow decodes the TIFF compressions tifffile leaves to the optional imagecodecs package (LZW, PackBits, JPEG),
# and PNG. Its modes, as (dtype, channels) of the arrays _pillow_array returns.
_PILLOW_MODES = {
    "1": ("uint8", 1), "L": ("uint8", 1), "P": ("uint8", 3), "PA": ("uint8", 4), "LA": ("uint8", 2),
    "RGB": ("uint8", 3), "RGBA": ("uint8", 4), "I;16": ("uint16", 1), "I;16L": ("uint16", 1),
    "I;16B": ("uint16", 1), "I;16N": ("uint16", 1), "I": ("int32", 1), "F": ("float32", 1),
}


def _pillow_open(path: Any) -> Any:
    from PIL import Image

    # The decompression-bomb guard is for images from strangers on the web; CT slices of 20000^2 are normal.
    Image.MAX_IMAGE_PIXELS = None
    return Image.open(path)


def _pillow_mode(image: Any) -> tuple[np.dtype, int]:
    mode = image.mode
    if mode == "P" and "transparency" in image.info:
        mode = "PA"
    if mode not in _PILLOW_MODES:
        raise InputError(f"{image.filename} has image mode {mode}, which rockseg does not read: save it as grey or RGB")
    dtype, channels = _PILLOW_MODES[mode]
    return np.dtype(dtype), channels


def _pillow_array(image: Any, *, indices: bool = False) -> np.ndarray:
    """The image as an array; a palette image as its indices when ``indices`` (what tifffile returns), else as
    its colours."""
    _, channels = _pillow_mode(image)
    if indices and image.mode == "P":
        return np.asarray(image)
    if image.mode in ("P", "PA"):
        image = image.convert("RGBA" if channels == 4 else "RGB")
    array = np.asarray(image)
    return array.astype(np.uint8) if array.dtype == np.bool_ else array


class _PillowPages:
    """Pages of a TIFF decoded by Pillow (for compressions tifffile cannot decode here)."""

    def __init__(self, path: Any, cause: Exception, *, indices: bool) -> None:
        try:
            self._image = _pillow_open(path)
        except Exception:  # Pillow raises many types for a broken file
            raise _codec_error(path, cause) from None
        self.path, self._cause, self._indices = path, cause, indices

    def read(self, keys: Sequence[int] | None) -> np.ndarray:
        frames = []
        for key in keys if keys is not None else [0]:
            try:
                self._image.seek(key)
                frames.append(_pillow_array(self._image, indices=self._indices))
            except (OSError, EOFError, ValueError):
                raise _codec_error(self.path, self._cause) from None
        return frames[0] if keys is None else np.stack(frames)

    def close(self) -> None:
        self._image.close()


class TiffSource(Source):
    """A multi-page TIFF (one 2D plane per page) or a single-image TIFF; colour ones only for a colour map.

    Uncompressed contiguous data (ImageJ stacks, including those over 4 GB) is read with positioned reads of just the
    region; otherwise page ranges are decoded on demand, by tifffile or, for compressions it cannot decode without
    imagecodecs (LZW...), by Pillow.
    """

    kind = "tiff"

    def __init__(self, path: Path, *, colours: bool = False) -> None:
        import tifffile

        self._tif = self._data = self._pillow = None
        try:
            self._tif = tifffile.TiffFile(path)
            series = self._tif.series[0]
            shape, axes, dtype = tuple(series.shape), series.axes, np.dtype(series.dtype)
            page_shape = tuple(series.keyframe.shape)
            npages = len(series.pages)
            offset = series.dataoffset
            compression = self._tif.pages.first.compression
            byteorder = self._tif.byteorder
        except (tifffile.TiffFileError, ValueError, IndexError, KeyError, struct.error) as exc:
            self.close()
            raise _tiff_error(path, exc) from None
        try:
            _grey_or_colours(path, shape, axes, colours, "an image")
            s_axis = axes.find("S")
            self.channels = shape[s_axis] if s_axis >= 0 else 1
            spatial = tuple(n for i, n in enumerate(shape) if i != s_axis)
            self._s_axis = s_axis  # blocks as read have the layout of the series: move channels last
            self._page_shape = page_shape
            if offset is not None and compression == 1 and s_axis in (-1, len(shape) - 1):
                self._data = _FileVoxels(path, offset, shape, dtype.newbyteorder(byteorder), len(spatial))
                self.band_reads = True
            elif len(spatial) == 3 and npages != shape[0]:
                raise InputError(
                    f"{path} stores its {shape} volume in {npages} page(s) of shape {page_shape}: rockseg reads "
                    f"TIFF stacks with one plane per page; re-save it as a multi-page TIFF"
                )
            voxel_size, unit = _tiff_voxel_size(self._tif, len(spatial))
            super().__init__(path, spatial, dtype, voxel_size=voxel_size, voxel_unit=unit)
        except BaseException:
            self.close()
            raise

    def _pages(self, keys: Sequence[int] | None) -> np.ndarray:
        if self._pillow is None:
            try:
                if keys is None:
                    return self._tif.asarray(series=0)
                return self._tif.asarray(key=list(keys), series=0).reshape((len(keys), *self._page_shape))
            except (KeyError, ValueError, struct.error) as exc:
                if not _needs_imagecodecs(exc):
                    raise _tiff_error(self.path, exc) from None
                self._pillow = _PillowPages(self.path, exc, indices=self.channels == 1)
        return self._pillow.read(keys)

    def _read_region(self, region: tuple[slice, ...]) -> np.ndarray:
        if self._data is not None:
            return self._data.read(region)
        if self.ndim == 2:
            block, rest = self._pages(None), region
        else:
            block = self._pages(range(region[0].start, region[0].stop, region[0].step or 1))
            rest = (slice(None), *region[1:])
        if self._s_axis >= 0:
            block = np.moveaxis(block, self._s_axis, -1)
        return block[rest]

    def close(self) -> None:
        for handle in (getattr(self, "_data", None), getattr(self, "_pillow", None), getattr(self, "_tif", None)):
            if handle is not None:
                handle.close()


def _natural_key(path: str) -> list[Any]:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", os.path.basename(path))]


def _stack_files(folder: Path) -> list[str]:
    """The TIFF slices of a folder, or its PNG slices when it has no TIFF, in natural order."""
    for extensions in (TIFF_EXTENSIONS, PNG_EXTENSIONS):
        files = [str(p) for p in folder.iterdir() if p.is_file() and p.suffix.lower() in extensions]
        if files:
            return sorted(files, key=_natural_key)
    return []


def _slice_header(path: str, *, colours: bool, first: bool) -> tuple[tuple[int, ...], np.dtype, Any]:
    """(shape, dtype, (voxel size, unit) or None) of one 2D slice file, from its header only."""
    if path.lower().endswith(TIFF_EXTENSIONS):
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                shape, dtype, axes = tuple(series.shape), _native(np.dtype(series.dtype)), series.axes
                voxel = _tiff_voxel_size(tif, 2) if first else None
        except (tifffile.TiffFileError, ValueError, IndexError, KeyError, struct.error) as exc:
            raise _tiff_error(path, exc) from None
        if "S" in axes:
            axes_order = [axes.index(a) for a in axes if a != "S"] + [axes.index("S")]
            shape, axes = tuple(shape[i] for i in axes_order), "".join(axes[i] for i in axes_order)
    else:
        try:
            with _pillow_open(path) as image:
                dtype, channels = _pillow_mode(image)
                shape = (image.size[1], image.size[0], *((channels,) if channels > 1 else ()))
                axes = "YXS" if channels > 1 else "YX"
        except InputError:
            raise
        except Exception as exc:  # Pillow raises many types for a broken file
            raise _image_error(path, exc) from None
        voxel = None
    if len(axes.replace("S", "")) != 2 or ("S" in axes and not colours):
        raise InputError(
            f"slice {path} has shape {shape} (axes {axes}): every file of a slice folder must be one 2D grayscale "
            f"image (or, with --colormap, one colour image); convert a multi-page TIFF by giving the file itself"
        )
    return shape, dtype, voxel


def _read_slice(path: str) -> np.ndarray:
    """The image of one slice file, channels last."""
    if path.lower().endswith(TIFF_EXTENSIONS):
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                plane = series.asarray()
                if "S" in series.axes and series.axes.index("S") != len(series.axes) - 1:
                    plane = np.moveaxis(plane, series.axes.index("S"), -1)
                return plane
        except (KeyError, ValueError, struct.error, tifffile.TiffFileError) as exc:
            if not _needs_imagecodecs(exc):
                raise _tiff_error(path, exc) from None
            cause, indices = exc, "S" not in series.axes
        pages = _PillowPages(path, cause, indices=indices)
        try:
            return pages.read(None)
        finally:
            pages.close()
    try:
        with _pillow_open(path) as image:
            return _pillow_array(image)
    except InputError:
        raise
    except Exception as exc:  # Pillow raises many types for a broken file
        raise _image_error(path, exc) from None


class SliceStackSource(Source):
    """2D slice files (TIFF or PNG; a folder, or the files matching a glob) stacked along Z in natural order.

    Every slice header is checked when the source opens, so slices of different sizes or types are refused before
    any output exists. Slices are decoded a few at a time in threads (decoders release the GIL).
    """

    kind = "tiff-stack"

    def __init__(self, path: str, files: Sequence[str], *, colours: bool = False) -> None:
        self.files = list(files)
        self._pool: ThreadPoolExecutor | None = None
        first_shape = first_dtype = None
        voxel = None
        for i, f in enumerate(self.files):
            shape, dtype, found = _slice_header(f, colours=colours, first=i == 0)
            if i == 0:
                first_shape, first_dtype, voxel = shape, dtype, found
            elif shape != first_shape or dtype != first_dtype:
                raise InputError(
                    f"slice {f} is {shape} {dtype} but {self.files[0]} is {first_shape} {first_dtype}: "
                    f"every slice of {path} must have the same size and type; remove or fix the odd ones"
                )
        voxel_size, unit = voxel if voxel is not None else (None, None)
        if voxel_size is not None:
            voxel_size = (voxel_size[1], *voxel_size)
        self.channels = first_shape[2] if len(first_shape) == 3 else 1
        self.kind = "tiff-stack" if self.files[0].lower().endswith(TIFF_EXTENSIONS) else "png-stack"
        super().__init__(path, (len(self.files), *first_shape[:2]), first_dtype, voxel_size=voxel_size,
                         voxel_unit=unit, attrs={"slices": len(self.files)}, slab_hint=None)

    def plane_name(self, z: int) -> str:
        return f"slice {self.files[z]}"

    def _read_region(self, region: tuple[slice, ...]) -> np.ndarray:
        files = self.files[region[0]]
        inner = (self.channels,) if self.channels > 1 else ()
        out = np.empty((len(files), *(s.stop - s.start for s in region[1:]), *inner), self.dtype)
        plane_shape = (*self.shape[1:], *inner)

        def load(i: int) -> None:
            plane = _read_slice(files[i])
            if plane.shape != plane_shape:
                raise InputError(
                    f"slice {files[i]} changed while reading: it is now {plane.shape}, not {plane_shape}"
                )
            out[i] = plane[region[1:]]

        if len(files) == 1:
            load(0)
        else:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(_SLICE_THREADS, thread_name_prefix="rockseg-slice")
            for done in self._pool.map(load, range(len(files))):
                del done
        return out

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


TiffStackSource = SliceStackSource  # the name it had when only TIFF slices were read


class ImageSource(Source):
    """One 2D image file that Pillow reads (PNG): grey, or colour for a colour map."""

    kind = "png"

    def __init__(self, path: Path, *, colours: bool = False) -> None:
        shape, dtype, _ = _slice_header(str(path), colours=colours, first=True)
        self.channels = shape[2] if len(shape) == 3 else 1
        super().__init__(path, shape[:2], dtype)

    def _read_region(self, region: tuple[slice, ...]) -> np.ndarray:
        return _read_slice(self.path)[region]
