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

Named namespaces are also created and removed here (`create_netns`, `remove_netns`), the way
iproute2's `ip netns add/delete` do it but without a process: a short-lived thread unshares
its network namespace and bind-mounts it on /run/netns/NAME, which is made a shared mount
point first so that the namespace also appears in mount namespaces made before.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import threading
from typing import Callable, TypeVar

from kubectl_proxyctl.errors import ProxyctlError
from kubectl_proxyctl.system.executor import NETNS_RUN_DIR, netns_path

CLONE_NEWNET = 0x40000000
NETNS_DIR = NETNS_RUN_DIR
MS_REC, MS_BIND, MS_SHARED = 0x4000, 0x1000, 0x100000
MNT_DETACH = 2

T = TypeVar("T")

_libc: ctypes.CDLL | None = None
_mount_lock = threading.Lock()


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


# --- creating and removing named namespaces ----------------------------------------------------


def _c() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def netns_mounted(name: str) -> bool:
    """True when /run/netns/NAME holds a namespace (a bind mount, not a leftover file)."""
    try:
        return os.stat(netns_path(name)).st_dev != os.stat(NETNS_DIR).st_dev
    except OSError:
        return False


def _share_netns_dir() -> None:
    """Make /run/netns a shared mount point, as `ip netns add` does, so namespaces created
    later also appear in mount namespaces made before (e.g. by `ip netns exec`)."""
    os.makedirs(NETNS_DIR, exist_ok=True)
    libc = _c()
    if libc.mount(b"", NETNS_DIR.encode(), b"none", MS_SHARED | MS_REC, None) == 0:
        return
    _check(libc.mount(NETNS_DIR.encode(), NETNS_DIR.encode(), b"none", MS_BIND | MS_REC, None),
           f"bind-mount {NETNS_DIR}")
    _check(libc.mount(b"", NETNS_DIR.encode(), b"none", MS_SHARED | MS_REC, None), f"share {NETNS_DIR}")


def create_netns(name: str) -> bool:
    """Create network namespace `name` (as `ip netns add` does: its `lo` stays down) unless
    it exists; True when it was created."""
    if netns_mounted(name):
        return False
    path = netns_path(name)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # a mount point left by an interrupted create
    box: dict[str, BaseException] = {}

    def body() -> None:  # unshare affects only this thread, which then ends
        try:
            with _mount_lock:
                _share_netns_dir()
            fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0)
            os.close(fd)
            try:
                _check(_c().unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")
                _check(_c().mount(b"/proc/thread-self/ns/net", path.encode(), b"none", MS_BIND, None),
                       f"bind-mount {path}")
            except BaseException:
                os.unlink(path)
                raise
        except BaseException as exc:
            box["error"] = exc

    worker = threading.Thread(target=body, name=f"netns-create:{name}", daemon=True)
    worker.start()
    worker.join()
    if "error" in box:
        raise ProxyctlError(f"cannot create network namespace {name}: {box['error']}") from box["error"]
    return True


def remove_netns(name: str) -> bool:
    """Unmount and remove /run/netns/NAME (the namespace dies with its last process)."""
    path = netns_path(name)
    if not os.path.lexists(path):
        return False
    _c().umount2(path.encode(), MNT_DETACH)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    return True


def list_netns(prefix: str) -> list[str]:
    """The named namespaces whose name starts with `prefix`, sorted."""
    try:
        return sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(prefix))
    except FileNotFoundError:
        return []
