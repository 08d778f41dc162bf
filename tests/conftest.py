"""Shared fixtures (the helpers they build on are in ``tests.helpers``)."""

from __future__ import annotations

import pytest

from rockseg.models import ARCHITECTURES, save_model_file
from tests.helpers import BoxSum


@pytest.fixture
def boxsum(monkeypatch):
    monkeypatch.setitem(ARCHITECTURES, "boxsum", BoxSum)

    def make(path, spatial_dims=3, tile=16, halo=2):
        classes = 28 if spatial_dims == 3 else 10
        model = BoxSum(spatial_dims, classes)
        save_model_file(
            path, model, arch="boxsum", arch_args={"spatial_dims": spatial_dims, "classes": classes},
            spatial_dims=spatial_dims, in_channels=1, phases={i: f"s{i}" for i in range(classes)},
            normalization={"p_low": 0.0, "p_high": 1.0}, tile=tile, halo=halo,
        )
        return path

    return make
