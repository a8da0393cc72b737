"""Helpers shared by the benchmark scripts: CPU contention, process memory, number formatting.

The scripts run as ``python benchmarks/<name>.py``, so this folder is on ``sys.path`` and they
import this module as ``_common``.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import math
import os
from collections.abc import Callable, Iterable, Mapping


def cpu_snapshot() -> tuple[float, float, float, float] | None:
    """(machine busy, machine steal, machine total, this process) CPU seconds so far."""
    try:
        with open("/proc/stat") as f:
            fields = [float(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    hz = float(os.sysconf("SC_CLK_TCK"))
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0.0] * 8)[:8]
    busy = (user + nice + system + irq + softirq) / hz
    total = busy + (idle + iowait + steal) / hz
    own = os.times()
    return busy, steal / hz, total, own.user + own.system


def contention(start: tuple[float, ...] | None, end: tuple[float, ...] | None) -> str:
    """How much CPU other processes (and the hypervisor, as steal) took during a phase."""
    if start is None or end is None:
        return "n/a"
    busy, steal, total, own = (b - a for a, b in zip(start, end, strict=True))
    others = max(busy - own, 0.0)
    return (
        f"other processes used {others:.1f} CPU-s of {total:.1f} "
        f"({100 * others / max(total, 1e-9):.0f}%), steal {100 * steal / max(total, 1e-9):.0f}%"
    )


def status_kib(field_name: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field_name} not in /proc/self/status")


def release_free_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc ``malloc_trim``)."""
    gc.collect()
    libc_name = ctypes.util.find_library("c")
    if libc_name:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(libc_name).malloc_trim(0)


def ratio(value: float | None, base: float | None) -> float | None:
    """``value / base``, or None where either is missing or the base is not positive."""
    if value is None or base is None or base <= 0:
        return None
    return value / base


def fmt(value: float | None, spec: str, suffix: str = "") -> str:
    """``value`` formatted with ``spec``, or ``n/a``."""
    return "n/a" if value is None or math.isnan(value) else f"{value:{spec}}{suffix}"


def round_robin(timed: Mapping[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Run every variant once per round, the starting variant rotated each round, so that
    machine noise and position effects hit all variants alike; ``timed()`` returns the
    seconds of one run."""
    keys = list(timed)
    times: dict[str, list[float]] = {k: [] for k in keys}
    for r in range(rounds):
        shift = r % len(keys)
        for key in keys[shift:] + keys[:shift]:
            times[key].append(timed[key]())
    return times


def spans(counts: Iterable[int]) -> list[tuple[int, int]]:
    """``[start, end)`` of consecutive groups of the given sizes."""
    out, start = [], 0
    for n in counts:
        out.append((start, start + n))
        start += n
    return out
