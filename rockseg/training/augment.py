"""On-the-fly augmentation of training tiles (2D or 3D), in NumPy/SciPy, one batch at a time.

Geometric transforms move an image tile and its labels identically; intensity transforms change only the image.
Labels stay valid integer labels: they are permuted or flipped exactly, and resampled with the nearest neighbour
when a tile is rotated by a small angle (the image is resampled linearly on the same grid).

Transforms, in the order applied to each tile:

1. *symmetry*: a random permutation of the axes of equal length (a transpose) and a random flip along each axis.
   Together they give every 90° rotation and mirror image of the tile (8 in 2D, 48 for a cubic 3D tile), exactly.
2. *rotate*: a small rotation (±``max_angle`` degrees) in a random plane (in 3D one of ZY, ZX, YX), edges
   reflected.
3. *scale*: ``x * a + b`` with ``a`` in 1 ± ``scale_range`` and ``b`` in ± ``shift_range`` (normalised units).
4. *gamma*: ``x -> lo + (hi - lo) * ((x - lo) / (hi - lo)) ** g`` with the tile's min/max ``lo``/``hi``.
5. *noise*: Gaussian noise of standard deviation uniform in [0, ``noise_std``].
6. *blur*: a Gaussian filter of ``sigma`` uniform in ``blur_sigma`` voxels.

The intensity transforms expect normalised float images (:func:`rockseg.io.intensity.normalize` maps the
p_low..p_high grey values to 0..1), which is what training passes. Everything is drawn from the generator given,
so one seed gives one result.

>>> import numpy as np
>>> img, lab = np.zeros((2, 8, 8), np.float32), np.zeros((2, 8, 8), np.uint8)
>>> out, out_lab = augment_batch(img, lab, np.random.default_rng(0), config=PRESETS["strong"])
>>> out.shape, out.dtype, out_lab.dtype
((2, 8, 8), dtype('float32'), dtype('uint8'))
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
from scipy import ndimage as ndi

from rockseg.errors import InputError, did_you_mean


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities (per tile, 0..1) and strengths of the augmentations.

    Attributes
    ----------
    flip : probability of mirroring the tile along each axis (drawn per axis).
    transpose : permute axes of equal length at random (with ``flip``: all 90° rotations).
    rotate : probability of a small rotation in a random plane.
    max_angle : largest small rotation, degrees.
    scale : probability of an intensity scale and shift.
    scale_range : the scale factor is uniform in ``1 ± scale_range``.
    shift_range : the shift is uniform in ``± shift_range``, normalised units (p_low..p_high is 0..1).
    gamma : probability of a gamma change.
    gamma_range : ``(low, high)`` of the gamma exponent, drawn log-uniformly.
    noise : probability of added Gaussian noise.
    noise_std : largest noise standard deviation, normalised units.
    blur : probability of a Gaussian blur.
    blur_sigma : ``(low, high)`` of the blur's standard deviation, voxels.
    """

    flip: float = 0.5
    transpose: bool = True
    rotate: float = 0.0
    max_angle: float = 15.0
    scale: float = 0.0
    scale_range: float = 0.1
    shift_range: float = 0.1
    gamma: float = 0.0
    gamma_range: tuple[float, float] = (0.7, 1.5)
    noise: float = 0.0
    noise_std: float = 0.05
    blur: float = 0.0
    blur_sigma: tuple[float, float] = (0.5, 1.0)

    def check(self) -> None:
        """Raise :class:`InputError` for a probability outside 0..1 or a negative strength."""
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("flip", "rotate", "scale", "gamma", "noise", "blur") and not 0 <= value <= 1:
                raise InputError(f"augmentation {f.name} probability {value!r} must be within 0..1")
            if f.name in ("max_angle", "scale_range", "shift_range", "noise_std") and not value >= 0:
                raise InputError(f"augmentation {f.name} {value!r} must be at least 0")
        lo, hi = self.gamma_range
        if not 0 < lo <= hi:
            raise InputError(f"augmentation gamma_range {self.gamma_range!r} must be (low, high) with 0 < low <= high")
        lo, hi = self.blur_sigma
        if not 0 <= lo <= hi:
            raise InputError(f"augmentation blur_sigma {self.blur_sigma!r} must be (low, high) with 0 <= low <= high")

    @property
    def active(self) -> bool:
        """True when some transform can happen."""
        return bool(self.flip or self.transpose or self.rotate or self.scale or self.gamma or self.noise or self.blur)


#: ``--augment`` presets. ``basic`` (flips and 90° rotations) changes no grey value and no label boundary.
PRESETS: dict[str, AugmentConfig] = {
    "none": AugmentConfig(flip=0.0, transpose=False),
    "basic": AugmentConfig(),
    "strong": AugmentConfig(rotate=0.5, scale=0.5, gamma=0.3, noise=0.3, blur=0.2),
}


def preset(name: str | bool) -> AugmentConfig:
    """The :data:`PRESETS` entry for ``--augment NAME``; ``True``/``False`` mean ``basic``/``none``."""
    if isinstance(name, bool):
        name = "basic" if name else "none"
    if name not in PRESETS:
        raise InputError(
            f"--augment {name!r} is unknown{did_you_mean(name, PRESETS)}: choose one of {', '.join(PRESETS)}"
        )
    return PRESETS[name]


