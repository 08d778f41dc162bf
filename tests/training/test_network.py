"""Tests of rockseg.training.network: a pretrained, frozen encoder stays as loaded."""

from __future__ import annotations

import torch

from rockseg import models
from rockseg.models import load_model, read_model_file
from rockseg.training import TrainConfig, train
from tests.training.helpers import TINY


def test_pretrained_frozen_encoder_stays_as_loaded(tilesets, tmp_path):
    # A "pretrained" backbone: the encoder of another seed's network, saved as a state-dict file.
    torch.manual_seed(123)
    donor = models.build_model("unet", spatial_dims=2, in_channels=1, classes=2, base_channels=4, depth=3,
                               encoder="resnet18")
    for m in donor.encoder.modules():  # make the normalisation statistics recognisable too
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.fill_(0.25)
    torch.save({k: v for k, v in donor.state_dict().items() if k.startswith("encoder.")}, tmp_path / "w.pth")
    config = TrainConfig(**{**TINY, "encoder": "resnet18", "encoder_weights": str(tmp_path / "w.pth"),
                            "freeze_encoder": True, "epochs": 2, "depth": 3})
    s = train(tilesets[2], tmp_path / "m.pt", config=config)
    payload = read_model_file(tmp_path / "m.pt")
    assert payload["arch_args"]["encoder"] == "resnet18" and s["frozen_parameters"] > 0
    assert s["encoder_weights"]["sha256"] == models.file_sha256(tmp_path / "w.pth")
    got, want = payload["state_dict"], donor.state_dict()
    enc = [k for k in want if k.startswith("encoder.") and not k.endswith("num_batches_tracked")]
    assert enc and all(torch.equal(got[k], want[k]) for k in enc)  # weights and BatchNorm statistics untouched
    assert load_model(tmp_path / "m.pt")(torch.zeros((1, 1, 32, 32))).shape == (1, 2, 32, 32)
