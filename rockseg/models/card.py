"""Model cards: what a model file says about itself, for ``rockseg models``.

:func:`describe_model` gathers, from one model file, what a user needs before trusting it on their scan: the
network, its phases, its recommended tile and halo, its training run, and its card (an optional ``card`` entry of
the model file: what it was trained on, its measured figures, its limits). :func:`set_model_card` writes a card
into an existing model file (as the tool that makes the shipped model does, after measuring it).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any


from rockseg.errors import InputError
from rockseg.models.modelfile import read_model_file, write_payload
from rockseg.vocabulary import DEFAULT_MODEL, SHIPPED_MODELS

#: Keys of a card, in the order they are printed; each is text or a list of text, ``figures`` a list of dicts.
CARD_KEYS = ("summary", "trained_on", "held_out", "figures", "speed", "limits")


def shipped_models() -> list[Path]:
    """The model files shipped inside the package, the default one first."""
    others = sorted(p for p in SHIPPED_MODELS.glob("*.pt") if p != DEFAULT_MODEL)
    return ([DEFAULT_MODEL] if DEFAULT_MODEL.exists() else []) + others


def resolve_model(name: str | os.PathLike[str] | None) -> Path:
    """A model path from ``rockseg models``' argument: a file, ``default`` (or nothing), or a shipped model's name."""
    if name is None or str(name) == "default":
        return DEFAULT_MODEL
    path = Path(name)
    if path.exists() or path.suffix:
        return path
    shipped = SHIPPED_MODELS / f"{name}.pt"
    if shipped.exists():
        return shipped
    names = ", ".join(p.stem for p in shipped_models())
    raise InputError(f"model {name!r} is neither a file nor a shipped model: give a path, or one of {names}")


def describe_model(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The description of a model file that ``rockseg models MODEL --json`` prints."""
    p = Path(path)
    payload = read_model_file(p)
    training = payload.get("training") or {}
    config = training.get("config") or {}
    return {
        "model": str(p), "name": p.stem, "default": p.resolve() == DEFAULT_MODEL.resolve(),
        "arch": payload["arch"], "spatial_dims": payload["spatial_dims"], "in_channels": payload["in_channels"],
        "base_channels": payload["arch_args"].get("base_channels"), "depth": payload["arch_args"].get("depth"),
        "parameters": sum(int(v.numel()) for k, v in payload["state_dict"].items()
                          if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))),
        "phases": payload["phases"], "tile": payload["tile"], "halo": payload["halo"],
        "training": {key: training.get(key) for key in ("epochs_run", "steps", "best_epoch", "best_val_mean_iou",
                                                         "best_val_score", "seconds")}
        | {"loss": config.get("loss"), "schedule": config.get("schedule")},
        "specks": int((payload.get("postprocess") or {}).get("specks", 0)),
        "card": dict(payload.get("card") or {}),
    }


def set_model_card(path: str | os.PathLike[str], card: Mapping[str, Any]) -> None:
    """Write ``card`` (keys of :data:`CARD_KEYS`) into the model file at ``path``, replacing any card it had."""
    unknown = set(card) - set(CARD_KEYS)
    if unknown:
        raise InputError(f"model card keys {sorted(unknown)} are not card keys: use {', '.join(CARD_KEYS)}")
    payload = read_model_file(path)
    payload["card"] = dict(card)
    write_payload(path, payload)
