"""Reading and writing volumes: the library behind ``rockseg convert`` and the exports of ``stitch``.

The modules, in the order data flows through them:

- :mod:`~rockseg.io.options`: the ``parse_*`` / ``_check_*`` helpers that check every option before any data is read;
- :mod:`~rockseg.io.sources`: :class:`Source`, what every reader returns, and regions of sources
  (:func:`select_region`: ``--crop`` / ``--slices``);
- one module per format family of sources: :mod:`~rockseg.io.tiff` (TIFF, PNG, slice folders),
  :mod:`~rockseg.io.raw` (raw binary, MetaImage, NRRD, PyHST headers), :mod:`~rockseg.io.netcdf`,
  :mod:`~rockseg.io.hdf5` (HDF5/NeXus, also an export), :mod:`~rockseg.io.npy`; :mod:`~rockseg.io.colour` maps colour-coded label images to labels;
- :mod:`~rockseg.io.opening`: :func:`open_source` picks the reader by the kind of path;
- :mod:`~rockseg.io.streaming`: slabs and bands read ahead in a thread, progress, read and write errors;
- :mod:`~rockseg.io.zarr_writer` (:func:`write_zarr`, with :mod:`~rockseg.io.chunk_encoder`, its parallel chunk
  and shard encoder) and :mod:`~rockseg.io.exporters` (:func:`export` to TIFF, netCDF, raw + MetaImage, NumPy);
- :mod:`~rockseg.io.conversion`: :func:`convert`, check → plan → run;
- :mod:`~rockseg.io.omezarr`: OME-Zarr (NGFF 0.5) images for viewers, ``*.ome.zarr`` outputs and their pyramids;
- :mod:`~rockseg.io.stores` (store conventions: attributes, atomic outputs, crops, phases) and
  :mod:`~rockseg.io.intensity` (intensity statistics, normalisation), which every other package uses.

Everything streams in slabs of whole planes along axis 0, so memory stays bounded by a few slabs whatever the size of
the volume; no reader ever loads a whole source or memory-maps a large file. Every output is built under a temporary
name and renamed into place when complete, and bad input raises a :class:`~rockseg.errors.RocksegError` before any
output is created where it can be known before reading the data.

This package imports only ``rockseg.errors``, ``rockseg.devices``, ``rockseg.progress``, ``rockseg.vocabulary`` and the
package version from rockseg: never models, inference, training or metrics.

The public names below are re-exported lazily (on first use), so that importing one module (``rockseg.io.stores``,
which every command needs) does not load every reader. The modules holding :func:`convert` and :func:`export` are
named ``conversion`` and ``exporters``, not ``convert`` and ``export``: a submodule of the same name as a re-exported
function would replace it as an attribute of the package once imported.
"""

from __future__ import annotations

from rockseg.lazy import lazy_exports

_EXPORTS = {
    "DEFAULT_CHUNKS_2D": "rockseg.io.options",
    "DEFAULT_CHUNKS_3D": "rockseg.io.options",
    "DEST_EXTENSIONS": "rockseg.io.exporters",
    "SOURCE_EXTENSIONS": "rockseg.io.opening",
    "ColourMap": "rockseg.io.colour",
    "Source": "rockseg.io.sources",
    "convert": "rockseg.io.conversion",
    "export": "rockseg.io.exporters",
    "open_source": "rockseg.io.opening",
    "parse_colormap": "rockseg.io.colour",
    "parse_dtype": "rockseg.io.options",
    "parse_shape": "rockseg.io.options",
    "parse_slices": "rockseg.io.options",
    "select_region": "rockseg.io.sources",
    "write_zarr": "rockseg.io.zarr_writer",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
