"""``rockseg verify`` and ``stitch --verify`` as a user runs them: exit 0 when every shard matches its record,
exit 1 listing what is missing or corrupt, and a resume on another input refused with exit 2."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from rockseg.cli import app
from rockseg.inference import PredictConfig, predict
from tests.helpers import binary_volume

runner = CliRunner()


def test_verify_exit_codes(tmp_path, boxsum):
    binary_volume(tmp_path / "v.zarr", (16, 16, 16))
    model = boxsum(tmp_path / "m.pt")
    predict(tmp_path / "v.zarr", tmp_path / "p.zarr", model=model, config=PredictConfig(block=8, device="cpu"))
    result = runner.invoke(app, ["verify", str(tmp_path / "p.zarr"), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout.strip().splitlines()[-1])
    assert doc["ok"] and doc["predictions"][0]["ok"] == 8
    (tmp_path / "p.zarr" / "c" / "1" / "0" / "1").unlink()
    result = runner.invoke(app, ["verify", str(tmp_path / "p.zarr")])
    assert result.exit_code == 1 and "1 corrupt (1.0.1: missing)" in result.output
    result = runner.invoke(app, ["stitch", str(tmp_path / "p.zarr"), "-o", str(tmp_path / "f.zarr"), "--verify"])
    assert result.exit_code == 1 and "1 of 8 blocks missing (1.0.1)" in result.output
    assert not (tmp_path / "f.zarr").exists()


def test_a_resume_on_another_volume_exits_2_saying_what_differs(tmp_path, boxsum):
    binary_volume(tmp_path / "v.zarr", (16, 16, 16))
    binary_volume(tmp_path / "w.zarr", (16, 16, 16), seed=1)
    model = boxsum(tmp_path / "m.pt")
    predict(tmp_path / "v.zarr", tmp_path / "p.zarr", model=model,
            config=PredictConfig(block=8, device="cpu", part=(0, 2)))
    result = runner.invoke(app, ["predict", str(tmp_path / "w.zarr"), "-o", str(tmp_path / "p.zarr"), "-m",
                                 str(model), "--block", "8", "--device", "cpu", "--shard", "1/2"])
    assert result.exit_code == 2
    assert "input fingerprint (was " in result.output and len(result.output.strip().splitlines()) == 1


def test_predict_names_the_live_run_that_holds_shards(tmp_path, boxsum):
    import socket
    import subprocess
    import sys

    binary_volume(tmp_path / "v.zarr", (16, 16, 16))
    model = boxsum(tmp_path / "m.pt")
    predict(tmp_path / "v.zarr", tmp_path / "p.zarr", model=model,
            config=PredictConfig(block=8, device="cpu", part=(1, 2)))
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        claims = tmp_path / "p.zarr" / ".rockseg" / "claims"
        claims.mkdir(exist_ok=True)
        (claims / "0.0.0").write_text(f"{socket.gethostname()} {other.pid} 2026-12-07T12:00:00 abcd\n")
        result = runner.invoke(app, ["predict", str(tmp_path / "v.zarr"), "-o", str(tmp_path / "p.zarr"), "-m",
                                     str(model), "--block", "8", "--device", "cpu"])
    finally:
        other.kill()
        other.wait()
    assert result.exit_code == 0, result.output
    assert f"1 shard(s) left to other runs still computing them ({socket.gethostname()} {other.pid} " in result.output
