"""Tests of rockseg.io.hdf5: HDF5/NeXus datasets as sources (picking, voxel sizes, bounded reads) and the export."""

from __future__ import annotations

import subprocess
import sys

import h5py
import numpy as np
import pytest

from rockseg.errors import InputError
from rockseg.io.conversion import convert
from rockseg.io.exporters import export
from rockseg.io.opening import open_source
from tests.io.samples import random_volume, read_zarr


def _dxchange(path, vol, *, extra=None):
    """A file laid out as APS beamlines write reconstructions (DXchange: /exchange/data, resolution in um)."""
    with h5py.File(path, "w") as fh:
        fh.create_dataset("exchange/data", data=vol, chunks=(2, 8, 8), compression="gzip", shuffle=True)
        fh.create_dataset("exchange/theta", data=np.linspace(0, 180, 7))  # 1D: never a candidate
        res = fh.create_dataset("measurement/instrument/detection_system/objective/resolution", data=0.65)
        res.attrs["units"] = "microns"
        for name, data in (extra or {}).items():
            fh.create_dataset(name, data=data)


def test_the_only_3d_dataset_streams_with_its_voxel_size(tmp_path):
    vol = random_volume((7, 20, 18), "uint16")
    _dxchange(tmp_path / "scan.h5", vol, extra={"exchange/dark": np.zeros((4, 5), np.uint16)})
    with open_source(tmp_path / "scan.h5") as src:
        assert src.kind == "hdf5" and src.attrs["dataset"] == "/exchange/data"
        assert src.slab_hint == 2 and src.voxel_size == pytest.approx((0.65,) * 3) and src.voxel_unit == "um"
    summary = convert(tmp_path / "scan.h5", tmp_path / "image.zarr", chunks=(4, 8, 8))
    out = read_zarr(tmp_path / "image.zarr")
    np.testing.assert_array_equal(out[:], vol)
    assert out.attrs["voxel_size"] == pytest.approx([0.65] * 3) and summary["format"] == "hdf5"


def test_several_candidates_are_listed_and_dataset_picks_one(tmp_path):
    vol = random_volume((4, 9, 8), "float32")
    _dxchange(tmp_path / "two.nxs", vol, extra={"entry/data/data": np.ones((3, 6, 5), np.uint8)})
    with pytest.raises(InputError, match=r"two\.nxs has 2 3D datasets: choose one with --dataset: "
                                         r"/entry/data/data \(3, 6, 5\) uint8, /exchange/data \(4, 9, 8\) float32"):
        open_source(tmp_path / "two.nxs")
    convert(tmp_path / "two.nxs", tmp_path / "a.zarr", dataset="/exchange/data")
    np.testing.assert_array_equal(read_zarr(tmp_path / "a.zarr")[:], vol)
    with pytest.raises(InputError, match=r"has no dataset '/exchange/missing': choose one with --dataset"):
        open_source(tmp_path / "two.nxs", dataset="/exchange/missing")
    with pytest.raises(InputError, match=r"--dataset is for HDF5 sources"):
        open_source(tmp_path / "a.zarr", dataset="/x")
    (tmp_path / "bad.h5").write_bytes(b"not hdf5")
    with pytest.raises(InputError, match=r"bad\.h5 is not a readable HDF5 file"):
        open_source(tmp_path / "bad.h5")


def test_export_to_hdf5_and_back_keeps_values_and_voxel_size(tmp_path):
    vol = random_volume((5, 9, 11), "uint8")
    export(vol, tmp_path / "out.h5", voxel_size=(2.0, 1.0, 1.0))
    with h5py.File(tmp_path / "out.h5", "r") as fh:  # what any HDF5 reader sees
        np.testing.assert_array_equal(fh["volume"][()], vol)
        assert list(fh["volume"].attrs["voxel_size"]) == [2.0, 1.0, 1.0] and fh["volume"].compression == "gzip"
    convert(tmp_path / "out.h5", tmp_path / "back.zarr")
    back = read_zarr(tmp_path / "back.zarr")
    np.testing.assert_array_equal(back[:], vol)
    assert back.attrs["voxel_size"] == [2.0, 1.0, 1.0]
    convert(tmp_path / "back.zarr", tmp_path / "again.hdf5")
    with h5py.File(tmp_path / "again.hdf5", "r") as fh:
        np.testing.assert_array_equal(fh["volume"][()], vol)


@pytest.mark.slow
def test_a_compressed_hdf5_volume_converts_in_bounded_memory(tmp_path):
    # 192 MB of gzip-compressed voxels against the same voxels as .npy (read in plain slabs): the HDF5 reader may
    # add its chunk cache and a slab, far less than the volume it would add by loading the dataset whole
    shape = (192, 1024, 1024)
    planes = np.broadcast_to((np.arange(16, dtype=np.uint8) % 7)[:, None, None], (16, *shape[1:]))
    npy = np.lib.format.open_memmap(tmp_path / "big.npy", mode="w+", dtype=np.uint8, shape=shape)
    with h5py.File(tmp_path / "big.h5", "w") as fh:
        data = fh.create_dataset("exchange/data", shape=shape, dtype=np.uint8, chunks=(16, 256, 256),
                                 compression="gzip", compression_opts=1)
        for z in range(0, shape[0], 16):
            data[z:z + 16] = npy[z:z + 16] = planes + z % 5
    npy.flush()
    del npy
    code = ("import resource, sys; from rockseg.io import convert; convert(sys.argv[1], sys.argv[2]); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    peaks = {}
    for name in ("big.npy", "big.h5"):
        done = subprocess.run([sys.executable, "-c", code, str(tmp_path / name), str(tmp_path / f"{name}.zarr")],
                              capture_output=True, text=True, check=True)
        peaks[name] = int(done.stdout.split()[-1]) / 1024
    assert peaks["big.h5"] - peaks["big.npy"] < 100, peaks
    out = read_zarr(tmp_path / "big.h5.zarr")
    assert out.shape == shape and int(out[181, 5, 5]) == (181 % 16) % 7 + 176 % 5


def test_stitch_exports_the_labels_to_hdf5(tmp_path, boxsum):
    from rockseg.inference import PredictConfig, predict
    from rockseg.inference.stitching import stitch
    from tests.helpers import binary_volume, expected_boxsum

    data = binary_volume(tmp_path / "v.zarr", (20, 18, 16))
    predict(tmp_path / "v.zarr", tmp_path / "p.zarr", model=boxsum(tmp_path / "m.pt"),
            config=PredictConfig(block=12, device="cpu"))
    stitch([tmp_path / "p.zarr"], tmp_path / "final.h5")
    with h5py.File(tmp_path / "final.h5", "r") as fh:
        np.testing.assert_array_equal(fh["volume"][()], expected_boxsum(data))
