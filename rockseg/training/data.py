"""Training data in memory: the train and val parts of a tile set, their normalisation, and batches.

Inputs are normalised with *global* intensity statistics, never per tile: those of the image each tile was cut from
(a tile set may hold tiles of several images). :func:`_read_parts` gives each tile its ``(p_low, 1/scale)``;
:func:`_load_batch` normalises and augments one batch of stored tiles (:func:`_as_batch`, which the fresh patches of
:mod:`rockseg.training.regions` go through too); :class:`_Prefetcher` prepares batches in background threads while
the network steps.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from rockseg.errors import InputError
from rockseg.io import stores
from rockseg.training.augment import AugmentConfig, augment_batch


def _scale_of(stats: Mapping[str, Any]) -> tuple[np.float32, np.float32]:
    """``(p_low, 1/scale)`` exactly as :func:`rockseg.io.intensity.normalize` computes them, float32."""
    lo = float(stats["p_low"])
    scale = float(stats["p_high"]) - lo
    if scale <= 0:
        scale = float(stats.get("std") or 0.0) or 1.0
    return np.float32(lo), np.float32(1.0 / scale)


def tile_normalization(
    stats: Mapping[str, Any] | Sequence[Mapping[str, Any]], source: np.ndarray | None, n: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-tile ``(p_low, 1/scale)`` (both (n,) float32) from one set of statistics or one per source."""
    if isinstance(stats, Mapping):
        stats, source = [stats], None
    table = np.array([_scale_of(s) for s in stats], np.float32).reshape(-1, 2)
    idx = np.zeros(n, np.intp) if source is None else np.asarray(source, np.intp)
    return table[idx, 0].copy(), table[idx, 1].copy()


def normalize_tiles(images: np.ndarray, lo: np.ndarray, inv: np.ndarray) -> np.ndarray:
    """(N, *S) grey values -> float32 ``(x - lo[i]) * inv[i]`` per tile, equal to ``normalize`` tile by tile."""
    shape = (-1,) + (1,) * (images.ndim - 1)
    out = np.subtract(images, lo.reshape(shape), dtype=np.float32, casting="unsafe")
    out *= inv.reshape(shape)
    return out


@dataclass
class _Part:
    """The tiles of one part (train or val) in memory, with each tile's normalisation."""

    image: np.ndarray
    labels: np.ndarray
    lo: np.ndarray
    inv: np.ndarray

    def __len__(self) -> int:
        return len(self.image)


def _read_parts(path: Any, attrs: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> tuple[dict[str, _Part], list]:
    """The train and val parts, and the list of per-source statistics (the first goes into the model file)."""
    sources = attrs.get("sources")
    parts = {}
    if isinstance(sources, list) and sources and all(isinstance(s, Mapping) and "intensity" in s for s in sources):
        stats = [s["intensity"] for s in sources]
    else:
        stats = [attrs[stores.ATTR_INTENSITY]]
    for part in ("train", "val"):
        image = arrays[f"{part}/image"]
        source = arrays.get(f"{part}/source")
        if source is not None and len(source) and int(np.max(source)) >= len(stats):
            raise InputError(
                f"tile set {path}: {part}/source refers to source {int(np.max(source))} but only {len(stats)} "
                f"sources have intensity statistics: re-make it with 'rockseg tile'"
            )
        lo, inv = tile_normalization(stats, source if len(stats) > 1 else None, len(image))
        parts[part] = _Part(image, arrays[f"{part}/labels"], lo, inv)
    return parts, stats


def _load_batch(
    part: _Part, idx: np.ndarray, *, augment: AugmentConfig, rng: np.random.Generator, pin: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tiles ``idx`` of ``part``: normalised, augmented with ``rng``, as tensors (N, 1, *S) float32, (N, *S) int64.

    ``pin`` puts them in pinned memory, for an asynchronous copy to a GPU.
    """
    return _as_batch(part.image[idx], part.labels[idx], part.lo[idx], part.inv[idx], augment=augment, rng=rng,
                     pin=pin)


def _as_batch(
    images: np.ndarray, labels: np.ndarray, lo: np.ndarray, inv: np.ndarray, *, augment: AugmentConfig,
    rng: np.random.Generator, pin: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, *S) grey values and labels -> normalised (``lo``, ``inv`` per tile), augmented tensors of a batch.

    Both the stored tiles (:func:`_load_batch`) and fresh patches (:mod:`rockseg.training.regions`) go through it.
    """
    img = normalize_tiles(images, lo, inv)
    lab = labels
    if augment.active:
        img, lab = augment_batch(img, lab, rng, config=augment)
    x = torch.from_numpy(np.ascontiguousarray(img)).unsqueeze(1)
    y = torch.from_numpy(lab.astype(np.int64))
    if pin:
        x, y = x.pin_memory(), y.pin_memory()
    return x, y


class _Prefetcher:
    """Prepare items in background threads, in order, at most ``depth`` ahead of the consumer.

    NumPy releases the GIL for the copying, normalising and resampling of a batch, so this overlaps with the
    network's step. Each item is computed from its key alone, so the result does not depend on thread timing.
    """

    def __init__(self, fn: Callable[[Any], Any], keys: Iterable[Any], *, threads: int = 1, depth: int = 2) -> None:
        self._fn, self._keys = fn, iter(keys)
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="rockseg-batches")
        self._pending: deque[Future[Any]] = deque()
        for _ in range(max(1, depth)):
            self._submit()

    def _submit(self) -> None:
        for key in self._keys:
            self._pending.append(self._pool.submit(self._fn, key))
            return

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        if not self._pending:
            raise StopIteration
        item = self._pending.popleft().result()
        self._submit()
        return item

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> _Prefetcher:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
