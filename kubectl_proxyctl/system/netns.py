"""Doing work inside a named network namespace from this process, without forking.

Theory of operation: a network namespace is a property of each *thread* (setns(2) with
CLONE_NEWNET changes only the calling thread), and a socket belongs for life to the
namespace its creating thread was in. So `call_in_netns(name, fn)` starts a short-lived
thread, moves it into `/run/netns/NAME`, runs `fn` there and hands back its result (or
re-raises its exception). Whatever `fn` opens stays in that namespace after the thread
ends: sockets (`socket_in_netns`), netlink sockets for pyroute2, and files under
/proc/sys/net, which the kernel resolves against the opening thread's namespace.

The calling thread never changes namespace, so this is safe in a threaded program and
costs well under a millisecond, where forking a child (pyroute2's `netns=` sockets, or
`nsenter`) costs tens. `name=None` still runs `fn` in a fresh thread, in the caller's
namespace: that gives asyncio-based libraries a thread with no running event loop.
"""

from __future__ import annotations

import ctypes
import os
import socket
import threading
from typing import Callable, TypeVar

from kubectl_proxyctl.errors import ProxyctlError
from kubectl_proxyctl.system.executor import netns_path

CLONE_NEWNET = 0x40000000

T = TypeVar("T")

_libc: ctypes.CDLL | None = None


def _setns(fd: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def netns_exists(name: str) -> bool:
    return os.path.exists(netns_path(name))


def call_in_netns(name: str | None, fn: Callable[[], T]) -> T:
    """Run `fn()` in a new thread inside network namespace `name` (None: this one)."""
    if name is not None and not netns_exists(name):
        raise ProxyctlError(f"network namespace {name} does not exist ({netns_path(name)})")
    box: dict[str, object] = {}

    def body() -> None:
        try:
            if name is not None:
                fd = os.open(netns_path(name), os.O_RDONLY | os.O_CLOEXEC)
                try:
                    _setns(fd)
                finally:
                    os.close(fd)
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller's thread below
            box["error"] = exc

    worker = threading.Thread(target=body, name=f"netns:{name or '-'}", daemon=True)
    worker.start()
    worker.join()
    error = box.get("error")
    if isinstance(error, BaseException):
        raise error
    return box["value"]  # type: ignore[return-value]


def socket_in_netns(
    name: str | None,
    family: int = socket.AF_INET,
    kind: int = socket.SOCK_STREAM,
    proto: int = 0,
) -> socket.socket:
    """A socket that lives in network namespace `name`, usable from any thread."""
    if name is None:
        return socket.socket(family, kind, proto)
    return call_in_netns(name, lambda: socket.socket(family, kind, proto))
