"""predict's checks: bad inputs, unsafe model files and unwritable outputs are refused before any work."""

from __future__ import annotations

import pytest
import torch

from rockseg.errors import InputError, MissingInputError
from rockseg.inference import PredictConfig, predict
from tests.helpers import binary_volume


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


def test_output_under_a_file_is_refused(tmp_path, boxsum):
    binary_volume(tmp_path / "v.zarr", (20, 20, 20))
    model = boxsum(tmp_path / "m.pt")
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="is a file, not a folder"):
        predict(tmp_path / "v.zarr", tmp_path / "file" / "p.zarr", model=model)


def test_statistics_are_computed_once_and_reused_by_later_runs_and_parts(tmp_path, boxsum, monkeypatch):
    import zarr

    from rockseg.io import intensity
    from tests.helpers import grey_volume

    grey_volume(tmp_path / "v.zarr", (16, 16, 16), chunks=(8, 8, 8))  # no intensity attribute: another tool's
    grey_volume(tmp_path / "w.zarr", (16, 16, 16), seed=1, chunks=(8, 8, 8))
    model = boxsum(tmp_path / "m.pt")
    reads = []
    read = intensity.read_piece
    monkeypatch.setattr(intensity, "read_piece", lambda v, r: reads.append(r) or read(v, r))
    cfg = PredictConfig(device="cpu", block=8, part=(0, 2))
    predict(tmp_path / "v.zarr", tmp_path / "p.zarr", model=model, config=cfg)
    assert len(reads) > 0
    stored = dict(zarr.open_array(str(tmp_path / "v.zarr")).attrs)["intensity"]
    assert stored == intensity.intensity_stats(zarr.open_array(str(tmp_path / "v.zarr")))
    reads.clear()
    s = predict(tmp_path / "v.zarr", tmp_path / "p.zarr", model=model, config=PredictConfig(
        device="cpu", block=8, part=(1, 2)))
    assert s["complete"] and reads == []  # the second part reads no chunk for statistics
    # a read-only volume: the statistics go beside the prediction, and its next part finds them there
    monkeypatch.setattr(intensity, "_write_atomic", _refusing_volume_metadata(intensity._write_atomic))
    reads.clear()
    predict(tmp_path / "w.zarr", tmp_path / "q.zarr", model=model, config=cfg)
    assert reads and "intensity" not in dict(zarr.open_array(str(tmp_path / "w.zarr")).attrs)
    assert (tmp_path / "q.zarr" / ".rockseg" / "intensity.json").exists()
    reads.clear()
    s = predict(tmp_path / "w.zarr", tmp_path / "q.zarr", model=model, config=PredictConfig(
        device="cpu", block=8, part=(1, 2)))
    assert s["complete"] and reads == []


def _refusing_volume_metadata(write):
    def refusing(path, text):
        if path.name == "zarr.json":
            raise PermissionError(13, "Permission denied", str(path))
        return write(path, text)

    return refusing
