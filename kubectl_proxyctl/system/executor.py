"""Running the kernel's command-line tools: one narrow seam between the product and `exec`.

Theory of operation: everything in `system/` that runs iptables, iptables-restore, nft or
conntrack does it through an `Executor`, a one-method protocol (`run(argv, stdin, timeout)
-> Result`). Production code uses `SubprocessExecutor`; unit tests use `FakeExecutor`,
which records every call and answers from a script (and fails the test on a command it was
not told about), so adapters are tested without root.

`SubprocessExecutor(netns=NAME)` runs every command inside the named network namespace
(`/run/netns/NAME`, what `ip netns add` creates) through `nsenter --net=PATH`. Unlike
`ip netns exec` it does not remount /sys or bind /etc/netns files, so it costs one extra
exec of a tiny binary and nothing else; the tools see the namespace's netfilter tables,
conntrack table and /proc/sys/net.

A missing binary is a user problem, not a crash: `run` resolves `argv[0]` on PATH first
and raises `ProxyctlError("iptables-restore not found: install the iptables package")`.
A command that outlives its timeout is killed and reported the same way. A non-zero exit
status is *not* an error here: callers read `Result.returncode` and turn failures into
the right `ProxyctlError` subclass with the context only they know.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Callable, Mapping, Protocol, Sequence

from kubectl_proxyctl.errors import ProxyctlError

DEFAULT_TIMEOUT = 60.0
NETNS_RUN_DIR = "/run/netns"

# Debian package that ships each tool, for the "not found" message.
_PACKAGE_OF: Mapping[str, str] = {
    "iptables": "iptables",
    "ip6tables": "iptables",
    "nft": "nftables",
    "conntrack": "conntrack",
    "ipset": "ipset",
    "nsenter": "util-linux",
    "ip": "iproute2",
    "socat": "socat",
    "sysctl": "procps",
}


@dataclass(frozen=True)
class Result:
    """What a finished command left behind."""

    returncode: int
    stdout: str = ""
    stderr: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0


class Executor(Protocol):
    """Runs one command to completion. `netns` names the network namespace it runs in
    (None: the caller's own), so netlink users can open their sockets in the same place."""

    netns: str | None

    def run(self, argv: Sequence[str], stdin: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> Result:
        """Run `argv` with `stdin` as its input; never raises for a non-zero exit."""
        ...


def package_hint(binary: str) -> str:
    """`iptables-nft-restore` → `iptables`: the Debian package that provides a tool."""
    name = os.path.basename(binary)
    for prefix in sorted(_PACKAGE_OF, key=len, reverse=True):
        if name == prefix or name.startswith(prefix + "-"):
            return _PACKAGE_OF[prefix]
    return name


def netns_path(name: str) -> str:
    """The bind-mounted namespace file that `ip netns add NAME` creates."""
    return name if name.startswith("/") else os.path.join(NETNS_RUN_DIR, name)


_found: dict[str, str] = {}  # only hits are remembered: a tool installed later is found


def require_binary(binary: str) -> str:
    """The absolute path of `binary`, or a ProxyctlError naming the package to install.
    The sbin directories are searched too, as PATH often lacks them outside a login shell."""
    path = _found.get(binary)
    if path is None:
        path = shutil.which(binary) or shutil.which(binary, path="/usr/local/sbin:/usr/sbin:/sbin")
        if path is None:
            raise ProxyctlError(f"{binary} not found: install the {package_hint(binary)} package")
        _found[binary] = path
    return path


class SubprocessExecutor:
    """Runs commands with `subprocess`, optionally inside a named network namespace."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns

    def __repr__(self) -> str:
        return f"SubprocessExecutor(netns={self.netns!r})"

    def run(self, argv: Sequence[str], stdin: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> Result:
        if not argv:
            raise ValueError("empty command")
        full = [require_binary(argv[0]), *argv[1:]]
        if self.netns is not None:
            path = netns_path(self.netns)
            if not os.path.exists(path):
                raise ProxyctlError(f"network namespace {self.netns} does not exist ({path})")
            full = [require_binary("nsenter"), f"--net={path}", "--", *full]
        try:
            done = subprocess.run(
                full,
                input=stdin,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise ProxyctlError(f"{argv[0]} timed out after {timeout:g} s") from exc
        except OSError as exc:
            raise ProxyctlError(f"cannot run {argv[0]}: {exc.strerror or exc}") from exc
        return Result(done.returncode, done.stdout, done.stderr)


@dataclass(frozen=True)
class Call:
    """One recorded `FakeExecutor.run` call."""

    argv: tuple[str, ...]
    stdin: str | None


Handler = Callable[[tuple[str, ...], str | None], Result | None]


class UnscriptedCommand(AssertionError):
    """A FakeExecutor was asked to run a command no script, handler or default answers."""


@dataclass
class FakeExecutor:
    """A scripted executor for unit tests.

    `script(prefix, *results)` queues answers for commands whose argv starts with `prefix`
    (the longest matching prefix wins; the last queued answer repeats). A `handler` sees
    every call first and may answer it (return None to fall through). Binaries in
    `missing` raise the same ProxyctlError as a missing tool does for real.

    Strict by default: a command neither the handler nor a script answers raises
    `UnscriptedCommand` (an AssertionError naming the command), so a test states every
    command the code under test runs. `default=Result(...)` answers every unscripted
    command instead, for a test about what happens when *everything* fails (or succeeds).
    """

    netns: str | None = None
    default: Result | None = None
    handler: Handler | None = None
    missing: set[str] = field(default_factory=set)
    calls: list[Call] = field(default_factory=list)
    _scripts: dict[tuple[str, ...], list[Result]] = field(default_factory=dict)

    def script(self, prefix: Sequence[str], *results: Result) -> None:
        if not results:
            raise ValueError("script() needs at least one result")
        self._scripts.setdefault(tuple(prefix), []).extend(results)

    def argvs(self) -> list[tuple[str, ...]]:
        return [c.argv for c in self.calls]

    def run(self, argv: Sequence[str], stdin: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> Result:
        args = tuple(argv)
        if args[0] in self.missing:
            raise ProxyctlError(f"{args[0]} not found: install the {package_hint(args[0])} package")
        self.calls.append(Call(args, stdin))
        if self.handler is not None:
            answer = self.handler(args, stdin)
            if answer is not None:
                return answer
        matches = [p for p in self._scripts if args[: len(p)] == p]
        if matches:
            queue = self._scripts[max(matches, key=len)]
            return queue.pop(0) if len(queue) > 1 else queue[0]
        if self.default is None:
            raise UnscriptedCommand(
                f"unscripted command: {' '.join(args)} (FakeExecutor answers only commands it was told "
                "about: add fake.script([...], Result(...)) or pass default=Result(...))")
        return self.default
