"""The block-wise engine against predictors whose output is known exactly.

``BoxSum`` is a real ``nn.Module`` whose argmax is the 3x3(x3) box sum of its (binary) input, computed with
zero padding inside each tile. The kept centre of a tile equals the box sum over the whole volume mirrored at its
faces only if tiles, halos and blocks are placed exactly right, so any seam or off-by-one shows as a wrong label.
"""

from __future__ import annotations

import itertools
import os
import threading

import numpy as np
import pytest
import torch
import zarr
from scipy import ndimage

from rockseg import inference
from rockseg.errors import IncompleteError, InputError, MissingInputError, OutputExistsError
from rockseg.inference import PredictConfig, TileGrid, check_complete, predict, reflect_index
from rockseg.models import UNet, save_model_file


from tests.helpers import BoxSum, binary_volume, expected_boxsum, grey_volume  # noqa: E402


def test_reflect_index_matches_numpy_pad():
    for n in (1, 2, 3, 7):
        base = np.arange(n)
        padded = np.pad(base, 9, mode="reflect") if n > 1 else np.zeros(n + 18, int)
        assert reflect_index(np.arange(-9, n + 9), n).tolist() == padded.tolist()


def test_tile_grid_covers_each_voxel_once():
    grid = TileGrid((20, 20, 20), (16, 16, 16), (2, 2, 2))
    assert grid.step == (12, 12, 12)
    ks = grid.tiles_meeting((slice(0, 20),) * 3)
    assert [list(k) for k in ks] == [[0, 1]] * 3
    idx = grid.input_index(ks)
    assert idx[0][0] == 2 and len(idx[0]) == 12 + 16  # starts at -2, mirrored to 2


