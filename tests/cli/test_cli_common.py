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


@pytest.mark.parametrize("command", ["train", "predict"])
def test_allocator_tuned_only_in_the_rockseg_process(tmp_path, monkeypatch, command):
    """The commands that run a network tune glibc's allocator in the rockseg process, never in a caller's."""
    from rockseg import devices
    from rockseg.cli import common

    calls = []
    monkeypatch.setattr(devices, "tune_malloc", lambda: calls.append(command) or True)
    args = [command, str(tmp_path / "missing.zarr"), "-o", str(tmp_path / "out")]
    if command == "predict":
        args += ["-m", str(tmp_path / "missing.pt")]
    assert runner.invoke(app, args).exit_code == 2  # the command ran as far as its input
    assert calls == []  # a library caller's process (CliRunner here) is left alone
    monkeypatch.setattr(common, "_own_process", True)
    assert runner.invoke(app, args).exit_code == 2
    assert calls == [command]
