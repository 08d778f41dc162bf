"""The network's side of a prediction: :class:`TileRunner` runs batches of tiles through the model, on the one
thread that :class:`ModelThread` keeps for it.

The runner works on its own copy of the network (batch norm folded into the convolutions, channels-last memory
layout, bf16 autocast where the precision says so) and does not compute the halo it would cut off
(:func:`~rockseg.models.centre_logits`). The block threads read, normalise and write; only the model thread
calls the network (see :class:`ModelThread` for why).
"""

from __future__ import annotations

import copy
import itertools
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

import numpy as np
import torch

from rockseg.inference.grid import Triple
from rockseg.models import centre_logits, fold_batch_norm


class TileRunner:
    """Runs batches of tiles through the network and returns labels (and probabilities when asked).

    One runner holds the model once; calls are serialised with a lock so that several blocks can be read and
    written by other threads while one batch runs. The runner works on its own copy of the network with batch
    norm folded into the convolutions, in channels-last memory layout (faster for convolutions on CPU and GPU)
    and, where ``precision`` says so, under bf16 autocast.

    Parameters
    ----------
    spatial_dims : 2 or 3; a 2D network gets tiles that are one voxel thick along ``axis`` (0, 1 or 2).
    precision : ``"float32"``, ``"bf16"`` or ``"auto"``: bf16 on CUDA, float32 on a CPU. On a CPU bf16 is only
        used when asked for: its rounding depends on the batch a tile runs in (measured on an AVX512-BF16 CPU, 2 of
        92,160 labels changed between blocks of 16 and 24), which would break the promise that labels do not
        depend on block size, part split or worker count.
    tta : average probabilities over all flips of each tile.
    margin : (z, y, x) voxels of each face of a tile whose results are not wanted (the halo): the results lack
        them, and UNet-family networks skip the work that only they need (:func:`~rockseg.models.centre_logits`:
        15-20 % less time for a 3D UNet with 64³ tiles and halo 8). A 2D network ignores the entry of ``axis``.
    """

    def __init__(
        self, model: torch.nn.Module, *, spatial_dims: int, device: torch.device, precision: str,
        probabilities: bool, tta: bool = False, axis: int = 0, margin: Sequence[int] = (0, 0, 0),
    ) -> None:
        self.device = device
        self.spatial_dims = spatial_dims
        self.probabilities = probabilities
        self.axis = axis
        self.margin: Triple = tuple(margin)  # type: ignore[assignment]
        if spatial_dims == 2:
            self.margin = tuple(0 if ax == axis else m for ax, m in enumerate(margin))  # type: ignore[assignment]
        fmt = torch.channels_last_3d if spatial_dims == 3 else torch.channels_last
        # a copy, so that folding batch norm into the convolutions (one pass less over every activation: 10-25 %
        # faster on a CPU) leaves the caller's model as it was
        self.model = copy.deepcopy(model).to(device).eval()
        fold_batch_norm(self.model)
        self.model = self.model.to(memory_format=fmt)
        self.memory_format = fmt
        self.flips = [()]
        if tta:
            self.flips = [c for r in range(spatial_dims + 1) for c in itertools.combinations(range(2, 2 + spatial_dims), r)]
        self.lock = threading.Lock()
        self._pinned: torch.Tensor | None = None
        self.requested = precision
        self.precision = precision
        if precision == "auto":
            self.precision = "bf16" if device.type == "cuda" else "float32"

    def _logits(self, x: torch.Tensor, bf16: bool, margin: Sequence[int]) -> torch.Tensor:
        x = x.contiguous(memory_format=self.memory_format)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
            return centre_logits(self.model, x, margin).float()

    def _probs(self, x: torch.Tensor, bf16: bool, margin: Sequence[int]) -> torch.Tensor:
        """Class probabilities (N, C, *spatial), averaged over the flips."""
        total = None
        for dims in self.flips:
            xi = x.flip(dims) if dims else x
            p = torch.softmax(self._logits(xi, bf16, margin), dim=1)
            p = p.flip(dims) if dims else p
            total = p if total is None else total + p
        assert total is not None
        return total / len(self.flips) if len(self.flips) > 1 else total

    def __call__(self, batch: np.ndarray, margin: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """batch: (N, 1, Tz, Ty, Tx) float32 -> labels (N, Tz, Ty, Tx) uint8, probabilities (N, C, ...) or None,
        each without ``margin`` (default :attr:`margin`, at most it) voxels on each face."""
        margin = self.margin if margin is None else margin
        net_margin = [m for ax, m in enumerate(margin) if not (self.spatial_dims == 2 and ax == self.axis)]
        bf16 = self.precision == "bf16"
        with self.lock, torch.inference_mode():
            x = torch.from_numpy(batch)
            if self.device.type == "cuda":  # pinned host memory (made once, reused): an asynchronous copy
                if self._pinned is None or self._pinned.shape[1:] != x.shape[1:] or len(self._pinned) < len(x):
                    self._pinned = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
                x = self._pinned[: len(x)].copy_(x)
            x = x.to(self.device, non_blocking=True)
            if self.spatial_dims == 2:
                x = x.squeeze(2 + self.axis)
            if len(self.flips) == 1 and not self.probabilities:
                probs = None
                labels = label_of_largest(self._logits(x, bf16, net_margin))  # no softmax: the same arg-max
            else:
                probs = self._probs(x, bf16, net_margin)
                labels = label_of_largest(probs)
            if self.spatial_dims == 2:
                labels = np.expand_dims(labels, 1 + self.axis)
                probs = None if probs is None else probs.unsqueeze(2 + self.axis)
            out = probs.cpu().numpy() if probs is not None and self.probabilities else None
        return labels, out


def label_of_largest(scores: torch.Tensor) -> np.ndarray:
    """The arg-max over classes of (N, C, *spatial) scores as an (N, *spatial) uint8 array, the first class on a
    tie (as ``argmax``).

    On a CPU, ``scores.argmax(dim=1)`` runs torch's reduction kernel along the class axis, slow for a handful of
    classes (about 95 ns a voxel on one core for 3 classes: 37 % of a whole prediction with a near-free network);
    a few whole-plane NumPy comparisons give the same labels in about 6.
    """
    classes = scores.shape[1]
    if scores.device.type != "cpu" or classes > 16:
        return scores.argmax(dim=1).to(torch.uint8).cpu().numpy()
    a = scores.contiguous().numpy()  # one plane per class (a copy only for a channels-last output)
    if classes == 1:
        return np.zeros((a.shape[0], *a.shape[2:]), np.uint8)
    larger = np.greater(a[:, 1], a[:, 0])
    labels = larger.view(np.uint8)  # True is 1: class 1 where it is larger, else 0
    if classes > 2:
        larger = np.empty_like(larger)
        best = np.maximum(a[:, 0], a[:, 1])
        for c in range(2, classes):
            np.greater(a[:, c], best, out=larger)
            np.putmask(labels, larger, c)
            if c < classes - 1:
                np.maximum(best, a[:, c], out=best)
    return labels


class ModelThread:
    """Runs all torch work of an engine on one thread, for the block threads that call it.

    torch's CPU kernels use OpenMP, which gives every thread that starts a parallel region a team of worker
    threads of its own. Once a process holds more such threads than cores, libgomp stops spin-waiting between
    regions, and each of the thousands of regions in a forward pass pays a sleep and a wake-up: measured on a
    2-core CPU, a 3D UNet ran 15-20 % slower called from Dask's worker threads (each with its own team) than
    from a single thread. So the block threads read, normalise and write, and hand the model to one thread:
    the one that created this object, while it waits in :meth:`serve` (a local run: the thread that called
    predict, which may have run torch before), or after :meth:`start` one of its own (a Dask distributed
    worker, whose task threads would each start a team).
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...], Future[Any]] | None] = (
            queue.SimpleQueue()
        )
        self._lock = threading.Lock()
        self._closed = False
        self._owner: int | None = threading.get_ident()

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` on the serving thread (at once when called there); raises what it raises."""
        if threading.get_ident() == self._owner:
            return fn(*args)
        future: Future[Any] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("prediction stopped: the thread that runs the model has ended")
            self._queue.put((fn, args, future))
        return future.result()

    def start(self) -> None:
        """Serve on a daemon thread of its own from now on, for the life of the process."""
        self._owner = None
        threading.Thread(target=self._loop, name="rockseg-model", daemon=True).start()

    def _loop(self) -> None:
        self._owner = threading.get_ident()
        try:
            while (item := self._queue.get()) is not None:
                fn, args, future = item
                try:
                    future.set_result(fn(*args))
                except Exception as exc:  # the block that asked fails with it, and so the run
                    future.set_exception(exc)
                except BaseException as exc:  # Ctrl-C: stop serving
                    future.set_exception(exc)
                    raise
        finally:
            with self._lock:  # whoever waits or comes later fails at once, so the block threads end
                self._closed = True
                while True:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is not None:
                        item[2].set_exception(RuntimeError("prediction stopped"))

    def serve(self, work: Callable[[], Any]) -> Any:
        """Run ``work()`` on a new thread while this one (the creator) serves :meth:`call`; its result."""
        outcome: dict[str, Any] = {}

        def target() -> None:
            try:
                outcome["value"] = work()
            except BaseException as exc:  # noqa: BLE001 - re-raised on the serving thread
                outcome["error"] = exc
            finally:
                self._queue.put(None)

        thread = threading.Thread(target=target, name="rockseg-blocks", daemon=True)
        thread.start()
        self._loop()
        thread.join()
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]