def test_block_buffers_hold_every_block_of_any_grid():
    rng = np.random.default_rng(0)
    for _ in range(300):
        shape = tuple(int(v) for v in rng.integers(5, 90, 3))
        tile = int(rng.integers(3, 20))
        halo = int(rng.integers(0, (tile - 1) // 2 + 1))
        block = tuple(min(int(rng.integers(1, 60)), n) for n in shape)
        grid = TileGrid(shape, (tile,) * 3, (halo,) * 3)
        buffers = inference.BlockBuffers(grid, block)
        for index in inference.block_grid(shape, block):
            region = inference.block_region(index, shape, block)
            need = [len(i) for i in grid.input_index(grid.tiles_meeting(region))]
            assert all(n <= b for n, b in zip(need, buffers.box)), (shape, tile, halo, block, index)


@pytest.mark.parametrize("block", [12, 20, 24, 64])
def test_boxsum_exact_for_any_block(tmp_path, boxsum, block):
    data = binary_volume(tmp_path / "v.zarr", (23, 30, 17), chunks=(8, 8, 8))
    model = boxsum(tmp_path / "m.pt")
    summary = predict(tmp_path / "v.zarr", tmp_path / "p.zarr", model=model,
                      config=PredictConfig(block=block, batch_size=3, device="cpu"))
    assert summary["complete"] and summary["blocks_missing"] == 0
    out = zarr.open_array(str(tmp_path / "p.zarr"))[...]
    np.testing.assert_array_equal(out, expected_boxsum(data))


def test_2d_model_on_3d_volume_slice_by_slice(tmp_path, boxsum):
    data = binary_volume(tmp_path / "v.zarr", (5, 29, 21))
    model = boxsum(tmp_path / "m.pt", spatial_dims=2)
    predict(tmp_path / "v.zarr", tmp_path / "p.zarr", model=model, config=PredictConfig(block=10, device="cpu"))
    out = zarr.open_array(str(tmp_path / "p.zarr"))[...]
    np.testing.assert_array_equal(out, expected_boxsum(data, axes=2))


def test_2d_model_on_2d_image(tmp_path, boxsum):
    data = binary_volume(tmp_path / "v.zarr", (29, 21))
    model = boxsum(tmp_path / "m.pt", spatial_dims=2)
    predict(tmp_path / "v.zarr", tmp_path / "p.zarr", model=model, config=PredictConfig(block=16, device="cpu"))
    out = zarr.open_array(str(tmp_path / "p.zarr"))
    assert out.shape == (29, 21) and out.chunks == (16, 16)
    np.testing.assert_array_equal(out[...], expected_boxsum(data))


def test_shards_resume_and_probabilities(tmp_path, boxsum):
    data = binary_volume(tmp_path / "v.zarr", (20, 20, 20))
    model = boxsum(tmp_path / "m.pt")
    out = tmp_path / "p.zarr"
    cfg = PredictConfig(block=12, device="cpu", shard=(0, 3), probabilities=str(tmp_path / "probs.zarr"))
    first = predict(tmp_path / "v.zarr", out, model=model, config=cfg)
    assert first["blocks_total"] == 8 and first["blocks_done"] == 3 and not first["complete"]
    with pytest.raises(IncompleteError, match="5 of 8 blocks missing"):
        check_complete(out)
    # the same shard again does nothing; the other shards finish the volume
    again = predict(tmp_path / "v.zarr", out, model=model, config=cfg)
    assert again["blocks_done"] == 0 and again["blocks_skipped"] == 3
    for i in (1, 2):
        last = predict(tmp_path / "v.zarr", out, model=model,
                       config=PredictConfig(block=12, device="cpu", shard=(i, 3), probabilities=cfg.probabilities))
    assert last["complete"]
    check_complete(out)
    expected = expected_boxsum(data)
    np.testing.assert_array_equal(zarr.open_array(str(out))[...], expected)
    probs = zarr.open_array(str(tmp_path / "probs.zarr"))
    assert probs.shape == (28, 20, 20, 20) and probs.dtype == np.uint8
    np.testing.assert_array_equal(probs[...].argmax(axis=0), expected)


def _record_forward_threads(monkeypatch):
    """The set of threads that BoxSum's forward runs on, filled in as it runs."""
    threads = set()
    forward = BoxSum.forward

    def recording(self, x):
        threads.add(threading.get_ident())
        return forward(self, x)

    monkeypatch.setattr(BoxSum, "forward", recording)
    return threads


def test_model_runs_on_the_calling_thread_while_blocks_run_on_dask_threads(tmp_path, boxsum, monkeypatch):
    """Every forward pass runs on the thread that called predict (one OpenMP team: see _TorchThread); the
    labels are still exact."""
    data = binary_volume(tmp_path / "v.zarr", (20, 24, 20), chunks=(8, 8, 8))
    model = boxsum(tmp_path / "m.pt")
    threads = _record_forward_threads(monkeypatch)
    s = predict(tmp_path / "v.zarr", tmp_path / "p.zarr", model=model,
                config=PredictConfig(block=8, device="cpu", workers=3, batch_size=2))
    assert s["blocks_done"] == 3 * 3 * 3
    assert threads == {threading.get_ident()}
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "p.zarr"))[...], expected_boxsum(data))


def test_a_dask_worker_runs_the_model_on_one_thread_of_its_own(tmp_path, boxsum, monkeypatch):
    """A distributed worker with several task threads still runs every forward pass on one thread."""
    distributed = pytest.importorskip("distributed")
    data = binary_volume(tmp_path / "v.zarr", (20, 24, 20), chunks=(8, 8, 8))
    model = boxsum(tmp_path / "m.pt")
    threads = _record_forward_threads(monkeypatch)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=3, processes=False,
                                  dashboard_address=None) as cluster:
        s = predict(tmp_path / "v.zarr", tmp_path / "p.zarr", model=model,
                    config=PredictConfig(block=8, device="cpu", scheduler=cluster.scheduler_address))
    assert s["complete"]
    assert len(threads) == 1 and threading.get_ident() not in threads
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "p.zarr"))[...], expected_boxsum(data))


