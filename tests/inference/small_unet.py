"""A small random UNet model file for the tests of the inference package."""

from __future__ import annotations

import torch

from rockseg.models import UNet, save_model_file


def small_unet_model(path, seed=0):
    torch.manual_seed(seed)
    args = {"spatial_dims": 3, "classes": 3, "base_channels": 4, "depth": 2, "norm": "instance"}
    save_model_file(path, UNet(**args).eval(), arch="unet", arch_args=args, spatial_dims=3, in_channels=1,
                    phases={0: "a", 1: "b", 2: "c"}, normalization={"p_low": 0.0, "p_high": 255.0}, tile=16, halo=4)
    return path
