"""The network's side: the model on one thread, its errors, its precision, and computing only the kept centre."""

from __future__ import annotations

import itertools
import threading

import numpy as np
import pytest
import torch
import zarr

from rockseg.inference import PredictConfig, Prediction, predict
from rockseg.models import UNet, save_model_file
from tests.helpers import BoxSum, binary_volume, expected_boxsum, grey_volume
from tests.inference.small_unet import small_unet_model


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
    """Every forward pass runs on the thread that called predict (one OpenMP team: see ModelThread); the
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
    done = len(Prediction(tmp_path / "p.zarr").done())  # one block per shard at this size
    assert 0 < done < 27  # the blocks finished before the error are kept for a re-run
    monkeypatch.setattr(BoxSum, "forward", forward)
    again = predict(tmp_path / "v.zarr", tmp_path / "p.zarr", model=model,
                    config=PredictConfig(block=8, device="cpu", workers=2, batch_size=2))
    # (a block that was past the model when the error came may still have finished after it)
    assert again["complete"] and again["blocks_skipped"] >= done
    assert again["blocks_skipped"] + again["blocks_done"] == 27


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
    data = normalize(image, intensity_stats(image))  # the volume's own statistics, as predict does by default
    want = np.empty(image.shape, np.uint8)
    want_probs = np.empty([3, *image.shape], np.float32)
    # tile k keeps [k * step, (k + 1) * step) and reads the tile edge from k * step - h, moved inside the volume
    grid = [[(k, min(max(k - h, 0), n - t)) for k in range(0, n, step)] for n in image.shape]
    for (z, az), (y, ay), (x, ax) in itertools.product(*grid):
        labels, probs = runner(np.ascontiguousarray(data[None, None, az : az + t, ay : ay + t, ax : ax + t]),
                               margin=(0, 0, 0))
        keep = (slice(z, z + step), slice(y, y + step), slice(x, x + step))
        src = tuple(slice(k.start - a, min(k.stop, n) - a) for k, a, n in zip(keep, (az, ay, ax), image.shape))
        want[keep] = labels[(0, *src)]
        if tta:
            want_probs[(slice(None), *keep)] = probs[(0, slice(None), *src)]
    inside = tuple(slice(0, n) for n in image.shape)
    assert len(np.unique(want)) > 1
    np.testing.assert_array_equal(got, want)
    if tta:
        stored = zarr.open_array(probs_path)[...].astype(np.int16)
        quantised = np.rint(want_probs[(slice(None), *inside)] * 255).astype(np.int16)
        # probabilities agree to float rounding (the engine works on smaller tensors, in another order), so a
        # value on a 0.5 boundary of the uint8 scale may move by one step; the labels above are exact
        assert np.abs(stored - quantised).max() <= 1 and (stored != quantised).mean() < 1e-3


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


def test_cpu_auto_precision_is_float32_bf16_only_when_asked(tmp_path):
    # auto never picks bf16 on a CPU, even one with bf16 instructions: bf16 labels depend on the batch
    grey_volume(tmp_path / "v.zarr", (16, 16, 16), seed=6, chunks=(16, 16, 16))
    model = small_unet_model(tmp_path / "m.pt")
    s = predict(tmp_path / "v.zarr", tmp_path / "a.zarr", model=model, config=PredictConfig(device="cpu"))
    assert s["precision"] == "float32"
    s = predict(tmp_path / "v.zarr", tmp_path / "b.zarr", model=model,
                config=PredictConfig(device="cpu", precision="bf16"))
    assert s["precision"] == "bf16"


@pytest.mark.parametrize("classes", [1, 2, 3, 5])
def test_label_of_largest_equals_argmax_first_on_ties(classes):
    from rockseg.inference.runner import label_of_largest

    g = torch.Generator().manual_seed(classes)
    for fmt in (torch.contiguous_format, torch.channels_last_3d):
        x = torch.randint(0, 4, (3, classes, 5, 6, 7), generator=g).float()  # few values: many ties
        x = x.contiguous(memory_format=fmt)
        got = label_of_largest(x)
        assert got.dtype == np.uint8 and got.shape == (3, 5, 6, 7)
        np.testing.assert_array_equal(got, x.argmax(1).numpy())  # torch's argmax: the first maximum on a tie