def test_an_error_in_the_model_stops_the_run_and_is_raised(tmp_path, boxsum, monkeypatch):
    binary_volume(tmp_path / "v.zarr", (20, 24, 20), chunks=(8, 8, 8))
    model = boxsum(tmp_path / "m.pt")
    calls = []
    forward = BoxSum.forward

    def failing(self, x):
        calls.append(1)
        if len(calls) == 6:
            raise RuntimeError("out of memory, say")
        return forward(self, x)

    monkeypatch.setattr(BoxSum, "forward", failing)
    with pytest.raises(RuntimeError, match="out of memory, say"):
        predict(tmp_path / "v.zarr", tmp_path / "p.zarr", model=model,
                config=PredictConfig(block=8, device="cpu", workers=2, batch_size=2))
    done = len(os.listdir(tmp_path / "p.zarr" / ".rockseg" / "done"))
    assert 0 < done < 27  # the blocks finished before the error are kept for a re-run
    monkeypatch.setattr(BoxSum, "forward", forward)
    again = predict(tmp_path / "v.zarr", tmp_path / "p.zarr", model=model,
                    config=PredictConfig(block=8, device="cpu", workers=2, batch_size=2))
    # (a block that was past the model when the error came may still have finished after it)
    assert again["complete"] and again["blocks_skipped"] >= done
    assert again["blocks_skipped"] + again["blocks_done"] == 27


def test_changed_settings_refused_unless_overwrite(tmp_path, boxsum):
    binary_volume(tmp_path / "v.zarr", (20, 20, 20))
    model = boxsum(tmp_path / "m.pt")
    predict(tmp_path / "v.zarr", tmp_path / "p.zarr", model=model, config=PredictConfig(block=12, device="cpu"))
    with pytest.raises(OutputExistsError, match="other settings"):
        predict(tmp_path / "v.zarr", tmp_path / "p.zarr", model=model,
                config=PredictConfig(block=12, halo=3, device="cpu"))
    with pytest.raises(OutputExistsError, match="--block"):
        predict(tmp_path / "v.zarr", tmp_path / "p.zarr", model=model, config=PredictConfig(block=16, device="cpu"))
    s = predict(tmp_path / "v.zarr", tmp_path / "p.zarr", model=model, overwrite=True,
                config=PredictConfig(block=16, halo=3, device="cpu"))
    assert s["complete"] and s["blocks_done"] == 8


def test_killed_block_is_redone(tmp_path, boxsum):
    data = binary_volume(tmp_path / "v.zarr", (20, 20, 20))
    model = boxsum(tmp_path / "m.pt")
    out = tmp_path / "p.zarr"
    predict(tmp_path / "v.zarr", out, model=model, config=PredictConfig(block=12, device="cpu"))
    # simulate a crash between writing a chunk and its marker: garbage data, no marker
    arr = zarr.open_array(str(out), mode="r+")
    arr[0:12, 0:12, 0:12] = 99
    (out / ".rockseg" / "done" / "0.0.0").unlink()
    s = predict(tmp_path / "v.zarr", out, model=model, config=PredictConfig(block=12, device="cpu"))
    assert s["blocks_done"] == 1 and s["blocks_skipped"] == 7
    np.testing.assert_array_equal(zarr.open_array(str(out))[...], expected_boxsum(data))


def test_unet_labels_independent_of_block(tmp_path):
    grey_volume(tmp_path / "v.zarr", (40, 36, 44), seed=1, chunks=(16, 16, 16))
    torch.manual_seed(0)
    # instance norm makes a random network's output vary across the volume (batch norm at init does not)
    args = {"spatial_dims": 3, "classes": 3, "base_channels": 4, "depth": 2, "norm": "instance"}
    net = UNet(**args).eval()
    save_model_file(
        tmp_path / "m.pt", net, arch="unet", arch_args=args,
        spatial_dims=3, in_channels=1, phases={0: "a", 1: "b", 2: "c"},
        normalization={"p_low": 0.0, "p_high": 255.0}, tile=16, halo=4,
    )
    outs = []
    for block in (8, 16, 40):
        predict(tmp_path / "v.zarr", tmp_path / f"p{block}.zarr", model=tmp_path / "m.pt",
                config=PredictConfig(block=block, device="cpu", batch_size=5))
        outs.append(zarr.open_array(str(tmp_path / f"p{block}.zarr"))[...])
    assert len(np.unique(outs[0])) > 1
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], outs[2])


