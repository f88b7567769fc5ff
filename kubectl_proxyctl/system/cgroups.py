"""cgroup v2 directories: finding the hierarchy, creating a cgroup, putting a new process in
it, and removing it with whatever still runs there.

Why processes are placed by the child itself: a cgroup's membership is inherited, and a
process moves by writing its pid to `CG/cgroup.procs`. `joiner(CG)` gives a function to run
in a new child between fork and exec (`subprocess.Popen(preexec_fn=…)`), so the program
starts inside the cgroup and every socket it ever opens is subject to what is attached
there, whatever network namespace it then enters. The function does nothing but one
open/write/close of a path computed beforehand, which keeps it safe to call in a child
forked from a threaded process.

A cgroup that holds processes cannot be removed (rmdir fails with EBUSY), so `remove_tree`
kills them first: with `cgroup.kill` (Linux 5.14+: SIGKILL to every process of the cgroup
and its descendants, atomically), else by the pids `cgroup.procs` lists; it waits for
`cgroup.events` to say "populated 0", then removes the directories deepest first.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from typing import Callable

from kubectl_proxyctl.errors import ApplyError
from kubectl_proxyctl.system.processes import kill_pids

EMPTY_WAIT = 5.0  # how long `remove_tree` waits for the killed processes to be gone


class CgroupError(ApplyError):
    """A cgroup file operation failed; the message is one line."""


def cgroup2_root() -> str | None:
    """Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup on most machines,
    /sys/fs/cgroup/unified on hybrid ones); None when it is not mounted."""
    from kubectl_proxyctl.system.bpf import BpfError, cgroup2_root as mounted

    try:
        return mounted()
    except BpfError:
        return None


def ensure(path: str) -> bool:
    """Create the cgroup directory `path` (and its missing parents); True when it was created."""
    try:
        os.makedirs(path)
    except FileExistsError:
        return False
    except OSError as exc:
        raise CgroupError(f"cannot create cgroup {path}: {exc.strerror or exc}") from exc
    return True


def joiner(path: str) -> Callable[[], None]:
    """A function that moves the calling process into cgroup `path`: a `preexec_fn`."""
    procs = os.fsencode(os.path.join(path, "cgroup.procs"))

    def join() -> None:
        fd = os.open(procs, os.O_WRONLY)
        try:
            os.write(fd, b"0")  # 0: the writing process
        finally:
            os.close(fd)

    return join


def require(path: str) -> Callable[[], None]:
    """`joiner(path)` once `path` is known to be a cgroup (a one-line CgroupError if not)."""
    if not os.path.exists(os.path.join(path, "cgroup.procs")):
        raise CgroupError(f"cgroup {path} does not exist")
    return joiner(path)


def procs(path: str) -> list[int]:
    """The processes of cgroup `path` itself (not of its descendants); [] when it is gone."""
    try:
        with open(os.path.join(path, "cgroup.procs"), encoding="ascii") as fh:
            return [int(line) for line in fh.read().split()]
    except (FileNotFoundError, ProcessLookupError):
        return []


def populated(path: str) -> bool:
    """Do `path` or its descendants hold a process? (`cgroup.events`; False when it is gone.)"""
    try:
        with open(os.path.join(path, "cgroup.events"), encoding="ascii") as fh:
            return "populated 1" in fh.read()
    except FileNotFoundError:
        return False


def _kill(path: str) -> None:
    kill_file = os.path.join(path, "cgroup.kill")
    if os.path.exists(kill_file):
        with contextlib.suppress(FileNotFoundError):
            with open(kill_file, "w", encoding="ascii") as fh:
                fh.write("1")
        return
    for directory, _, _ in os.walk(path):
        kill_pids(procs(directory), grace=1.0)


def remove_tree(path: str) -> tuple[list[str], int]:
    """Remove cgroup `path` and its descendants, killing what runs in them first. Returns the
    cgroups removed (deepest first) and how many processes were still in them; nothing when
    `path` does not exist."""
    if not os.path.isdir(path):
        return [], 0
    killed = sum(len(procs(directory)) for directory, _, _ in os.walk(path))
    if populated(path):
        _kill(path)
        deadline = time.monotonic() + EMPTY_WAIT
        while populated(path) and time.monotonic() < deadline:
            time.sleep(0.02)
    removed = []
    for directory, _, _ in sorted(os.walk(path), key=lambda entry: -entry[0].count("/")):
        try:
            os.rmdir(directory)
        except FileNotFoundError:
            continue
        except OSError as exc:
            busy = " (processes are still in it)" if exc.errno == errno.EBUSY else ""
            raise CgroupError(f"cannot remove cgroup {directory}: {exc.strerror or exc}{busy}") from exc
        removed.append(directory)
    return removed, killed
