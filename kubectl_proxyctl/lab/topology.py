"""The lab's network: namespaces, bridges, veths, addresses, routes and sysctls, over netlink.

Theory of operation
-------------------
::

    root netns ── <lab>-host 172.18.0.1/24 ─┐            (routes: 10.244.<i>.0/24 via node i,
                                            │             10.244.0.0/16, 10.96.0.0/12 via node1,
    <lab>-net:  br0 (the underlay bridge) ──┤             172.18.255.0/24 over every node)
                ├── node1 ── eth0 of <lab>-node1 172.18.0.2/24, cbr0 10.244.1.1/24
                ├── node2 ── eth0 of <lab>-node2 172.18.0.3/24, cbr0 10.244.2.1/24
                ├── ...
                └── client ── eth0 of <lab>-client 172.18.0.100/24

Every node namespace routes the other nodes' pod CIDRs via their node IPs (host-gw) and has
a default route via 172.18.0.1, so locally originated traffic to a service IP has a route
before nat OUTPUT rewrites it. The root namespace never forwards what arrives from the lab
(forwarding is off on its end of the underlay veth, whatever the host's `ip_forward`), so
lab traffic never leaves the lab. The client routes the LoadBalancer pool over all
nodes (ECMP, hashed on ports), and reaches NodePorts directly on the underlay.

A pod (`add_pod`) is a namespace `spec.pod_ns(ns, name)` with `eth0` holding the pod IP/24
and a default route via its node's `cbr0`; the node's end of the veth is `vp` + a hash of the
namespace name (interface names are limited to 15 characters), enslaved to `cbr0` in hairpin
mode, so that a pod reaches itself through a Service.

Everything is done from this process over netlink (pyroute2), with each netlink socket
opened by a thread that has entered the target namespace (`system.netns.socket_in_netns`):
no `ip` processes, no forks. Namespaces are created the way iproute2 does it, from a thread
that unshares its network namespace and bind-mounts it on /run/netns/NAME. Every step is
"ensure": `up()` twice is a no-op, and `up()` completes a half-built lab.

`teardown(spec)` finds everything by the lab's name prefix: it kills every process that
lives in one of the lab's namespaces, deletes the namespaces (their links go with them) and
the root namespace's end of the underlay veth.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import ipaddress
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from kubectl_proxyctl.errors import ConfigError, ProxyctlError
from kubectl_proxyctl.lab.spec import LabSpec, NodeSpec
from kubectl_proxyctl.system.netns import socket_in_netns
from kubectl_proxyctl.system.sysctl import BRIDGE_NF_CALL_IPTABLES, ICMP_RATELIMIT, IP_FORWARD, Sysctl

if TYPE_CHECKING:
    from pyroute2 import IPRoute  # type: ignore[import-untyped]

NETNS_DIR = "/run/netns"
UNDERLAY_BRIDGE = "br0"
POD_BRIDGE = "cbr0"
UPLINK = "eth0"  # a node's, the client's and a pod's interface
HOST_PEER = "host"  # the underlay end of the root namespace's veth
CLIENT_PEER = "client"  # the underlay end of the client's veth
NETLINK_ROUTE = 0
CLONE_NEWNET = 0x40000000
MS_REC, MS_BIND, MS_SHARED = 0x4000, 0x1000, 0x100000
MNT_DETACH = 2
FIB_MULTIPATH_HASH_POLICY = "net.ipv4.fib_multipath_hash_policy"
NODE_SYSCTLS = ((IP_FORWARD, 1), (BRIDGE_NF_CALL_IPTABLES, 1), (ICMP_RATELIMIT, 0))

_libc: ctypes.CDLL | None = None
_mount_lock = threading.Lock()


def _c() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


# --- namespaces ------------------------------------------------------------------------------


def netns_path(name: str) -> str:
    return os.path.join(NETNS_DIR, name)


def netns_exists(name: str) -> bool:
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


def ensure_netns(name: str) -> bool:
    """Create network namespace `name` unless it exists; True when it was created."""
    if netns_exists(name):
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
    with _netlink(name) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
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
    try:
        return sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(prefix))
    except FileNotFoundError:
        return []


def lab_prefix(spec: LabSpec) -> str:
    """Every namespace and root-namespace link of the lab starts with this."""
    return f"{spec.name}-"


def lab_namespaces(spec: LabSpec) -> list[str]:
    return list_netns(lab_prefix(spec))


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


# --- netlink ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _netlink(ns: str | None) -> Iterator[IPRoute]:
    """An IPRoute whose socket lives in namespace `ns` (None: the root namespace)."""
    from pyroute2 import IPRoute  # type: ignore[import-untyped]

    sock = socket_in_netns(ns, socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE)
    try:
        ipr = IPRoute(use_socket=sock)
    except BaseException:
        sock.close()
        raise
    try:
        yield ipr
    finally:
        ipr.close()
        sock.close()


def _index(ipr: IPRoute, ifname: str) -> int | None:
    found = ipr.link_lookup(ifname=ifname)
    return int(found[0]) if found else None


def _ignore_exists(fn: Any, *args: Any, **kwargs: Any) -> None:
    from pyroute2.netlink.exceptions import NetlinkError  # type: ignore[import-untyped]

    try:
        fn(*args, **kwargs)
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise


def _ensure_bridge(ipr: IPRoute, name: str) -> int:
    index = _index(ipr, name)
    if index is None:
        ipr.link("add", ifname=name, kind="bridge")
        index = _index(ipr, name)
        assert index is not None
    ipr.link("set", index=index, state="up")
    return index


def _ensure_veth(ipr: IPRoute, name: str, peer: str, peer_ns: str) -> int:
    """A veth `name` here whose peer `peer` lives in namespace `peer_ns`; returns our index.
    A leftover end without its peer (a half-removed link) is replaced."""
    index = _index(ipr, name)
    if index is not None:
        with _netlink(peer_ns) as other:
            if _index(other, peer) is not None:
                return index
        ipr.link("del", index=index)
    ipr.link("add", ifname=name, kind="veth", peer={"ifname": peer, "net_ns_fd": netns_path(peer_ns)})
    index = _index(ipr, name)
    assert index is not None
    return index


def _set_up(ipr: IPRoute, index: int, master: int | None = None) -> None:
    if master is not None:
        ipr.link("set", index=index, master=master)
    ipr.link("set", index=index, state="up")


def _configure_uplink(ns: str, address: str, prefixlen: int) -> int:
    with _netlink(ns) as ipr:
        index = _index(ipr, UPLINK)
        if index is None:
            raise ProxyctlError(f"{UPLINK} is missing in network namespace {ns}")
        _ignore_exists(ipr.addr, "add", index=index, address=address, prefixlen=prefixlen)
        _set_up(ipr, index)
        return index


def _set_sysctls(ns: str, values: Iterable[tuple[str, int]]) -> None:
    sysctl = Sysctl(netns=ns)
    for key, value in values:
        sysctl.ensure(key, value)


# --- the lab ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Addressing:
    """Prefix lengths and gateways derived from the spec."""

    underlay_prefixlen: int
    pod_prefixlen: int

    @classmethod
    def of(cls, spec: LabSpec) -> Addressing:
        return cls(ipaddress.ip_network(spec.underlay_cidr).prefixlen,
                   ipaddress.ip_network(spec.nodes[0].pod_cidr).prefixlen if spec.nodes else 24)


def conflicting_lab(spec: LabSpec) -> str | None:
    """The root-namespace link of another lab holding this lab's host address, if any."""
    with _netlink(None) as ipr:
        for msg in ipr.get_addr(family=socket.AF_INET, address=spec.host_ip):
            link = ipr.get_links(msg["index"])[0].get("ifname")
            if link != spec.host_veth:
                return str(link)
    return None