@pytest.mark.parametrize("tta", [False, True])
def test_unet_computing_only_the_kept_centre_equals_the_whole_tiles(tmp_path, tta):
    """The engine runs a batch-norm UNet's decoder only where the tiles' centres need it; its labels (and with
    flips, its probabilities) equal the whole volume predicted in memory on the same tile grid with every tile
    computed whole."""
    from rockseg.inference import TileRunner
    from rockseg.io.intensity import intensity_stats, normalize

    image = grey_volume(tmp_path / "v.zarr", (36, 40, 28), seed=2, chunks=(16, 16, 16))
    torch.manual_seed(1)
    args = {"spatial_dims": 3, "classes": 3, "base_channels": 4, "depth": 2}
    net = UNet(**args)
    for m in net.modules():  # small variances amplify the input's variation: the labels vary across the volume
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.005, 0.05)
    net.eval()
    stats = {"p_low": 0.0, "p_high": 255.0}
    save_model_file(tmp_path / "m.pt", net, arch="unet", arch_args=args, spatial_dims=3, in_channels=1,
                    phases={0: "a", 1: "b", 2: "c"}, normalization=stats, tile=16, halo=5)
    probs_path = str(tmp_path / "probs.zarr") if tta else None
    predict(tmp_path / "v.zarr", tmp_path / "p.zarr", model=tmp_path / "m.pt",
            config=PredictConfig(block=12, device="cpu", batch_size=3, tta=tta, probabilities=probs_path))
    got = zarr.open_array(str(tmp_path / "p.zarr"))[...]

    t, h, step = 16, 5, 6
    runner = TileRunner(net, spatial_dims=3, device=torch.device("cpu"), precision="float32", probabilities=tta,
                        tta=tta)
    data = np.pad(normalize(image, intensity_stats(image)), [(h, h + (-n) % step) for n in image.shape],
                  mode="reflect")  # normalised by the volume's own statistics, as predict does by default
    padded = [-(-n // step) * step for n in image.shape]
    want = np.empty(padded, np.uint8)
    want_probs = np.empty([3, *padded], np.float32)
    for z, y, x in itertools.product(*(range(0, n, step) for n in padded)):
        labels, probs = runner(np.ascontiguousarray(data[None, None, z : z + t, y : y + t, x : x + t]))
        want[z : z + step, y : y + step, x : x + step] = labels[0, h:-h, h:-h, h:-h]
        if tta:
            want_probs[:, z : z + step, y : y + step, x : x + step] = probs[0, :, h:-h, h:-h, h:-h]
    inside = tuple(slice(0, n) for n in image.shape)
    assert len(np.unique(want[inside])) > 1
    np.testing.assert_array_equal(got, want[inside])
    if tta:
        stored = zarr.open_array(probs_path)[...].astype(np.int16)
        quantised = np.rint(want_probs[(slice(None), *inside)] * 255).astype(np.int16)
        # probabilities agree to float rounding (the engine works on smaller tensors, in another order), so a
        # value on a 0.5 boundary of the uint8 scale may move by one step; the labels above are exact
        assert np.abs(stored - quantised).max() <= 1 and (stored != quantised).mean() < 1e-3


def test_bad_inputs(tmp_path, boxsum):
    model = boxsum(tmp_path / "m.pt")
    with pytest.raises(MissingInputError, match="nope.zarr does not exist"):
        predict(tmp_path / "nope.zarr", tmp_path / "p.zarr", model=model)
    binary_volume(tmp_path / "small.zarr", (8, 30, 30))
    with pytest.raises(InputError, match="fewer than the tile edge 16"):
        predict(tmp_path / "small.zarr", tmp_path / "p.zarr", model=model, config=PredictConfig(device="cpu", tile=16))
    # without --tile the model's tile shrinks to fit (8 here), but not below what the network can take
    assert predict(tmp_path / "small.zarr", tmp_path / "ok.zarr", model=model, config=PredictConfig(device="cpu"))["complete"]
    binary_volume(tmp_path / "thin.zarr", (4, 30, 30))
    with pytest.raises(InputError, match="fewer than the tile edge 8"):
        predict(tmp_path / "thin.zarr", tmp_path / "p.zarr", model=model, config=PredictConfig(device="cpu"))
    with pytest.raises(InputError, match="multiple of 8"):
        predict(tmp_path / "small.zarr", tmp_path / "p.zarr", model=model, config=PredictConfig(tile=12))
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    binary_volume(tmp_path / "v.zarr", (20, 20, 20))
    with pytest.raises(InputError, match="not a rockseg model"):
        predict(tmp_path / "v.zarr", tmp_path / "p.zarr", model=tmp_path / "junk.pt")
    assert not (tmp_path / "p.zarr").exists()


def test_pickled_code_is_refused_without_running(tmp_path):
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"format": "rockseg-model", "x": Evil()}, tmp_path / "evil.pt")
    binary_volume(tmp_path / "v.zarr", (20, 20, 20))
    with pytest.raises(InputError, match="not a rockseg model file that loads safely"):
        predict(tmp_path / "v.zarr", tmp_path / "p.zarr", model=tmp_path / "evil.pt")
    assert not marker.exists()


