"""Tests of rockseg.io.chunk_encoder: the chunk and shard files are byte for byte what zarr writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from rockseg.io import chunk_encoder
from rockseg.io.zarr_writer import write_zarr
from tests.io.samples import random_volume


def chunk_files(store: Path) -> dict[str, bytes]:
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted((store / "c").rglob("*")) if p.is_file()}


@pytest.mark.parametrize("compressor", ["blosc-zstd", "zstd", "lz4", "none"])
@pytest.mark.parametrize("dtype", ["uint8", "int16", "float32"])
def test_chunk_files_are_byte_for_byte_what_zarr_writes(tmp_path, compressor, dtype):
    from rockseg.io.stores import compressors_for

    cases = [((13, 17, 19), (5, 6, 7), None), ((9, 16), (4, 16), None), ((4, 8, 8), (4, 8, 8), None),
             # shards: 3 x 2 x 3 chunks (a Morton order that skips codes), edge shards with chunks beyond the array
             ((20, 15, 40), (4, 6, 8), (12, 12, 24)), ((9, 16), (4, 4), (8, 16))]
    for shape, chunks, shards in cases:
        vol = random_volume(shape, dtype)
        vol.flat[:7] = 0  # a run zarr's own writer would also have to store
        ours = write_zarr(vol, tmp_path / "ours.zarr", chunks=chunks, shards=shards, compressor=compressor,
                          overwrite=True)
        theirs = zarr.create_array(store=str(tmp_path / "theirs.zarr"), shape=shape, chunks=chunks, shards=shards,
                                   dtype=vol.dtype, compressors=compressors_for(compressor), fill_value=0,
                                   zarr_format=3, overwrite=True, config={"write_empty_chunks": True})
        theirs[...] = vol
        assert ours.metadata.codecs == theirs.metadata.codecs
        mine, zarrs = chunk_files(tmp_path / "ours.zarr"), chunk_files(tmp_path / "theirs.zarr")
        assert len(mine) == int(np.prod([-(-n // c) for n, c in zip(shape, shards or chunks)]))  # edges included
        assert mine == zarrs
        np.testing.assert_array_equal(ours[...], vol)


def test_chunk_writer_leaves_other_codec_chains_to_zarr(tmp_path):
    plain = zarr.create_array(store=str(tmp_path / "a.zarr"), shape=(8, 8), chunks=(4, 4), dtype="uint16")
    sharded = zarr.create_array(store=str(tmp_path / "s.zarr"), shape=(8, 8), chunks=(4, 4), shards=(8, 8),
                                dtype="uint16")
    for array in (plain, sharded):
        assert chunk_encoder._ChunkFiles.of(array, tmp_path / "a.zarr") is not None
    checked = zarr.create_array(store=str(tmp_path / "c.zarr"), shape=(8, 8), chunks=(4, 4), dtype="uint16",
                                compressors=[zarr.codecs.ZstdCodec(), zarr.codecs.Crc32cCodec()])
    index_first = zarr.create_array(store=str(tmp_path / "i.zarr"), shape=(8, 8), dtype="uint16", chunks=(8, 8),
                                    compressors=None,
                                    serializer=zarr.codecs.ShardingCodec(chunk_shape=(4, 4), index_location="start"))
    in_memory = zarr.create_array(store=zarr.storage.MemoryStore(), shape=(8, 8), chunks=(4, 4), dtype="uint16")
    for array in (checked, index_first, in_memory):
        assert chunk_encoder._ChunkFiles.of(array, tmp_path / "x.zarr") is None
