"""Checkpoints: the state of a run after each epoch, so that a killed run continues with ``resume=True``.

A checkpoint ``MODEL.ckpt`` holds the weights, optimizer, scheduler, random state, best weights and history,
written atomically every epoch (:func:`_write_checkpoint`) and loadable with ``torch.load(..., weights_only=True)``.
It also holds the run's *fingerprint* (:func:`_fingerprint`): the settings that must match to resume, all but
:data:`RESUMABLE_CHANGES`. :func:`_load_checkpoint` refuses a checkpoint written with other settings, naming the
first difference; :func:`_check_outputs` refuses to start a new run over an old checkpoint.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from rockseg.errors import InputError, OutputExistsError
from rockseg.io import stores
from rockseg.training.data import _Part
from rockseg.training.settings import TrainConfig, checkpoint_path_for

if TYPE_CHECKING:
    from rockseg.training.loop import _Run

CHECKPOINT_FORMAT = "rockseg-checkpoint"
CHECKPOINT_VERSION = 1
#: Settings that may change when a run is resumed (the rest must match the checkpoint).
RESUMABLE_CHANGES = ("epochs", "max_minutes", "device", "num_threads", "loader_threads")
#: Settings added after checkpoints were first written, with the values older checkpoints ran with.
_NEW_SETTINGS = {"init": None, "freeze_encoder_epochs": 0, "gan_weight": 0.01}


def _check_outputs(out: Any, *, overwrite: bool, resume: bool) -> tuple[Path, Path]:
    ckpt = checkpoint_path_for(out)
    if resume and ckpt.exists():
        return stores.check_new_output(out, overwrite=True), ckpt
    out_path = stores.check_new_output(out, overwrite=overwrite)
    if ckpt.exists() and not overwrite:
        raise OutputExistsError(
            f"checkpoint {ckpt} of an earlier run exists: pass --resume to continue it, or --overwrite to start again"
        )
    return out_path, ckpt


def _fingerprint(config: TrainConfig, tiles: Any, parts: Mapping[str, _Part], world: int) -> dict[str, Any]:
    """The settings a checkpoint must share with the run that resumes it."""
    return {**{k: v for k, v in asdict(config).items() if k not in RESUMABLE_CHANGES},
            "tiles": str(Path(tiles).resolve()), "tile_counts": [len(parts["train"]), len(parts["val"])],
            "world_size": world}


def _load_checkpoint(path: Path, fingerprint: Mapping[str, Any]) -> dict[str, Any]:
    """Read a checkpoint safely and check it was written with the same settings."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(
            f"checkpoint {path} does not load ({first[:160]}): start again with --overwrite instead of --resume"
        ) from None
    if not isinstance(ckpt, Mapping) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{path} is not a rockseg checkpoint: move it away, or start again with --overwrite")
    if int(ckpt.get("format_version", 0)) > CHECKPOINT_VERSION:
        raise InputError(f"checkpoint {path} is from a newer rockseg: upgrade rockseg, or start again with --overwrite")
    # Checkpoints from before --sampling trained on the stored tiles: that is what they resume.
    # Those from before --init, --freeze-encoder-epochs and --gan-weight had their defaults.
    old = {"sampling": "fixed", **_NEW_SETTINGS, **ckpt.get("settings", {})}
    coarse = ("tiles", "tile_counts", "world_size")  # the coarsest difference is the one to report
    for key in sorted(set(old) | set(fingerprint), key=lambda k: (k not in coarse, coarse.index(k) if k in coarse else 0, k)):
        if old.get(key) != fingerprint.get(key):
            what = {"tiles": "tile set", "tile_counts": "tile counts", "world_size": "number of processes"}.get(
                key, f"--{key.replace('_', '-')}")
            raise InputError(
                f"checkpoint {path} was written with {what} {old.get(key)!r}, not {fingerprint.get(key)!r}: "
                f"resume with the same settings, or start again with --overwrite"
            )
    return dict(ckpt)


def _write_checkpoint(run: _Run) -> None:
    """Write the state of ``run`` after its last epoch to ``run.ckpt_path``, atomically."""
    payload = {
        "format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION,
        "settings": dict(run.fingerprint), "epoch": run.epoch, "optimizer_steps": run.optimizer_steps,
        "model": {k: v.detach().cpu().clone() for k, v in run.net.state_dict().items()},
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict() if run.scheduler is not None else None,
        "rng": {"torch": torch.get_rng_state(),
                **({"cuda": torch.cuda.get_rng_state(run.device)} if run.device.type == "cuda" else {})},
        "best": run.best, "history": run.history,
        "elapsed": run.elapsed(), "train_seconds": run.train_seconds,
        **({"adversary": run.adversary.state_dict()} if run.adversary is not None else {}),
    }
    tmp = run.ckpt_path.with_name(f".{run.ckpt_path.name}.partial")
    torch.save(payload, tmp)
    os.replace(tmp, run.ckpt_path)


def _restore(run: _Run, ckpt: Mapping[str, Any]) -> None:
    """Put ``run`` back in the state a checkpoint from :func:`_load_checkpoint` holds."""
    run.net.load_state_dict(ckpt["model"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    if run.scheduler is not None and ckpt.get("scheduler") is not None:
        run.scheduler.load_state_dict(ckpt["scheduler"])
    rng = ckpt.get("rng") or {}
    if "torch" in rng:
        torch.set_rng_state(rng["torch"])
    if run.device.type == "cuda" and rng.get("cuda"):
        torch.cuda.set_rng_state(rng["cuda"], run.device)
    run.epoch, run.optimizer_steps = int(ckpt["epoch"]), int(ckpt["optimizer_steps"])
    run.history = [dict(r) for r in ckpt["history"]]
    run.best = dict(ckpt["best"])
    run.previous_elapsed = float(ckpt.get("elapsed", 0.0))
    run.train_seconds = float(ckpt.get("train_seconds", 0.0))
    if run.adversary is not None and ckpt.get("adversary") is not None:
        run.adversary.load_state_dict(ckpt["adversary"])