def test_parse_shard():
    assert inference.parse_shard("2/4") == (2, 4)
    assert inference.parse_shard(None) is None
    for bad in ("4/4", "x", "1/0", "-1/3"):
        with pytest.raises(InputError):
            inference.parse_shard(bad)


def test_tta_crop_and_workers_keep_exact_labels(tmp_path, boxsum):
    data = binary_volume(tmp_path / "v.zarr", (22, 26, 19), chunks=(8, 8, 8))
    model = boxsum(tmp_path / "m.pt")
    expected = expected_boxsum(data)
    # flips of a box sum are the same box sum: test-time augmentation must not move anything
    predict(tmp_path / "v.zarr", tmp_path / "tta.zarr", model=model,
            config=PredictConfig(block=12, device="cpu", tta=True, workers=3))
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "tta.zarr"))[...], expected)
    # a crop reads its context from the volume around it: equal to the crop of the whole prediction
    predict(tmp_path / "v.zarr", tmp_path / "crop.zarr", model=model,
            config=PredictConfig(block=8, device="cpu", crop="3:17,5:,:-2", workers=1))
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "crop.zarr"))[...], expected[3:17, 5:, :-2])


def test_mask_leaves_outside_untouched(tmp_path, boxsum):
    data = binary_volume(tmp_path / "v.zarr", (20, 24, 24))
    model = boxsum(tmp_path / "m.pt")
    zz, yy, xx = np.mgrid[:20, :24, :24]
    cylinder = ((yy - 11.5) ** 2 + (xx - 11.5) ** 2 < 10**2).astype(np.uint8)
    cylinder[:, :, 20:] = 0  # a whole block outside the field of view
    m = zarr.create_array(store=str(tmp_path / "mask.zarr"), shape=data.shape, chunks=data.shape, dtype="uint8")
    m[...] = cylinder
    predict(tmp_path / "v.zarr", tmp_path / "p.zarr", model=model,
            config=PredictConfig(block=12, device="cpu", mask=str(tmp_path / "mask.zarr")))
    out = zarr.open_array(str(tmp_path / "p.zarr"))[...]
    expected = np.where(cylinder > 0, expected_boxsum(data), inference.OUTSIDE)
    np.testing.assert_array_equal(out, expected)
    m2 = zarr.create_array(store=str(tmp_path / "bad.zarr"), shape=(20, 24, 23), chunks=(20, 24, 23), dtype="uint8")
    with pytest.raises(InputError, match=r"mask .* has shape \(20, 24, 23\)"):
        predict(tmp_path / "v.zarr", tmp_path / "q.zarr", model=model, config=PredictConfig(mask=str(tmp_path / "bad.zarr")))
    assert m2.shape == (20, 24, 23)


