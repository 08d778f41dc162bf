"""Overlap-tile inference over volumes larger than memory, block by block, and the stitching of its results.

``predict`` segments a volume with a model into a block-wise prediction store; ``stitch`` checks that every block
of one or more such stores is done and writes the final labels. The modules, in the order a prediction uses them:

- :mod:`.config`: :class:`PredictConfig`, the run's settings, and their defaults;
- :mod:`.grid`: the global tile grid with its halos, the block grid and the job-array parts (``--part I/N``);
- :mod:`.store`: the prediction store (Zarr shards, the units of work), its completion logs and the lock of a run;
- :mod:`.identity`, :mod:`.claims`, :mod:`.durable`: what a prediction was made from, one run per unit, and units
  flushed to disk before their checksummed records; :mod:`.verifying`: ``rockseg verify``;
- :mod:`.region`: one region from the tile grid (:func:`predict_region`), its buffers and the tile batching;
- :mod:`.runner`: the network on one thread (:class:`TileRunner`, :class:`~.runner.ModelThread`);
- :mod:`.engine`: the block engine of a process (:class:`BlockJob`, :func:`run_block`);
- :mod:`.scheduling`: where blocks run: local threads, a Dask distributed cluster, one worker per device;
- :mod:`.predicting`: :func:`predict`, in check, plan and run steps;
- :mod:`.stitching`: :func:`stitch` and :func:`write_preview`.

(The two orchestrators live in ``predicting`` and ``stitching``, not in modules named ``predict`` and ``stitch``:
a submodule of that name would replace the function of the same name on this package once it is imported.)

Importing this package does not import torch, so ``rockseg stitch`` and ``rockseg score`` run where torch is
missing: ``config``, ``grid``, ``store``, ``region`` and ``stitching`` do without it and are re-exported here;
the names of ``runner``, ``engine``, ``scheduling`` and ``predicting`` are loaded on first use (a module-level
``__getattr__``). This package may import rockseg.io (stores, intensity, and stitching's exports), rockseg.models (runner, engine
and predicting only), rockseg.cluster, rockseg.devices, rockseg.errors, rockseg.progress and rockseg.vocabulary.
"""

from __future__ import annotations

from rockseg.lazy import lazy_exports

from rockseg.inference.config import DEFAULT_BLOCK, DEFAULT_MODEL, PredictConfig
from rockseg.inference.grid import TileGrid, block_grid, block_region, parse_part, part_blocks, reflect_index
from rockseg.inference.region import BlockBuffers, TilePool, predict_region
from rockseg.inference.stitching import EXPORTS, stitch, write_preview
from rockseg.inference.store import MARKER_DIR, Prediction, check_complete

# names that need torch, and the module each is loaded from on first use
_LAZY = {
    "predict": "rockseg.inference.predicting",
    "TileRunner": "rockseg.inference.runner",
    "BlockJob": "rockseg.inference.engine",
    "run_block": "rockseg.inference.engine",
}

__all__ = [
    "DEFAULT_BLOCK", "DEFAULT_MODEL", "EXPORTS", "MARKER_DIR", "BlockBuffers", "BlockJob", "PredictConfig",
    "Prediction", "TileGrid", "TilePool", "TileRunner", "block_grid", "block_region", "check_complete",
    "parse_part", "part_blocks", "predict", "predict_region", "reflect_index", "run_block",
    "stitch", "write_preview",
]

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
