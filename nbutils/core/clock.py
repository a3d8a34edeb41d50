"""Wall and CPU seconds of a block, measured together (benchmarks and the doctor's ratios)."""

from __future__ import annotations

import time


class Clock:
    """Wall time and this process's CPU time (all threads) of a ``with`` block.

    Example:
        >>> with Clock() as timer:
        ...     work()  # doctest: +SKIP
        >>> timer.wall, timer.cpu  # doctest: +SKIP
    """

    def __enter__(self) -> "Clock":
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu
