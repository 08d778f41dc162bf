"""The geometry of the synthetic rock: grains, clay coats and pore, as labels of any region of the infinite rock.

- **quartz** grains are ellipsoids (a Boolean model: Poisson numbers of grains per cell of a fixed global grid,
  overlapping where they meet, as in a compacted, cemented sandstone) with radii, shapes and orientations drawn per
  grain. The pore space between them is connected.
- **clay** coats the grain surfaces (a smooth random field varies the coat thickness, and with
  ``clay_coverage < 1`` leaves bare patches) and fills the narrow pore throats where the coats of two grains meet.
- **pyrite** grains are rarer, smaller and coated like quartz; where they overlap quartz they win.
- **pore** is what is left.

The grain density is solved from the requested porosity with the closed-form coverage of the Boolean model
(:func:`solve_rock`), so the mean porosity over many volumes is the requested one (one volume of a few grains across
differs by a few hundredths), without looking at any volume. :func:`labels_region` renders any region [lo, hi) of
the rock from the grains that reach it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rockseg.errors import InputError
from rockseg.synthetic.hashing import CALIBRATION, CLAY_PATCH, GRAINS, PYRITE, hash_keys, normal, uniform, value_noise
from rockseg.synthetic.parameters import RockOptions, check_seed, check_shape, rock_options

__all__ = ["Rock", "labels_region", "slabs", "solve_rock", "synthetic_labels"]

_CALIBRATION_SAMPLES = 1 << 15
_CLAY_RAMP = 0.08  # width, in clay-patch field units, over which a coat thickens from 0 to its full thickness
_COAT_VARIATION = 0.3  # relative variation of the coat thickness along the grain surfaces


# --------------------------------------------------------------------------------------------------------------
# The rock model: grain densities solved from the options
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Grains:
    """A Boolean model of ellipsoids: Poisson counts per cubic cell of a fixed global grid."""

    stream: int
    density: float  # grains per voxel
    radius: tuple[float, float]  # equivalent-sphere radius range, voxels
    stretch: float  # longest semi-axis / equivalent radius, at most; shortest is its inverse
    margin: float  # the largest distance outside a grain that must be known (the thickest clay coat), voxels
    cell: int  # cell edge, voxels
    cdf: tuple[float, ...]  # Poisson CDF of the count per cell

    @property
    def reach(self) -> int:
        """How far from its centre a grain (with its margin) can reach, voxels."""
        return int(math.ceil((self.radius[1] + self.margin) * self.stretch)) + 1


def _mean_cube(radius: tuple[float, float], t: Any) -> Any:
    """E[(R + t)^3] for R uniform on [min, max]."""
    lo, hi = radius
    if hi - lo < 1e-9 * hi:
        return (lo + t) ** 3
    return ((hi + t) ** 4 - (lo + t) ** 4) / (4.0 * (hi - lo))


def _make_grains(stream: int, density: float, radius: tuple[float, float], elongation: float,
                 margin: float) -> _Grains:
    stretch = math.sqrt(elongation)
    size = max(2.0 * (radius[1] + margin) * stretch, (4.0 / density) ** (1.0 / 3.0) if density > 0 else 1.0)
    cell = max(4, int(math.ceil(size)))
    mean = density * cell**3
    cdf, pmf, k = [], math.exp(-mean), 0
    total = 0.0
    while True:
        total += pmf
        cdf.append(total)
        k += 1
        if 1.0 - total < 1e-13 or k > 10 * mean + 50:
            break
        pmf *= mean / k
    return _Grains(stream, density, radius, stretch, margin, cell, tuple(cdf))


@dataclass(frozen=True)
class Rock:
    grains: _Grains
    pyrite: _Grains
    clay_thickness: float
    clay_threshold: float  # clay-patch field value above which grains are coated
    clay_patch_size: float


def _patch_field_samples() -> np.ndarray:
    """A fixed sample of the marginal distribution of the value-noise field (for the calibration only)."""
    n = _CALIBRATION_SAMPLES
    u = uniform(hash_keys(0, CALIBRATION, np.arange(n)[:, None], np.arange(11)[None, :]))
    w = u[:, :3] * u[:, :3] * (3.0 - 2.0 * u[:, :3])
    corners = u[:, 3:].reshape(n, 2, 2, 2)
    along_z = corners[:, 0] * (1.0 - w[:, 0, None, None]) + corners[:, 1] * w[:, 0, None, None]
    along_y = along_z[:, 0] * (1.0 - w[:, 1, None]) + along_z[:, 1] * w[:, 1, None]
    return along_y[:, 0] * (1.0 - w[:, 2]) + along_y[:, 1] * w[:, 2]


def _coat_thickness(field: np.ndarray, thickness: float, threshold: float) -> np.ndarray:
    """Clay coat thickness (voxels) from the clay-patch field: none below the threshold, then thickening over a
    short ramp, and varying by +-_COAT_VARIATION about ``thickness`` with the field."""
    onset = np.clip((field - threshold) / _CLAY_RAMP, 0.0, 1.0)
    return thickness * onset * (1.0 + _COAT_VARIATION * (2.0 * field - 1.0))


@functools.lru_cache(maxsize=64)
def solve_rock(opts: RockOptions) -> Rock:
    """Grain densities that give the requested porosity and pyrite fraction on average."""
    samples = _patch_field_samples()
    threshold = float(np.quantile(samples, 1.0 - opts.clay_coverage)) if opts.clay_coverage > 0 else 2.0
    thickness = _coat_thickness(samples, opts.clay_thickness, threshold)
    # Volume of the zone within the local coat thickness of a grain (of a pyrite grain), per sample of the coat
    # thickness field.
    quartz_zone = 4.0 / 3.0 * math.pi * _mean_cube(opts.grain_radius, thickness)
    pyrite_zone = 4.0 / 3.0 * math.pi * _mean_cube(opts.pyrite_radius, thickness)
    pyrite_density = -math.log1p(-opts.pyrite_fraction) / (4.0 / 3.0 * math.pi * _mean_cube(opts.pyrite_radius, 0))

    # In a Boolean model a voxel is pore when no grain comes within the local coat thickness of it, with
    # probability exp(-sum of density * zone volume), averaged here over the distribution of the coat thickness.
    def pore(density: float) -> float:
        return float(np.mean(np.exp(-density * quartz_zone - pyrite_density * pyrite_zone)))

    if pore(0.0) <= opts.porosity:
        raise InputError(
            f"synthetic rock option porosity={opts.porosity:g} cannot be reached with pyrite_fraction="
            f"{opts.pyrite_fraction:g}, clay_coverage={opts.clay_coverage:g} and clay_thickness="
            f"{opts.clay_thickness:g}: give a porosity below {pore(0.0):.2f}, or less pyrite or clay"
        )
    lo, hi = 0.0, 1.0 / float(np.min(quartz_zone))
    while pore(hi) > opts.porosity:
        hi *= 2.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if pore(mid) > opts.porosity else (lo, mid)
    patch = opts.clay_patch_size or (opts.grain_radius[0] + opts.grain_radius[1])
    margin = opts.clay_thickness * (1.0 + _COAT_VARIATION)  # the thickest coat
    return Rock(
        grains=_make_grains(GRAINS, 0.5 * (lo + hi), opts.grain_radius, opts.grain_elongation, margin),
        pyrite=_make_grains(PYRITE, pyrite_density, opts.pyrite_radius, opts.grain_elongation, margin),
        clay_thickness=opts.clay_thickness,
        clay_threshold=threshold,
        clay_patch_size=patch,
    )


# --------------------------------------------------------------------------------------------------------------
# Rendering a region [lo, hi) of the infinite rock
# --------------------------------------------------------------------------------------------------------------
def _enumerate_grains(seed: int, g: _Grains, lo: Sequence[int], hi: Sequence[int]) -> dict[str, np.ndarray]:
    """Every grain of the model whose bounding box (with margin) meets the region [lo, hi)."""
    if g.density <= 0:
        return {"centre": np.zeros((0, 3)), "radius": np.zeros(0), "metric": np.zeros((0, 6)),
                "box_lo": np.zeros((0, 3), np.int64), "box_hi": np.zeros((0, 3), np.int64)}
    reach = g.reach
    ranges = [np.arange((a - reach) // g.cell, (b - 1 + reach) // g.cell + 1) for a, b in zip(lo, hi, strict=True)]
    cz, cy, cx = (c.ravel() for c in np.meshgrid(*ranges, indexing="ij"))
    counts = np.searchsorted(np.asarray(g.cdf), uniform(hash_keys(seed, g.stream, cz, cy, cx, -1)), side="right")
    counts = np.minimum(counts, len(g.cdf) - 1)
    owner = np.repeat(np.arange(cz.size), counts)
    slot = np.arange(owner.size) - np.repeat(np.cumsum(counts) - counts, counts)
    cz, cy, cx = cz[owner], cy[owner], cx[owner]

    def draw(k: int) -> np.ndarray:
        return hash_keys(seed, g.stream, cz, cy, cx, slot, k)

    cell = np.stack([cz, cy, cx], axis=1).astype(np.float64)
    centre = (cell + np.stack([uniform(draw(k)) for k in range(3)], axis=1)) * g.cell
    radius = g.radius[0] + (g.radius[1] - g.radius[0]) * uniform(draw(3))
    # Semi-axes r*s, r, r/s keep the volume of the sphere of radius r with only exact arithmetic.
    s = 1.0 + (g.stretch - 1.0) * uniform(draw(4))
    inv_sq = np.stack([1.0 / (radius * s) ** 2, 1.0 / radius**2, (s / radius) ** 2], axis=1)
    sq = np.stack([(radius * s) ** 2, radius**2, (radius / s) ** 2], axis=1)
    # A random orientation from a normalised 4-vector of near-normal numbers (a quaternion).
    q = np.stack([normal(draw(5 + k)) for k in range(4)], axis=1)
    q = q / np.sqrt(q[:, :1] ** 2 + q[:, 1:2] ** 2 + q[:, 2:3] ** 2 + q[:, 3:] ** 2 + 1e-300)
    w, x, y, z = q.T
    rot = np.empty((owner.size, 3, 3))
    rot[:, 0, 0] = 1 - 2 * (y * y + z * z)
    rot[:, 0, 1] = 2 * (x * y - z * w)
    rot[:, 0, 2] = 2 * (x * z + y * w)
    rot[:, 1, 0] = 2 * (x * y + z * w)
    rot[:, 1, 1] = 1 - 2 * (x * x + z * z)
    rot[:, 1, 2] = 2 * (y * z - x * w)
    rot[:, 2, 0] = 2 * (x * z - y * w)
    rot[:, 2, 1] = 2 * (y * z + x * w)
    rot[:, 2, 2] = 1 - 2 * (x * x + y * y)

    def quadratic(diag: np.ndarray, i: int, j: int) -> np.ndarray:
        # (R diag R^T)_ij, summed in a fixed order (no BLAS: its blocking may change with the array length)
        return rot[:, i, 0] * rot[:, j, 0] * diag[:, 0] + rot[:, i, 1] * rot[:, j, 1] * diag[:, 1] + (
            rot[:, i, 2] * rot[:, j, 2] * diag[:, 2]
        )

    metric = np.stack([quadratic(inv_sq, i, j) for i, j in ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2))], axis=1)
    scale = 1.0 + g.margin / radius
    extent = scale[:, None] * np.sqrt(np.stack([quadratic(sq, i, i) for i in range(3)], axis=1))
    box_lo = np.floor(centre - extent).astype(np.int64)
    box_hi = np.ceil(centre + extent).astype(np.int64) + 1
    meets = np.all((box_hi > np.asarray(lo)) & (box_lo < np.asarray(hi)), axis=1)
    return {"centre": centre[meets], "radius": radius[meets], "metric": metric[meets],
            "box_lo": box_lo[meets], "box_hi": box_hi[meets]}


def _paint(seed: int, g: _Grains, lo: Sequence[int], hi: Sequence[int]) -> np.ndarray:
    """Over the region: the least (q - 1) * r over the grains that reach it, q being the ellipsoid norm (< 1 inside)
    and r the grain's equivalent radius; (q - 1) * r is the distance outside a sphere, and nearly so for an
    ellipsoid. +inf beyond the grains' margins. float32, (Z, Y, X) of the region."""
    grains = _enumerate_grains(seed, g, lo, hi)
    shape = tuple(b - a for a, b in zip(lo, hi, strict=True))
    out = np.full(shape, np.inf, dtype=np.float32)
    lo_arr, hi_arr = np.asarray(lo), np.asarray(hi)
    for centre, radius, m, blo, bhi in zip(grains["centre"], grains["radius"], grains["metric"],
                                           grains["box_lo"], grains["box_hi"], strict=True):
        a, b = np.maximum(blo, lo_arr), np.minimum(bhi, hi_arr)
        dz = np.arange(a[0], b[0], dtype=np.float64)[:, None, None] - centre[0]
        dy = np.arange(a[1], b[1], dtype=np.float64)[None, :, None] - centre[1]
        dx = np.arange(a[2], b[2], dtype=np.float64)[None, None, :] - centre[2]
        plane = (m[0] * dz * dz + m[1] * dy * dy) + (2.0 * m[3]) * dz * dy
        q2 = plane + (((2.0 * m[4]) * dz * dx + (2.0 * m[5]) * dy * dx) + m[2] * dx * dx)
        window = out[a[0] - lo[0] : b[0] - lo[0], a[1] - lo[1] : b[1] - lo[1], a[2] - lo[2] : b[2] - lo[2]]
        np.minimum(window, (np.sqrt(q2) - 1.0) * radius, out=window)
    return out


