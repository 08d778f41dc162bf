"""``rockseg score`` as a user runs it: exit codes and exact Euler numbers."""

from __future__ import annotations

import json

import pytest
import zarr
from typer.testing import CliRunner
from skimage.measure import euler_number

from rockseg.cli import app
from tests.helpers import DATA, run_rockseg as rockseg

runner = CliRunner()


def test_score_shape_mismatch_exit_2(tmp_path):
    for name, shape in (("a.zarr", (4, 5, 6)), ("b.zarr", (4, 5, 7))):
        zarr.create_array(store=str(tmp_path / name), shape=shape, chunks=shape, dtype="uint8")
    result = runner.invoke(app, ["score", str(tmp_path / "a.zarr"), str(tmp_path / "b.zarr")])
    assert result.exit_code == 2
    assert "(4, 5, 6)" in result.output and "(4, 5, 7)" in result.output


@pytest.mark.slow
def test_score_berea_against_itself_equals_skimage(tmp_path):
    tif = DATA / "berea-400" / "berea_pore.tif"
    if not tif.exists():
        pytest.skip(f"real data not found at {tif}")
    assert rockseg("convert", tif, tmp_path / "berea.zarr").returncode == 0
    vol = zarr.open_array(str(tmp_path / "berea.zarr"))[...]
    for conn in (3, 1):
        proc = rockseg("score", tmp_path / "berea.zarr", tmp_path / "berea.zarr", "--json", "--connectivity", str(conn))
        assert proc.returncode == 0, proc.stderr
        doc = json.loads(proc.stdout)
        assert [p["iou"] for p in doc["phases"]] == [1.0, 1.0]
        for p in doc["phases"]:
            expected = euler_number(vol == p["label"], connectivity=conn)
            assert p["euler_pred"] == p["euler_true"] == expected


@pytest.fixture(scope="module")
def cluster():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as c:
        yield c


def test_score_on_a_cluster_equals_the_local_run(tmp_path, cluster, monkeypatch):
    import numpy as np

    from rockseg.metrics import blockwise, units

    # Small blocks grouped by shards: units of several blocks, seams inside units and between them.
    monkeypatch.setattr(blockwise, "_TARGET_BLOCK_VOXELS", 1)
    monkeypatch.setattr(units, "_MIN_UNITS", 1)
    rng = np.random.default_rng(16)
    shape = (21, 18, 20)
    truth = rng.choice(3, size=shape, p=[0.5, 0.3, 0.2]).astype(np.uint8)
    pred = np.where(rng.random(shape) < 0.2, rng.integers(0, 3, shape), truth).astype(np.uint8)
    stores = {}
    # Blocks are made of whole chunks of all three stores, (4, 6, 5): 2 x 1 x 2 blocks per shard of the prediction.
    for name, data, chunks, shards in (("pred", pred, (4, 3, 5), (8, 6, 10)), ("truth", truth, (2, 3, 5), None),
                                       ("mask", rng.random(shape) < 0.95, (4, 6, 5), None)):
        stores[name] = tmp_path / f"{name}.zarr"
        array = zarr.create_array(store=str(stores[name]), shape=shape, chunks=chunks, shards=shards, dtype=data.dtype)
        array[...] = data
    arrays = [zarr.open_array(str(stores[n])) for n in ("pred", "truth", "mask")]
    assert blockwise.block_base(arrays, 3) == ((4, 6, 5), (8, 6, 10))
    assert units.unit_shape((4, 6, 5), (8, 6, 10), shape) == (8, 6, 10)  # units of several blocks
    base = ["score", str(stores["pred"]), str(stores["truth"]), "--json"]
    for extra in ([], ["--connectivity", "1", "--per-slice", "y", "--mask", str(stores["mask"])]):
        local = runner.invoke(app, base + extra)
        assert local.exit_code == 0, local.output
        remote = runner.invoke(app, base + extra + ["--scheduler", cluster.scheduler_address])
        assert remote.exit_code == 0, remote.output
        doc = json.loads(local.stdout)
        assert json.loads(remote.stdout) == doc  # exact: integer confusion counts and Euler numbers
        assert "score_unit" in cluster.scheduler.task_prefixes  # the units did run on the cluster
        for phase in doc["phases"]:
            connectivity = doc["connectivity"]
            expected = pred == phase["label"]
            if extra:
                expected &= zarr.open_array(str(stores["mask"]))[...]
            assert phase["euler_pred"] == euler_number(expected, connectivity=connectivity)
    # A bad label found by a worker is the same one-line error, exit code 2.
    bad = runner.invoke(app, base + ["--phases", "0=pore,1=grain", "--scheduler", cluster.scheduler_address])
    assert bad.exit_code == 2
    assert "has label 2" in bad.output and "--phases ...,2=NAME" in bad.output


def test_score_unreachable_scheduler_exit_2_in_bounded_time(tmp_path, monkeypatch):
    import socket
    import time

    pytest.importorskip("distributed")
    from rockseg import cluster

    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT", 2)
    zarr.create_array(store=str(tmp_path / "a.zarr"), shape=(4, 5, 6), chunks=(4, 5, 6), dtype="uint8")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    start = time.monotonic()
    result = runner.invoke(app, ["score", str(tmp_path / "a.zarr"), "--json", "--scheduler", address])
    assert time.monotonic() - start < 15
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert address in lines[0] and "--scheduler" in lines[0] and "within 2 s" in lines[0]
