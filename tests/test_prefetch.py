import random
import threading
import time

import pytest

from nbutils.tokenize import prefetch


def test_results_come_in_item_order_whatever_the_worker_timing():
    def work(item, emit):
        rng = random.Random(item)
        for part in range(3):
            time.sleep(rng.random() * 0.005)
            emit((item, part))

    got = list(prefetch.ordered(range(20), work, workers=4, depth=1))
    assert got == [(i, p) for i in range(20) for p in range(3)]


def test_an_error_surfaces_at_its_item_after_the_earlier_results():
    def work(item, emit):
        if item == 3:
            raise ValueError("boom at 3")
        emit(item)

    got = []
    with pytest.raises(ValueError, match="boom at 3"):
        for value in prefetch.ordered(range(6), work, workers=3):
            got.append(value)
    assert got == [0, 1, 2]


def test_memory_is_bounded_by_workers_and_depth():
    produced, consumed, peak = [0], [0], [0]
    lock = threading.Lock()

    def work(item, emit):
        for part in range(10):
            with lock:
                produced[0] += 1
                peak[0] = max(peak[0], produced[0] - consumed[0])
            emit(part)

    for _ in prefetch.ordered(range(8), work, workers=2, depth=2):
        time.sleep(0.001)  # a slow consumer: producers must wait, not pile up
        with lock:
            consumed[0] += 1
    # each in-flight item holds its queue (depth) plus the value it is trying to put
    assert peak[0] <= 2 * (2 + 1) + 1


def test_stopping_early_ends_the_worker_threads():
    def work(item, emit):
        for part in range(1000):
            emit(part)

    before = threading.active_count()
    stream = prefetch.ordered(range(100), work, workers=3, depth=1)
    assert next(stream) == 0
    stream.close()
    assert threading.active_count() == before
