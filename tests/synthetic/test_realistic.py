"""rockseg.synthetic.realistic: the hard simulated scans of a given pore space."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from rockseg.errors import InputError
from rockseg.synthetic import ScanOptions, realistic_scan, synthetic_labels


@pytest.fixture(scope="module")
def pore():
    return synthetic_labels((40, 48, 48), seed=4, grain_radius=(5.0, 9.0)) == 0


def test_rim_lines_the_pores_and_pore_is_kept(pore):
    image, labels = realistic_scan(pore, ScanOptions(rim=(1.0, 2.0), rim_coverage=1.0), seed=1)
    assert image.shape == labels.shape == pore.shape
    np.testing.assert_array_equal(labels == 0, pore)  # the pore space is exactly the given one
    depth = ndimage.distance_transform_edt(~pore)
    rim = labels == 1
    assert rim.any() and depth[rim].max() <= 2.0 and depth[rim].min() >= 1.0  # the rim touches the pores only
    assert (labels[(depth > 0) & (depth <= 1.0)] == 1).all()  # full coverage: every wall voxel is rim


def test_noise_is_the_asked_contrast_to_noise(pore):
    # interiors far from other phases: mean difference over the noise, with no cupping or rings
    options = ScanOptions(cnr=4.5, cupping=0.0, rings=0.0, noise_correlation=0.0, rim_coverage=0.0)
    image, labels = realistic_scan(pore, options, seed=2)
    inner = [ndimage.binary_erosion(labels == k, iterations=3) for k in (0, 2)]
    contrast = image[inner[1]].mean() - image[inner[0]].mean()
    noise = image[inner[1]].astype(float).std()
    assert contrast == pytest.approx(options.contrast, rel=0.05)
    assert contrast / 2 / noise == pytest.approx(4.5, rel=0.1)


def test_seeded_bits_and_scale(pore):
    a, _ = realistic_scan(pore, ScanOptions(bits=16, grey_scale=100.0, grey_offset=5000.0), seed=3)
    b, _ = realistic_scan(pore, ScanOptions(bits=16, grey_scale=100.0, grey_offset=5000.0), seed=3)
    assert a.dtype == np.uint16 and a.max() > 255 and (a == b).all()
    c, _ = realistic_scan(pore, ScanOptions(), seed=4)
    assert c.dtype == np.uint8 and not (c == realistic_scan(pore, ScanOptions(), seed=5)[0]).all()


@pytest.mark.parametrize(("options", "match"), [
    (ScanOptions(bits=12), "bits 12"), (ScanOptions(cnr=0), "cnr 0"), (ScanOptions(rim=(2, 1)), "rim thickness"),
    (ScanOptions(rim_level=1.5), "rim_level"),
])
def test_bad_options_are_refused(pore, options, match):
    with pytest.raises(InputError, match=match):
        realistic_scan(pore, options)


def test_pore_space_must_be_3d():
    with pytest.raises(InputError, match="3D"):
        realistic_scan(np.zeros((4, 4), bool))
