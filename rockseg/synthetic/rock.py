"""Seeded synthetic multi-phase rocks with a simulated micro-CT image, for the demo, tests and benchmarks.

The rock is a stationary random field defined on the whole integer lattice, so any block of it can be made on its
own and a volume of any size can be written block by block with bounded memory:

- **quartz** grains are ellipsoids (a Boolean model: Poisson numbers of grains per cell of a fixed global grid,
  overlapping where they meet, as in a compacted, cemented sandstone) with radii, shapes and orientations drawn per
  grain. The pore space between them is connected.
- **clay** coats the grain surfaces (a smooth random field varies the coat thickness, and with
  ``clay_coverage < 1`` leaves bare patches) and fills the narrow pore throats where the coats of two grains meet.
- **pyrite** grains are rarer, smaller and coated like quartz; where they overlap quartz they win.
- **pore** is what is left.

The grain density is solved from the requested porosity with the closed-form coverage of the Boolean model, so the
mean porosity over many volumes is the requested one (one volume of a few grains across differs by a few
hundredths), without looking at any volume.

Every random number comes from a counter-based hash of ``(seed, stream, global coordinates...)``, never from a
sequential generator, so a voxel's label and grey value depend only on its position: the Dask version built with
``chunks=`` is identical, voxel for voxel, to the in-memory one for any chunking. Only exactly rounded arithmetic
(+, -, *, /, sqrt) touches per-voxel or per-grain values, so the result does not depend on how NumPy vectorises an
array of a given length either.

The CT image is the phase grey values (clay textured), blurred by a Gaussian point-spread function (partial volume),
with optional cupping and ring artefacts, plus near-Gaussian white noise (the Irwin-Hall sum of four uniforms,
bounded at 3.5 standard deviations), rounded and clipped to uint8. The blur of a block reads a halo of
``ceil(4 * blur)`` voxels and reflects at the faces of the volume exactly as the in-memory filter does.

The defaults are tuned so that segmentation is learnable but not trivial: on a 96^3 volume, 4-class multi-Otsu
thresholds of the raw image give a mean IoU of about 0.83, a 3x3x3 median filter before the same thresholds about
0.91, and a small 3D U-Net trained for two CPU minutes more than 0.9.

Examples
--------
>>> image, labels = synthetic_rock((32, 32, 32), seed=1)
>>> image.shape, image.dtype.name, labels.dtype.name
((32, 32, 32), 'uint8', 'uint8')
>>> lazy_image, lazy_labels = synthetic_rock((32, 32, 32), seed=1, chunks=12)
>>> bool((lazy_image.compute() == image).all() and (lazy_labels.compute() == labels).all())
True
"""

from __future__ import annotations

import difflib
import functools
import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass, fields
from itertools import product
from typing import Any

import numpy as np
from scipy import ndimage

from rockseg.errors import InputError

__all__ = ["PHASES", "PHASE_GREY", "synthetic_labels", "simulate_ct", "synthetic_rock"]

PHASES: dict[int, str] = {0: "pore", 1: "clay", 2: "quartz", 3: "pyrite"}
"""Label value -> phase name of the synthetic rock."""

PHASE_GREY: tuple[float, ...] = (20.0, 80.0, 140.0, 300.0)
"""Default mean grey value of each phase, indexed by label, on the uint8 scale before clipping: pyrite saturates,
as it often does in real scans."""

# Hash streams: one per independent random quantity, so that changing one option leaves the others' draws alone.
_GRAINS, _PYRITE, _CLAY_PATCH, _CLAY_TEXTURE, _NOISE, _RINGS, _CALIBRATION = range(1, 8)

_TRUNCATE = 4.0  # the blur kernel reaches ceil(4 sigma) voxels
_CALIBRATION_SAMPLES = 1 << 15
_CLAY_RAMP = 0.08  # width, in clay-patch field units, over which a coat thickens from 0 to its full thickness
_COAT_VARIATION = 0.3  # relative variation of the coat thickness along the grain surfaces
_CLAY_TEXTURE_LATTICE = 2.0  # voxels between the lattice points of the clay texture (fine, micro-porous look)
_RING_SHARE = 0.15  # fraction of detector radii that carry a ring


# --------------------------------------------------------------------------------------------------------------
# Counter-based hashing: every random number is a pure function of (seed, stream, integer keys).
# --------------------------------------------------------------------------------------------------------------
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)
_S11, _S16, _LOW16 = np.uint64(11), np.uint64(16), np.uint64(0xFFFF)


def _u64(keys: Any) -> np.ndarray:
    # Always an array of at least one dimension: NumPy warns on integer overflow of scalars, not of arrays, and the
    # wrap-around is what the hash wants.
    return np.atleast_1d(np.asarray(keys, dtype=np.int64)).view(np.uint64)


def _mix(x: np.ndarray) -> np.ndarray:
    """The SplitMix64 finaliser, a bijection of uint64 with full avalanche."""
    x = x ^ (x >> _S30)
    x = x * _M1
    x = x ^ (x >> _S27)
    x = x * _M2
    return x ^ (x >> _S31)


def _hash(seed: int, stream: int, *keys: Any) -> np.ndarray:
    """uint64 hash of (seed, stream, *keys); the keys are integer arrays that broadcast together."""
    h = _mix(_mix(np.array([seed], dtype=np.uint64)) ^ _u64(stream))
    for key in keys:
        h = _mix(h ^ _mix(_u64(key) + _GOLDEN))
    return h


def _uniform(h: np.ndarray) -> np.ndarray:
    """Uniform floats in [0, 1) from the top 53 bits of a hash."""
    return (h >> _S11).astype(np.float64) * (1.0 / (1 << 53))


def _normal(h: np.ndarray) -> np.ndarray:
    """Approximately standard normal floats: the Irwin-Hall sum of the four 16-bit parts of a hash.

    Only integer operations and one exact conversion, so the value never depends on how NumPy vectorises a
    transcendental function over an array of a given length (which would break block-size independence).
    """
    total = (h & _LOW16) + ((h >> _S16) & _LOW16) + ((h >> np.uint64(32)) & _LOW16) + (h >> np.uint64(48))
    # Each part is (b + 0.5) / 65536, uniform on (0, 1); the sum of four has mean 2 and variance 1/3.
    return ((total.astype(np.float64) + 2.0) * (1.0 / 65536) - 2.0) * math.sqrt(3.0)


# --------------------------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RockOptions:
    """Options of the synthetic rock geometry (see :func:`synthetic_labels` for their meaning)."""

    grain_radius: tuple[float, float] = (8.0, 16.0)
    porosity: float = 0.25
    grain_elongation: float = 1.6
    clay_coverage: float = 1.0
    clay_thickness: float = 4.0
    clay_patch_size: float | None = None
    pyrite_fraction: float = 0.02
    pyrite_radius: tuple[float, float] = (5.0, 10.0)


@dataclass(frozen=True)
class CTOptions:
    """Options of the simulated CT image (see :func:`simulate_ct` for their meaning)."""

    blur: float = 1.0
    noise: float = 15.0
    grey: tuple[float, ...] = PHASE_GREY
    clay_texture: float = 10.0
    cupping: float = 0.0
    rings: float = 0.0


_ROCK_OPTIONS = tuple(f.name for f in fields(RockOptions))
_CT_OPTIONS = tuple(f.name for f in fields(CTOptions))


def _number(name: str, value: Any, *, low: float, high: float = math.inf, low_open: bool = False,
            high_open: bool = False) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise InputError(f"synthetic rock option {name}={value!r} is not a number: give a number") from None
    too_low = x <= low if low_open else x < low
    too_high = x >= high if high_open else x > high
    if not math.isfinite(x) or too_low or too_high:
        lo_text = f"{'>' if low_open else '>='} {low:g}"
        hi_text = "" if high == math.inf else f" and {'<' if high_open else '<='} {high:g}"
        raise InputError(f"synthetic rock option {name}={value!r} is out of range: give a value {lo_text}{hi_text}")
    return x


def _pair(name: str, value: Any) -> tuple[float, float]:
    """A (min, max) range of positive lengths in voxels; a single number means a fixed value."""
    if np.ndim(value) == 0:
        value = (value, value)
    if len(value) != 2:
        raise InputError(f"synthetic rock option {name}={value!r} must be one number or a (min, max) pair")
    lo = _number(name, value[0], low=0.0, low_open=True)
    hi = _number(name, value[1], low=0.0, low_open=True)
    if lo > hi:
        raise InputError(f"synthetic rock option {name}={tuple(value)!r} has min > max: give (min, max)")
    return lo, hi


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or not 0 <= int(seed) < 1 << 63:
        raise InputError(f"synthetic rock seed {seed!r} must be an integer from 0 to 2**63 - 1")
    return int(seed)


