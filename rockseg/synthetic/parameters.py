"""What a synthetic rock can be asked for: its phases, their default grey values, and the checked options.

:class:`RockOptions` (the geometry) and :class:`CTOptions` (the image) are frozen dataclasses; the ``*_options``
functions check every value and name the bad one, and :func:`split_options` sorts the keyword options of
:func:`rockseg.synthetic.synthetic_rock` between the two, with a "did you mean" for a misspelt name.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from rockseg.errors import InputError

__all__ = [
    "CTOptions", "PHASES", "PHASE_GREY", "RockOptions", "check_seed", "check_shape", "ct_options", "rock_options",
    "split_options",
]

PHASES: dict[int, str] = {0: "pore", 1: "clay", 2: "quartz", 3: "pyrite"}
"""Label value -> phase name of the synthetic rock."""

PHASE_GREY: tuple[float, ...] = (20.0, 80.0, 140.0, 300.0)
"""Default mean grey value of each phase, indexed by label, on the uint8 scale before clipping: pyrite saturates,
as it often does in real scans."""


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


def check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or not 0 <= int(seed) < 1 << 63:
        raise InputError(f"synthetic rock seed {seed!r} must be an integer from 0 to 2**63 - 1")
    return int(seed)


def check_shape(shape: Any) -> tuple[int, ...]:
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


def rock_options(**options: Any) -> RockOptions:
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


def ct_options(**options: Any) -> CTOptions:
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


def split_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
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
