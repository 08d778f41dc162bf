"""Tests of rockseg.io.omezarr: OME-Zarr (NGFF 0.5) images checked by independent implementations (ome-zarr-models
validates the metadata, ome-zarr-py's reader reads the levels) against NumPy's strided views, and read back by
``convert`` (``--level``)."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from rockseg.io.conversion import convert
from rockseg.io.omezarr import is_ome_zarr, label_array_path, write_preview
from rockseg.io.opening import open_source
from rockseg.io.stores import open_volume, phase_colour
from tests.io.samples import random_volume, read_zarr

ome_models = pytest.importorskip("ome_zarr_models.v05", reason="the test extra's ome-zarr-models is not installed")


def _ome_reader_levels(path):
    """The levels of the first image node as ome-zarr-py's reader (napari's plugin) sees them."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    nodes = list(Reader(parse_url(str(path)))())
    return [np.asarray(level) for level in nodes[0].data], nodes[0].metadata


def _labels(shape=(70, 40, 33), seed=1):
    return (random_volume(shape, "uint8") % 3).astype(np.uint8)


def test_convert_to_ome_zarr_is_a_valid_label_pyramid(tmp_path):
    vol = _labels()
    np.save(tmp_path / "l.npy", vol)
    convert(tmp_path / "l.npy", tmp_path / "l.ome.zarr", phases="0=pore,1=clay,2=quartz", voxel_size=(2.0, 0.5, 0.5),
            chunks=(16, 16, 16))
    group = zarr.open_group(str(tmp_path / "l.ome.zarr"), mode="r")
    model = ome_models.ImageLabel.from_zarr(group)  # raises on any invalid metadata
    ome = group.attrs["ome"]
    assert ome["version"] == "0.5"
    multiscale = ome["multiscales"][0]
    assert [a["unit"] for a in multiscale["axes"]] == ["micrometer"] * 3
    assert [d["path"] for d in multiscale["datasets"]] == ["0", "1"]  # 70 -> 35, at most 64: two levels
    assert multiscale["datasets"][1]["coordinateTransformations"][0]["scale"] == [4.0, 1.0, 1.0]
    label = model.ome_attributes.image_label
    assert [(p.label_value, p.name) for p in label.properties] == [(0, "pore"), (1, "clay"), (2, "quartz")]
    assert ["#%02x%02x%02x" % tuple(c.rgba[:3]) for c in label.colors] == [phase_colour(i) for i in range(3)]
    levels, _ = _ome_reader_levels(tmp_path / "l.ome.zarr")
    np.testing.assert_array_equal(levels[0], vol)
    np.testing.assert_array_equal(levels[1], vol[::2, ::2, ::2])
    # rockseg's own readers open its level 0 as the label volume
    np.testing.assert_array_equal(open_volume(tmp_path / "l.ome.zarr")[:], vol)


def test_preview_pyramid_goes_down_to_a_small_size_level_by_level(tmp_path):
    vol = _labels((150, 20, 130))
    src = zarr.create_array(store=str(tmp_path / "src.zarr"), shape=vol.shape, chunks=(32, 20, 32), dtype="uint8")
    src[:] = vol
    src.attrs.update({"phases": {"0": "a", "1": "b", "2": "c"}})
    levels = write_preview(src, tmp_path / "prev.ome.zarr", smallest=20, workers=2)
    assert levels == 4  # 150 -> 75 -> 38 -> 19
    group = zarr.open_group(str(tmp_path / "prev.ome.zarr"), mode="r")
    ome_models.ImageLabel.from_zarr(group)
    read, _ = _ome_reader_levels(tmp_path / "prev.ome.zarr")
    for k in range(levels):
        step = 2**k
        np.testing.assert_array_equal(read[k], vol[::step, ::step, ::step])
    assert group.attrs["ome"]["multiscales"][0]["datasets"][3]["coordinateTransformations"][0]["scale"] == [8.0] * 3


