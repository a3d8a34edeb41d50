"""Timing for the benchmarks: wall and CPU seconds of a block, measured together."""

import time


class Clock:
    """Wall time and this process's CPU time (all threads) of a ``with`` block."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu
