"""Colour-coded label images (RGB masks from annotation tools, QEMSCAN exports, grey-coded PNG masks) read as integer
labels: the colour map option (:func:`parse_colormap`, ``--colormap "0,0,255=0:pore;0,255,0=1:clay"``) and the
source that applies it (:class:`ColourSource`). A colour the map does not list stops the run with its value and
position.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rockseg.errors import InputError
from rockseg.io.sources import Source
from rockseg.io.stores import ATTR_PHASES


@dataclass(frozen=True)
class ColourMap:
    """The colours of a colour-coded label image and the integer label of each (see :func:`parse_colormap`).

    Attributes
    ----------
    colours : one tuple per entry: (V,) grey value, (R, G, B) or (R, G, B, A).
    labels : the label of each colour (0 to 65535; several colours may share a label).
    names : phase names, ``{label: name}``, for the labels that were given one.
    text : the option as given, repeated in error messages.
    """

    colours: tuple[tuple[int, ...], ...]
    labels: tuple[int, ...]
    names: dict[int, str] = field(default_factory=dict, compare=False, hash=False)
    text: str = ""

    @property
    def width(self) -> int:
        """Values per colour: 1 (grey), 3 (RGB) or 4 (RGBA)."""
        return len(self.colours[0])


def _format_colour(colour: Sequence[int]) -> str:
    return ",".join(str(int(c)) for c in colour)


def parse_colormap(text: str | ColourMap | Mapping[Any, Any]) -> ColourMap:
    """Parse a colour map ``"COLOUR=LABEL[:NAME];..."`` for colour-coded label images.

    A COLOUR is ``R,G,B`` (an alpha channel, if any, is ignored), ``R,G,B,A``, ``#rrggbb`` / ``#rrggbbaa``, or one
    grey value ``V`` for grey-coded masks; all entries use the same form. LABEL is an integer from 0 to 65535 (several
    colours may share one), NAME an optional phase name. A mapping ``{(0, 0, 255): 0, ...}`` is accepted too.

    >>> cm = parse_colormap("0,0,255=0:pore;0,255,0=1:clay;#ff0000=2")
    >>> cm.colours, cm.labels, cm.names
    (((0, 0, 255), (0, 255, 0), (255, 0, 0)), (0, 1, 2), {0: 'pore', 1: 'clay'})
    """
    if isinstance(text, ColourMap):
        return text
    if isinstance(text, Mapping):
        items = [(np.atleast_1d(np.asarray(k)).tolist(), v) for k, v in text.items()]
        text = ";".join(f"{_format_colour(k)}={v}" for k, v in items)
    example = "e.g. --colormap '0,0,255=0:pore;0,255,0=1:clay' (or grey values: '33=0;201=1')"
    entries = [e.strip() for e in re.split(r"[;\n]", str(text)) if e.strip()]
    if not entries:
        raise InputError(f"--colormap {text!r} is empty: give COLOUR=LABEL[:NAME] entries separated by ';', {example}")
    colours: list[tuple[int, ...]] = []
    labels: list[int] = []
    names: dict[int, str] = {}
    for entry in entries:
        colour_text, sep, rest = entry.partition("=")
        label_text, _, name = rest.partition(":")
        try:
            if not sep:
                raise ValueError
            colour_text = colour_text.strip()
            if colour_text.startswith("#") and len(colour_text) in (7, 9):
                colour = tuple(int(colour_text[i : i + 2], 16) for i in range(1, len(colour_text), 2))
            else:
                colour = tuple(int(c) for c in colour_text.split(","))
            label = int(label_text)
        except ValueError:
            raise InputError(f"--colormap {text!r}: entry {entry!r} is not COLOUR=LABEL[:NAME], {example}") from None
        if len(colour) not in (1, 3, 4) or min(colour) < 0:
            raise InputError(
                f"--colormap {text!r}: colour {colour_text!r} must be one grey value, R,G,B or R,G,B,A of "
                f"non-negative integers, {example}"
            )
        if colours and len(colour) != len(colours[0]):
            raise InputError(
                f"--colormap {text!r}: colour {colour_text!r} has {len(colour)} values but "
                f"{_format_colour(colours[0])} has {len(colours[0])}: give every colour in the same form"
            )
        if colour in colours:
            raise InputError(f"--colormap {text!r}: colour {_format_colour(colour)} is given twice: give it once")
        if not 0 <= label <= 65535:
            raise InputError(f"--colormap {text!r}: label {label} is out of range: labels go from 0 to 65535")
        name = name.strip()
        if name:
            if names.get(label, name) != name:
                raise InputError(
                    f"--colormap {text!r}: label {label} is named both {names[label]!r} and {name!r}: give one name"
                )
            names[label] = name
        colours.append(colour)
        labels.append(label)
    return ColourMap(tuple(colours), tuple(labels), names, str(text))


class ColourSource(Source):
    """Integer labels of a colour-coded label image (or a grey-coded one), mapped through a :class:`ColourMap`.

    The labels are uint8 (uint16 when a label is over 255). A voxel whose colour is not in the map stops the read
    with an :class:`~rockseg.errors.InputError` naming the colour, where it is, and how to add it.
    """

    def __init__(self, inner: Source, colormap: ColourMap) -> None:
        self._inner, self.colormap = inner, colormap
        width, channels = colormap.width, inner.channels
        if inner.dtype.kind not in "biu":
            raise InputError(
                f"{inner.path} holds {inner.dtype} values: a colour map maps integer colours or grey values; leave "
                f"out --colormap for grey-value images"
            )
        if width == 1 and channels > 2:
            raise InputError(
                f"{inner.path} is a colour image ({channels} channels) but --colormap {colormap.text!r} gives grey "
                f"values: give colours as R,G,B, e.g. --colormap '0,0,255=0;0,255,0=1'"
            )
        if width > 1 and channels < 3:
            raise InputError(
                f"{inner.path} is a grey image but --colormap {colormap.text!r} gives colours: give its grey "
                f"values, e.g. --colormap '33=0;201=1'"
            )
        if width == 4 and channels == 3:
            raise InputError(
                f"{inner.path} has no alpha channel but --colormap {colormap.text!r} gives R,G,B,A colours: give "
                f"R,G,B"
            )
        bits = 8 * inner.dtype.itemsize
        if width * bits > 64:
            raise InputError(f"{inner.path} has {bits}-bit colour channels: rockseg maps 8- and 16-bit colours only")
        colours = np.array(colormap.colours, dtype=np.int64)
        if width > 1 and colours.max() > np.iinfo(inner.dtype).max:
            raise InputError(
                f"--colormap {colormap.text!r} has a channel value over {np.iinfo(inner.dtype).max}, which "
                f"{inner.path} ({inner.dtype} channels) cannot hold: check the colours"
            )
        self._bits = bits if width > 1 else 0
        keys = self._pack(colours.astype(np.uint64) if width > 1 else colours[:, 0])
        order = np.argsort(keys)
        self._keys = keys[order]
        top = max(colormap.labels)
        self._labels = np.asarray(colormap.labels, dtype=np.uint8 if top <= 255 else np.uint16)[order]
        attrs = dict(inner.attrs)
        attrs["colormap"] = colormap.text
        if colormap.names:
            attrs[ATTR_PHASES] = {str(k): v for k, v in sorted(colormap.names.items())}
        self.kind, self.band_reads = inner.kind, inner.band_reads
        super().__init__(inner.path, inner.shape, self._labels.dtype, voxel_size=inner.voxel_size,
                         voxel_unit=inner.voxel_unit, attrs=attrs, slab_hint=inner.slab_hint)

    def _pack(self, values: np.ndarray) -> np.ndarray:
        """One integer per colour: channels side by side in a uint64 (or the grey value itself as int64)."""
        if not self._bits:
            return values.astype(np.int64)
        packed = np.zeros(values.shape[:-1], np.uint64)
        for c in range(self.colormap.width):
            packed <<= np.uint64(self._bits)
            packed |= values[..., c].astype(np.uint64)
        return packed

    def _read_region(self, region: tuple[slice, ...]) -> np.ndarray:
        block = self._inner.read_region(region)
        if self._inner.channels > 1:
            block = block[..., : self.colormap.width] if self._bits else block[..., 0]
        packed = self._pack(block)
        index = np.searchsorted(self._keys, packed)
        index[index == len(self._keys)] = 0
        found = self._keys[index] == packed
        if not found.all():
            self._unmapped(block, ~found, region)
        return self._labels[index]

    def _unmapped(self, block: np.ndarray, missing: np.ndarray, region: tuple[slice, ...]) -> None:
        where = np.argwhere(missing)[0]
        offsets = [s.start for s in region]
        steps = [s.step or 1 for s in region]
        position = [int(o + i * st) for o, i, st in zip(offsets, where, steps)]
        colour = block[tuple(where)]
        text = _format_colour(np.atleast_1d(colour))
        bad = block[missing]
        distinct = np.unique(bad.reshape(len(bad), -1), axis=0)
        others = [c for c in (_format_colour(d) for d in distinct[:6]) if c != text][:5]
        axes = "zyx"[-len(position) :]
        at = ", ".join(f"{a}={p}" for a, p in zip(axes, position))
        source = self._inner.plane_name(position[0]) if self.ndim == 3 else self.path
        raise InputError(
            f"{source}: colour {text} at ({at}) is not in --colormap"
            + (f" (nor {'; '.join(others)})" if others else "")
            + f": add it with its label, e.g. --colormap '{self.colormap.text};{text}=LABEL'"
        )

    def plane_name(self, z: int) -> str:
        return self._inner.plane_name(z)

    def close(self) -> None:
        self._inner.close()
