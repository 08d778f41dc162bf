"""Realistic simulated micro-CT of a given rock geometry: the hard benchmark cases of issue 15.

:func:`realistic_scan` takes the pore space of a real segmentation (berea-400, icl-mixedwet-250) or of a synthetic
rock, lines the pores with a thin micro-porous rim (a third phase of intermediate grey, as clay coats and
micritic rims of carbonates show in real scans) and renders what a scanner would record:

- the phase grey values: pore, solid ``contrast`` grey levels brighter, the rim at ``rim_level`` of the way
  between them, its grey varying smoothly from place to place;
- partial volume: a Gaussian point-spread function (``blur``, voxels);
- noise at the hard end of real scans: ``cnr`` is half the pore-solid contrast (the step between two adjacent
  phases when the rim sits half way) over the noise's standard deviation, 4.5 by default; the noise is spatially correlated (white noise
  smoothed over ``noise_correlation`` voxels, then rescaled to the asked standard deviation), as reconstruction
  filters make it;
- beam-hardening cupping (the centre of each slice darker by ``cupping`` of the contrast range) and ring
  artefacts (a random offset per radius, the same on every slice, of standard deviation ``rings`` grey levels);
- an affine grey scale and offset and 8- or 16-bit storage (``bits``), as different scanners write.

Every random number comes from ``numpy.random.default_rng(seed)`` in a fixed order, so a call is reproducible.
The volume is made in memory (benchmark sizes, up to a few hundred voxels across).

Labels of the result: 0 pore, 1 rim (micro-porous), 2 solid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from rockseg.errors import InputError

#: Phase names of :func:`realistic_scan` labels.
SCAN_PHASES = {0: "pore", 1: "rim", 2: "solid"}


@dataclass(frozen=True)
class ScanOptions:
    """How the simulated scanner renders a geometry (see the module docstring for the meaning of each)."""

    rim: tuple[float, float] = (1.0, 2.5)  # rim thickness range in voxels (a smooth random field between them)
    rim_coverage: float = 0.8  # share of the pore walls that carry a rim
    contrast: float = 80.0  # grey levels between pore and solid, before the storage scale
    rim_level: float = 0.5  # the rim's grey, as a share of the way from pore to solid
    blur: float = 1.0
    cnr: float = 4.5
    noise_correlation: float = 0.7
    cupping: float = 0.25
    rings: float = 0.4  # in units of the noise's standard deviation
    bits: int = 8
    grey_scale: float = 1.0  # multiplies the grey values before storage (16-bit scanners use large ranges)
    grey_offset: float = 0.0

    def check(self) -> None:
        lo, hi = self.rim
        if not 0 <= lo <= hi:
            raise InputError(f"rim thickness range {self.rim} must be 0 <= low <= high")
        if not 0 <= self.rim_coverage <= 1:
            raise InputError(f"rim_coverage {self.rim_coverage} must be within 0..1")
        if not 0 < self.rim_level < 1:
            raise InputError(f"rim_level {self.rim_level} must be between 0 and 1")
        if self.cnr <= 0 or self.contrast <= 0:
            raise InputError(f"cnr {self.cnr} and contrast {self.contrast} must be positive")
        if self.bits not in (8, 16):
            raise InputError(f"bits {self.bits} must be 8 or 16")


def _smooth_field(shape: tuple[int, ...], rng: np.random.Generator, scale: float) -> np.ndarray:
    """A smooth random field in [0, 1] varying over about ``scale`` voxels."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), scale, mode="wrap")
    lo, hi = np.percentile(field, (1, 99))
    return np.clip((field - lo) / max(hi - lo, 1e-6), 0, 1)


def scan_labels(pore: np.ndarray, options: ScanOptions, rng: np.random.Generator) -> np.ndarray:
    """Three-phase labels: 0 pore, 1 a rim lining the pores (where the coverage field allows), 2 solid."""
    depth = ndimage.distance_transform_edt(~pore)  # distance of each solid voxel to the nearest pore voxel
    lo, hi = options.rim
    thickness = lo + (hi - lo) * _smooth_field(pore.shape, rng, 6.0)
    covered = (_smooth_field(pore.shape, rng, 8.0) < options.rim_coverage) | (options.rim_coverage >= 1)
    labels = np.full(pore.shape, 2, np.uint8)
    labels[(~pore) & (depth <= thickness) & covered] = 1
    labels[pore] = 0
    return labels


def _radial(shape: tuple[int, ...]) -> np.ndarray:
    """Distance from the slice centre over the half-diagonal, per (Y, X) pixel."""
    y, x = np.indices(shape[-2:], dtype=np.float32)
    cy, cx = (shape[-2] - 1) / 2, (shape[-1] - 1) / 2
    return np.hypot(y - cy, x - cx) / max(np.hypot(cy, cx), 1.0)


def render_scan(labels: np.ndarray, options: ScanOptions, rng: np.random.Generator) -> np.ndarray:
    """The simulated scan of three-phase ``labels`` (0 pore, 1 rim, 2 solid): uint8 or uint16."""
    contrast = options.contrast
    sigma = contrast / (2 * options.cnr)
    pore_grey = 128.0 - contrast / 2  # mid-grey in the middle, so an 8-bit scan stays within 0..255
    grey = np.array([pore_grey, pore_grey + options.rim_level * contrast, pore_grey + contrast], np.float32)
    image = grey[labels]
    # the rim's grey wanders by an eighth of the contrast either way (its micro-porosity varies from place to place)
    wander = (_smooth_field(labels.shape, rng, 5.0) - 0.5) * 0.25 * contrast
    image += np.where(labels == 1, wander, 0).astype(np.float32)
    image = ndimage.gaussian_filter(image, options.blur, mode="reflect")
    r = _radial(labels.shape)
    image -= (options.cupping * contrast * (1 - r**2))[None]
    ring_offsets = rng.standard_normal(int(np.ceil(r.max() * 400)) + 2).astype(np.float32) * options.rings * sigma
    image += ring_offsets[np.round(r * 400).astype(np.int64)][None]
    noise = rng.standard_normal(labels.shape).astype(np.float32)
    if options.noise_correlation > 0:
        noise = ndimage.gaussian_filter(noise, options.noise_correlation, mode="wrap")
        noise /= noise.std()
    image += sigma * noise
    image = image * options.grey_scale + options.grey_offset
    top = 255 if options.bits == 8 else 65535
    return np.clip(np.round(image), 0, top).astype(np.uint8 if options.bits == 8 else np.uint16)


def realistic_scan(pore: np.ndarray, options: ScanOptions | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Simulated scan and three-phase labels of a rock whose pore space is ``pore`` (a boolean (Z, Y, X) array).

    Returns ``(image, labels)``: image uint8 or uint16 (``options.bits``), labels uint8 (0 pore, 1 rim, 2 solid).
    """
    options = options or ScanOptions()
    options.check()
    pore = np.asarray(pore, bool)
    if pore.ndim != 3:
        raise InputError(f"the pore space must be a 3D array, got shape {pore.shape}")
    rng = np.random.default_rng(seed)
    labels = scan_labels(pore, options, rng)
    return render_scan(labels, options, rng), labels