def up(spec: LabSpec) -> None:
    """Create (or complete) the lab's namespaces, links, addresses, routes and sysctls."""
    if os.geteuid() != 0:
        raise ConfigError("the lab needs root (network namespaces, netfilter)")
    other = conflicting_lab(spec)
    if other is not None:
        owner = other[: -len("-host")] if other.endswith("-host") else other
        raise ConfigError(
            f"{spec.host_ip} is already used by link {other} (another lab?); "
            f"remove it first, e.g. `kubectl proxyctl lab down --name {owner}`")
    net = Addressing.of(spec)
    for ns in (spec.underlay_ns, *(spec.node_ns(n) for n in spec.nodes), spec.client_ns):
        ensure_netns(ns)
    with _netlink(None) as ipr:
        _ensure_veth(ipr, spec.host_veth, HOST_PEER, spec.underlay_ns)
    with _netlink(spec.underlay_ns) as ipr:
        bridge = _ensure_bridge(ipr, UNDERLAY_BRIDGE)
        for node in spec.nodes:
            _set_up(ipr, _ensure_veth(ipr, node.name, UPLINK, spec.node_ns(node)), bridge)
        _set_up(ipr, _ensure_veth(ipr, CLIENT_PEER, UPLINK, spec.client_ns), bridge)
        host = _index(ipr, HOST_PEER)
        assert host is not None
        _set_up(ipr, host, bridge)
    for node in spec.nodes:
        _node_up(spec, node, net)
    _client_up(spec, net)
    _host_up(spec, net)


def _node_up(spec: LabSpec, node: NodeSpec, net: Addressing) -> None:
    ns = spec.node_ns(node)
    _configure_uplink(ns, node.ip, net.underlay_prefixlen)
    with _netlink(ns) as ipr:
        cbr0 = _ensure_bridge(ipr, POD_BRIDGE)
        _ignore_exists(ipr.addr, "add", index=cbr0, address=node.pod_gateway, prefixlen=net.pod_prefixlen)
        ipr.route("replace", dst="0.0.0.0/0", gateway=spec.host_ip)
        for other in spec.nodes:
            if other.name != node.name:
                ipr.route("replace", dst=other.pod_cidr, gateway=other.ip)
    _set_sysctls(ns, NODE_SYSCTLS)


def _multipath(spec: LabSpec, **hop: Any) -> dict[str, Any]:
    """Route arguments for "via every node" (ECMP), or via the one node."""
    if len(spec.nodes) == 1:
        return {"gateway": spec.nodes[0].ip, **hop}
    return {"multipath": [{"gateway": n.ip, **hop} for n in spec.nodes]}


