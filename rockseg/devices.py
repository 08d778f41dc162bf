"""Choosing the torch device from a ``--device`` option, and the CPUs this process may use."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from rockseg.errors import InputError

if TYPE_CHECKING:
    import torch


def available_cpus() -> int:
    """CPU cores this process may run on: respects Slurm/cgroup CPU sets, unlike ``os.cpu_count()``."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA if available else CPU; ``"cpu"``; ``"cuda"`` / ``"cuda:N"`` (checked to exist)."""
    import torch  # here, so that torch-free commands (convert) can import this module without torch's start-up

    text = str(name).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or text.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise InputError(f"--device {name} asked for CUDA but no CUDA GPU is available here: use --device cpu")
        index = text.partition(":")[2]
        if index:
            if not index.isdigit() or int(index) >= torch.cuda.device_count():
                raise InputError(
                    f"--device {name}: there is no such GPU (this machine has {torch.cuda.device_count()}): "
                    f"use cuda:0..cuda:{torch.cuda.device_count() - 1}"
                )
        return torch.device(text)
    raise InputError(f"--device {name!r} is unknown: use auto, cpu, cuda or cuda:N")
