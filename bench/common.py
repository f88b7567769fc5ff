"""Shared helpers for the benchmark scripts: timing commands, RSS, printing ratios."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time


def exe(name: str) -> str:
    """The console script next to this interpreter (as `pip install` placed it), else PATH."""
    here = os.path.join(os.path.dirname(sys.executable), name)
    return here if os.path.exists(here) else (shutil.which(name) or name)


def time_cmd(argv: list[str], runs: int = 10, env: dict[str, str] | None = None) -> list[float]:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, env=env)
        times.append(time.perf_counter() - t0)
    return times


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def report(name: str, value: float, target: float, unit: str = "") -> bool:
    ok = value <= target
    print(f"{name:<60} {value:10.3f}{unit}   target <= {target:g}{unit}   {'OK' if ok else 'MISSED'}")
    return ok


def rss_mb() -> float:
    """Peak RSS of this process in MB."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
