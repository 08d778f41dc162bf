"""Pretrained backbones: loading torchvision-style encoder weights from a local file, and freezing the encoder.

Nothing is ever downloaded. 2D kernels are inflated for 3D networks and the first convolution is adapted to
the number of input channels; see :func:`load_encoder_weights`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rockseg.errors import InputError, MissingInputError
from rockseg.models.encoders import ENCODERS, _ENCODER_LEVELS, _RESNET_BLOCKS, _make_encoder
from rockseg.models.modelfile import load_plain

_FIRST_CONV = {"resnet": "conv1.weight", "vgg": "features.0.weight"}


def _encoder_of(model: nn.Module, what: str) -> tuple[str, nn.Module]:
    """The name and module of a model's backbone encoder; InputError naming ``what`` when it has none."""
    name, encoder = getattr(model, "encoder_name", None), getattr(model, "encoder", None)
    if name not in ENCODERS or not isinstance(encoder, nn.Module):
        raise InputError(
            f"{what}: this {type(model).__name__} has no backbone encoder (encoder={name!r}): build the model "
            f"with an encoder, one of {', '.join(ENCODERS)}"
        )
    return name, encoder


def _state_dict_in(payload: Any) -> Mapping[str, torch.Tensor] | None:
    """The ``{name: tensor}`` mapping in a loaded checkpoint (itself, or under "state_dict" / "model"), or None."""
    for _ in range(3):
        if not isinstance(payload, Mapping) or not payload:
            return None
        if all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in payload.items()):
            return payload
        inner = next((payload[k] for k in ("state_dict", "model") if isinstance(payload.get(k), Mapping)), None)
        if inner is None:
            return None
        payload = inner
    return None


def _read_state_dict(p: Path, name: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The named tensors of the weights file ``p`` for a ``name`` backbone, without ``module.`` prefixes, and the
    keys skipped as not the encoder's: when some keys start with ``encoder.``, only those are kept, unprefixed."""
    if not p.is_file():
        raise MissingInputError(
            f"encoder weights {p} do not exist: check the path (rockseg never downloads weights; save a "
            f"{name} state dict there with torch.save(model.state_dict(), path) on a machine that has one)"
        )
    payload = load_plain(p, lambda reason: f"encoder weights {p} do not load as a plain state dict ({reason}): save "
                                           f"the weights with torch.save(model.state_dict(), path), not the whole model")
    state = _state_dict_in(payload)
    if state is None:
        raise InputError(
            f"encoder weights {p} hold a {type(payload).__name__} that is not a state dict of named tensors: "
            f"save the weights with torch.save(model.state_dict(), path)"
        )
    state = {k.removeprefix("module."): v for k, v in state.items()}
    skipped: list[str] = []
    if any(k.startswith("encoder.") for k in state):
        skipped += [k for k in state if not k.startswith("encoder.")]
        state = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    return state, skipped


def _family(name: str) -> str:
    """``"resnet"`` or ``"vgg"``: the family of the backbone ``name`` of :data:`ENCODERS`."""
    return "resnet" if name in _RESNET_BLOCKS else "vgg"


def _backbone_keys(name: str) -> set[str]:
    """The state-dict keys of the whole torchvision backbone ``name`` (all its levels), built on the meta device."""
    with torch.device("meta"):
        return set(_make_encoder(name, own="", spatial_dims=2, in_channels=3, base_channels=1,
                                 levels=_ENCODER_LEVELS, strided=_ENCODER_LEVELS, norm="batch",
                                 act="relu").state_dict())


def _adapt(key: str, tensor: torch.Tensor, want: torch.Tensor, first_conv: str) -> tuple[torch.Tensor, bool, bool]:
    """``tensor`` in the dtype of the encoder's ``want``, a 2D kernel inflated for 3D and the first convolution
    (``first_conv``) shared over the encoder's input channels; and whether it was inflated, and adapted."""
    t = tensor.detach().to(dtype=want.dtype)
    inflated = t.ndim == 4 and want.ndim == 5
    if inflated:
        depth = want.shape[2]
        t = t.unsqueeze(2).repeat(1, 1, depth, 1, 1) / depth
    adapted = key == first_conv and t.ndim == want.ndim and t.shape[1] != want.shape[1] and \
        t.shape[0] == want.shape[0] and t.shape[2:] == want.shape[2:]
    if adapted:
        channels = want.shape[1]
        t = t.sum(dim=1, keepdim=True).repeat(1, channels, *([1] * (t.ndim - 2))) / channels
    return t, inflated, adapted


@dataclass(frozen=True)
class _Match:
    """The tensors of a weights file matched to an encoder's state dict."""

    tensors: dict[str, torch.Tensor]  # by encoder key, in the encoder's shapes and dtypes
    skipped: list[str]  # the classifier, and levels of the backbone the encoder does not build
    unknown: list[str]  # keys the whole backbone lacks: the file holds another network
    inflated: int  # of the tensors, 2D kernels made 3D
    adapted: int  # of the tensors, first convolutions summed over the file's channels


def _match_backbone(state: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], name: str,
                    p: Path) -> _Match:
    """Match the file's tensors to the encoder's (``target``); InputError for a shape that cannot be adapted."""
    # the whole torchvision backbone: keys of levels this model does not build are skipped, others are errors
    reference = _backbone_keys(name)
    first_conv = _FIRST_CONV[_family(name)]
    new: dict[str, torch.Tensor] = {}
    skipped, unknown, inflated, adapted = [], [], 0, 0
    for key, tensor in state.items():
        if key.startswith(("fc.", "classifier.")):
            skipped.append(key)
            continue
        if key not in target:
            (skipped if key in reference else unknown).append(key)
            continue
        want = target[key]
        t, was_inflated, was_adapted = _adapt(key, tensor, want, first_conv)
        inflated, adapted = inflated + was_inflated, adapted + was_adapted
        if t.shape != want.shape:
            raise InputError(
                f"encoder weights {p}: {key} has shape {tuple(tensor.shape)} but this {_family(name)} encoder "
                f"needs {tuple(want.shape)}: the file holds another network than {name}; build the model with the "
                f"encoder the file was saved from"
            )
        new[key] = t
    return _Match(new, skipped, unknown, inflated, adapted)