@pytest.mark.parametrize("axis", ["y", "x"])
def test_2d_model_along_other_axes(tmp_path, boxsum, axis):
    data = binary_volume(tmp_path / "v.zarr", (21, 17, 19))
    model = boxsum(tmp_path / "m.pt", spatial_dims=2)
    predict(tmp_path / "v.zarr", tmp_path / "p.zarr", model=model,
            config=PredictConfig(block=10, device="cpu", axis=axis))
    kernel = np.ones((3, 1, 3) if axis == "y" else (3, 3, 1), np.int64)
    expected = ndimage.correlate(data.astype(np.int64), kernel, mode="mirror")
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "p.zarr"))[...], expected)


def test_second_run_on_same_blocks_refuses_while_first_is_alive(tmp_path, boxsum):
    import socket

    binary_volume(tmp_path / "v.zarr", (20, 20, 20))
    model = boxsum(tmp_path / "m.pt")
    cfg = PredictConfig(block=12, device="cpu", shard=(0, 2))
    predict(tmp_path / "v.zarr", tmp_path / "p.zarr", model=model, config=cfg)
    lock = tmp_path / "p.zarr" / ".rockseg" / "lock-1-of-2"
    lock.write_text(f"{socket.gethostname()} {os.getpid()}")  # a live run of shard 1/2
    with pytest.raises(OutputExistsError, match="being written by another"):
        predict(tmp_path / "v.zarr", tmp_path / "p.zarr", model=model,
                config=PredictConfig(block=12, device="cpu", shard=(1, 2)))
    lock.write_text(f"{socket.gethostname()} 999999999")  # a run that died: its lock is taken over
    s = predict(tmp_path / "v.zarr", tmp_path / "p.zarr", model=model,
                config=PredictConfig(block=12, device="cpu", shard=(1, 2)))
    assert s["complete"] and not lock.exists()


def test_nan_in_float_volume_is_refused(tmp_path, boxsum):
    model = boxsum(tmp_path / "m.pt")
    data = np.ones((20, 20, 20), np.float32)
    data[15, 3, 4] = np.nan
    arr = zarr.create_array(store=str(tmp_path / "v.zarr"), shape=data.shape, chunks=(10, 10, 10), dtype="float32")
    arr[...] = data
    arr.attrs["intensity"] = {"p_low": 0.0, "p_high": 1.0}
    with pytest.raises(InputError, match="NaN or Inf"):
        predict(tmp_path / "v.zarr", tmp_path / "p.zarr", model=model, config=PredictConfig(block=10, device="cpu"))


def small_unet_model(path, seed=0):
    torch.manual_seed(seed)
    args = {"spatial_dims": 3, "classes": 3, "base_channels": 4, "depth": 2, "norm": "instance"}
    save_model_file(path, UNet(**args).eval(), arch="unet", arch_args=args, spatial_dims=3, in_channels=1,
                    phases={0: "a", 1: "b", 2: "c"}, normalization={"p_low": 0.0, "p_high": 255.0}, tile=16, halo=4)
    return path


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
def test_kill_9_then_same_command_finishes_only_missing_blocks(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    grey_volume(tmp_path / "v.zarr", (64, 64, 64), seed=3, chunks=(32, 32, 32))
    model = small_unet_model(tmp_path / "m.pt")
    cmd = [sys.executable, "-m", "rockseg", "predict", str(tmp_path / "v.zarr"), "-m", str(model), "-o",
           str(tmp_path / "p.zarr"), "--device", "cpu", "--block", "8", "--workers", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done_dir = tmp_path / "p.zarr" / ".rockseg" / "done"
    deadline = time.time() + 120
    target = int(np.random.default_rng(3).integers(20, 300))  # a random moment, between 20 and 300 of the 512 blocks
    while time.time() < deadline and proc.poll() is None:
        if done_dir.exists() and len(os.listdir(done_dir)) >= target:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = len(os.listdir(done_dir))
    assert 0 < before < 512
    resumed = subprocess.run(cmd, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{512 - before} blocks done, {before} already done" in resumed.stdout
    predict(tmp_path / "v.zarr", tmp_path / "ref.zarr", model=model, config=PredictConfig(block=8, device="cpu"))
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "p.zarr"))[...],
                                  zarr.open_array(str(tmp_path / "ref.zarr"))[...])


