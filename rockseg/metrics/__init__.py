"""Scoring label volumes, exactly and block by block, and showing the score: CSV, pictures and an HTML report.

:func:`score_volumes` (the library behind ``rockseg score``, through :func:`score_stores`) reads the volumes block by
block, each chunk once, on this process's threads or a Dask cluster, with a bounded number of tasks in flight, so
memory stays bounded whatever the volume size, and every number it reports (confusion matrix, IoU, Dice,
precision, recall, fractions, Euler numbers, per slice too) is exact. Its modules, in the order a score runs:

``euler``
    Euler-number lookup tables (:func:`euler_lut`, :func:`euler_number`) and the counting of a block's windows.
``confusion``
    the label histogram (confusion counts) of a block.
``tally``
    the additive sums a block contributes, and how they add up.
``blockwise``
    reading one block (exactly its voxels, the mask, label checks), tallying it, its faces; the block grid.
``seams``
    the Euler windows straddling blocks, counted from the faces the blocks return.
``units``
    the work of one task: a shard's blocks (or one block), with the seams between them.
``score``
    :func:`score_volumes`: check every option, plan the units, run them (:mod:`rockseg.cluster`: a bounded
    number in flight, on threads or a Dask cluster) and sum their tallies and seams.
``document``
    the score document from the summed tally, and :func:`score_csv`.
``figures``, ``report``
    the pictures and the report folder (:func:`write_report`, :func:`check_report_dir`,
    :func:`parse_report_slice`).
``stores``
    :func:`score_stores`: what ``rockseg score`` runs on stores named by path (open, check, score, report).

This package imports only ``rockseg.errors``, ``rockseg.vocabulary`` and ``rockseg.io.stores`` from rockseg, and
never torch: ``rockseg score`` runs where torch is not installed. Matplotlib is imported only to draw a picture.
"""

from __future__ import annotations

from rockseg.metrics.document import score_csv
from rockseg.metrics.euler import euler_lut, euler_number
from rockseg.metrics.report import MAX_PIXELS, check_report_dir, parse_report_slice, write_report
from rockseg.metrics.score import score_volumes
from rockseg.metrics.stores import score_stores

__all__ = [
    "MAX_PIXELS",
    "check_report_dir",
    "euler_lut",
    "euler_number",
    "parse_report_slice",
    "score_csv",
    "score_stores",
    "score_volumes",
    "write_report",
]
