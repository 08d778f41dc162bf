"""Computing only the kept centre of a tile: the same logits as the whole tile, cut."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rockseg.models import build_model, centre_logits, fold_batch_norm
from tests.helpers import CASES, HEAVY, model_args


def _randomise_batch_norm(model):
    """Statistics far from the initial ones, so that the network's output varies across a tile."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.2, 3)
            m.weight.data.uniform_(0.5, 2)
            m.bias.data.uniform_(-1, 1)


@pytest.mark.parametrize("dims", [2, 3])
def test_centre_logits_equal_the_cut_output_and_skip_the_margin(dims):
    """The centre of a tile (all prediction keeps) is the same whether the decoder computes the margin or not;
    UNet-family networks run their full-resolution stage on the tile less margin - 2 per face."""
    torch.manual_seed(5)
    margin = (7, 4, 10) if dims == 3 else (9, 5)
    for arch, encoder in CASES:
        if (arch, encoder) in HEAVY:
            continue
        model = build_model(arch, **model_args(encoder, dims, depth=2))
        _randomise_batch_norm(model)
        model.eval()
        fold_batch_norm(model)
        d = model.divisor
        x = torch.randn(2, 1, *((8 * d, 6 * d, 10 * d) if dims == 3 else (10 * d, 6 * d)))
        seen = []
        if arch in ("unet", "uresnet", "resunet"):  # the full-resolution stage: the last one the decoder runs
            first_conv = next(m for m in model.ups[-1].modules() if isinstance(m, (nn.Conv2d, nn.Conv3d)))
            first_conv.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape[2:])))
        with torch.inference_mode():
            whole = model(x)
            centre = centre_logits(model, x, margin)
        cut = whole[(slice(None), slice(None), *(slice(m, n - m) for m, n in zip(margin, x.shape[2:])))]
        assert centre.shape == cut.shape, (arch, encoder)
        torch.testing.assert_close(centre, cut, rtol=1e-5, atol=1e-5, msg=f"{arch} {encoder}")
        assert torch.equal(centre.argmax(1), cut.argmax(1)), (arch, encoder)
        if arch in ("unet", "uresnet", "resunet"):
            assert seen[-1] == tuple(n - 2 * (m - 2) for n, m in zip(x.shape[2:], margin)), (arch, encoder)


def test_centre_logits_cut_the_whole_output_where_the_decoder_is_not_local():
    """Instance norm takes statistics over the whole tile, so the margin changes the centre: computed whole."""
    torch.manual_seed(6)
    model = build_model("unet", **model_args(None, 3, norm="instance", depth=2)).eval()
    x = torch.randn(1, 1, 16, 20, 24)
    with torch.inference_mode():
        torch.testing.assert_close(centre_logits(model, x, (3, 4, 5)), model(x)[:, :, 3:13, 4:16, 5:19],
                                   rtol=0, atol=0)
