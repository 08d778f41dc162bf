"""Seeded synthetic multi-phase rocks with a simulated micro-CT image, for the demo, tests and benchmarks.

The rock is a stationary random field defined on the whole integer lattice, so any block of it can be made on its
own and a volume of any size can be written block by block with bounded memory. Every random number comes from a
counter-based hash of ``(seed, stream, global coordinates...)``, never from a sequential generator, so a voxel's
label and grey value depend only on its position: the Dask version built with ``chunks=`` is identical, voxel for
voxel, to the in-memory one for any chunking.

Modules:

``hashing``
    the counter-based random numbers and the smooth random field built on them.
``parameters``
    the phases, their default grey values, and the checked options of the rock and of the CT image.
``rock``
    the geometry: quartz and pyrite grains, clay coats, pore; :func:`synthetic_labels`.
``ct``
    the simulated micro-CT image of a label volume: :func:`simulate_ct`.
``scan``
    rock and image together, in memory or as lazy Dask arrays made block by block: :func:`synthetic_rock`.
``realistic``
    a hard, realistic simulated scan of any given pore space (a real segmentation or a synthetic rock): a thin
    micro-porous rim phase, correlated noise at contrast-to-noise 4-5, blur, cupping, rings, 8 or 16 bits:
    :func:`realistic_scan` (in memory, seeded NumPy generator; for benchmarks and the shipped model).

The defaults are tuned so that segmentation is learnable but not trivial: on a 96^3 volume, 4-class multi-Otsu
thresholds of the raw image give a mean IoU of about 0.83, a 3x3x3 median filter before the same thresholds about
0.91, and a small 3D U-Net trained for two CPU minutes more than 0.9.

This package imports only ``rockseg.errors`` from rockseg (and Dask only for ``chunks=``).

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

from rockseg.synthetic.ct import simulate_ct
from rockseg.synthetic.parameters import PHASE_GREY, PHASES, CTOptions, RockOptions
from rockseg.synthetic.rock import synthetic_labels
from rockseg.synthetic.realistic import SCAN_PHASES, ScanOptions, realistic_scan
from rockseg.synthetic.scan import synthetic_rock

__all__ = [
    "CTOptions", "PHASES", "PHASE_GREY", "RockOptions", "SCAN_PHASES", "ScanOptions", "realistic_scan", "simulate_ct",
    "synthetic_labels", "synthetic_rock",
]
