"""The architectures by name: every one covered, its arguments, its errors, and its tile multiple."""

from __future__ import annotations

import inspect

import pytest
import torch

from rockseg.errors import InputError
from rockseg.models import ARCHITECTURES, ENCODERS, build_model, read_model_file, tile_multiple
from tests.helpers import CASES, DEFAULT_MODEL


def test_every_architecture_is_covered_and_takes_the_common_arguments():
    assert {arch for arch, _ in CASES} == set(ARCHITECTURES) - {"linear"}  # linear: test_linear.py
    assert ENCODERS == ("resnet18", "resnet34", "vgg11", "vgg16")
    common = {"spatial_dims": 3, "in_channels": 1, "classes": 2, "base_channels": 16, "norm": "batch", "act": "relu"}
    for arch, factory in ARCHITECTURES.items():
        params = inspect.signature(factory).parameters
        assert {k: params[k].default for k in common} == common, arch
        assert params["depth"].default == 3, arch
        assert ("encoder" in params) == (arch not in ("resunet", "linear")), arch


def _tile_multiple_cases():
    for arch in [a for a in ARCHITECTURES if a != "linear"]:  # linear: divisor 1 at any depth (test_linear.py)
        low = 2 if arch in ("deeplabv3plus", "pspnet") else 1
        for depth in range(low, 6):
            for dims in (2, 3):
                yield arch, dict(spatial_dims=dims, base_channels=2, depth=depth)
            # the encoders' divisors do not depend on the dimension; no norm keeps the meta-device forward fast
            for encoder in ([] if arch == "resunet" else ["resnet34"] if arch == "uresnet" else ["resnet34", "vgg16"]):
                yield arch, dict(spatial_dims=2, depth=depth, norm="none", encoder=encoder)


def test_tile_multiple_equals_the_divisor_the_network_needs():
    cases = list(_tile_multiple_cases())
    # depths x (two dims + the encoders): unet/linknet/unetpp, deeplabv3plus/pspnet, uresnet, resunet
    assert len(cases) == 3 * 5 * (2 + 2) + 2 * 4 * (2 + 2) + 5 * (2 + 1) + 5 * 2
    for arch, args in cases:
        m = tile_multiple(arch, args)
        assert m == 2 ** args["depth"], (arch, args)
        if "encoder" in args:
            # a meta-device build allocates nothing; UNet-like decoders check shapes as they concatenate skips
            with torch.device("meta"):
                model = build_model(arch, **args).eval()
            assert model.divisor == m
            if arch in ("deeplabv3plus", "pspnet") or args["depth"] != 5:
                continue
        else:
            model = build_model(arch, **args).eval()
            assert model.divisor == m
        if args["spatial_dims"] == 3 and args["depth"] > 2:
            continue  # the same code as 2D; keeps the test fast
        # edges of one, two and three divisors come back at the input's shape
        x = torch.zeros(1, 1, *((m, 3 * m) if args["spatial_dims"] == 2 else (m, 2 * m, m)),
                        device=next(model.parameters()).device)
        with torch.no_grad():
            assert model(x).shape[2:] == x.shape[2:], (arch, args)
    assert tile_multiple("unet", {}) == 8  # the defaults
    assert tile_multiple("unet", read_model_file(DEFAULT_MODEL)["arch_args"]) == 16  # the shipped model: depth 4


def test_bad_architecture_specific_arguments():
    with pytest.raises(InputError, match=r"unknown architecture 'unet\+\+' \(did you mean 'unetpp'\?\)"):
        build_model("unet++")
    with pytest.raises(InputError, match="uresnet takes a ResNet encoder, not 'vgg11'"):
        build_model("uresnet", encoder="vgg11")
    for arch in ("deeplabv3plus", "pspnet"):
        with pytest.raises(InputError, match="depth must be between 2 and 5, not 1"):
            build_model(arch, depth=1)
    with pytest.raises(InputError, match="atrous_rates must be positive integers"):
        build_model("deeplabv3plus", atrous_rates=(0, 2))
    with pytest.raises(InputError, match="bins must be positive integers"):
        build_model("pspnet", bins=())
    with pytest.raises(InputError, match="unknown normalisation"):
        tile_multiple("linknet", {"norm": "group"})
