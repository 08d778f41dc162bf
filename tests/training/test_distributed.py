"""Tests of rockseg.training.distributed: the torchrun environment, a world of one, and training on two processes."""

from __future__ import annotations

import json
import os

import pytest
import torch

from rockseg.errors import InputError
from rockseg.models import load_model, read_model_file
from rockseg.training import distributed

TORCHRUN_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


def test_torchrun_environment_and_a_world_of_one(monkeypatch):
    for key, value in zip(TORCHRUN_ENV, ("4", "2", "0", "2")):
        monkeypatch.setenv(key, value)
    assert distributed._distributed_env() == (4, 2, 0, 2)
    monkeypatch.setenv("RANK", "two")
    with pytest.raises(InputError, match="RANK.*launch with torchrun"):
        distributed._distributed_env()
    for key in TORCHRUN_ENV:
        monkeypatch.delenv(key)
    assert distributed._distributed_env() == (1, 0, 0, 1)
    d = distributed._start_distributed(torch.device("cpu"))  # outside torchrun: no process group
    assert d == distributed._Dist() and d.main and not d.owned and d.reduce_on(torch.device("cpu")) == "cpu"
    t = torch.tensor([3.0, 1.0])
    assert distributed._reduce(t, d, "max") is t and t.tolist() == [3.0, 1.0]


@pytest.mark.slow
def test_torchrun_two_processes(tilesets, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "m.pt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "rockseg",
           "train", str(tilesets[2]), "-o", str(out), "--device", "cpu", "--epochs", "2", "--base-channels", "4",
           "--batch-size", "2", "--steps-per-epoch", "2", "--threads", "1", "--loss", "ce"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("wrote") == 1  # rank 0 reports, rank 1 does not
    log = [json.loads(line) for line in (tmp_path / "m.log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2] and all(r["world_size"] == 2 for r in log)
    t = read_model_file(out)["training"]
    assert t["world_size"] == 2 and t["steps"] == 4 and t["effective_batch"] == 4
    assert load_model(out)(torch.zeros((1, 1, 16, 16))).shape == (1, 2, 16, 16)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.ckpt", "m.curve.png", "m.log.jsonl", "m.pt"]
