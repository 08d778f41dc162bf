"""Network settings planned from the tile set when the user gives none (as nnU-Net plans from its dataset).

Today one setting is planned: the **depth** (down-sampling steps) from the tile edge. Like nnU-Net, the network
pools until the smallest feature map would drop below :data:`MIN_BOTTLENECK` voxels along an axis, so that
its receptive field grows with the tiles: 48^3 tiles get depth 3 (a 6^3 bottleneck), 64^3 and 96^3 get 4, 16^3
gets 2, 2D tiles of 256^2 get :data:`MAX_DEPTH`. The depth must also divide the tile edge (``tile_multiple``).

The width (``base_channels``, 16) is not planned from the time budget: no measurement here has shown a width
that beats 16 within a CPU budget of 15 to 120 minutes. The time budget plans the schedule instead (``poly``
decays over ``--max-minutes``, :mod:`rockseg.training.optimizers`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rockseg import models
from rockseg.errors import InputError

MIN_BOTTLENECK = 4
"""Voxels along an axis of the smallest feature map a planned network keeps (nnU-Net's rule)."""

MAX_DEPTH = 5
"""The deepest network planned (deeper ones cost memory and time on a CPU for little more context)."""

FALLBACK_DEPTH = 3
"""The depth when no depth fits the rule (tiles too small): the error then names a tile size that works."""

MIN_INIT_BOTTLENECK = 3
"""Voxels along an axis of the smallest feature map that ``train --init`` needs of the tile set's patches. At 2 or
1 every voxel of the deepest maps sits on a zero-padded border, so fine-tuning re-learns their normalisation
statistics from borders only and the model fails on the larger tiles predict uses: the default model (depth 4)
fine-tuned on 32^3 patches scored validation mean IoU 0.895 on its 32^3 patches but pore IoU 0.59 when predicting
(0.87 fine-tuned on 48^3 patches; ``benchmarks/finetune.py``)."""


def plan_depth(arch: str, arch_args: Mapping[str, Any], size: int) -> int:
    """The largest depth (<= :data:`MAX_DEPTH`) whose divisor divides ``size`` and keeps ``MIN_BOTTLENECK``.

    ``arch_args`` are the network's other arguments (``depth`` is set by this function); the divisor of each
    candidate comes from :func:`rockseg.models.tile_multiple`, so architectures with their own divisor (an
    encoder's fixed stride) are planned correctly too.
    """
    for depth in range(MAX_DEPTH, 0, -1):
        try:
            divisor = models.tile_multiple(arch, {**arch_args, "depth": depth})
        except InputError:  # a depth this architecture cannot build (DeepLab needs 2 or more, say)
            continue
        if size % divisor == 0 and size // 2 ** depth >= MIN_BOTTLENECK:
            return depth
    return FALLBACK_DEPTH
