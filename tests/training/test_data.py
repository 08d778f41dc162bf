"""Tests of rockseg.training.data: per-source normalisation of tiles, and the prefetcher's order."""

from __future__ import annotations

import time

import numpy as np
import pytest
import zarr

from rockseg.errors import InputError
from rockseg.models import read_model_file
from rockseg.training import TrainConfig, make_tiles, read_tiles, train
from rockseg.training import data as training_data
from tests.training.helpers import TINY, two_phase


def test_per_source_normalisation_equals_normalize_tile_by_tile():
    from rockseg.io.intensity import normalize

    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (6, 4, 4)).astype(np.uint8)
    stats = [{"p_low": 10.0, "p_high": 200.0}, {"p_low": 50.0, "p_high": 50.0, "std": 7.0}, {"p_low": 0.3, "p_high": 1.7}]
    source = np.array([0, 1, 2, 2, 1, 0], np.uint8)
    lo, inv = training_data.tile_normalization(stats, source, 6)
    out = training_data.normalize_tiles(images, lo, inv)
    for i in range(6):
        np.testing.assert_array_equal(out[i], normalize(images[i], stats[source[i]]))
    attrs = {"intensity": stats[0], "sources": [{"intensity": s} for s in stats]}
    arrays = {"train/image": images, "train/labels": images % 2, "train/source": source,
              "val/image": images[:2], "val/labels": images[:2] % 2, "val/source": np.array([2, 1], np.uint8)}
    parts, first = training_data._read_parts("t.zarr", attrs, arrays)
    np.testing.assert_array_equal(parts["train"].lo, lo)
    np.testing.assert_array_equal(parts["val"].inv, inv[[2, 1]])
    assert first == stats
    # A version-1 set: no sources, every tile normalised with attrs["intensity"].
    parts, first = training_data._read_parts("t.zarr", {"intensity": stats[1]},
                                             {k: v for k, v in arrays.items() if not k.endswith("source")})
    assert first == [stats[1]] and (parts["train"].inv == np.float32(1 / 7)).all()
    with pytest.raises(InputError, match="refers to source 5"):
        training_data._read_parts("t.zarr", attrs, {**arrays, "train/source": np.array([5, 0, 0, 0, 0, 0], np.uint8)})


def test_two_sources_train_with_their_own_statistics(tmp_path):
    image, labels = two_phase((8, 32, 32), seed=2)
    bright = (image.astype(np.uint16) * 100 + 5000).astype(np.uint16)  # same rock, another scanner's grey values
    for name, data in (("a.zarr", image), ("b.zarr", bright), ("l.zarr", labels)):
        zarr.create_array(str(tmp_path / name), data=data, chunks=(8, 32, 32))
    make_tiles([tmp_path / "a.zarr", tmp_path / "b.zarr"], [tmp_path / "l.zarr", tmp_path / "l.zarr"],
               tmp_path / "t.zarr", dims=2, size=16, count=32)
    attrs, arrays = read_tiles(tmp_path / "t.zarr")
    assert len(attrs["sources"]) == 2 and set(np.unique(arrays["train/source"])) == {0, 1}
    parts, _ = training_data._read_parts(tmp_path / "t.zarr", attrs, arrays)
    x = training_data.normalize_tiles(parts["train"].image, parts["train"].lo, parts["train"].inv)
    # Both sources land on the same normalised scale: the 16-bit tiles are not all far above 1.
    for s in (0, 1):
        assert 0.2 < float(np.median(x[arrays["train/source"] == s])) < 1.2
    s = train(tmp_path / "t.zarr", tmp_path / "m.pt", config=TrainConfig(**TINY))
    assert s["tile_sources"] == 2
    assert read_model_file(tmp_path / "m.pt")["normalization"] == attrs["sources"][0]["intensity"]


def test_prefetcher_keeps_order_whatever_the_timing():
    def slow(k):
        time.sleep(0.002 * (k % 3))
        return k * k

    with training_data._Prefetcher(slow, range(20), threads=3, depth=4) as p:
        assert list(p) == [k * k for k in range(20)]
    with training_data._Prefetcher(slow, range(100), threads=2) as p:  # left early: closing does not hang
        assert next(p) == 0