@pytest.mark.gpu
def test_cuda_path_agrees_with_cpu(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    grey_volume(tmp_path / "v.zarr", (40, 40, 40), seed=4, chunks=(16, 16, 16))
    model = small_unet_model(tmp_path / "m.pt")
    predict(tmp_path / "v.zarr", tmp_path / "cpu.zarr", model=model, config=PredictConfig(block=16, device="cpu"))
    s = predict(tmp_path / "v.zarr", tmp_path / "gpu.zarr", model=model,
                config=PredictConfig(block=16, device="cuda", batch_size=8))
    assert s["precision"] == "bf16"
    cpu = zarr.open_array(str(tmp_path / "cpu.zarr"))[...]
    gpu = zarr.open_array(str(tmp_path / "gpu.zarr"))[...]
    assert (cpu == gpu).mean() >= 0.999


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


@pytest.mark.parametrize("has_bf16", [False, True])
def test_cpu_auto_precision_is_float32_bf16_only_when_asked(tmp_path, monkeypatch, has_bf16):
    # auto never picks bf16 on a CPU, even one with bf16 instructions: bf16 labels depend on the batch
    grey_volume(tmp_path / "v.zarr", (16, 16, 16), seed=6, chunks=(16, 16, 16))
    model = small_unet_model(tmp_path / "m.pt")
    monkeypatch.setattr(inference, "cpu_has_bf16", lambda: has_bf16)
    s = predict(tmp_path / "v.zarr", tmp_path / "a.zarr", model=model, config=PredictConfig(device="cpu"))
    assert s["precision"] == "float32"
    s = predict(tmp_path / "v.zarr", tmp_path / "b.zarr", model=model,
                config=PredictConfig(device="cpu", precision="bf16"))
    assert s["precision"] == "bf16"


def test_output_under_a_file_is_refused(tmp_path, boxsum):
    binary_volume(tmp_path / "v.zarr", (20, 20, 20))
    model = boxsum(tmp_path / "m.pt")
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="is a file, not a folder"):
        predict(tmp_path / "v.zarr", tmp_path / "file" / "p.zarr", model=model)


def test_tune_malloc_applies_on_glibc_and_yields_to_the_environment():
    import platform
    import subprocess
    import sys

    code = "from rockseg.devices import tune_malloc; print(tune_malloc())"
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES" and not k.startswith("MALLOC_")}
    ran = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    glibc = platform.libc_ver()[0] == "glibc"
    assert ran.stdout.strip() == str(glibc)
    for extra in ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=4"}, {"MALLOC_ARENA_MAX": "4"}):
        ran = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**env, **extra},
                             check=True)
        assert ran.stdout.strip() == "False", extra
    # a worker rockseg started with its own settings in the environment still sets up trimming
    from rockseg.devices import MALLOC_TUNABLES

    ran = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**env, "GLIBC_TUNABLES": MALLOC_TUNABLES}, check=True)
    assert ran.stdout.strip() == str(glibc)


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


def test_release_free_memory_gives_free_heap_pages_back():
    import platform
    import subprocess
    import sys

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("malloc tuning is glibc-only")
    code = """
import os
import numpy as np
from rockseg import devices
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
assert devices.tune_malloc()
kept = [np.ones(5_000_000) for _ in range(8)]
del kept[:7]  # 280 MB of free heap below a live array: a tuned heap keeps it resident
before = rss()
devices.release_free_memory()
print(before - rss())
"""
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES" and not k.startswith("MALLOC_")}
    ran = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert ran.returncode == 0, ran.stderr
    assert int(ran.stdout) > 200 * 2**20  # the free pages went back to the system
