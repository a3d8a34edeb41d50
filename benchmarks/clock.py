"""Timing for the benchmarks: ``nbutils.core.clock.Clock`` (the doctor times with it too).

The scripts beside this file put the repository on ``sys.path`` before importing it.
"""

from nbutils.core.clock import Clock

__all__ = ["Clock"]