def _check_shape(shape: Any) -> tuple[int, ...]:
    """(Y, X) or (Z, Y, X) positive sizes."""
    try:
        sizes = tuple(shape)
    except TypeError:
        sizes = ()
    ok = len(sizes) in (2, 3) and all(
        isinstance(s, int | np.integer) and not isinstance(s, bool) and s > 0 for s in sizes
    )
    if not ok:
        raise InputError(
            f"synthetic rock shape {shape!r} is not 2 or 3 positive integer sizes: give (Y, X) or (Z, Y, X), "
            "e.g. (64, 64, 64)"
        )
    return tuple(int(s) for s in sizes)


def _rock_options(**options: Any) -> RockOptions:
    opts = RockOptions(**options)
    pyrite_fraction = _number("pyrite_fraction", opts.pyrite_fraction, low=0.0, high=0.5)
    patch = opts.clay_patch_size
    checked = RockOptions(
        grain_radius=_pair("grain_radius", opts.grain_radius),
        porosity=_number("porosity", opts.porosity, low=0.0, high=1.0, low_open=True, high_open=True),
        grain_elongation=_number("grain_elongation", opts.grain_elongation, low=1.0),
        clay_coverage=_number("clay_coverage", opts.clay_coverage, low=0.0, high=1.0),
        clay_thickness=_number("clay_thickness", opts.clay_thickness, low=0.0),
        clay_patch_size=None if patch is None else _number("clay_patch_size", patch, low=0.0, low_open=True),
        pyrite_fraction=pyrite_fraction,
        pyrite_radius=_pair("pyrite_radius", opts.pyrite_radius),
    )
    if max(checked.grain_radius) * checked.grain_elongation > 1000 or max(checked.pyrite_radius) > 1000:
        raise InputError("synthetic rock grains larger than 1000 voxels are not supported: give smaller radii")
    return checked


def _ct_options(**options: Any) -> CTOptions:
    opts = CTOptions(**options)
    grey = opts.grey
    if np.ndim(grey) != 1 or len(grey) == 0:
        raise InputError(f"synthetic CT option grey={grey!r} must be a sequence of mean grey values, one per label")
    return CTOptions(
        blur=_number("blur", opts.blur, low=0.0, high=50.0),
        noise=_number("noise", opts.noise, low=0.0),
        grey=tuple(_number("grey", g, low=-1000.0, high=1000.0) for g in grey),
        clay_texture=_number("clay_texture", opts.clay_texture, low=0.0),
        cupping=_number("cupping", opts.cupping, low=0.0, high=1.0, high_open=True),
        rings=_number("rings", opts.rings, low=0.0),
    )


