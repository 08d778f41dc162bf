"""Bad shapes, seeds and options: one InputError that names the bad value."""

from __future__ import annotations

import pytest

from rockseg.errors import InputError
from rockseg.synthetic import synthetic_labels, synthetic_rock


@pytest.mark.parametrize("shape", [(0, 10, 10), (10, -1, 10), (10,), (2, 2, 2, 2), (10.0, 10), (True, 3), "64", 64])
def test_bad_shape_raises(shape: object) -> None:
    with pytest.raises(InputError, match="shape"):
        synthetic_rock(shape)
    with pytest.raises(InputError, match="shape"):
        synthetic_labels(shape)


@pytest.mark.parametrize("seed", [-1, 1.5, "0", None, True])
def test_bad_seed_raises(seed: object) -> None:
    with pytest.raises(InputError, match="seed"):
        synthetic_rock((4, 4, 4), seed=seed)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"porosity": 0}, "porosity"),
        ({"porosity": 1.0}, "porosity"),
        ({"porosity": "lots"}, "porosity"),
        ({"porosity": 0.8, "pyrite_fraction": 0.2}, "cannot be reached"),
        ({"grain_radius": (9, 4)}, "grain_radius"),
        ({"grain_radius": (0, 4)}, "grain_radius"),
        ({"grain_radius": (1, 2, 3)}, "grain_radius"),
        ({"grain_elongation": 0.5}, "grain_elongation"),
        ({"clay_coverage": 1.5}, "clay_coverage"),
        ({"pyrite_fraction": -0.1}, "pyrite_fraction"),
        ({"blur": -1}, "blur"),
        ({"noise": float("nan")}, "noise"),
        ({"cupping": 1.0}, "cupping"),
        ({"grey": (1, 2)}, "grey"),
        ({"poristy": 0.2}, "did you mean 'porosity'"),
    ],
)
def test_bad_option_raises(options: dict[str, object], match: str) -> None:
    with pytest.raises(InputError, match=match):
        synthetic_rock((8, 8, 8), **options)
