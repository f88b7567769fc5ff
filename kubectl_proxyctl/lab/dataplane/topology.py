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

Everything is done from this process over netlink (`system.links`), with each netlink
socket opened by a thread that has entered the target namespace: no `ip` processes, no
forks. Namespaces are created the way iproute2 does it (`system.netns.create_netns`), from
a thread that unshares its network namespace and bind-mounts it on /run/netns/NAME. Every
step is "ensure": `up()` twice is a no-op, and `up()` completes a half-built lab.

Each node also has a cgroup v2 directory, `<cgroup v2 mount>/proxyctl-<lab>/<node>`
(`node_cgroup`), made by `up()` whenever the machine has a cgroup v2 mount (always in eBPF
mode, where the node's engine attaches its programs to it): the pod runtime starts the
node's pods in it and `pods/exec` and `lab exec pod/…` run their commands in it, so in eBPF
mode exactly the node's pods are load-balanced by its engine's programs. Nothing else of the
lab joins a node cgroup.

`teardown(spec)` finds everything by the lab's name prefix: it kills every process that
lives in one of the lab's namespaces, deletes the namespaces (their links go with them) and
the root namespace's end of the underlay veth, then the bpffs pin directories of its
nodes' eBPF-mode engines (`/sys/fs/bpf/proxyctl-<lab>-<node>`: unlinking the pins of the
program links detaches the programs, unlinking the maps' pins frees them) and the lab's
cgroups (killing what is still in them).
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
from dataclasses import dataclass, field
from typing import Callable, Iterable

from kubectl_proxyctl.errors import ConfigError, ProxyctlError
from kubectl_proxyctl.lab.spec import LabSpec, NodeSpec
from kubectl_proxyctl.system import cgroups
from kubectl_proxyctl.system.executor import netns_path as netns_path  # re-exported: `lab exec`, tests
from kubectl_proxyctl.system.links import netlink
from kubectl_proxyctl.system.netns import create_netns, list_netns, remove_netns
from kubectl_proxyctl.system.netns import netns_mounted as netns_exists
from kubectl_proxyctl.system.processes import kill_pids, pids_in_netns
from kubectl_proxyctl.system.sysctl import BRIDGE_NF_CALL_IPTABLES, ICMP_RATELIMIT, IP_FORWARD, Sysctl

UNDERLAY_BRIDGE = "br0"
POD_BRIDGE = "cbr0"
UPLINK = "eth0"  # a node's, the client's and a pod's interface
HOST_PEER = "host"  # the underlay end of the root namespace's veth
CLIENT_PEER = "client"  # the underlay end of the client's veth
FIB_MULTIPATH_HASH_POLICY = "net.ipv4.fib_multipath_hash_policy"
NODE_SYSCTLS = ((IP_FORWARD, 1), (BRIDGE_NF_CALL_IPTABLES, 1), (ICMP_RATELIMIT, 0))


# --- namespaces ------------------------------------------------------------------------------


def ensure_netns(name: str) -> bool:
    """Create network namespace `name`, with its loopback up, unless it exists; True when it
    was created."""
    if not create_netns(name):
        return False
    with netlink(name) as nl:
        lo = nl.index("lo")
        assert lo is not None
        nl.set_up(lo)
    return True


def lab_prefix(spec: LabSpec) -> str:
    """Every namespace and root-namespace link of the lab starts with this."""
    return f"{spec.name}-"


def lab_namespaces(spec: LabSpec) -> list[str]:
    return list_netns(lab_prefix(spec))


def _configure_uplink(ns: str, address: str, prefixlen: int) -> int:
    with netlink(ns) as nl:
        index = nl.index(UPLINK)
        if index is None:
            raise ProxyctlError(f"{UPLINK} is missing in network namespace {ns}")
        nl.add_address(index, address, prefixlen)
        nl.set_up(index)
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
    with netlink(None) as nl:
        for link in nl.link_names_with_address(spec.host_ip):
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
    with netlink(None) as nl:
        nl.ensure_veth(spec.host_veth, HOST_PEER, spec.underlay_ns)
    with netlink(spec.underlay_ns) as nl:
        bridge = nl.ensure_bridge(UNDERLAY_BRIDGE)
        for node in spec.nodes:
            nl.set_up(nl.ensure_veth(node.name, UPLINK, spec.node_ns(node)), bridge)
        nl.set_up(nl.ensure_veth(CLIENT_PEER, UPLINK, spec.client_ns), bridge)
        host = nl.index(HOST_PEER)
        assert host is not None
        nl.set_up(host, bridge)
    for node in spec.nodes:
        _node_up(spec, node, net)
    _client_up(spec, net)
    _host_up(spec, net)
    root = cgroups.cgroup2_root()
    if root is None:
        if spec.mode == "ebpf":
            raise ConfigError("eBPF mode needs the cgroup v2 hierarchy, and none is mounted (see /proc/mounts)")
        return
    for node in spec.nodes:
        cgroups.ensure(os.path.join(root, spec.node_cgroup(node)))


def _node_up(spec: LabSpec, node: NodeSpec, net: Addressing) -> None:
    ns = spec.node_ns(node)
    _configure_uplink(ns, node.ip, net.underlay_prefixlen)
    with netlink(ns) as nl:
        cbr0 = nl.ensure_bridge(POD_BRIDGE)
        nl.add_address(cbr0, node.pod_gateway, net.pod_prefixlen)
        nl.replace_route("0.0.0.0/0", [spec.host_ip])
        for other in spec.nodes:
            if other.name != node.name:
                nl.replace_route(other.pod_cidr, [other.ip])
    _set_sysctls(ns, NODE_SYSCTLS)


def _every_node(spec: LabSpec) -> list[str]:
    """Gateways for "via every node" (ECMP; a plain route when there is one node)."""
    return [n.ip for n in spec.nodes]


def _client_up(spec: LabSpec, net: Addressing) -> None:
    _configure_uplink(spec.client_ns, spec.client_ip, net.underlay_prefixlen)
    with netlink(spec.client_ns) as nl:
        nl.replace_route(spec.lb_pool, _every_node(spec))
    _set_sysctls(spec.client_ns, ((FIB_MULTIPATH_HASH_POLICY, 1), (ICMP_RATELIMIT, 0)))


def _host_up(spec: LabSpec, net: Addressing) -> None:
    """The root namespace's end of the underlay, and its routes into the lab."""
    first = spec.nodes[0].ip
    with netlink(None) as nl:
        index = nl.index(spec.host_veth)
        assert index is not None
        nl.add_address(index, spec.host_ip, net.underlay_prefixlen)
        nl.set_up(index)
        for dst in (spec.cluster_cidr, spec.service_cidr):
            nl.replace_route(dst, [first], oif=index)
        for node in spec.nodes:  # symmetric paths to pods: straight to their node
            nl.replace_route(node.pod_cidr, [node.ip], oif=index)
        nl.replace_route(spec.lb_pool, _every_node(spec), oif=index)
    # Nothing that enters the root namespace from the lab is forwarded, whatever the host's
    # ip_forward says: lab traffic never leaves the lab.
    Sysctl().ensure(f"net/ipv4/conf/{spec.host_veth}/forwarding", 0)


# --- cgroups ---------------------------------------------------------------------------------


def node_cgroup(spec: LabSpec, node: NodeSpec | str) -> str | None:
    """The absolute path of a node's cgroup, None when the machine has no cgroup v2 mount."""
    root = cgroups.cgroup2_root()
    return os.path.join(root, spec.node_cgroup(node)) if root is not None else None


def pod_preexec(spec: LabSpec, node: NodeSpec | str) -> Callable[[], None] | None:
    """What a process started in one of `node`'s pods runs before it execs: joining the
    node's cgroup (made here when it is missing). None without a cgroup v2 mount, where only
    eBPF mode needs one (`up()` refuses it there)."""
    path = node_cgroup(spec, node)
    if path is None:
        return None
    cgroups.ensure(path)
    return cgroups.joiner(path)


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
    with netlink(node_ns) as nl:
        cbr0 = nl.index(POD_BRIDGE)
        if cbr0 is None:
            raise ProxyctlError(f"{POD_BRIDGE} is missing in {node_ns}: run `kubectl proxyctl lab up`")
        port = nl.ensure_veth(pod_veth(pod_ns), UPLINK, pod_ns)
        nl.set_up(port, cbr0)
        # Hairpin: a pod must reach itself through a Service (bridged DNAT back out of the
        # port the frame came in on), as kubelet's hairpin-veth mode allows.
        nl.set_hairpin(port)
    with netlink(pod_ns) as nl:
        index = nl.index(UPLINK)
        assert index is not None
        for address, prefixlen in nl.ipv4_addresses(index):
            if address != ip:
                nl.delete_address(index, address, prefixlen)
        nl.add_address(index, ip, net.pod_prefixlen)
        nl.set_up(index)
        nl.replace_route("0.0.0.0/0", [node.pod_gateway])


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
    cgroups: list[str] = field(default_factory=list)
    killed_in_cgroups: int = 0  # processes outside the lab's namespaces but in its cgroups
    pins: list[str] = field(default_factory=list)  # the pin directories of eBPF-mode engines


def teardown(spec: LabSpec) -> Removed:
    """Remove every namespace and root-namespace link of the lab, every process living in
    its namespaces or cgroups, its cgroups and its nodes' BPF pins; works on a half-built lab
    too, and does nothing the second time."""
    removed = Removed()
    names = lab_namespaces(spec)
    by_ns = pids_in_netns(names)
    removed.processes = sorted({pid for pids in by_ns.values() for pid in pids})
    kill_pids(removed.processes)
    with netlink(None) as nl:  # first, so no route into the lab outlives it
        for index, ifname, kind in nl.links():
            if ifname.startswith(lab_prefix(spec)) and kind == "veth":
                nl.delete_link(index)
                removed.links.append(ifname)
    for name in names:
        if remove_netns(name):
            removed.namespaces.append(name)
    removed.pins = remove_pins(spec)
    root = cgroups.cgroup2_root()
    if root is not None:
        removed.cgroups, removed.killed_in_cgroups = cgroups.remove_tree(os.path.join(root, spec.cgroup))
    return removed


def pin_dirs(spec: LabSpec) -> list[str]:
    """The pin directories of the lab's nodes' eBPF-mode engines that exist (found by their
    prefix, so a crashed lab's are found whatever its node count was)."""
    parent, prefix = os.path.split(spec.pin_prefix)
    try:
        entries = sorted(os.listdir(parent))
    except OSError:
        return []
    return [os.path.join(parent, e) for e in entries
            if e.startswith(prefix) and e[len(prefix):].startswith("node") and os.path.isdir(os.path.join(parent, e))]


def remove_pins(spec: LabSpec) -> list[str]:
    """Unlink every pinned object under the lab's pin directories, then the directories."""
    removed = []
    for top in pin_dirs(spec):
        for directory, _, files in sorted(os.walk(top), key=lambda entry: -entry[0].count("/")):
            for name in files:
                try:
                    os.unlink(os.path.join(directory, name))
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    raise ProxyctlError(f"cannot unpin {os.path.join(directory, name)}: {exc.strerror or exc}") from exc
            try:
                os.rmdir(directory)
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise ProxyctlError(f"cannot remove {directory}: {exc.strerror or exc}") from exc
        removed.append(top)
    return removed
