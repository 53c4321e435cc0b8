"""How busy the rest of the machine was while a benchmark ran (shared by the scripts here)."""

from __future__ import annotations

import os
import resource
import time


class CpuMonitor:
    """CPU used over an interval by this process and by everything else (Linux /proc/stat).

    The machine is shared: another process on the 2 cores inflates every time measured here
    (2-thread OpenMP/MKL regions slow down many-fold when a core is taken), so each table
    says how busy the rest of the machine was while it was measured.
    """

    def __init__(self) -> None:
        self.start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float | None, float]:
        busy = None
        try:
            with open("/proc/stat") as handle:
                ticks = [int(v) for v in handle.readline().split()[1:]]
            busy = (sum(ticks[:8]) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            pass
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return time.perf_counter(), busy, usage.ru_utime + usage.ru_stime

    def report(self) -> tuple[str, bool]:
        """(a comment line, whether other processes took a noticeable share)."""
        (w0, b0, s0), (w1, b1, s1) = self.start, self._sample()
        wall, mine = w1 - w0, (s1 - s0)
        if b0 is None or b1 is None:
            return (
                f"# CPU over the timed part: this process {mine / wall:.2f} cores "
                "(machine total unknown)",
                False,
            )
        others = max(0.0, (b1 - b0) - mine) / wall
        busy = others > 0.2
        return (
            f"# CPU over the timed part: this process {mine / wall:.2f} cores, "
            f"other processes {others:.2f} cores, of {os.cpu_count()}"
            + (" -- SHARED: times are inflated and noisy, rerun on a quiet machine" if busy else "")
        ), busy
