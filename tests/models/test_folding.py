"""Folding batch norm into convolutions: the same outputs, fewer norms."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rockseg.models import build_model, fold_batch_norm
from tests.helpers import CASES, HEAVY, model_args, model_input


@pytest.mark.parametrize("dims", [2, 3])
def test_fold_batch_norm_keeps_the_outputs(dims):
    import copy

    torch.manual_seed(3)
    for arch, encoder in CASES:
        if (arch, encoder) in HEAVY:
            continue
        model = build_model(arch, **model_args(encoder, dims, depth=2))
        for m in model.modules():  # statistics far from the initial ones, so that folding changes the weights
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.2, 3)
                m.weight.data.uniform_(0.5, 2)
                m.bias.data.uniform_(-1, 1)
        model.eval()
        folded = copy.deepcopy(model)
        n = fold_batch_norm(folded)
        assert n > 0, arch
        bns = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules())
        assert bns == sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()) - n
        x = model_input(model, dims, seed=4) if dims == 2 else torch.randn(1, 1, 16, 8, 24)
        with torch.inference_mode():
            ref, out = model(x), folded(x)
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4, msg=f"{arch} {encoder}")


def test_fold_batch_norm_leaves_other_norms_and_refuses_training_mode():
    model = build_model("unet", **model_args(None, 2, norm="instance")).eval()
    assert fold_batch_norm(model) == 0
    with pytest.raises(ValueError, match="eval"):
        fold_batch_norm(build_model("unet", **model_args(None, 2)).train())