def test_convert_reads_an_ome_zarr_level_with_its_voxel_size(tmp_path):
    vol = _labels()
    np.save(tmp_path / "l.npy", vol)
    convert(tmp_path / "l.npy", tmp_path / "l.ome.zarr", voxel_size=(2.0, 0.5, 0.5), phases="0=a")
    convert(tmp_path / "l.ome.zarr", tmp_path / "full.zarr")
    full = read_zarr(tmp_path / "full.zarr")
    np.testing.assert_array_equal(full[:], vol)
    assert full.attrs["voxel_size"] == [2.0, 0.5, 0.5]
    convert(tmp_path / "l.ome.zarr", tmp_path / "half.tif", level=1)
    with open_source(tmp_path / "half.tif") as half:
        np.testing.assert_array_equal(half.read(0, half.shape[0]), vol[::2, ::2, ::2])
        assert half.voxel_size == pytest.approx((4.0, 1.0, 1.0))
    with pytest.raises(Exception, match=r"--level 5 does not exist in .*l\.ome\.zarr: it has levels 0 to 1"):
        convert(tmp_path / "l.ome.zarr", tmp_path / "x.zarr", level=5)
    with pytest.raises(Exception, match=r"--level is for OME-Zarr images"):
        convert(tmp_path / "full.zarr", tmp_path / "y.zarr", level=1)


def test_a_plain_zarr_output_stays_a_plain_array(tmp_path):
    vol = _labels((5, 6, 7))
    np.save(tmp_path / "l.npy", vol)
    convert(tmp_path / "l.npy", tmp_path / "plain.zarr")
    assert not is_ome_zarr(tmp_path / "plain.zarr") and label_array_path(tmp_path / "plain.zarr") == tmp_path / "plain.zarr"
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "plain.zarr"))[:], vol)
    assert label_array_path(tmp_path / "x.ome.zarr") == tmp_path / "x.ome.zarr" / "0"


def test_stitch_writes_ome_zarr_outputs_and_previews(tmp_path, boxsum):
    from rockseg.inference import PredictConfig, predict
    from rockseg.inference.stitching import stitch
    from tests.helpers import binary_volume, expected_boxsum

    data = binary_volume(tmp_path / "v.zarr", (40, 36, 30))
    predict(tmp_path / "v.zarr", tmp_path / "p.zarr", model=boxsum(tmp_path / "m.pt"),
            config=PredictConfig(block=12, device="cpu"))
    s = stitch([tmp_path / "p.zarr"], tmp_path / "final.ome.zarr", preview=tmp_path / "prev.ome.zarr")
    want = expected_boxsum(data)
    for name in ("final.ome.zarr", "prev.ome.zarr"):
        group = zarr.open_group(str(tmp_path / name), mode="r")
        ome_models.ImageLabel.from_zarr(group)
        levels, _ = _ome_reader_levels(tmp_path / name)
        np.testing.assert_array_equal(levels[0], want)
        np.testing.assert_array_equal(levels[-1], want[:: 2 ** (len(levels) - 1), :: 2 ** (len(levels) - 1)][
            ..., :: 2 ** (len(levels) - 1)])
    assert s["preview_levels"] == 1
    assert zarr.open_array(str(tmp_path / "final.ome.zarr" / "0")).attrs["phases"]["3"] == "s3"


def test_predict_writes_an_ome_zarr_image_that_stitch_and_score_read(tmp_path, boxsum):
    from rockseg.inference import PredictConfig, predict
    from rockseg.inference.stitching import stitch
    from tests.helpers import binary_volume, expected_boxsum

    data = binary_volume(tmp_path / "v.zarr", (80, 36, 30))
    model = boxsum(tmp_path / "m.pt")
    out = tmp_path / "p.ome.zarr"
    for part in ((0, 2), (1, 2)):
        s = predict(tmp_path / "v.zarr", out, model=model, config=PredictConfig(block=12, device="cpu", part=part))
        group = zarr.open_group(str(out), mode="r")
        ome_models.ImageLabel.from_zarr(group)  # valid already while parts are missing (level 0 only)
    assert s["complete"]
    levels, _ = _ome_reader_levels(out)
    want = expected_boxsum(data)
    assert len(levels) == 2  # 80 -> 40
    np.testing.assert_array_equal(levels[0], want)
    np.testing.assert_array_equal(levels[1], want[::2, ::2, ::2])
    stitch([out], tmp_path / "final.zarr")
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "final.zarr"))[...], want)
