"""The network a run trains: built from the seeded torch RNG, with pretrained encoder weights and frozen as asked.

:func:`_build` also returns a small summary of what it loaded and froze, which goes into the model file;
:func:`_plain` makes such summaries safe for JSON and for ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from rockseg import models
from rockseg.models import build_model
from rockseg.training.finetune import _Init, load_init
from rockseg.training.settings import TrainConfig, network_arch


def _build(
    config: TrainConfig, arch_args: Mapping[str, Any], weights_file: Path | None, init: _Init | None = None,
) -> tuple[nn.Module, dict]:
    """Build the network (weights from the seeded torch RNG), load the init model's or encoder weights and freeze
    as asked."""
    model = build_model(network_arch(config.arch), **arch_args)
    info: dict[str, Any] = {}
    if init is not None:
        info["init"] = _plain(init.summary(load_init(model, init, classes=int(arch_args["classes"]))))
    if weights_file is not None:
        loaded = models.load_encoder_weights(model, weights_file)
        info["encoder_weights"] = {"path": str(weights_file.resolve()), "sha256": models.file_sha256(weights_file),
                                   # counts only: a deep file in a shallow model skips ~150 tensor names
                                   **{k: len(v) if isinstance(v, list) else _plain(v) for k, v in loaded.items()}}
    if config.freeze_encoder:
        info["frozen_parameters"] = int(models.freeze_encoder(model))
    return model, info


def _plain(value: Any) -> Any:
    """A JSON/weights_only-safe copy of a small summary (dicts, lists, numbers, strings)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_plain(v) for v in value]
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    return str(value)
