"""Links, addresses and routes of a network namespace, over rtnetlink (pyroute2).

Why this module exists: only `system/` talks to the kernel, and this is the project's one
user of pyroute2. Callers (the lab's topology) say what a namespace should hold (a bridge,
a veth to another namespace, an address, a route via one or several gateways) with plain
names and strings; this module knows how that is spelled in netlink.

`netlink(ns)` opens an rtnetlink socket from a thread that has entered namespace `ns`
(`system.netns.socket_in_netns`; None: this process's namespace), so no `ip` process and no
fork is needed, and hands out a `Netlink` whose methods each do one kernel operation. The
"ensure" methods are idempotent: an existing bridge, veth or address is kept, a route is
replaced.
"""

from __future__ import annotations

import contextlib
import errno
import socket
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from kubectl_proxyctl.system.executor import netns_path
from kubectl_proxyctl.system.netns import socket_in_netns

if TYPE_CHECKING:
    from pyroute2 import IPRoute  # type: ignore[import-untyped]

NETLINK_ROUTE = 0


@contextlib.contextmanager
def netlink(ns: str | None) -> Iterator[Netlink]:
    """A `Netlink` whose socket lives in namespace `ns` (None: the root namespace)."""
    from pyroute2 import IPRoute  # type: ignore[import-untyped]

    sock = socket_in_netns(ns, socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE)
    try:
        ipr = IPRoute(use_socket=sock)
    except BaseException:
        sock.close()
        raise
    try:
        yield Netlink(ipr)
    finally:
        ipr.close()
        sock.close()


def _ignore_exists(fn: Any, *args: Any, **kwargs: Any) -> None:
    from pyroute2.netlink.exceptions import NetlinkError  # type: ignore[import-untyped]

    try:
        fn(*args, **kwargs)
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise


class Netlink:
    """Link, address and route operations in the namespace of one rtnetlink socket."""

    def __init__(self, ipr: IPRoute) -> None:
        self._ipr = ipr

    # --- links -------------------------------------------------------------------------------

    def index(self, ifname: str) -> int | None:
        """The interface index of `ifname`, None when there is no such link."""
        found = self._ipr.link_lookup(ifname=ifname)
        return int(found[0]) if found else None

    def links(self) -> Iterator[tuple[int, str, str | None]]:
        """(index, name, kind) of every link; kind is e.g. "veth" or "bridge" (None: none)."""
        for link in self._ipr.get_links():
            ifname = str(link.get("ifname") or "")
            kind = link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")
            yield link["index"], ifname, kind

    def link_names_with_address(self, address: str) -> Iterator[str | None]:
        """The name of each link that holds IPv4 `address` (None for a link without one)."""
        for msg in self._ipr.get_addr(family=socket.AF_INET, address=address):
            yield self._ipr.get_links(msg["index"])[0].get("ifname")

    def ensure_bridge(self, name: str) -> int:
        """A bridge `name`, up; returns its index."""
        index = self.index(name)
        if index is None:
            self._ipr.link("add", ifname=name, kind="bridge")
            index = self.index(name)
            assert index is not None
        self._ipr.link("set", index=index, state="up")
        return index

    def ensure_veth(self, name: str, peer: str, peer_ns: str) -> int:
        """A veth `name` here whose peer `peer` lives in namespace `peer_ns`; returns our index.
        A leftover end without its peer (a half-removed link) is replaced."""
        index = self.index(name)
        if index is not None:
            with netlink(peer_ns) as other:
                if other.index(peer) is not None:
                    return index
            self._ipr.link("del", index=index)
        self._ipr.link("add", ifname=name, kind="veth", peer={"ifname": peer, "net_ns_fd": netns_path(peer_ns)})
        index = self.index(name)
        assert index is not None
        return index

    def set_up(self, index: int, master: int | None = None) -> None:
        """Bring link `index` up, first enslaving it to bridge `master` when given."""
        if master is not None:
            self._ipr.link("set", index=index, master=master)
        self._ipr.link("set", index=index, state="up")

    def set_hairpin(self, index: int) -> None:
        """Let bridge port `index` send a frame back out of the port it came in on."""
        self._ipr.brport("set", index=index, mode=1)

    def delete_link(self, index: int) -> None:
        """Delete link `index` (a veth takes its peer with it)."""
        self._ipr.link("del", index=index)

    # --- addresses ---------------------------------------------------------------------------

    def ipv4_addresses(self, index: int) -> Iterator[tuple[str, int]]:
        """(address, prefix length) of every IPv4 address on link `index`."""
        for msg in self._ipr.get_addr(index=index, family=socket.AF_INET):
            yield msg.get_attr("IFA_ADDRESS"), msg["prefixlen"]

    def add_address(self, index: int, address: str, prefixlen: int) -> None:
        """Add `address/prefixlen` to link `index`; one that is already there is kept."""
        _ignore_exists(self._ipr.addr, "add", index=index, address=address, prefixlen=prefixlen)

    def delete_address(self, index: int, address: str, prefixlen: int) -> None:
        self._ipr.addr("del", index=index, address=address, prefixlen=prefixlen)

    # --- routes ------------------------------------------------------------------------------

    def replace_route(self, dst: str, gateways: Sequence[str], oif: int | None = None) -> None:
        """Route `dst` via `gateways` (one: a plain route; several: ECMP, one hop each),
        through link `oif` when given, replacing any route to `dst`."""
        hop: dict[str, Any] = {} if oif is None else {"oif": oif}
        if len(gateways) == 1:
            self._ipr.route("replace", dst=dst, gateway=gateways[0], **hop)
        else:
            self._ipr.route("replace", dst=dst, multipath=[{"gateway": g, **hop} for g in gateways])
