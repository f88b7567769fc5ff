"""The shape of a lab: names, addresses and ranges, derived from a few choices.

Pure data shared by the lab's controllers (allocation, scheduling), its topology builder
(namespaces, links, routes) and its CLI. Every kernel object a lab creates is named from
`LabSpec.name`, so `lab down` can find and remove everything, also after a crash.

Topology (see docs/DESIGN.md): an underlay bridge in namespace `<lab>-net` on 172.18.0.0/24;
the root namespace reaches it at 172.18.0.1 (the API server listens there); node *i*
(1-based) is `<lab>-node<i>` at 172.18.0.(i+1) with pod CIDR 10.244.<i>.0/24 on a bridge
`cbr0`; an outside client `<lab>-client` at 172.18.0.100; ClusterIPs from 10.96.0.0/12;
NodePorts 30000-32767; LoadBalancer IPs from 172.18.255.0/24.

Outside the network, each node has a cgroup v2 directory `proxyctl-<lab>/<node>` (under the
machine's cgroup v2 mount) that holds its pods' processes and every command run in one of
its pods, in every mode. In eBPF mode the node's engine attaches its programs there (so
connect() of the node's pods is load-balanced, and nothing else on the machine is) and pins
its maps and program links under `/sys/fs/bpf/proxyctl-<lab>-<node>`; the engine itself, the
node-level commands and the outside client stay out of every node cgroup.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from kubectl_proxyctl.errors import ConfigError

NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,7}$")  # short: it prefixes interface names (15 chars max)
MAX_NODES = 50
MODES = ("iptables", "nftables", "ebpf", "ipvs")  # the engines' proxy modes a lab runs
APISERVERS = ("lab", "external")  # the lab's own API server, or etcd + kube-apiserver (external.py)
BPFFS = "/sys/fs/bpf"  # where eBPF-mode engines pin their maps and links (one directory per node)


@dataclass(frozen=True)
class NodeSpec:
    name: str  # the Kubernetes node name, e.g. "node1"
    index: int  # 1-based
    ip: str  # underlay address
    pod_cidr: str
    zone: str = ""

    @property
    def pod_gateway(self) -> str:
        """The node's address on its pod bridge (first host of the pod CIDR)."""
        return str(next(ipaddress.ip_network(self.pod_cidr).hosts()))


@dataclass(frozen=True)
class LabSpec:
    name: str = "lab"
    nodes: tuple[NodeSpec, ...] = ()
    mode: str = "iptables"
    apiserver: str = "lab"
    underlay_cidr: str = "172.18.0.0/24"
    host_ip: str = "172.18.0.1"  # the root namespace's address on the underlay
    client_ip: str = "172.18.0.100"
    cluster_cidr: str = "10.244.0.0/16"
    service_cidr: str = "10.96.0.0/12"
    nodeport_range: tuple[int, int] = (30000, 32767)
    lb_pool: str = "172.18.255.0/24"
    api_port: int = 6443
    state_root: str = field(default_factory=lambda: os.environ.get("PROXYCTL_LAB_DIR", "/var/lib/proxyctl-lab"))

    @classmethod
    def build(cls, name: str = "lab", nodes: int = 3, zones: int = 0, mode: str = "iptables",
              state_root: str | None = None, apiserver: str = "lab") -> "LabSpec":
        if not NAME_RE.match(name):
            raise ConfigError(f"lab name {name!r}: use 1-8 lower-case letters or digits, starting with a letter")
        if not 1 <= nodes <= MAX_NODES:
            raise ConfigError(f"--nodes must be within 1..{MAX_NODES}")
        if zones < 0 or zones > nodes:
            raise ConfigError("--zones must be within 0..--nodes")
        if mode not in MODES:
            raise ConfigError(f"--mode {mode!r}: the lab runs {', '.join(MODES[:-1])} or {MODES[-1]}")
        if apiserver not in APISERVERS:
            raise ConfigError(f"--apiserver {apiserver!r}: use {' or '.join(APISERVERS)}")
        specs = tuple(
            NodeSpec(name=f"node{i}", index=i, ip=f"172.18.0.{i + 1}", pod_cidr=f"10.244.{i}.0/24",
                     zone=f"zone-{chr(ord('a') + (i - 1) % zones)}" if zones else "")
            for i in range(1, nodes + 1)
        )
        kwargs = {"state_root": state_root} if state_root else {}
        return cls(name=name, nodes=specs, mode=mode, apiserver=apiserver, **kwargs)

    # --- names of everything the lab creates -------------------------------------------------

    @property
    def underlay_ns(self) -> str:
        return f"{self.name}-net"

    @property
    def client_ns(self) -> str:
        return f"{self.name}-client"

    def node_ns(self, node: NodeSpec | str) -> str:
        return f"{self.name}-{node if isinstance(node, str) else node.name}"

    def pod_ns(self, namespace: str, pod: str) -> str:
        """A pod's network namespace name: readable and unique within the lab."""
        return f"{self.name}-pod-{namespace}-{pod}"

    @property
    def host_veth(self) -> str:
        """The root namespace's end of the link to the underlay bridge."""
        return f"{self.name}-host"

    @property
    def cgroup(self) -> str:
        """The lab's cgroup, relative to the cgroup v2 mount: one directory per node inside."""
        return f"proxyctl-{self.name}"

    def node_cgroup(self, node: NodeSpec | str) -> str:
        """A node's cgroup (its pods' processes), relative to the cgroup v2 mount."""
        return f"{self.cgroup}/{node if isinstance(node, str) else node.name}"

    @property
    def pin_prefix(self) -> str:
        """What the bpffs pin directory of each of the lab's nodes starts with."""
        return f"{BPFFS}/proxyctl-{self.name}-"

    def node_pin_path(self, node: NodeSpec | str) -> str:
        """Where a node's eBPF-mode engine pins its maps and program links."""
        return self.pin_prefix + (node if isinstance(node, str) else node.name)

    @property
    def state_dir(self) -> Path:
        return Path(self.state_root) / self.name

    @property
    def api_url(self) -> str:
        return f"https://{self.host_ip}:{self.api_port}"

    def node(self, name: str) -> NodeSpec:
        for n in self.nodes:
            if n.name == name:
                return n
        raise ConfigError(f"no node {name!r} in lab {self.name!r} (nodes: {', '.join(n.name for n in self.nodes)})")
