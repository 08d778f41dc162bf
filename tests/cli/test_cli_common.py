"""The command line's shared behaviour: version, help, one-line errors, choices, the allocator."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from rockseg import __version__
from rockseg.cli import app
from tests.helpers import run_rockseg as rockseg

runner = CliRunner()


def test_version_and_help():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output
    for cmd in ("convert", "tile", "train", "predict", "stitch", "score", "demo"):
        result = runner.invoke(app, [cmd, "--help"])
        assert result.exit_code == 0, (cmd, result.output)


def test_missing_file_is_one_line_exit_2(tmp_path):
    proc = rockseg("convert", tmp_path / "nope.tif", tmp_path / "out.zarr")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "nope.tif" in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "out.zarr").exists()


def test_bad_choice_rejected_before_work(tmp_path):
    result = runner.invoke(app, ["score", str(tmp_path / "a.zarr"), "--connectivity", "2"])
    assert result.exit_code == 2


@pytest.mark.parametrize("command", ["train", "predict", "score"])
def test_allocator_tuned_only_in_the_rockseg_process(tmp_path, monkeypatch, command):
    """The commands that allocate large arrays block after block tune glibc's allocator in the rockseg process,
    never in a caller's."""
    from rockseg import devices
    from rockseg.cli import common

    calls = []
    monkeypatch.setattr(devices, "tune_malloc", lambda: calls.append(command) or True)
    args = [command, str(tmp_path / "missing.zarr"), "-o", str(tmp_path / "out")]
    if command == "score":
        args = args[:2]
    if command == "predict":
        args += ["-m", str(tmp_path / "missing.pt")]
    assert runner.invoke(app, args).exit_code == 2  # the command ran as far as its input
    assert calls == []  # a library caller's process (CliRunner here) is left alone
    monkeypatch.setattr(common, "_own_process", True)
    assert runner.invoke(app, args).exit_code == 2
    assert calls == [command]


def test_json_summary_fills_voxels_and_rates():
    from pathlib import Path

    import numpy as np

    from rockseg.cli.common import json_summary

    doc = json_summary("stitch", {"out": Path("f.zarr"), "shape": (4, 5, 6), "seconds": 2.0, "x": np.float32(1.5),
                                  "bad": float("nan")}, 9.0)
    assert doc == {"command": "stitch", "ok": True, "out": "f.zarr", "shape": [4, 5, 6], "seconds": 2.0, "x": 1.5,
                   "bad": None, "voxels": 120, "voxels_per_second": 60.0}


def test_log_lines_carry_an_eta_and_no_control_characters():
    from rockseg.progress import LogLines, Reporter

    lines = []
    advance = LogLines("convert x.zarr", 1000, lines.append)
    for _ in range(10):
        advance(100)
    assert len(lines) == 10 and lines[-1].startswith("convert x.zarr: 0.0/0.0 MB (100%)")
    assert all("ETA " in line for line in lines) and "ETA 0:00:00" in lines[-1]
    with Reporter(40, "predict", log=lines.append) as report:
        for _ in range(40):
            report.advance(1000)
    assert lines[-1].startswith("predict: 40/40 blocks (100%)") and "ETA 0:00:00" in lines[-1]
    assert not any("\x1b" in line or "\r" in line for line in lines)


def test_a_failed_json_run_prints_an_error_document(tmp_path):
    import json

    proc = rockseg("convert", tmp_path / "nope.tif", tmp_path / "out.zarr", "--json")
    assert proc.returncode == 2
    doc = json.loads(proc.stdout)
    assert doc["ok"] is False and doc["exit_code"] == 2 and "nope.tif" in doc["error"]


@pytest.mark.slow
def test_every_long_command_prints_one_json_summary(tmp_path):
    """convert, tile, train, predict, stitch and score with --json: one JSON document on stdout each, logs on
    stderr as plain lines (no terminal here, as under cron)."""
    import json

    import numpy as np

    from rockseg.synthetic import synthetic_rock

    image, labels = synthetic_rock((32, 32, 32), seed=5)
    np.save(tmp_path / "img.npy", image)
    np.save(tmp_path / "lab.npy", labels)
    steps = [
        ("convert", tmp_path / "img.npy", tmp_path / "img.zarr"),
        ("convert", tmp_path / "lab.npy", tmp_path / "lab.zarr"),
        ("tile", tmp_path / "img.zarr", tmp_path / "lab.zarr", "-o", tmp_path / "tiles.zarr", "--size", "16",
         "--count", "8"),
        ("train", tmp_path / "tiles.zarr", "-o", tmp_path / "m.pt", "--arch", "unet", "--base-channels", "4",
         "--depth", "2", "--epochs", "1", "--device", "cpu"),
        ("predict", tmp_path / "img.zarr", "-m", tmp_path / "m.pt", "-o", tmp_path / "p.zarr", "--device", "cpu",
         "--tile", "16", "--halo", "4", "--block", "16"),
        ("stitch", tmp_path / "p.zarr", "-o", tmp_path / "final.ome.zarr", "--preview", tmp_path / "prev.ome.zarr"),
        ("score", tmp_path / "final.ome.zarr", tmp_path / "lab.zarr"),
    ]
    docs = {}
    for args in steps:
        proc = rockseg(*args, "--json")
        assert proc.returncode == 0, (args[0], proc.stderr)
        assert len(proc.stdout.strip().splitlines()) == 1, (args[0], proc.stdout)
        docs.setdefault(args[0], json.loads(proc.stdout))
        assert "\x1b" not in proc.stderr and "\r" not in proc.stderr, (args[0], proc.stderr)
    assert docs["convert"]["voxels"] == 32**3 and docs["convert"]["dest"].endswith("img.zarr")
    assert docs["tile"]["train"] > 0 and docs["train"]["best_epoch"] >= 0
    assert docs["predict"]["blocks_done"] == 8 and docs["predict"]["blocks_skipped"] == 0
    assert docs["predict"]["complete"] is True and docs["predict"]["voxels_per_second"] > 0
    assert docs["stitch"]["out"].endswith("final.ome.zarr") and docs["stitch"]["voxels"] == 32**3
    assert docs["score"]["voxels"] == 32**3 and "mean_iou" in docs["score"]
