"""Reading and writing kernel parameters (`/proc/sys/...`), in this or another namespace.

Theory of operation: a sysctl key `net.ipv4.ip_forward` is the file
`/proc/sys/net/ipv4/ip_forward`; reading returns its value, writing the new value sets
it. Keys may be written with dots or slashes (`net/ipv4/conf/all/route_localnet`); use
slashes when a path component itself contains a dot (an interface such as `eth0.100`).

Everything under `net.` is per network namespace, and the kernel picks the namespace of
the thread that opens the file. `Sysctl(netns=NAME)` therefore does its file I/O in a
thread that has entered `/run/netns/NAME` (`system.netns.call_in_netns`): no process is
spawned and the caller's thread never changes namespace. Per-namespace examples:
`net.ipv4.ip_forward`, `net.ipv4.conf.all.route_localnet`, `net.bridge.bridge-nf-call-
iptables` (present when the kernel has br_netfilter), `net.ipv4.icmp_ratelimit`,
`net.netfilter.nf_conntrack_tcp_timeout_*`. `net.netfilter.nf_conntrack_max` can only be
written from the initial namespace; other namespaces see it read-only.

`root` points the adapter at another directory tree, which is how unit tests use it.
"""

from __future__ import annotations

import os

from kubectl_proxyctl.errors import ProxyctlError
from kubectl_proxyctl.system.netns import call_in_netns

IP_FORWARD = "net.ipv4.ip_forward"
IPV6_FORWARDING = "net.ipv6.conf.all.forwarding"
ROUTE_LOCALNET = "net.ipv4.conf.all.route_localnet"
BRIDGE_NF_CALL_IPTABLES = "net.bridge.bridge-nf-call-iptables"
BRIDGE_NF_CALL_IP6TABLES = "net.bridge.bridge-nf-call-ip6tables"
ICMP_RATELIMIT = "net.ipv4.icmp_ratelimit"
CONNTRACK_MAX = "net.netfilter.nf_conntrack_max"
CONNTRACK_TCP_BE_LIBERAL = "net.netfilter.nf_conntrack_tcp_be_liberal"
CONNTRACK_TCP_TIMEOUT_ESTABLISHED = "net.netfilter.nf_conntrack_tcp_timeout_established"
CONNTRACK_TCP_TIMEOUT_CLOSE_WAIT = "net.netfilter.nf_conntrack_tcp_timeout_close_wait"
CONNTRACK_UDP_TIMEOUT = "net.netfilter.nf_conntrack_udp_timeout"
CONNTRACK_UDP_TIMEOUT_STREAM = "net.netfilter.nf_conntrack_udp_timeout_stream"


def key_path(key: str, root: str = "/proc/sys") -> str:
    """`net.ipv4.ip_forward` → `/proc/sys/net/ipv4/ip_forward` (slashed keys kept as is)."""
    rel = key.strip("/") if "/" in key else key.replace(".", "/")
    return os.path.join(root, rel)


class Sysctl:
    """Get and set sysctls in the current namespace or in network namespace `netns`."""

    def __init__(self, netns: str | None = None, root: str = "/proc/sys") -> None:
        self.netns = netns
        self.root = root

    def __repr__(self) -> str:
        return f"Sysctl(netns={self.netns!r})"

    def _where(self) -> str:
        return f" in network namespace {self.netns}" if self.netns else ""

    def _io(self, key: str, value: str | None) -> str:
        path = key_path(key, self.root)

        def work() -> str:
            if value is None:
                with open(path, encoding="ascii") as fh:
                    return fh.read().strip()
            with open(path, "w", encoding="ascii") as fh:
                fh.write(value)
            return value

        try:
            return call_in_netns(self.netns, work) if self.netns else work()
        except FileNotFoundError as exc:
            hint = " (is br_netfilter in the kernel?)" if ".bridge." in f".{key}." else ""
            raise ProxyctlError(f"sysctl {key} does not exist{self._where()}{hint}") from exc
        except OSError as exc:
            action = f"read {key}" if value is None else f"set {key}={value}"
            raise ProxyctlError(f"cannot {action}{self._where()}: {exc.strerror or exc}") from exc

    def get(self, key: str) -> str:
        """The value as the kernel prints it (whitespace-separated fields kept)."""
        return self._io(key, None)

    def get_int(self, key: str) -> int:
        text = self.get(key)
        try:
            return int(text)
        except ValueError as exc:
            raise ProxyctlError(f"sysctl {key} is not a number: {text!r}") from exc

    def set(self, key: str, value: str | int) -> None:
        self._io(key, str(value))

    def ensure(self, key: str, value: str | int) -> bool:
        """Set `key` to `value` unless it already has it; True when it was changed."""
        if self.get(key) == str(value):
            return False
        self.set(key, value)
        return True