def augment_batch(
    images: np.ndarray, labels: np.ndarray, rng: np.random.Generator, *, config: AugmentConfig | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Augment each tile of a batch; images and labels move together.

    Parameters
    ----------
    images : (N, *S) tiles, S = (Y, X) or (Z, Y, X); normalised float32 for the intensity transforms and small
        rotations (other dtypes are converted to float32 when one of them applies).
    labels : (N, *S) integer labels.
    rng : generator every random choice is drawn from.
    config : which transforms, how likely and how strong; default ``PRESETS["basic"]`` (flips and 90° rotations).

    Returns
    -------
    images, labels : new arrays of the same shapes; labels keep their dtype.
    """
    if images.shape != labels.shape:
        raise ValueError(f"images {images.shape} and labels {labels.shape} must have the same shape")
    if config is None:
        config = PRESETS["basic"]
    floating = config.rotate or config.scale or config.gamma or config.noise or config.blur
    out_dtype = np.float32 if floating and not np.issubdtype(images.dtype, np.floating) else images.dtype
    out_img = np.empty(images.shape, out_dtype)
    out_lab = np.empty_like(labels)
    for i in range(images.shape[0]):
        out_img[i], out_lab[i] = augment_tile(images[i], labels[i], rng, config=config)
    return out_img, out_lab


def augment_tile(
    image: np.ndarray, labels: np.ndarray, rng: np.random.Generator, *, config: AugmentConfig,
) -> tuple[np.ndarray, np.ndarray]:
    """Augment one tile: (*S) image and (*S) labels -> transformed copies (or views) of the same shape."""
    image, labels = symmetry(image, labels, rng, flip=config.flip, transpose=config.transpose)
    if config.rotate and rng.random() < config.rotate:
        image, labels = small_rotation(image, labels, rng, max_angle=config.max_angle)
    if config.scale and rng.random() < config.scale:
        a = 1.0 + rng.uniform(-config.scale_range, config.scale_range)
        b = rng.uniform(-config.shift_range, config.shift_range)
        image = _float(image) * np.float32(a) + np.float32(b)
    if config.gamma and rng.random() < config.gamma:
        lo, hi = np.log(config.gamma_range[0]), np.log(config.gamma_range[1])
        image = gamma(image, float(np.exp(rng.uniform(lo, hi))))
    if config.noise and rng.random() < config.noise:
        std = np.float32(rng.uniform(0.0, config.noise_std))
        image = _float(image) + std * rng.standard_normal(image.shape, dtype=np.float32)
    if config.blur and rng.random() < config.blur:
        image = ndi.gaussian_filter(_float(image), rng.uniform(*config.blur_sigma), mode="reflect")
    return image, labels


def symmetry(
    image: np.ndarray, labels: np.ndarray, rng: np.random.Generator, *, flip: float = 0.5, transpose: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """A random axis permutation (among axes of equal length) and random flips, applied to both arrays.

    The result is an exact rearrangement of the voxels: no value changes. Returns views where NumPy can.
    """
    ndim = image.ndim
    axes = list(range(ndim))
    if transpose:
        # Only axes of equal length may swap, so a non-cubic tile keeps its shape.
        for length in sorted(set(image.shape)):
            same = [a for a in range(ndim) if image.shape[a] == length]
            for a, b in zip(same, rng.permutation(same)):
                axes[a] = int(b)
    flips = tuple(a for a, f in enumerate(rng.random(ndim) < flip) if f) if flip else ()
    if axes != list(range(ndim)):
        image, labels = image.transpose(axes), labels.transpose(axes)
    if flips:
        image, labels = np.flip(image, flips), np.flip(labels, flips)
    return image, labels


def small_rotation(
    image: np.ndarray, labels: np.ndarray, rng: np.random.Generator, *, max_angle: float = 15.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Rotate both arrays by an angle uniform in ±``max_angle`` degrees about the tile centre, in a random plane.

    The image is interpolated linearly, the labels take the nearest voxel of the same sampling grid; both reflect
    at the edges, so no label outside the input's appears.
    """
    planes = [(a, b) for a in range(image.ndim) for b in range(a + 1, image.ndim)
              if image.shape[a] == image.shape[b]]
    angle = rng.uniform(-max_angle, max_angle)
    if not planes or math.isclose(angle, 0.0):
        return image, labels
    plane = planes[int(rng.integers(len(planes)))]
    image = ndi.rotate(_float(image), angle, axes=plane, reshape=False, order=1, mode="reflect")
    labels = ndi.rotate(labels, angle, axes=plane, reshape=False, order=0, mode="reflect")
    return image, labels


def gamma(image: np.ndarray, g: float) -> np.ndarray:
    """Gamma change between the tile's own minimum and maximum (a flat tile is returned unchanged)."""
    image = _float(image)
    lo, hi = float(image.min()), float(image.max())
    if hi <= lo:
        return image
    unit = (image - np.float32(lo)) * np.float32(1.0 / (hi - lo))
    np.clip(unit, 0.0, 1.0, out=unit)  # rounding can step just outside 0..1, where a power is NaN
    return np.float32(lo) + np.float32(hi - lo) * unit ** np.float32(g)


def _float(image: np.ndarray) -> np.ndarray:
    return image if image.dtype == np.float32 else image.astype(np.float32)
