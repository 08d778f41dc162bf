"""The simulated micro-CT image of a label volume.

The image is the phase grey values (clay textured), blurred by a Gaussian point-spread function (partial volume),
with optional cupping and ring artefacts, plus near-Gaussian white noise (the Irwin-Hall sum of four uniforms,
bounded at 3.5 standard deviations), rounded and clipped to uint8. The blur of a block reads a halo of
``ceil(4 * blur)`` voxels (:func:`blur_halo`) and reflects at the faces of the volume exactly as the in-memory
filter does, so :func:`ct_region` gives the same grey values for a block as for the whole volume.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from rockseg.errors import InputError
from rockseg.synthetic.hashing import CLAY_TEXTURE, NOISE, RINGS, hash_keys, normal, uniform, value_noise
from rockseg.synthetic.parameters import PHASE_GREY, CTOptions, check_seed, ct_options
from rockseg.synthetic.rock import slabs

__all__ = ["blur_halo", "ct_region", "simulate_ct"]

_TRUNCATE = 4.0  # the blur kernel reaches ceil(4 sigma) voxels
_CLAY_TEXTURE_LATTICE = 2.0  # voxels between the lattice points of the clay texture (fine, micro-porous look)
_RING_SHARE = 0.15  # fraction of detector radii that carry a ring


def blur_halo(ct: CTOptions) -> int:
    return int(math.ceil(_TRUNCATE * ct.blur)) if ct.blur > 0 else 0


def ct_region(seed: int, ct: CTOptions, labels: np.ndarray, lo: Sequence[int], shape: Sequence[int],
               keep: tuple[slice, ...]) -> np.ndarray:
    """The uint8 CT image of ``labels[keep]``, where ``labels`` is the region starting at ``lo`` of a volume of
    the given (Z, Y, X) shape, holding at least the blur halo around ``keep`` wherever the volume goes on."""
    hi = [a + n for a, n in zip(lo, labels.shape, strict=True)]
    grey = np.asarray(ct.grey, dtype=np.float32)
    image = grey[labels]
    if ct.clay_texture > 0 and len(grey) > 1:
        for z0, z1 in slabs(lo[0], hi[0], labels[0].size):
            clay = labels[z0 - lo[0] : z1 - lo[0]] == 1
            if clay.any():
                slab_lo, slab_hi = (z0, lo[1], lo[2]), (z1, hi[1], hi[2])
                texture = value_noise(seed, CLAY_TEXTURE, _CLAY_TEXTURE_LATTICE, slab_lo, slab_hi)
                # On a lattice of spacing 2 the value noise averages 1, 2, 4 or 8 uniforms, whose standard
                # deviation is sqrt(0.75**3 / 12) = 0.1875: scale it to clay_texture grey levels.
                bump = (ct.clay_texture / 0.1875 * (texture[clay] - 0.5)).astype(np.float32)
                image[z0 - lo[0] : z1 - lo[0]][clay] += bump
    if ct.blur > 0:
        # An axis of size 1 in the whole volume is a 2D image: no blur across it.
        sigma = [ct.blur if n > 1 else 0.0 for n in shape]
        image = ndimage.gaussian_filter(image, sigma, mode="reflect", radius=blur_halo(ct))
    image = image[keep].astype(np.float64)
    lo_kept = [a + (s.start or 0) for a, s in zip(lo, keep, strict=True)]
    z, y, x = (np.arange(a, a + n) for a, n in zip(lo_kept, image.shape, strict=True))
    if ct.cupping > 0 or ct.rings > 0:
        cy, cx = (shape[1] - 1) / 2.0, (shape[2] - 1) / 2.0
        r = np.sqrt(((y - cy) ** 2)[:, None] + ((x - cx) ** 2)[None, :])
        if ct.cupping > 0:
            # Beam hardening: the centre of each slice looks less dense than its rim.
            rim = max(math.hypot(cy, cx), 1.0)
            image *= 1.0 - ct.cupping * (1.0 - (r / rim) ** 2)
        if ct.rings > 0:
            # A miscalibrated detector pixel draws a circle about the rotation axis on every slice.
            ring = np.floor(r).astype(np.int64)
            u = uniform(hash_keys(seed, RINGS, ring))
            strength = np.where(u < _RING_SHARE, 2.0 * u / _RING_SHARE - 1.0, 0.0)
            image += ct.rings * strength
    if ct.noise > 0:
        for z0, z1 in slabs(0, z.size, image[0].size):
            keys = hash_keys(seed, NOISE, z[z0:z1, None, None], y[None, :, None], x[None, None, :])
            image[z0:z1] += ct.noise * normal(keys)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def simulate_ct(
    labels: np.ndarray,
    *,
    seed: int = 0,
    blur: float = 1.0,
    noise: float = 15.0,
    grey: Sequence[float] = PHASE_GREY,
    clay_texture: float = 10.0,
    cupping: float = 0.0,
    rings: float = 0.0,
) -> np.ndarray:
    """A simulated micro-CT image of a label volume.

    Each voxel gets its phase's mean grey value (label 1, clay, gets a fine random texture), the image is blurred
    by a Gaussian point-spread function (partial volume at phase boundaries; reflected at the volume faces),
    optionally shaded by cupping and ring artefacts, and noise is added; the result is rounded to uint8.

    Parameters
    ----------
    labels : (Z, Y, X) or (Y, X) array of int
        Label per voxel, each in ``0 .. len(grey) - 1``. A (Y, X) array is one slice: it is blurred in 2D.
    seed : int
        Seed of the noise and texture (a non-negative integer).
    blur : float, voxels
        Standard deviation of the Gaussian point-spread function (0: none).
    noise : float, grey levels
        Standard deviation of the additive noise (near-Gaussian, bounded at 3.5 standard deviations).
    grey : sequence of float, grey levels
        Mean grey value of each label; default :data:`PHASE_GREY` (pore < clay < quartz < pyrite). Values
        outside 0-255 are allowed: the image saturates there, as real scans do.
    clay_texture : float, grey levels
        About the standard deviation of the fine texture added to clay (label 1) before the blur.
    cupping : float
        Relative darkening of the slice centre against its corners (beam hardening), in [0, 1): the grey values
        are multiplied by ``1 - cupping * (1 - (r / r_corner)**2)``, ``r`` the distance from the slice centre.
    rings : float, grey levels
        Amplitude of ring artefacts about the slice centre (same on every slice); 0: none.

    Returns
    -------
    image : array of uint8, same shape as ``labels``

    Raises
    ------
    InputError
        On a bad label array, seed or option.
    """
    seed = check_seed(seed)
    ct = ct_options(blur=blur, noise=noise, grey=grey, clay_texture=clay_texture, cupping=cupping, rings=rings)
    arr = np.asarray(labels)
    if arr.ndim not in (2, 3) or arr.size == 0:
        raise InputError(f"simulate_ct needs a non-empty (Y, X) or (Z, Y, X) label array, not one of shape {arr.shape}")
    if arr.dtype.kind not in "uib":
        raise InputError(f"simulate_ct needs integer labels, not {arr.dtype}: convert the label array to uint8")
    low, high = int(arr.min()), int(arr.max())
    if low < 0 or high >= len(ct.grey):
        raise InputError(
            f"labels hold values {low}..{high} but grey gives means for labels 0..{len(ct.grey) - 1}: "
            "give one grey value per label"
        )
    if arr.dtype == bool:
        arr = arr.view(np.uint8)  # index grey by 0/1, not mask it
    labels3 = arr.reshape((1, *arr.shape) if arr.ndim == 2 else arr.shape)
    keep = (slice(None),) * 3
    image = ct_region(seed, ct, labels3, (0, 0, 0), labels3.shape, keep)
    return image.reshape(arr.shape)