def slabs(lo: int, hi: int, plane: int) -> list[tuple[int, int]]:
    """[lo, hi) cut into runs of slices of about 2**20 voxels in all, to bound the temporaries of per-voxel work."""
    step = max(1, (1 << 20) // max(plane, 1))
    return [(a, min(a + step, hi)) for a in range(lo, hi, step)]


def labels_region(seed: int, rock: Rock, lo: Sequence[int], hi: Sequence[int]) -> np.ndarray:
    """The uint8 labels of the region [lo, hi) (global voxel coordinates, 3D)."""
    distance = _paint(seed, rock.grains, lo, hi)
    pyrite = _paint(seed, rock.pyrite, lo, hi)
    np.minimum(distance, pyrite, out=distance)
    is_pyrite = pyrite < 0
    del pyrite
    labels = np.where(distance < 0, np.uint8(2), np.uint8(0))
    if rock.clay_thickness > 0:
        for z0, z1 in slabs(lo[0], hi[0], labels[0].size):
            patch = value_noise(seed, CLAY_PATCH, rock.clay_patch_size, (z0, lo[1], lo[2]), (z1, hi[1], hi[2]))
            thickness = _coat_thickness(patch, rock.clay_thickness, rock.clay_threshold)
            near = distance[z0 - lo[0] : z1 - lo[0]]
            labels[z0 - lo[0] : z1 - lo[0]][(near >= 0) & (near < thickness)] = 1
    labels[is_pyrite] = 3
    return labels


def synthetic_labels(
    shape: Sequence[int],
    *,
    seed: int = 0,
    grain_radius: float | tuple[float, float] = (8.0, 16.0),
    porosity: float = 0.25,
    grain_elongation: float = 1.6,
    clay_coverage: float = 1.0,
    clay_thickness: float = 4.0,
    clay_patch_size: float | None = None,
    pyrite_fraction: float = 0.02,
    pyrite_radius: float | tuple[float, float] = (5.0, 10.0),
) -> np.ndarray:
    """Phase labels of a seeded synthetic sandstone.

    Parameters
    ----------
    shape : (Z, Y, X) or (Y, X) tuple of int
        Size in voxels. A (Y, X) shape gives the first slice of the (Z, Y, X) rock.
    seed : int
        Same seed, same rock; any integer from 0 to 2**63 - 1.
    grain_radius : float or (min, max), voxels
        Quartz grain radius (of the sphere of the same volume), uniform on [min, max].
    porosity : float
        Expected pore fraction (what clay and pyrite leave), in (0, 1). One volume only a few grains across
        differs from it by a few hundredths.
    grain_elongation : float
        Largest ratio of the longest to the shortest semi-axis of a grain (1: spheres).
    clay_coverage : float
        Fraction of the grain surface that carries a clay coat, in [0, 1]; below 1 the coats come in patches.
    clay_thickness : float, voxels
        Mean thickness of a clay coat (it varies by 30 % along the surface and thins out at patch edges); pore
        throats narrower than two coats fill up with clay. 0: no clay.
    clay_patch_size : float, voxels, optional
        Lattice spacing of the smooth random field that sets the coat thickness and places the patches; default
        ``sum(grain_radius)``.
    pyrite_fraction : float
        Expected volume fraction of pyrite, in [0, 0.5]. Pyrite grains are coated like quartz grains and
        replace quartz where the two overlap.
    pyrite_radius : float or (min, max), voxels
        Pyrite grain radius range.

    Returns
    -------
    labels : (Z, Y, X) or (Y, X) array of uint8
        0 pore, 1 clay, 2 quartz, 3 pyrite (see :data:`PHASES`).

    Raises
    ------
    InputError
        On a bad shape, seed or option.
    """
    size = check_shape(shape)
    seed = check_seed(seed)
    rock = solve_rock(rock_options(
        grain_radius=grain_radius, porosity=porosity, grain_elongation=grain_elongation,
        clay_coverage=clay_coverage, clay_thickness=clay_thickness, clay_patch_size=clay_patch_size,
        pyrite_fraction=pyrite_fraction, pyrite_radius=pyrite_radius,
    ))
    size3 = (1, *size) if len(size) == 2 else size
    labels = labels_region(seed, rock, (0, 0, 0), size3)
    return labels.reshape(size)
