"""Fine-tuning: a run that starts from the weights of a rockseg model file (``train --init``), and encoder freezing.

:func:`resolve_init` reads the ``init`` model (a path, ``"default"`` or a shipped model's name, as
:func:`rockseg.models.resolve_model` resolves them), checks it against the tile set (spatial dimensions, one input
channel, a registered architecture, the network settings given beside it) and gives the run's settings with the
init model's network. :func:`load_init` copies its weights into the freshly built network: every tensor whose
name and shape match; for a tile set with another number of phases the tensors that depend on the number of
classes (the output layer) keep their fresh, seeded initialisation. The model file's training summary records
what the run started from (:meth:`_Init.summary`).

:func:`encoder_modules` names the contracting path of any network (a backbone ``encoder``, or ``enc1``, ``downs``
and ``bottleneck``/``bridge`` of the plain networks), which :func:`set_trainable` freezes for the first
``freeze_encoder_epochs`` epochs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rockseg.errors import InputError
from rockseg.models import ARCHITECTURES, file_sha256, read_model_file, resolve_model
from rockseg.training.settings import NETWORK_DEFAULTS, TrainConfig, network_arch

#: Attribute names of the contracting path of networks without a backbone ``encoder`` module.
_PLAIN_ENCODER = ("stem", "enc1", "downs", "bottleneck", "bridge")


@dataclass(frozen=True)
class _Init:
    """The model file a run starts from."""

    given: str  # as the user wrote it: a path or a shipped model's name
    path: Path
    arch: str
    arch_args: Mapping[str, Any]
    phases: Mapping[str, str]
    state_dict: Mapping[str, torch.Tensor]

    def summary(self, loaded: Mapping[str, Any]) -> dict[str, Any]:
        """What the model file's training summary records about the start (``loaded`` from :func:`load_init`)."""
        return {"model": str(self.path.resolve()), "given": self.given, "sha256": file_sha256(self.path),
                "arch": self.arch, "classes": int(self.arch_args.get("classes", len(self.phases))),
                "phases": dict(self.phases), **loaded}


def resolve_init(
    config: TrainConfig, tiles: Any, *, dims: int, classes: int,
) -> tuple[TrainConfig, _Init]:
    """The run's settings with the network of ``config.init``, and that model; InputError if it does not fit.

    The network settings left None in ``config`` are the init model's; one given must equal it (a fine-tuned
    network is the init network). ``dims`` and ``classes`` are the tile set's.
    """
    given = str(config.init)
    path = resolve_model(config.init)
    payload = read_model_file(path)
    arch, args = str(payload.get("arch")), dict(payload.get("arch_args") or {})
    if arch not in ARCHITECTURES:
        raise InputError(f"--init {given}: its architecture {arch!r} is not one this rockseg builds "
                         f"({', '.join(ARCHITECTURES)}): upgrade rockseg, or train without --init")
    if int(payload["spatial_dims"]) != dims:
        raise InputError(
            f"--init {given} is a {payload['spatial_dims']}D model but tile set {tiles} holds {dims}D tiles: "
            f"start from a {dims}D model, or re-make the tiles with 'rockseg tile --dims {payload['spatial_dims']}'"
        )
    if int(payload["in_channels"]) != 1:
        raise InputError(
            f"--init {given} takes {payload['in_channels']} input channels but tile set {tiles} has 1 (grey "
            f"values): start from a model of one input channel"
        )
    init_values = {"arch": arch, **{k: args.get(k) for k in NETWORK_DEFAULTS if k != "arch"},
                   "encoder": args.get("encoder")}
    wanted = {"arch": None if config.arch is None else network_arch(config.arch)}
    for name in init_values:
        mine = wanted.get(name, getattr(config, name))
        if mine is not None and mine != init_values[name]:
            raise InputError(
                f"--{name.replace('_', '-')} {getattr(config, name)} does not match --init {given}, whose network "
                f"has {name.replace('_', '-')} {init_values[name]}: leave --{name.replace('_', '-')} out to "
                f"fine-tune that network, or train without --init"
            )
    resolved = replace(config, **{k: v for k, v in init_values.items() if k != "arch"},
                       arch=config.arch if config.arch is not None else arch)
    resolved.check()
    init = _Init(given=given, path=path, arch=arch, arch_args={**args, "classes": int(args.get("classes", 0))},
                 phases={str(k): str(v) for k, v in payload["phases"].items()}, state_dict=payload["state_dict"])
    return resolved, init


def init_arch_args(init: _Init, *, classes: int) -> dict[str, Any]:
    """The network arguments of a run from ``init``: the init model's, for the tile set's number of classes."""
    return {**init.arch_args, "classes": classes}


def load_init(net: nn.Module, init: _Init, *, classes: int) -> dict[str, Any]:
    """Copy the init model's weights into ``net`` (built with :func:`init_arch_args`): all tensors whose name and
    shape match. Tensors of another shape (the output layer, for another number of phases) keep their fresh
    initialisation; any other difference is an InputError. Returns ``loaded`` (a count) and ``new`` (names)."""
    target = net.state_dict()
    missing = sorted(set(target) - set(init.state_dict))
    unknown = sorted(set(init.state_dict) - set(target))
    if missing or unknown:
        first = (missing or unknown)[0]
        raise InputError(f"--init {init.given}: its weights do not fit its own {init.arch} network ({first!r} "
                         f"{'missing' if missing else 'unexpected'}): the file is damaged; use another model")
    same = {k: v for k, v in init.state_dict.items() if tuple(v.shape) == tuple(target[k].shape)}
    new = sorted(set(target) - set(same))
    if new and int(init.arch_args.get("classes", 0)) == classes:
        raise InputError(f"--init {init.given}: tensor {new[0]!r} has another shape: the file is damaged")
    net.load_state_dict({**target, **same})
    return {"loaded": len(same), "new": new}


def encoder_modules(net: nn.Module) -> list[nn.Module]:
    """The modules of ``net``'s contracting path: its backbone ``encoder``, else those of :data:`_PLAIN_ENCODER`."""
    encoder = getattr(net, "encoder", None)
    if isinstance(encoder, nn.Module):
        return [encoder]
    found = [m for name in _PLAIN_ENCODER if isinstance(m := getattr(net, name, None), nn.Module)]
    if not found:
        raise InputError(f"--freeze-encoder-epochs: a {type(net).__name__} has no encoder rockseg knows: "
                         f"leave the option out")
    return found


def set_trainable(modules: list[nn.Module], trainable: bool) -> int:
    """``requires_grad = trainable`` on every parameter of ``modules``; returns how many scalars that covers."""
    count = 0
    for module in modules:
        for param in module.parameters():
            param.requires_grad_(trainable)
            count += param.numel()
    return count

