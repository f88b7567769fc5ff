"""Shared helpers for the benchmark scripts: timing commands, RSS, printing ratios."""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import time
from typing import Iterator


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


# --- throw-away network namespaces (the benchmarks that touch the kernel run as root) ----------

PREFIX = f"pxbench{secrets.token_hex(3)}"
_made: list[str] = []


def kill_pids(name: str) -> None:
    """SIGKILL every process still running inside network namespace `name`."""
    out = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout
    for pid in out.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def remove_netns(name: str) -> None:
    kill_pids(name)
    subprocess.run(["ip", "netns", "delete", name], capture_output=True)
    with contextlib.suppress(ValueError):
        _made.remove(name)


@contextlib.contextmanager
def netns(role: str) -> Iterator[str]:
    """A fresh network namespace `<PREFIX>-<role>` with `lo` up, removed on exit."""
    name = f"{PREFIX}-{role}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    _made.append(name)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        remove_netns(name)


def remove_all_netns() -> None:
    """Remove every namespace this process made and has not removed yet (call in `finally`)."""
    for name in list(_made):
        remove_netns(name)


def terminate_as_interrupt() -> None:
    """Make SIGTERM and SIGHUP raise KeyboardInterrupt, so `finally` blocks still remove the
    namespaces when the benchmark is stopped."""
    def _raise(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise)


def in_ns(name: str, argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run `argv` inside namespace `name` (nsenter: no /sys remount, unlike `ip netns exec`)."""
    return subprocess.run(["nsenter", f"--net=/run/netns/{name}", "--", *argv], input=stdin,
                          capture_output=True, text=True, check=False)


# `kubectl-proxyctl` itself, writing its peak RSS (kB) to the file named by $PXBENCH_RSS when it
# exits. VmHWM, not ru_maxrss: a process started by fork/vfork + exec inherits its parent's RSS
# at the fork in ru_maxrss (and a wait4() figure also covers the iptables/nft children).
ENGINE_WITH_RSS = (
    "import atexit, os, sys\n"
    "def _rss():\n"
    "    with open('/proc/self/status') as st, open(os.environ['PXBENCH_RSS'], 'w') as fh:\n"
    "        fh.write(next(ln.split()[1] for ln in st if ln.startswith('VmHWM:')))\n"
    "atexit.register(_rss)\n"
    "sys.argv[0] = 'kubectl-proxyctl'\n"
    "from kubectl_proxyctl.cli.main import main\n"
    "main()\n"
)


def percentile(xs: list[float], q: float) -> float:
    """The q-th percentile (0..100) of xs, nearest rank."""
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, math.ceil(q / 100.0 * len(s)) - 1))]
