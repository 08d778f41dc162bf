"""``rockseg demo``: the whole pipeline, trained for a number of epochs (not a wall time) unless told otherwise."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from rockseg.cli import app
from rockseg.demo import run_demo
from rockseg.training.settings import log_path_for
from rockseg.vocabulary import DEMO_EPOCHS


@pytest.mark.slow
def test_demo_trains_its_epochs_and_scores_the_held_out_part(tmp_path):
    result = run_demo(tmp_path / "d", size=64, epochs=2, device="cpu", log=lambda _: None)
    assert result["train"]["stopped"] == "epochs" and result["train"]["epochs"] == 2
    log = [json.loads(line) for line in log_path_for(tmp_path / "d" / "model.pt").read_text().splitlines()]
    assert [row["epoch"] for row in log] == [1, 2] and log[-1]["lr"] < log[0]["lr"]  # decayed over the 2 epochs
    document = json.loads((tmp_path / "d" / "score.json").read_text())
    assert document == result["score"] and [p["name"] for p in document["phases"]] == ["pore", "clay", "quartz",
                                                                                        "pyrite"]


def test_demo_defaults_to_its_epochs_not_a_wall_time():
    result = CliRunner().invoke(app, ["demo", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert f"[default: {DEMO_EPOCHS}]" in text and "instead of --epochs" in text
