"""Blocks on a Dask distributed cluster and on one worker process per device give the labels of a local run."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import zarr

from rockseg.errors import InputError
from rockseg.inference import PredictConfig, predict
from tests.helpers import grey_volume
from tests.inference.small_unet import small_unet_model


@pytest.mark.slow
def test_dask_distributed_cluster_gives_same_labels(tmp_path):
    distributed = pytest.importorskip("distributed")
    grey_volume(tmp_path / "v.zarr", (32, 40, 24), seed=2, chunks=(16, 16, 16))
    model = small_unet_model(tmp_path / "m.pt")
    predict(tmp_path / "v.zarr", tmp_path / "local.zarr", model=model, config=PredictConfig(block=16, device="cpu"))
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        s = predict(tmp_path / "v.zarr", tmp_path / "dist.zarr", model=model,
                    config=PredictConfig(block=8, device="cpu", scheduler=cluster.scheduler_address))
    assert s["complete"] and s["blocks_done"] == 4 * 5 * 3
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "dist.zarr"))[...],
                                  zarr.open_array(str(tmp_path / "local.zarr"))[...])


@pytest.mark.slow
def test_one_worker_process_per_device(tmp_path):
    pytest.importorskip("distributed")
    grey_volume(tmp_path / "v.zarr", (24, 24, 24), seed=5, chunks=(16, 16, 16))
    model = small_unet_model(tmp_path / "m.pt")
    predict(tmp_path / "v.zarr", tmp_path / "local.zarr", model=model, config=PredictConfig(block=8, device="cpu"))
    s = predict(tmp_path / "v.zarr", tmp_path / "dev.zarr", model=model,
                config=PredictConfig(block=8, devices=("cpu", "cpu")))
    assert s["complete"]
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "dev.zarr"))[...],
                                  zarr.open_array(str(tmp_path / "local.zarr"))[...])
    # refused before any work: mixing kinds on a GPU node, or no CUDA at all here
    with pytest.raises(InputError, match="one kind" if torch.cuda.is_available() else "no CUDA"):
        predict(tmp_path / "v.zarr", tmp_path / "x.zarr", model=model, config=PredictConfig(devices=("cpu", "cuda:0")))
    assert not (tmp_path / "x.zarr").exists()


def _worker_malloc_view():
    from rockseg import devices

    return devices._user_malloc_settings(), os.environ.get("MALLOC_TRIM_THRESHOLD_")


@pytest.mark.slow
def test_a_dask_workers_default_malloc_setting_is_not_taken_for_the_users():
    """A Dask nanny starts its workers with MALLOC_TRIM_THRESHOLD_=65536 (trim every freed 64 KiB); rockseg's
    engine tunes the allocator over it, but a value the user chose still wins."""
    distributed = pytest.importorskip("distributed")
    for environ, user in (({}, False), ({"MALLOC_TRIM_THRESHOLD_": "1000000"}, True)):
        with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None,
                                      env=environ) as cluster, distributed.Client(cluster) as client:
            view = client.submit(_worker_malloc_view, pure=False).result()
        assert view == (user, environ.get("MALLOC_TRIM_THRESHOLD_", "65536")), environ


@pytest.mark.slow
def test_statistics_on_a_dask_cluster_equal_those_of_threads(tmp_path):
    """predict --scheduler reads the statistics' pieces on the cluster's worker processes: the same numbers as
    threads of this process, for an exact histogram and for the sampled float path alike."""
    distributed = pytest.importorskip("distributed")
    from rockseg.cluster import map_batches
    from rockseg.io.intensity import intensity_stats

    rng = np.random.default_rng(4)
    for dtype in ("uint16", "float32"):
        arr = zarr.create_array(store=str(tmp_path / f"{dtype}.zarr"), shape=(20, 30, 40), chunks=(8, 8, 8),
                                dtype=dtype)
        arr[...] = rng.normal(1000, 200, arr.shape).clip(0).astype(dtype)
        local = intensity_stats(arr, workers=2)
        with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                      dashboard_address=None) as cluster, distributed.Client(cluster) as client:
            remote = intensity_stats(arr, mapper=lambda fn, items, done: map_batches(
                fn, items, batch=3, client=client, done=done))
        assert remote == local