def _split_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    rock, ct = {}, {}
    for name, value in options.items():
        if name in _ROCK_OPTIONS:
            rock[name] = value
        elif name in _CT_OPTIONS:
            ct[name] = value
        else:
            close = difflib.get_close_matches(name, _ROCK_OPTIONS + _CT_OPTIONS, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise InputError(
                f"unknown synthetic rock option {name!r}: {hint}valid options are "
                f"{', '.join(_ROCK_OPTIONS + _CT_OPTIONS)}"
            )
    return rock, ct


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
class _Rock:
    grains: _Grains
    pyrite: _Grains
    clay_thickness: float
    clay_threshold: float  # clay-patch field value above which grains are coated
    clay_patch_size: float


def _patch_field_samples() -> np.ndarray:
    """A fixed sample of the marginal distribution of the value-noise field (for the calibration only)."""
    n = _CALIBRATION_SAMPLES
    u = _uniform(_hash(0, _CALIBRATION, np.arange(n)[:, None], np.arange(11)[None, :]))
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
def _solve_rock(opts: RockOptions) -> _Rock:
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
    return _Rock(
        grains=_make_grains(_GRAINS, 0.5 * (lo + hi), opts.grain_radius, opts.grain_elongation, margin),
        pyrite=_make_grains(_PYRITE, pyrite_density, opts.pyrite_radius, opts.grain_elongation, margin),
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
    counts = np.searchsorted(np.asarray(g.cdf), _uniform(_hash(seed, g.stream, cz, cy, cx, -1)), side="right")
    counts = np.minimum(counts, len(g.cdf) - 1)
    owner = np.repeat(np.arange(cz.size), counts)
    slot = np.arange(owner.size) - np.repeat(np.cumsum(counts) - counts, counts)
    cz, cy, cx = cz[owner], cy[owner], cx[owner]

    def draw(k: int) -> np.ndarray:
        return _hash(seed, g.stream, cz, cy, cx, slot, k)

    cell = np.stack([cz, cy, cx], axis=1).astype(np.float64)
    centre = (cell + np.stack([_uniform(draw(k)) for k in range(3)], axis=1)) * g.cell
    radius = g.radius[0] + (g.radius[1] - g.radius[0]) * _uniform(draw(3))
    # Semi-axes r*s, r, r/s keep the volume of the sphere of radius r with only exact arithmetic.
    s = 1.0 + (g.stretch - 1.0) * _uniform(draw(4))
    inv_sq = np.stack([1.0 / (radius * s) ** 2, 1.0 / radius**2, (s / radius) ** 2], axis=1)
    sq = np.stack([(radius * s) ** 2, radius**2, (radius / s) ** 2], axis=1)
    # A random orientation from a normalised 4-vector of near-normal numbers (a quaternion).
    q = np.stack([_normal(draw(5 + k)) for k in range(4)], axis=1)
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


def _value_noise(seed: int, stream: int, spacing: float, lo: Sequence[int], hi: Sequence[int]) -> np.ndarray:
    """A smooth random field in [0, 1): hashed values on a lattice of the given spacing (voxels), interpolated
    with smoothstep weights. Separable, so it costs a few passes over the region."""
    index, weight, first = [], [], []
    for a, b in zip(lo, hi, strict=True):
        pos = np.arange(a, b, dtype=np.float64) / spacing
        cell = np.floor(pos)
        f = pos - cell
        cell = cell.astype(np.int64)
        first.append(int(cell[0]))
        index.append(cell - cell[0])
        weight.append(f * f * (3.0 - 2.0 * f))
    lattice = [np.arange(f0, f0 + int(i[-1]) + 2) for f0, i in zip(first, index, strict=True)]
    lz, ly, lx = lattice
    field = _uniform(_hash(seed, stream, lz[:, None, None], ly[None, :, None], lx[None, None, :]))
    for axis in range(3):
        i, w = index[axis], weight[axis]
        shape = [1, 1, 1]
        shape[axis] = w.size
        w = w.reshape(shape)
        low = np.take(field, i, axis=axis)
        high = np.take(field, i + 1, axis=axis)
        field = low * (1.0 - w) + high * w
    return field


def _slabs(lo: int, hi: int, plane: int) -> list[tuple[int, int]]:
    """[lo, hi) cut into runs of slices of about 2**20 voxels in all, to bound the temporaries of per-voxel work."""
    step = max(1, (1 << 20) // max(plane, 1))
    return [(a, min(a + step, hi)) for a in range(lo, hi, step)]


def _labels_region(seed: int, rock: _Rock, lo: Sequence[int], hi: Sequence[int]) -> np.ndarray:
    """The uint8 labels of the region [lo, hi) (global voxel coordinates, 3D)."""
    distance = _paint(seed, rock.grains, lo, hi)
    pyrite = _paint(seed, rock.pyrite, lo, hi)
    np.minimum(distance, pyrite, out=distance)
    is_pyrite = pyrite < 0
    del pyrite
    labels = np.where(distance < 0, np.uint8(2), np.uint8(0))
    if rock.clay_thickness > 0:
        for z0, z1 in _slabs(lo[0], hi[0], labels[0].size):
            patch = _value_noise(seed, _CLAY_PATCH, rock.clay_patch_size, (z0, lo[1], lo[2]), (z1, hi[1], hi[2]))
            thickness = _coat_thickness(patch, rock.clay_thickness, rock.clay_threshold)
            near = distance[z0 - lo[0] : z1 - lo[0]]
            labels[z0 - lo[0] : z1 - lo[0]][(near >= 0) & (near < thickness)] = 1
    labels[is_pyrite] = 3
    return labels


def _blur_halo(ct: CTOptions) -> int:
    return int(math.ceil(_TRUNCATE * ct.blur)) if ct.blur > 0 else 0


def _ct_region(seed: int, ct: CTOptions, labels: np.ndarray, lo: Sequence[int], shape: Sequence[int],
               keep: tuple[slice, ...]) -> np.ndarray:
    """The uint8 CT image of ``labels[keep]``, where ``labels`` is the region starting at ``lo`` of a volume of
    the given (Z, Y, X) shape, holding at least the blur halo around ``keep`` wherever the volume goes on."""
    hi = [a + n for a, n in zip(lo, labels.shape, strict=True)]
    grey = np.asarray(ct.grey, dtype=np.float32)
    image = grey[labels]
    if ct.clay_texture > 0 and len(grey) > 1:
        for z0, z1 in _slabs(lo[0], hi[0], labels[0].size):
            clay = labels[z0 - lo[0] : z1 - lo[0]] == 1
            if clay.any():
                slab_lo, slab_hi = (z0, lo[1], lo[2]), (z1, hi[1], hi[2])
                texture = _value_noise(seed, _CLAY_TEXTURE, _CLAY_TEXTURE_LATTICE, slab_lo, slab_hi)
                # On a lattice of spacing 2 the value noise averages 1, 2, 4 or 8 uniforms, whose standard
                # deviation is sqrt(0.75**3 / 12) = 0.1875: scale it to clay_texture grey levels.
                bump = (ct.clay_texture / 0.1875 * (texture[clay] - 0.5)).astype(np.float32)
                image[z0 - lo[0] : z1 - lo[0]][clay] += bump
    if ct.blur > 0:
        # An axis of size 1 in the whole volume is a 2D image: no blur across it.
        sigma = [ct.blur if n > 1 else 0.0 for n in shape]
        image = ndimage.gaussian_filter(image, sigma, mode="reflect", radius=_blur_halo(ct))
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
            u = _uniform(_hash(seed, _RINGS, ring))
            strength = np.where(u < _RING_SHARE, 2.0 * u / _RING_SHARE - 1.0, 0.0)
            image += ct.rings * strength
    if ct.noise > 0:
        for z0, z1 in _slabs(0, z.size, image[0].size):
            keys = _hash(seed, _NOISE, z[z0:z1, None, None], y[None, :, None], x[None, None, :])
            image[z0:z1] += ct.noise * _normal(keys)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _render(seed: int, rock: _Rock, ct: CTOptions, shape: Sequence[int], lo: Sequence[int],
            hi: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(image, labels) of the block [lo, hi) of a (Z, Y, X) volume, computed from the block and its blur halo."""
    halo = _blur_halo(ct)
    ext_lo = [max(0, a - halo) for a in lo]
    ext_hi = [min(n, b + halo) for b, n in zip(hi, shape, strict=True)]
    labels = _labels_region(seed, rock, ext_lo, ext_hi)
    keep = tuple(slice(a - e, b - e) for a, b, e in zip(lo, hi, ext_lo, strict=True))
    return _ct_region(seed, ct, labels, ext_lo, shape, keep), labels[keep]


def _render_block(seed: int, rock: _Rock, ct: CTOptions, shape: tuple[int, ...], lo: tuple[int, ...],
                  hi: tuple[int, ...], ndim: int) -> tuple[np.ndarray, np.ndarray]:
    image, labels = _render(seed, rock, ct, shape, lo, hi)
    if ndim == 2:
        return image[0], labels[0]
    return image, labels


# --------------------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------------------
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
    size = _check_shape(shape)
    seed = _check_seed(seed)
    rock = _solve_rock(_rock_options(
        grain_radius=grain_radius, porosity=porosity, grain_elongation=grain_elongation,
        clay_coverage=clay_coverage, clay_thickness=clay_thickness, clay_patch_size=clay_patch_size,
        pyrite_fraction=pyrite_fraction, pyrite_radius=pyrite_radius,
    ))
    size3 = (1, *size) if len(size) == 2 else size
    labels = _labels_region(seed, rock, (0, 0, 0), size3)
    return labels.reshape(size)


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
    seed = _check_seed(seed)
    ct = _ct_options(blur=blur, noise=noise, grey=grey, clay_texture=clay_texture, cupping=cupping, rings=rings)
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
    image = _ct_region(seed, ct, labels3, (0, 0, 0), labels3.shape, keep)
    return image.reshape(arr.shape)


def synthetic_rock(
    shape: Sequence[int], *, seed: int = 0, chunks: Any = None, **options: Any
) -> tuple[Any, Any]:
    """A seeded synthetic sandstone and its simulated micro-CT image.

    Equal to ``(simulate_ct(labels, seed=seed, ...), labels)`` with ``labels = synthetic_labels(shape,
    seed=seed, ...)``. With ``chunks`` the two are lazy Dask arrays computed block by block (each block reads
    only its own blur halo), identical to the in-memory arrays for any chunking, so a volume of any size can be
    streamed to disk, e.g. with ``dask.array.to_zarr``; a block needs about 30 bytes per voxel of the block and
    its halo while it is made.

    Parameters
    ----------
    shape : (Z, Y, X) or (Y, X) tuple of int
        Size in voxels; a (Y, X) shape is the first slice of the 3D rock, imaged in 2D.
    seed : int
        Same seed, same rock and image.
    chunks : int, tuple or Dask chunk specification, optional
        Chunking of the Dask arrays to return; None returns NumPy arrays.
    **options
        The options of :func:`synthetic_labels` (geometry) and :func:`simulate_ct` (image).

    Returns
    -------
    image : (Z, Y, X) or (Y, X) array of uint8
        Grey values.
    labels : array of uint8, same shape
        Phase labels, see :data:`PHASES`.

    Raises
    ------
    InputError
        On a bad shape, seed, chunking or option (an unknown option name included).
    """
    size = _check_shape(shape)
    seed = _check_seed(seed)
    rock_opts, ct_opts = _split_options(options)
    rock = _solve_rock(_rock_options(**rock_opts))
    ct = _ct_options(**ct_opts)
    if len(ct.grey) < len(PHASES):
        raise InputError(f"synthetic rock option grey={ct.grey!r} needs {len(PHASES)} values, one per phase")
    size3 = (1, *size) if len(size) == 2 else size
    if chunks is None:
        image, labels = _render(seed, rock, ct, size3, (0, 0, 0), size3)
        return image.reshape(size), labels.reshape(size)
    return _lazy_rock(seed, rock, ct, size, chunks)


def _lazy_rock(seed: int, rock: _Rock, ct: CTOptions, size: tuple[int, ...], chunks: Any) -> tuple[Any, Any]:
    import dask.array as da
    from dask.array.core import normalize_chunks
    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph

    try:
        normal = normalize_chunks(chunks, size, dtype=np.uint8)
    except (ValueError, TypeError) as err:
        raise InputError(f"synthetic rock chunks={chunks!r} do not fit shape {size}: {err}") from None
    if any(c <= 0 for axis in normal for c in axis):
        raise InputError(f"synthetic rock chunks={chunks!r} hold an empty chunk: give positive chunk sizes")
    size3 = (1, *size) if len(size) == 2 else size
    token = tokenize(seed, rock, ct, size, normal)
    pair, names = f"synthetic-rock-{token}", (f"synthetic-image-{token}", f"synthetic-labels-{token}")
    starts = [np.concatenate([[0], np.cumsum(axis)]).tolist() for axis in normal]
    tasks: dict[Any, Any] = {}
    picks: tuple[dict[Any, Any], dict[Any, Any]] = ({}, {})
    for index in product(*(range(len(axis)) for axis in normal)):
        lo = tuple(int(starts[a][i]) for a, i in enumerate(index))
        hi = tuple(int(starts[a][i + 1]) for a, i in enumerate(index))
        if len(size) == 2:
            lo, hi = (0, *lo), (1, *hi)
        task = functools.partial(_render_block, seed, rock, ct, size3, lo, hi, len(size))
        tasks[(pair, *index)] = (task,)
        for which in (0, 1):
            picks[which][(names[which], *index)] = (operator.getitem, (pair, *index), which)
    meta = np.empty((0,) * len(size), np.uint8)
    out = []
    for which in (0, 1):
        graph = HighLevelGraph({pair: tasks, names[which]: picks[which]}, {pair: set(), names[which]: {pair}})
        out.append(da.Array(graph, names[which], normal, dtype=np.uint8, meta=meta))
    return out[0], out[1]

