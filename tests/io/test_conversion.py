"""Tests of rockseg.io.conversion: convert to every output, options refused before any output, failures midway, the
convert command, and its check and plan steps alone."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from rockseg.errors import InputError, MissingInputError, OutputExistsError
from rockseg.io import conversion, exporters
from rockseg.io.conversion import convert
from rockseg.io.exporters import export
from rockseg.io.opening import open_source
from rockseg.io.sources import ArraySource
from tests.io.samples import (PALETTE, PALETTE_TEXT, CountingSource, enospc, entries, expect_error, random_volume,
                              read_zarr, rgb_labels)


def test_convert_to_exports_from_a_source(tmp_path):
    vol = random_volume((5, 6, 7), "uint8")
    np.save(tmp_path / "v.npy", vol)
    for ext in ("tif", "nc", "raw", "npy"):
        summary = convert(tmp_path / "v.npy", tmp_path / f"o.{ext}", voxel_size=1.25)
        assert summary["dest"] == str(tmp_path / f"o.{ext}")
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "o.tif"), vol)
    np.testing.assert_array_equal(np.load(tmp_path / "o.npy"), vol)
    with open_source(tmp_path / "o.nc") as src:
        assert src.voxel_size == (1.25, 1.25, 1.25)
        np.testing.assert_array_equal(src.read(0, 5), vol)


def test_bad_options_refused_before_any_output(tmp_path):
    np.save(tmp_path / "v.npy", np.zeros((2, 3, 4), np.uint8))
    expect_error(tmp_path, InputError, "--chunks 1,2 has 2 values", tmp_path / "v.npy", chunks=(1, 2))
    expect_error(tmp_path, InputError, "unknown compressor 'gzip'", tmp_path / "v.npy", compressor="gzip")
    expect_error(tmp_path, InputError, "v.npy is a NumPy file.*leave out --shape", tmp_path / "v.npy",
                 shape="2,3,4")
    expect_error(tmp_path, InputError, "--voxel-size", tmp_path / "v.npy", voxel_size=-1.0)
    expect_error(tmp_path, InputError, "--chunks applies to .zarr", tmp_path / "v.npy", "o.tif", chunks=(1, 1, 1))
    expect_error(tmp_path, MissingInputError, "create .*no-such-dir", tmp_path / "v.npy", "no-such-dir/o.zarr")


def test_existing_output_refused_unless_overwrite(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((2, 3, 4), np.uint8))
    np.save(tmp_path / "b.npy", np.ones((2, 3, 4), np.uint8))
    convert(tmp_path / "a.npy", tmp_path / "o.zarr")
    convert(tmp_path / "a.npy", tmp_path / "o.raw")
    expect_error(tmp_path, OutputExistsError, "o.zarr exists already.*--overwrite", tmp_path / "b.npy", "o.zarr")
    expect_error(tmp_path, OutputExistsError, "o.raw exists already", tmp_path / "b.npy", "o.raw")
    (tmp_path / "o.raw").unlink()  # a stale header alone is protected too
    expect_error(tmp_path, OutputExistsError, "o.mhd exists already", tmp_path / "b.npy", "o.raw")
    convert(tmp_path / "b.npy", tmp_path / "o.zarr", overwrite=True)
    np.testing.assert_array_equal(read_zarr(tmp_path / "o.zarr")[:], 1)
    assert entries(tmp_path) == {"a.npy", "b.npy", "o.zarr", "o.mhd"}


@pytest.mark.parametrize("dest", ["o.zarr", "o.tif", "o.nc", "o.raw", "o.npy"])
def test_failure_midway_leaves_nothing(tmp_path, dest):
    vol = np.ones((12, 4, 5), np.float32)
    vol[-1, -1, -1] = np.nan  # found only when the last slab is read
    np.save(tmp_path / "nan.npy", vol)
    if dest == "o.zarr":
        expect_error(tmp_path, InputError, "nan.npy: .*NaN", tmp_path / "nan.npy", dest, chunks=(4, 4, 5))
        return

    class Failing(CountingSource):
        def _read(self, z0, z1):
            if z1 == self.shape[0]:
                raise InputError("disk fell off")
            return super()._read(z0, z1)

    src = Failing(vol)
    src.slab_hint = 4
    before = entries(tmp_path)
    with pytest.raises(InputError, match="disk fell off"):
        export(src, tmp_path / dest)
    assert entries(tmp_path) == before


def test_cli_convert_options_and_one_line_errors(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from rockseg.cli import app

    runner = CliRunner()
    labels, colours = rgb_labels((6, 8, 9), PALETTE)
    tifffile.imwrite(tmp_path / "m.tif", colours, photometric="rgb")
    args = ["convert", str(tmp_path / "m.tif"), str(tmp_path / "l.zarr"), "--colormap", PALETTE_TEXT,
            "--phases", "3=fool's gold", "--crop", "1:6,:,2:", "--slices", "::2", "--chunks", "2,4,4",
            "--shards", "4,8,8"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    out = read_zarr(tmp_path / "l.zarr")
    np.testing.assert_array_equal(out[:], labels[2:6:2, :, 2:])  # planes 0, 2, 4... inside 1:6
    assert out.attrs["phases"]["3"] == "fool's gold" and out.attrs["phases"]["0"] == "pore"
    assert out.shards == (2, 8, 8)  # clipped to the chunks covering the 2 planes kept
    result = runner.invoke(app, ["convert", str(tmp_path / "m.tif"), str(tmp_path / "x.zarr"),
                                 "--colormap", "0,0,255=0"])
    assert result.exit_code == 2 and "is not in --colormap" in result.output and "m.tif" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "x.zarr").exists()
    monkeypatch.setattr(exporters, "_write_raw", lambda *a: enospc())
    result = runner.invoke(app, ["convert", str(tmp_path / "l.zarr"), str(tmp_path / "e.raw")])
    assert result.exit_code == 2 and "No space left on device" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "e.raw").exists() and not (tmp_path / "e.mhd").exists()


def check(dest, **options):
    """conversion._check with the defaults of convert."""
    defaults = dict(colormap=None, phases=None, slices=None, chunks=None, shards=None, compressor="blosc-zstd",
                    overwrite=False, progress=False)
    return conversion._check(dest, **{**defaults, **options})


def test_check_plans_from_the_options_alone(tmp_path):
    plan = check(tmp_path / "o.zarr", colormap="0,0,255=0:pore;0,255,0=1:clay", phases="1=illite,2=quartz",
                 slices="0:4", chunks="2,4,4", compressor="zstd")
    assert (plan.dest, plan.kind, plan.chunks, plan.compressor) == (tmp_path / "o.zarr", "zarr", "2,4,4", "zstd")
    assert plan.colormap.labels == (0, 1)
    assert plan.phases == {0: "pore", 1: "illite", 2: "quartz"}  # --phases win over the colour map's names
    assert plan.phase_attr == {"0": "pore", "1": "illite", "2": "quartz"}
    assert check(tmp_path / "o.nc").kind == "netcdf" and check(tmp_path / "o.raw").phases == {}
    for options, pattern in [({"shards": "2,4,4"}, "--shards applies to .zarr outputs only"),
                             ({"compressor": "gzip"}, "unknown compressor 'gzip'"),
                             ({"slices": "1:5:0"}, "--slices '1:5:0': the step must be a positive")]:
        with pytest.raises(InputError, match=pattern):
            check(tmp_path / "o.tif", **options)
    (tmp_path / "o.mhd").write_text("stale")
    with pytest.raises(OutputExistsError, match="o.mhd exists already"):
        check(tmp_path / "o.raw")
    assert entries(tmp_path) == {"o.mhd"}  # checking creates nothing


def test_select_and_summary_of_a_region(tmp_path):
    vol = random_volume((12, 5, 6), "uint8")
    source = conversion._select(ArraySource(vol), voxel_size=2.0, crop=":,1:5,:", slices="1:12:3")
    assert source.shape == (4, 4, 6) and source.voxel_size == (6.0, 2.0, 2.0) and source.voxel_unit == "um"
    np.testing.assert_array_equal(source.read(0, 4), vol[1:12:3, 1:5])
    plan = check(tmp_path / "o.zarr", phases="0=pore")
    summary = conversion._summary(source, plan, 0.5)
    assert summary["bytes"] == 4 * 4 * 6 and summary["MB/s"] == summary["mb_per_s"] == float(f"{96 / 1e6 / 0.5:.3g}")
    assert summary["region"] == {"start": [1, 1, 0], "stop": [11, 5, 6], "step": [3, 1, 1]}
    assert summary["phases"] == {"0": "pore"} and summary["format"] == "array"
    whole = ArraySource(vol)
    assert conversion._select(whole, voxel_size=None, crop=None, slices=None) is whole
    assert "region" not in conversion._summary(whole, check(tmp_path / "o.tif"), 1.0)
