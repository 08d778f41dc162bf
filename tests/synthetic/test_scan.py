"""Rock and image together: the image is simulate_ct of the labels; lazy Dask arrays equal in-memory ones."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest

from rockseg.errors import InputError
from rockseg.synthetic import simulate_ct, synthetic_labels, synthetic_rock


def test_rock_image_is_simulate_ct_of_rock_labels() -> None:
    options = {"blur": 1.3, "noise": 9.0, "clay_texture": 5.0, "cupping": 0.1, "rings": 4.0}
    image, labels = synthetic_rock((20, 33, 31), seed=2, porosity=0.3, **options)
    np.testing.assert_array_equal(labels, synthetic_labels((20, 33, 31), seed=2, porosity=0.3))
    np.testing.assert_array_equal(image, simulate_ct(labels, seed=2, **options))


# ---------------------------------------------------------------------------------------------------------------
# Block by block with Dask: identical to the in-memory rock
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("chunks", [(10, 17, 13), 16, (37, 50, 45), (37, 9, 45)])
def test_chunked_rock_equals_in_memory_rock(chunks: object) -> None:
    shape, options = (37, 50, 45), {"cupping": 0.2, "rings": 5.0, "blur": 1.4}
    image, labels = synthetic_rock(shape, seed=5, **options)
    lazy_image, lazy_labels = synthetic_rock(shape, seed=5, chunks=chunks, **options)
    assert isinstance(lazy_image, da.Array) and isinstance(lazy_labels, da.Array)
    assert lazy_image.shape == shape and lazy_image.dtype == np.uint8 and lazy_labels.dtype == np.uint8
    got_image, got_labels = dask.compute(lazy_image, lazy_labels, scheduler="sync")
    np.testing.assert_array_equal(got_labels, labels)
    np.testing.assert_array_equal(got_image, image)


def test_chunked_default_rock_equals_in_memory_rock() -> None:
    image, labels = synthetic_rock((30, 41, 29), seed=9)
    lazy_image, lazy_labels = synthetic_rock((30, 41, 29), seed=9, chunks=(7, 20, 11))
    np.testing.assert_array_equal(lazy_labels.compute(scheduler="threads"), labels)
    np.testing.assert_array_equal(lazy_image.compute(scheduler="threads"), image)


def test_chunked_2d_rock_equals_in_memory_rock() -> None:
    image, labels = synthetic_rock((61, 70), seed=2)
    lazy_image, lazy_labels = synthetic_rock((61, 70), seed=2, chunks=(13, 9))
    assert lazy_image.chunks[0] == (13, 13, 13, 13, 9)
    np.testing.assert_array_equal(lazy_image.compute(scheduler="sync"), image)
    np.testing.assert_array_equal(lazy_labels.compute(scheduler="sync"), labels)


def test_chunked_rock_streams_to_zarr(tmp_path) -> None:
    zarr = pytest.importorskip("zarr")
    image, labels = synthetic_rock((20, 24, 22), seed=1)
    lazy_image, lazy_labels = synthetic_rock((20, 24, 22), seed=1, chunks=8)
    da.to_zarr(lazy_image, str(tmp_path / "image.zarr"))
    da.to_zarr(lazy_labels, str(tmp_path / "labels.zarr"))
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "image.zarr"))[:], image)
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "labels.zarr"))[:], labels)


def test_bad_chunks_raise() -> None:
    with pytest.raises(InputError, match="chunks"):
        synthetic_rock((8, 8, 8), chunks=(4, 4))
    with pytest.raises(InputError, match="chunks"):
        synthetic_rock((8, 8, 8), chunks=((4, 3), 8, 8))
