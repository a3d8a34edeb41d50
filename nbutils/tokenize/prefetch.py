"""Ordered prefetch: prepare the next items in threads while the caller works on the current one.

``ordered(items, work)`` runs ``work(item, emit)`` for up to ``workers`` items at once; each
item streams its results through ``emit`` into its own small queue, and the caller receives
every result in item order, as if it had run the items one after the other. Order matters:
the encoder batches whatever arrives, and the same input must give the same shards on every
run (an interrupted run is compared byte for byte with an uninterrupted one).

Memory stays bounded: at most ``workers`` items are in flight, each holding at most
``depth`` results. Decoding (libsndfile), resampling (soxr) and zlib release the GIL, so the
threads really run while PyTorch encodes.
"""

from __future__ import annotations

import collections
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, Iterator

_END = object()  # marks the end of one item's results
_POLL_SECONDS = 0.1  # how often a blocked worker checks whether the caller stopped


class _Stopped(BaseException):
    """Raised inside a worker when the caller stopped iterating.

    A ``BaseException``, like ``GeneratorExit``: ``work`` may catch ``Exception`` from what it
    does (one bad file), and must still stop.
    """


class _Raised:
    """An exception from ``work``, delivered to the caller at its item's position."""

    def __init__(self, error: BaseException):
        self.error = error


def _run(work: Callable, item: Any, results: queue.Queue, stop: threading.Event) -> None:
    """Worker thread: ``work(item, emit)`` into ``results``, then the end mark (or the exception)."""
    def emit(value: Any) -> None:
        while not stop.is_set():
            try:
                results.put(value, timeout=_POLL_SECONDS)
                return
            except queue.Full:
                continue
        raise _Stopped

    try:
        work(item, emit)
        emit(_END)
    except _Stopped:
        return
    except BaseException as error:  # noqa: BLE001 - re-raised in the caller's thread
        try:
            emit(_Raised(error))
        except _Stopped:
            return


def ordered(
    items: Iterable[Any],
    work: Callable[[Any, Callable[[Any], None]], None],
    *,
    workers: int = 2,
    depth: int = 2,
) -> Iterator[Any]:
    """Yield what ``work(item, emit)`` emits for each item, in item order, prefetching ahead.

    Args:
        items: The inputs, consumed lazily.
        work: Called in a worker thread as ``work(item, emit)``; ``emit(value)`` hands one
            result to the caller (blocking while that item's queue is full).
        workers: Items prepared concurrently.
        depth: Results buffered per item.

    Raises:
        Whatever ``work`` raised, when the caller reaches that item.
    """
    stop = threading.Event()
    source = iter(items)
    pending: collections.deque = collections.deque()
    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="prefetch")

    def submit() -> None:
        for item in source:
            results: queue.Queue = queue.Queue(maxsize=max(1, depth))
            pending.append((results, pool.submit(_run, work, item, _emitter(results, stop))))
            return

    try:
        for _ in range(max(1, workers)):
            submit()
        while pending:
            results, _future = pending.popleft()
            while (value := results.get()) is not _END:
                if isinstance(value, _Raised):
                    raise value.error
                yield value
            submit()
    finally:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)


def _emitter(results: queue.Queue, stop: threading.Event) -> Callable[[Any], None]:
    """``emit`` for one item: queue a value, waiting while the queue is full, until the caller stops."""

    def emit(value: Any) -> None:
        while not stop.is_set():
            try:
                results.put(value, timeout=_POLL_SECONDS)
                return
            except queue.Full:
                continue
        raise _Stopped

    return emit


def _run(work: Callable[[Any, Callable[[Any], None]], None], item: Any, emit: Callable[[Any], None]) -> None:
    """A worker: ``work(item, emit)``, then the end mark; an exception is emitted, to be raised in order."""
    try:
        work(item, emit)
        emit(_END)
    except _Stopped:
        return
    except BaseException as error:  # noqa: BLE001 - re-raised in the caller's thread
        try:
            emit(_Raised(error))
        except _Stopped:
            return