def _client_up(spec: LabSpec, net: Addressing) -> None:
    _configure_uplink(spec.client_ns, spec.client_ip, net.underlay_prefixlen)
    with _netlink(spec.client_ns) as ipr:
        ipr.route("replace", dst=spec.lb_pool, **_multipath(spec))
    _set_sysctls(spec.client_ns, ((FIB_MULTIPATH_HASH_POLICY, 1), (ICMP_RATELIMIT, 0)))


def _host_up(spec: LabSpec, net: Addressing) -> None:
    """The root namespace's end of the underlay, and its routes into the lab."""
    first = spec.nodes[0].ip
    with _netlink(None) as ipr:
        index = _index(ipr, spec.host_veth)
        assert index is not None
        _ignore_exists(ipr.addr, "add", index=index, address=spec.host_ip, prefixlen=net.underlay_prefixlen)
        _set_up(ipr, index)
        for dst in (spec.cluster_cidr, spec.service_cidr):
            ipr.route("replace", dst=dst, gateway=first, oif=index)
        for node in spec.nodes:  # symmetric paths to pods: straight to their node
            ipr.route("replace", dst=node.pod_cidr, gateway=node.ip, oif=index)
        ipr.route("replace", dst=spec.lb_pool, **_multipath(spec, oif=index))
    # Nothing that enters the root namespace from the lab is forwarded, whatever the host's
    # ip_forward says: lab traffic never leaves the lab.
    Sysctl().ensure(f"net/ipv4/conf/{spec.host_veth}/forwarding", 0)


# --- pods ------------------------------------------------------------------------------------


def pod_ns_prefix(spec: LabSpec) -> str:
    """What every pod namespace name of the lab starts with (`<lab>-pod-`)."""
    return spec.pod_ns("", "")[:-1]


def pod_veth(pod_ns: str) -> str:
    """The node's end of a pod's veth: `vp` + 10 hex digits of the namespace name's hash."""
    return "vp" + hashlib.sha256(pod_ns.encode()).hexdigest()[:10]


def add_pod(spec: LabSpec, node: NodeSpec, pod_ns: str, ip: str) -> None:
    """Create (or complete) a pod's namespace and link to its node's `cbr0`."""
    net = Addressing.of(spec)
    node_ns = spec.node_ns(node)
    if not netns_exists(node_ns):
        raise ProxyctlError(f"node namespace {node_ns} is missing: run `kubectl proxyctl lab up`")
    ensure_netns(pod_ns)
    with _netlink(node_ns) as ipr:
        cbr0 = _index(ipr, POD_BRIDGE)
        if cbr0 is None:
            raise ProxyctlError(f"{POD_BRIDGE} is missing in {node_ns}: run `kubectl proxyctl lab up`")
        port = _ensure_veth(ipr, pod_veth(pod_ns), UPLINK, pod_ns)
        _set_up(ipr, port, cbr0)
        # Hairpin: a pod must reach itself through a Service (bridged DNAT back out of the
        # port the frame came in on), as kubelet's hairpin-veth mode allows.
        ipr.brport("set", index=port, mode=1)
    with _netlink(pod_ns) as ipr:
        index = _index(ipr, UPLINK)
        assert index is not None
        for msg in ipr.get_addr(index=index, family=socket.AF_INET):
            if msg.get_attr("IFA_ADDRESS") != ip:
                ipr.addr("del", index=index, address=msg.get_attr("IFA_ADDRESS"), prefixlen=msg["prefixlen"])
        _ignore_exists(ipr.addr, "add", index=index, address=ip, prefixlen=net.pod_prefixlen)
        _set_up(ipr, index)
        ipr.route("replace", dst="0.0.0.0/0", gateway=node.pod_gateway)


def remove_pod(pod_ns: str) -> None:
    """Kill what runs in a pod's namespace and delete it (its veth goes with it)."""
    kill_pids(pids_in_netns([pod_ns]).get(pod_ns, []), grace=1.0)
    remove_netns(pod_ns)


# --- teardown --------------------------------------------------------------------------------


@dataclass
class Removed:
    """What `teardown` found and removed."""

    namespaces: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    processes: list[int] = field(default_factory=list)


def teardown(spec: LabSpec) -> Removed:
    """Remove every namespace and root-namespace link of the lab, and every process living
    in its namespaces; works on a half-built lab too, and does nothing the second time."""
    removed = Removed()
    names = lab_namespaces(spec)
    by_ns = pids_in_netns(names)
    removed.processes = sorted({pid for pids in by_ns.values() for pid in pids})
    kill_pids(removed.processes)
    with _netlink(None) as ipr:  # first, so no route into the lab outlives it
        for link in ipr.get_links():
            ifname = str(link.get("ifname") or "")
            kind = link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")
            if ifname.startswith(lab_prefix(spec)) and kind == "veth":
                ipr.link("del", index=link["index"])
                removed.links.append(ifname)
    for name in names:
        if remove_netns(name):
            removed.namespaces.append(name)
    return removed
