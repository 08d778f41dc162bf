"""run_bounded: every task runs once, at most two per worker thread are in flight, errors come through."""

from __future__ import annotations

import threading
import time

import pytest

from rockseg.errors import InputError
from rockseg.cluster import run_bounded


def test_threads_keep_a_bounded_number_in_flight():
    drawn = []
    done = []
    lock = threading.Lock()
    most = [0]

    def items():
        for i in range(40):
            drawn.append(i)
            with lock:
                most[0] = max(most[0], len(drawn) - len(done))
            yield i, (i * i,)

    def task(shared, value):
        time.sleep(0.002)
        with lock:
            done.append(value)
        return shared + value

    results = dict(run_bounded(task, 1, items(), workers=3))
    assert results == {i: 1 + i * i for i in range(40)}
    assert most[0] <= 2 * 3  # the items are drawn as slots free up, never all at once


def test_an_error_in_a_task_comes_through_and_stops_drawing():
    drawn = []

    def items():
        for i in range(1000):
            drawn.append(i)
            yield i, (i,)

    def task(shared, value):
        if value == 3:
            raise InputError("label 300 in block 3")
        return value

    with pytest.raises(InputError, match="label 300"):
        for _ in run_bounded(task, None, items(), workers=2):
            pass
    assert len(drawn) < 100
