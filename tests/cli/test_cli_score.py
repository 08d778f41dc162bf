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
