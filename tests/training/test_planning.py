import pytest

from rockseg.training.planning import FALLBACK_DEPTH, MAX_DEPTH, MIN_BOTTLENECK, plan_depth

UNET = dict(in_channels=1, classes=2, base_channels=4)


@pytest.mark.parametrize(("size", "dims", "depth"), [
    (16, 3, 2), (24, 3, 2), (32, 3, 3), (48, 3, 3), (64, 3, 4), (96, 3, 4), (128, 3, 5), (256, 2, MAX_DEPTH),
    (40, 3, 3),  # 40 = 8 * 5: depth 3 leaves 5 voxels; depth 4 would not divide 40
])
def test_depth_pools_down_to_the_bottleneck(size, dims, depth):
    assert plan_depth("unet", dict(UNET, spatial_dims=dims), size) == depth
    assert size % 2 ** depth == 0 and size // 2 ** depth >= MIN_BOTTLENECK
    if depth < MAX_DEPTH and size % 2 ** (depth + 1) == 0:
        assert size // 2 ** (depth + 1) < MIN_BOTTLENECK


def test_tiles_too_small_fall_back():
    assert plan_depth("unet", dict(UNET, spatial_dims=3), 4) == FALLBACK_DEPTH


def test_architecture_limits_are_respected():
    # DeepLab builds depth 2 to 5 only: the planner skips what it cannot build
    assert plan_depth("deeplabv3plus", dict(UNET, spatial_dims=2), 8) == FALLBACK_DEPTH
    assert plan_depth("deeplabv3plus", dict(UNET, spatial_dims=2), 16) == 2
