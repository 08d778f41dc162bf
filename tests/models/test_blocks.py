"""The building blocks: every network with each norm and activation, and the argument checks they share."""

from __future__ import annotations

import pytest
import torch

from rockseg.errors import InputError
from rockseg.models import ARCHITECTURES, build_model
from tests.helpers import CASES, HEAVY, model_args, model_input


@pytest.mark.parametrize("dims", [2, 3])
def test_other_norms_and_activations(dims):
    torch.manual_seed(1)
    for arch, encoder in CASES:
        if (arch, encoder) in HEAVY or encoder == "vgg11":
            continue
        for norm, act in (("instance", "elu"), ("none", "relu")):
            model = build_model(arch, **model_args(encoder, dims, norm=norm, act=act, depth=2))
            # instance norm needs more than one voxel at the deepest level
            x = model_input(model, dims, seed=2) if dims == 2 else torch.randn(2, 1, 16, 8, 12)
            out = model(x)
            assert out.shape == (2, 3, *x.shape[2:]), (arch, encoder, norm)
            out.square().mean().backward()
            assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_bad_arguments_are_input_errors(arch):
    with pytest.raises(InputError, match=r"unknown normalisation 'bach' \(did you mean 'batch'\?\)"):
        build_model(arch, norm="bach")
    with pytest.raises(InputError, match="unknown activation 'gelu'.*relu, elu"):
        build_model(arch, act="gelu")
    with pytest.raises(InputError, match="spatial_dims must be 2 or 3, not 4"):
        build_model(arch, spatial_dims=4)
    with pytest.raises(InputError, match="classes must be a positive integer, not 0"):
        build_model(arch, classes=0)
    with pytest.raises(InputError, match="depth must be"):
        build_model(arch, depth=0)
    if arch not in ("resunet", "linear"):
        with pytest.raises(InputError, match=r"unknown encoder 'resnet-18' \(did you mean 'resnet18'\?\)"):
            build_model(arch, encoder="resnet-18")
        with pytest.raises(InputError, match="depth must be between .* and 5, not 6"):
            build_model(arch, encoder="resnet18", depth=6)
    else:
        with pytest.raises(InputError, match="takes no argument 'encoder'"):
            build_model(arch, encoder="resnet18")
    with pytest.raises(InputError, match="takes no argument 'widht'"):
        build_model(arch, widht=3)
