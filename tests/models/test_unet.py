"""The plain U-Net keeps the parameter names of rockseg's first model files."""

from __future__ import annotations

import pytest
import torch

from rockseg.models import UNet, load_model
from tests.helpers import DEFAULT_MODEL


def test_plain_unet_keeps_its_parameter_names_and_old_model_files_load():
    keys = set(UNet(spatial_dims=2, base_channels=4, depth=2).state_dict())
    assert {k.split(".")[0] for k in keys} == {"enc1", "downs", "bottleneck", "ups", "logits"}
    assert {"enc1.0.weight", "enc1.1.running_mean", "downs.0.1.3.weight", "bottleneck.1.0.weight",
            "ups.0.up.weight", "ups.1.conv.4.bias", "logits.weight"} <= keys
    if not DEFAULT_MODEL.exists():
        pytest.skip(f"the shipped model {DEFAULT_MODEL} is absent")
    model = load_model(DEFAULT_MODEL)  # load_state_dict is strict: every name must still match
    assert isinstance(model, UNet) and model.encoder_name is None
    with torch.no_grad():
        assert model(torch.zeros(1, 1, 16, 16, 16)).shape[2:] == (16, 16, 16)