def _check_match(match: _Match, state: Mapping[str, torch.Tensor], name: str, p: Path) -> None:
    """InputError when the file has no tensor of the encoder, or one the whole backbone lacks."""
    if not match.tensors:
        first = next(iter(state), "nothing")
        raise InputError(
            f"encoder weights {p} have no tensor of a {name} encoder (first key {first!r}): use a torchvision "
            f"{name} state dict{' (the vgg*_bn variant)' if _family(name) == 'vgg' else ''}"
        )
    if match.unknown:
        more = f" and {len(match.unknown) - 1} more" if len(match.unknown) > 1 else ""
        raise InputError(
            f"encoder weights {p} hold {match.unknown[0]!r}{more}, which a {name} encoder lacks: the file holds "
            f"another network; build the model with the encoder the file was saved from"
        )


def load_encoder_weights(model: nn.Module, path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load backbone weights (for example ImageNet-pretrained) from a LOCAL file into ``model.encoder``.

    Nothing is ever downloaded. The file is read with ``torch.load(path, map_location="cpu",
    weights_only=True)`` and must hold a torchvision-style state dict of the model's backbone (``resnet18``:
    ``conv1.weight``, ``layer1.0.bn1.running_mean``...; ``vgg11``: torchvision's ``vgg11_bn`` ``features.N``...),
    as written by ``torch.save(torchvision_model.state_dict(), path)``. It may be nested under ``"state_dict"``
    or ``"model"`` and prefixed with ``module.``; when some keys start with ``encoder.`` (a rockseg model file,
    say) only those are used. The classifier (``fc.*``, ``classifier.*``) and the levels a shallower model does
    not build are skipped.

    Shapes are adapted where the meaning is clear:

    * a 3D model gets each 2D kernel (O, I, kh, kw) inflated to (O, I, k, kh, kw): repeated along the new depth
      axis and divided by its size k (I3D, Carreira & Zisserman 2017), so a volume constant along depth gives
      the 2D response;
    * a first convolution for another number of input channels is summed over the file's channels and shared
      evenly by the model's: for one grey channel it is the sum, so a grey image gives the response of the RGB
      network to the same grey in all three channels.

    Parameters
    ----------
    model : a network built with ``encoder`` one of :data:`ENCODERS`; changed in place.
    path : the state-dict file.

    Returns
    -------
    dict
        ``loaded`` (tensors copied into the encoder), ``inflated`` (of those, 2D kernels made 3D),
        ``channels_adapted`` (first convolutions summed over channels), ``skipped`` (file keys not used:
        classifier, levels not built, norm statistics a model without batch norm has no place for) and
        ``missing`` (encoder tensors the file did not set), both lists of names.

    Raises
    ------
    MissingInputError
        if ``path`` does not exist.
    InputError
        if the model has no backbone encoder, the file is not a state dict that loads safely, or its tensors
        do not fit the backbone (no key in common, a key the backbone lacks, or a shape that cannot be adapted).
    """
    p = Path(path)
    name, encoder = _encoder_of(model, f"cannot load encoder weights from {p}")
    state, skipped = _read_state_dict(p, name)
    target = encoder.state_dict()
    match = _match_backbone(state, target, name, p)
    _check_match(match, state, name, p)
    encoder.load_state_dict(match.tensors, strict=False)
    return {
        "loaded": len(match.tensors), "inflated": match.inflated, "channels_adapted": match.adapted,
        "skipped": sorted(skipped + match.skipped), "missing": sorted(set(target) - set(match.tensors)),
    }


def freeze_encoder(model: nn.Module) -> int:
    """Stop training the backbone encoder: ``requires_grad = False`` on all its parameters.

    Batch-norm running statistics still follow the data in train mode (they are buffers, not parameters),
    which lets an ImageNet encoder adapt to grey-value tomograms; call ``model.encoder.eval()`` after
    ``model.train()`` to freeze them too.

    Returns
    -------
    int
        the number of scalar parameters frozen.

    Raises
    ------
    InputError
        if the model has no backbone encoder (built with ``encoder`` one of :data:`ENCODERS`).
    """
    _, encoder = _encoder_of(model, "cannot freeze the encoder")
    count = 0
    for param in encoder.parameters():
        param.requires_grad_(False)
        count += param.numel()
    return count
