"""Tests of rockseg.training.hardware: the precision chosen, a missing CUDA device, and training on a GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rockseg.devices import resolve_device
from rockseg.errors import InputError
from rockseg.models import load_model
from rockseg.training import TrainConfig, train
from tests.training.helpers import TINY


def test_precision(tilesets, tmp_path):
    s = train(tilesets[2], tmp_path / "a.pt", config=TrainConfig(**{**TINY, "steps_per_epoch": 1}))
    assert s["precision"] == "float32"  # auto never trains in bf16 on a CPU
    s = train(tilesets[2], tmp_path / "b.pt", config=TrainConfig(**{**TINY, "steps_per_epoch": 1, "precision": "bf16"}))
    assert s["precision"] == "bf16" and np.isfinite(s["best_val_mean_iou"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown where CUDA is missing")
def test_cuda_missing_is_a_clear_error(tilesets, tmp_path):
    with pytest.raises(InputError, match="no CUDA GPU.*--device cpu"):
        train(tilesets[2], tmp_path / "m.pt", config=TrainConfig(**{**TINY, "device": "cuda:0"}))
    assert resolve_device("auto") == torch.device("cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_trains_on_cuda(tilesets, tmp_path):
    s = train(tilesets[3], tmp_path / "m.pt", config=TrainConfig(**{**TINY, "device": "cuda"}))
    assert s["device"].startswith("cuda")
    assert load_model(tmp_path / "m.pt")(torch.zeros((1, 1, 16, 16, 16))).shape == (1, 2, 16, 16, 16)
