"""The rockseg model file: writing, reading safely and loading it as a network.

A model file is one ``torch.save`` of a plain dict (no pickled classes), so it loads with
``torch.load(path, weights_only=True)`` and a file from an untrusted source cannot run code. It holds:

``format`` / ``format_version``
    ``"rockseg-model"`` and 1.
``arch`` / ``arch_args``
    the architecture name (a key of :data:`~rockseg.models.registry.ARCHITECTURES`) and the keyword arguments
    of its constructor.
``spatial_dims`` / ``in_channels`` / ``phases``
    2 or 3; input channels; ``{label: name}`` of the output classes (labels are 0..classes-1).
``normalization``
    the intensity statistics of the training image (see :mod:`rockseg.io.intensity`).
``tile`` / ``halo``
    recommended tile edge and halo for prediction, in voxels.
``training``
    a summary of the training run (settings, epochs, best validation mean IoU...).
``postprocess`` (optional)
    what ``rockseg predict`` does to the labels after the network: ``specks``, the size (voxels) of the isolated
    pieces of a phase it relabels (:mod:`rockseg.specks`), chosen on the validation tiles, and ``tried``, the
    validation scores it was chosen from. Absent (model files written before predict removed specks): nothing.
``card`` (optional)
    the model card: what the model was trained on, its measured figures and its limits (see
    :mod:`rockseg.models.card`); ``rockseg models`` prints it.
``state_dict``
    the weights.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rockseg.errors import InputError, MissingInputError
from rockseg.models.registry import build_model

FORMAT = "rockseg-model"
FORMAT_VERSION = 1


def save_model_file(path: str | os.PathLike[str], model: nn.Module, **meta: Any) -> None:
    """Write ``model`` and its metadata (see the module docstring for the keys) as one model file.

    Written under a temporary name and renamed, so a crash never leaves a truncated model file.
    """
    required = {"arch", "arch_args", "spatial_dims", "in_channels", "phases", "normalization", "tile", "halo"}
    missing = required - meta.keys()
    if missing:
        raise ValueError(f"model file metadata lacks {sorted(missing)}")
    payload = {
        "format": FORMAT, "format_version": FORMAT_VERSION, **meta,
        "phases": {str(k): str(v) for k, v in meta["phases"].items()},
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    write_payload(path, payload)


def write_payload(path: str | os.PathLike[str], payload: Mapping[str, Any]) -> None:
    """``torch.save`` a model-file payload under a temporary name and rename it: never a truncated model file."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.partial")
    torch.save(dict(payload), tmp)
    os.replace(tmp, p)


def load_plain(p: Path, refusal: Callable[[str], str]) -> Any:
    """``torch.load(p, weights_only=True)`` on the CPU; a file that does not load safely raises
    :class:`InputError` with ``refusal(first line of the reason)`` as its message."""
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(refusal(first[:160])) from None


def read_model_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a model file safely (``weights_only=True``) and check that it is a rockseg model."""
    p = Path(path)
    if not p.exists():
        raise MissingInputError(f"model {p} does not exist: check the path, or train one with 'rockseg train'")
    payload = load_plain(p, lambda reason: f"model {p} is not a rockseg model file that loads safely ({reason}): "
                                           f"use a file written by 'rockseg train'")
    if not isinstance(payload, Mapping) or payload.get("format") != FORMAT:
        raise InputError(f"model {p} is not a rockseg model file: use a file written by 'rockseg train'")
    if int(payload.get("format_version", 0)) > FORMAT_VERSION:
        raise InputError(
            f"model {p} has format version {payload['format_version']}, newer than this rockseg reads "
            f"({FORMAT_VERSION}): upgrade rockseg"
        )
    return dict(payload)


def model_from_payload(payload: Mapping[str, Any]) -> nn.Module:
    """Build the network described by a model-file payload and load its weights (eval mode)."""
    model = build_model(payload["arch"], **payload["arch_args"])
    model.load_state_dict(payload["state_dict"])
    return model.eval()


def load_model(path: str | os.PathLike[str]) -> nn.Module:
    """Load a rockseg model file as a ``torch.nn.Module`` in eval mode.

    The module takes normalised float input (N, in_channels, *spatial) and returns logits
    (N, classes, *spatial). Read the metadata (phases, normalisation, tile...) with :func:`read_model_file`.
    """
    return model_from_payload(read_model_file(path))


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file, hex; identifies the model that made a prediction."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
