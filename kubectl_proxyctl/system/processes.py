"""Starting, finding and stopping long-running processes: daemons, not commands.

Why this module exists: only `system/` starts processes. `executor.py` runs a command to
completion and reads its output; the lab also needs processes that outlive the call that
starts them (its daemon, the engines and sshd of its nodes, the pods' echo servers) and must
stop them later, possibly from another process after a crash. So:

* `spawn(argv, log_path)` starts `argv` detached: a session of its own (no terminal, not
  killed with the caller's process group), no stdin, stdout and stderr appended to
  `log_path`. The caller keeps the returned `Child` to poll or wait for it;
* `run_attached(argv)` runs a command with this terminal attached and returns its exit code;
* `ProcessRef` names a process by pid and start time (pids get reused), so a record written
  by one daemon can safely be acted on by the next;
* `pids_in_netns` finds the processes living in named network namespaces (one scan of
  /proc), `find_by_argv` the processes whose command line contains given words (a daemon
  found by what it runs, when its record is lost), and `kill_pids` stops processes:
  SIGTERM, then SIGKILL after a grace period.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence, TypeAlias

from kubectl_proxyctl.system.executor import netns_path

Child: TypeAlias = subprocess.Popen[bytes]  # a process `spawn` started


# --- starting --------------------------------------------------------------------------------


def spawn(argv: Sequence[str], log_path: str | Path, *, env: Mapping[str, str] | None = None,
          cwd: str | None = None, preexec: Callable[[], None] | None = None) -> Child:
    """Start `argv` in a new session, stdin from /dev/null, stdout and stderr appended to
    `log_path`; `env` and `cwd` as for `subprocess.Popen` (None: this process's); `preexec`
    runs in the child before it execs (e.g. `cgroups.joiner`). Raises OSError when the log
    cannot be opened or `argv[0]` cannot be executed."""
    with open(log_path, "ab") as log_file:
        return subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
            close_fds=True, start_new_session=True, env=env, cwd=cwd, preexec_fn=preexec,
        )


def run_attached(argv: Sequence[str], preexec: Callable[[], None] | None = None) -> int:
    """Run `argv` with this process's stdin, stdout and stderr (`preexec` as for `spawn`);
    its exit code. Raises FileNotFoundError when `argv[0]` does not exist."""
    return subprocess.run(list(argv), check=False, preexec_fn=preexec).returncode


# --- finding ---------------------------------------------------------------------------------


def process_start_time(pid: int) -> int | None:
    """The start time of `pid` (clock ticks since boot), None when it does not exist or is
    a zombie. Together with the pid it names a process for good: pids get reused."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


@dataclass(frozen=True)
class ProcessRef:
    """A process named by pid and start time, so a record outlives the daemon safely."""

    pid: int
    start: int

    @classmethod
    def of(cls, pid: int) -> ProcessRef | None:
        start = process_start_time(pid)
        return cls(pid, start) if start is not None else None

    def alive(self) -> bool:
        return process_start_time(self.pid) == self.start

    def stop(self, grace: float = 2.0) -> None:
        if self.alive():
            kill_pids([self.pid], grace)


def pids_in_netns(names: Iterable[str]) -> dict[str, list[int]]:
    """The processes living in each named namespace, from one scan of /proc."""
    wanted: dict[tuple[int, int], str] = {}
    for name in names:
        with contextlib.suppress(OSError):
            st = os.stat(netns_path(name))
            wanted[(st.st_dev, st.st_ino)] = name
    found: dict[str, list[int]] = {name: [] for name in wanted.values()}
    if not wanted:
        return found
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        with contextlib.suppress(OSError):
            st = os.stat(f"/proc/{entry}/ns/net")
            owner = wanted.get((st.st_dev, st.st_ino))
            if owner is not None:
                found[owner].append(int(entry))
    return found


def parent_pid(pid: int) -> int | None:
    """The parent of `pid`, None when it does not exist."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return int(fh.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def command_lines() -> dict[int, list[str]]:
    """Every process's command line (its argv words), from one scan of /proc; this process
    and kernel threads (empty command lines) left out."""
    found: dict[int, list[str]] = {}
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            raw = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if raw:
            found[int(entry)] = raw.decode(errors="replace").rstrip("\0").split("\0")
    return found


def argv_contains(argv: Sequence[str], words: Sequence[str]) -> bool:
    """True when `words` appear in `argv` in a row, also when the process rewrote its
    command line into one string (as sshd's listener does: `sshd: /usr/sbin/sshd -D ...`)."""
    n = len(words)
    if any(list(argv[i:i + n]) == list(words) for i in range(len(argv) - n + 1)):
        return True
    return f" {' '.join(words)} " in f" {' '.join(' '.join(argv).split())} "


def find_by_argv(words: Sequence[str], lines: Mapping[int, Sequence[str]] | None = None) -> list[ProcessRef]:
    """The live processes whose command line contains `words` in a row (see
    `argv_contains`); `lines` is a scan from `command_lines()` to reuse."""
    found = []
    for pid, argv in (command_lines() if lines is None else lines).items():
        if argv_contains(argv, words):
            ref = ProcessRef.of(pid)
            if ref is not None:
                found.append(ref)
    return found


# --- stopping --------------------------------------------------------------------------------


def kill_pids(pids: Iterable[int], grace: float = 2.0) -> None:
    """SIGTERM, then SIGKILL whatever is still alive after `grace` seconds."""
    alive = list(dict.fromkeys(pids))
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in alive:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while alive and time.monotonic() < deadline:
            time.sleep(0.02)
            alive = [p for p in alive if _alive(p)]
        if not alive:
            return


def _alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            state = fh.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")
