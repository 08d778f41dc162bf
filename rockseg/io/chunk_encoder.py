"""The chunk and shard files of a new local Zarr v3 array, encoded and written without zarr (:class:`_ChunkFiles`).

:func:`rockseg.io.zarr_writer.write_zarr` hands it the blocks of a store it has just created; it compresses every
chunk with the numcodecs compressor (and settings) of the array's codecs in a pool of threads and writes the bytes
straight to the file zarr would read, laying the chunks of a shard out as zarr does. The files are byte for byte what
zarr writes (``tests/io/test_chunk_encoder.py`` compares them for every compressor, dtype, edge chunk and shard
layout); :meth:`_ChunkFiles.of` returns None for any codec chain or store it does not know, and zarr then writes.

Why zarr's own writer does not replace it (issue 14's rule: keep it only while a well-configured zarr stays below
90 % of its speed on ``benchmarks/convert.py``). zarr 3.1.6 was given ``async.concurrency`` 64,
``threading.max_workers`` = the CPUs and ``codec_pipeline.batch_size`` 4 (its best of the settings tried), and the
same chunk-aligned slabs. A 512³ uint16 raw volume (blosc-zstd) was converted as the benchmark does it (a fresh
process per run, the input dropped from the page cache first), the two writers alternating, 16 rounds each, on 2
shared CPUs under a load average of 6 to 10. Median of the per-round ratios of zarr's speed to this encoder's: 72 %
with 64³ chunks (medians 137 against 160 MB/s; zarr used 16 % more CPU time per MB), 62 % with
``--shards 64,512,512`` (107 against 164 MB/s; 37 % more CPU per MB). The benchmark itself, twice per writer, gave
87 and 60 MB/s against zarr's 71 and 65 (chunks), 107 and 122 against 81 and 65 (shards). The machine was noisy:
measure again on a quiet many-core one before revisiting.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from rockseg.io.intensity import IntensityAccumulator


def _write_file(path: Path, *parts: Any) -> None:
    """Write the buffers ``parts`` one after the other into a new file ``path``."""
    with open(path, "wb") as fh:
        for data in parts:
            fh.write(data)


def _morton_order(shape: Sequence[int]) -> list[tuple[int, ...]]:
    """The positions of a grid of ``shape`` in zarr's (compressed) Morton order: the bits of the coordinates
    interleaved, the first axis first, an axis dropping out once its bits are used up."""
    bits = [(int(n) - 1).bit_length() for n in shape]

    def code(position: tuple[int, ...]) -> int:
        out = shift = 0
        for bit in range(max(bits, default=0)):
            for axis, used in enumerate(bits):
                if bit < used:
                    out |= ((position[axis] >> bit) & 1) << shift
                    shift += 1
        return out

    return sorted(np.ndindex(*shape), key=code)


_EMPTY = np.iinfo(np.uint64).max  # a shard index entry for a chunk that is not stored


class _ChunkFiles:
    """The chunk (or shard) files of a new Zarr v3 array in a local folder, encoded and written without zarr.

    zarr's ``array[region] = block`` runs its codecs through asyncio on a few worker threads and writes each chunk
    to a temporary file that it then renames; on 16-bit data it reached about 200 MB/s here where one core
    compresses 280 MB/s. This writer encodes with the same numcodecs compressors the array's codecs use, with the
    same settings, in a pool of threads over whole chunks, and writes the bytes straight to the file zarr would
    read. With the sharding codec, the encoded chunks of a shard are laid out as zarr lays them out (Morton order,
    the index of offsets and lengths at the end with its CRC32C), one file per shard. The files are byte for byte
    what zarr writes (a test compares them). :meth:`of` returns None for codec chains it does not know, and the
    caller then writes through zarr.
    """

    def __init__(self, array: zarr.Array, root: Path, dtype: np.dtype, compressor: Any,
                 chunks: tuple[int, ...], shards: tuple[int, ...] | None) -> None:
        self.root = Path(root)
        self.shape = tuple(int(n) for n in array.shape)
        self.chunks = chunks
        self.shards = shards
        self.dtype = dtype
        self.fill = array.metadata.fill_value
        self._key = array.metadata.encode_chunk_key
        self._compressor = compressor
        self._folders: set[Path] = set()
        self._order = _morton_order([s // c for s, c in zip(shards, chunks)]) if shards else []

    @classmethod
    def of(cls, array: zarr.Array, root: Path) -> _ChunkFiles | None:
        """The writer for ``array`` (a store just created in the folder ``root``), or None when zarr must write."""
        meta = array.metadata
        if getattr(meta, "zarr_format", None) != 3 or not isinstance(array.store, zarr.storage.LocalStore):
            return None
        codecs = list(meta.codecs)
        grid = tuple(int(n) for n in meta.chunk_grid.chunk_shape)
        shards = None
        if len(codecs) == 1 and type(codecs[0]) is zarr.codecs.ShardingCodec:
            sharding = codecs[0]
            index = list(sharding.index_codecs)
            if (sharding.index_location.value != "end" or len(index) != 2
                    or type(index[0]) is not zarr.codecs.BytesCodec or index[0].endian.value != "little"
                    or type(index[1]) is not zarr.codecs.Crc32cCodec):
                return None
            if importlib.util.find_spec("google_crc32c") is None:  # zarr's CRC32C of the shard index
                return None
            codecs, shards, grid = list(sharding.codecs), grid, tuple(int(n) for n in sharding.chunk_shape)
        found = cls._codecs(codecs, np.dtype(array.dtype))
        if found is None:
            return None
        return cls(array, root, *found, chunks=grid, shards=shards)

    @staticmethod
    def _codecs(codecs: list[Any], dtype: np.dtype) -> tuple[np.dtype, Any] | None:
        """The stored dtype (byte order) and the numcodecs compressor (or None) of a chain ``bytes[, compressor]``;
        None for any other chain."""
        import numcodecs

        if not codecs or type(codecs[0]) is not zarr.codecs.BytesCodec or len(codecs) > 2:
            return None  # transposes, checksums and other chains are zarr's business
        endian = codecs[0].endian
        order = ">" if endian is not None and endian.value == "big" else "<"
        dtype = dtype.newbyteorder(order) if dtype.itemsize > 1 else dtype
        rest = codecs[1:]
        if not rest:
            return dtype, None
        if type(rest[0]) is zarr.codecs.BloscCodec:
            c = rest[0]
            shuffle = {"noshuffle": numcodecs.Blosc.NOSHUFFLE, "shuffle": numcodecs.Blosc.SHUFFLE,
                       "bitshuffle": numcodecs.Blosc.BITSHUFFLE}[c.shuffle.value]
            return dtype, numcodecs.Blosc(cname=c.cname.value, clevel=c.clevel, shuffle=shuffle,
                                          blocksize=c.blocksize, typesize=c.typesize)
        if type(rest[0]) is zarr.codecs.ZstdCodec:
            return dtype, numcodecs.Zstd(level=rest[0].level, checksum=rest[0].checksum)
        return None

    def _path(self, index: tuple[int, ...]) -> Path:
        path = self.root / self._key(index)
        if path.parent not in self._folders:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._folders.add(path.parent)
        return path

    def submit(self, pool: ThreadPoolExecutor, writer: ThreadPoolExecutor, block: np.ndarray, origin: Sequence[int],
               acc: IntensityAccumulator | None) -> tuple[list[Any], list[Any]]:
        """Submit the chunks of ``block`` to ``pool`` (and, with shards, the shard files to ``writer``).

        ``block`` covers whole chunks (whole shards) from ``origin``, except at the far faces of the array.
        ``acc``: the statistics that the tasks update (thread-safe ones only), or None.

        Returns the futures of the chunk tasks, and those of the shard files (none without shards).
        """
        unit = self.shards or self.chunks
        first = [o // u for o, u in zip(origin, unit)]
        count = [-(-n // u) for n, u in zip(block.shape, unit)]
        chunks, files = [], []
        for offset in np.ndindex(*count):
            index = tuple(f + o for f, o in zip(first, offset))
            corner = tuple(o * u for o, u in zip(offset, unit))
            if self.shards is None:
                local = tuple(slice(c, c + n) for c, n in zip(corner, self.chunks))
                chunks.append(pool.submit(self._write, block, local, self._path(index), acc))
                continue
            parts = {}
            for position in self._order:  # the chunks of the shard that hold voxels of the array
                start = [c + p * n for c, p, n in zip(corner, position, self.chunks)]
                if all(o + s < n for o, s, n in zip(origin, start, self.shape)):
                    local = tuple(slice(s, s + n) for s, n in zip(start, self.chunks))
                    parts[position] = pool.submit(self._encode, block, local, acc)
            chunks.extend(parts.values())
            files.append(writer.submit(self._write_shard, self._path(index), parts))
        return chunks, files

    def _encode(self, block: np.ndarray, local: tuple[slice, ...], acc: IntensityAccumulator | None) -> Any:
        part = block[local]
        if part.shape == self.chunks:
            chunk = np.ascontiguousarray(part)
            if acc is not None:
                acc.update(chunk)
        else:  # an edge chunk is stored whole, filled beyond the array as zarr does
            chunk = np.full(self.chunks, self.fill, block.dtype)
            chunk[tuple(slice(0, n) for n in part.shape)] = part
            if acc is not None:
                acc.update(part)
        chunk = chunk.astype(self.dtype, copy=False)  # the stored byte order (a no-op on little-endian machines)
        return chunk if self._compressor is None else self._compressor.encode(chunk)

    def _write(self, block: np.ndarray, local: tuple[slice, ...], path: Path, acc: IntensityAccumulator | None) -> None:
        _write_file(path, self._encode(block, local, acc))

    def _write_shard(self, path: Path, parts: dict[tuple[int, ...], Any]) -> None:
        """Write one shard file: its chunks (futures of their bytes) in Morton order, then the index."""
        import google_crc32c

        index = np.full((*(s // c for s, c in zip(self.shards, self.chunks)), 2), _EMPTY, dtype="<u8")
        data, offset = [], 0
        for position, future in parts.items():
            encoded = memoryview(future.result()).cast("B")
            index[position] = (offset, encoded.nbytes)
            data.append(encoded)
            offset += encoded.nbytes
        table = index.tobytes()
        _write_file(path, *data, table, np.uint32(google_crc32c.value(table)).astype("<u4").tobytes())
