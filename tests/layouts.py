"""iptables layouts of real-world nodes, as `iptables-restore` payloads.

Generators for what a node's netfilter tables look like when other software than ours
wrote them:

* kube-proxy's own iptables mode as of an era ("1.20", "1.23", "1.24"), following that
  release's `syncProxyRules` (pkg/proxy/iptables/proxier.go) and the kubelet's
  `syncNetworkUtil` (pkg/kubelet/kubelet_network_linux.go): KUBE-SVC/KUBE-SEP chains,
  KUBE-XLB (1.20, 1.23) or KUBE-EXT/KUBE-SVL (1.24) for externalTrafficPolicy=Local,
  KUBE-FW for loadBalancerSourceRanges, KUBE-MARK-DROP and the kubelet's KUBE-FIREWALL;
* Docker's bridge-network rules (and its FORWARD policy DROP);
* Calico 3.2x's felix chains (nat and filter) with the ipsets they match;
* the CNI `portmap` plugin's hostPort chains.

A `NodeTables` collects the tables; each piece of software adds its chains and rules in
the order it would on a node (`node_layout` tells the story), and `NodeTables.render()`
gives one payload that a plain `iptables-restore` loads into an empty namespace.

The service model (`SERVICES`) lives on the addresses of the netns topology
(tests/netns.py): node "node1" at 172.18.0.2, pods at 10.244.1.10 (pod-a), .11 (pod-b),
.12 (pod-c), cluster CIDR 10.244.0.0/16, service IPs 10.96.0.x, a second node's pods at
10.244.2.x.
"""

from __future__ import annotations

import base64
import ipaddress
import hashlib
import shlex
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

from netns import CLIENT_IP, FIRST_POD_HOST, NODE_IP

ERAS = ("1.20", "1.23", "1.24")
BUILTIN_CHAINS = {
    "raw": ("PREROUTING", "OUTPUT"),
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
}
TABLE_ORDER = ("raw", "mangle", "nat", "filter")

NODE_NAME = "node1"
CLUSTER_CIDR = "10.244.0.0/16"
NAMESPACE = "layouts"
MASQ_MARK = "0x004000"  # fmt.Sprintf("%#08x", 1<<14): kube-proxy's and the kubelet's default bit
DROP_MARK = "0x008000"  # 1<<15, the kubelet's --iptables-drop-bit default
BLOCKED_IP = "172.18.0.101"  # a second client address, outside the load balancer's source range
LB_IP = "198.51.100.11"
FLOATING_IP = "198.51.100.20"  # Calico floating IP of pod-c
DOCKER_CIDR = "172.17.0.0/16"
PORTMAP_NETWORK = "cbr0"  # the CNI network name portmap hashes into its chain name
PORTMAP_CONTAINER = "5f1c0c5e9d2a4b7e8c3f6a1d0b9e8f7a6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f"


def pod_ip(index: int, node: int = 1) -> str:
    """The IP the netns topology gives pod number `index` (0 = pod-a) on node `node`."""
    return f"10.244.{node}.{FIRST_POD_HOST + index}"


POD_A, POD_B, POD_C = pod_ip(0), pod_ip(1), pod_ip(2)
REMOTE_1, REMOTE_2 = pod_ip(0, node=2), pod_ip(1, node=2)


# --- the model ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    ip: str
    port: int
    local: bool  # on this node (node1)
    ready: bool = True

    @property
    def address(self) -> str:
        return f"{self.ip}:{self.port}"


@dataclass(frozen=True)
class ServicePort:
    """One port of a Service with its endpoints, as kube-proxy's serviceMap/endpointsMap
    see it (endpoints already in kube-proxy's sorted order)."""

    namespace: str
    name: str
    port_name: str
    cluster_ip: str
    port: int
    protocol: str = "TCP"
    node_port: int = 0
    external_ips: tuple[str, ...] = ()
    lb_ips: tuple[str, ...] = ()
    source_ranges: tuple[str, ...] = ()
    etp_local: bool = False
    affinity_seconds: int = 0
    health_check_node_port: int = 0
    endpoints: tuple[Endpoint, ...] = ()

    @property
    def name_string(self) -> str:
        """ServicePortName.String(): `ns/name:port` (`ns/name` for an unnamed port)."""
        base = f"{self.namespace}/{self.name}"
        return f"{base}:{self.port_name}" if self.port_name else base

    @property
    def proto(self) -> str:
        return self.protocol.lower()

    @property
    def externally_accessible(self) -> bool:
        return bool(self.node_port or self.lb_ips or self.external_ips)

    def ready_endpoints(self) -> list[Endpoint]:
        return sorted((e for e in self.endpoints if e.ready), key=lambda e: e.address)


@dataclass(frozen=True)
class ProxyConfig:
    """What differs between kube-proxy deployments and shows in the rules."""

    cluster_cidr: str = CLUSTER_CIDR
    node_ip: str = NODE_IP
    masq_mark: str = MASQ_MARK
    drop_mark: str = DROP_MARK
    random_fully: bool = True  # iptables >= 1.6.2 has --random-fully
    node_port_addresses: tuple[str, ...] = ()  # empty: every local address (the zero CIDR)
    large_cluster: bool = False  # more than 1000 endpoint chains: no per-endpoint comments


def _svc(name: str, last: int, **kw: object) -> ServicePort:
    return ServicePort(NAMESPACE, name, "http", f"10.96.0.{last}", 80, **kw)  # type: ignore[arg-type]


def _here(*ips: str) -> tuple[Endpoint, ...]:
    return tuple(Endpoint(ip, 80, local=True) for ip in ips)


def _there(*ips: str) -> tuple[Endpoint, ...]:
    return tuple(Endpoint(ip, 80, local=False) for ip in ips)


# (a) .. (g): the fixed service model the layouts are generated for.
SERVICES: tuple[ServicePort, ...] = (
    _svc("web", 10, endpoints=_here(POD_A, POD_B)),
    _svc("nodeport", 11, node_port=30081, endpoints=_here(POD_A, POD_B)),
    _svc("local", 12, node_port=30082, etp_local=True, health_check_node_port=32082,
         endpoints=_here(POD_A) + _there(REMOTE_1)),
    _svc("remote", 13, node_port=30083, etp_local=True, health_check_node_port=32083,
         endpoints=_there(REMOTE_1, REMOTE_2)),
    _svc("lb", 14, node_port=30084, lb_ips=(LB_IP,), source_ranges=(f"{CLIENT_IP}/32",),
         endpoints=_here(POD_A, POD_B)),
    _svc("empty", 15, node_port=30085),
    _svc("sticky", 16, affinity_seconds=10800, endpoints=_here(POD_A, POD_B)),
)


def service(name: str) -> ServicePort:
    """The model's service port called `name`."""
    return next(s for s in SERVICES if s.name == name)


# --- chain names -------------------------------------------------------------------------


def port_proto_hash(service_port_name: str, protocol: str) -> str:
    """portProtoHash: base32(sha256(name + protocol)), first 16 characters."""
    digest = hashlib.sha256((service_port_name + protocol).encode()).digest()
    return base64.b32encode(digest).decode()[:16]


def service_chain(svc: ServicePort, prefix: str) -> str:
    """KUBE-SVC-, KUBE-XLB-, KUBE-FW-, KUBE-EXT- or KUBE-SVL- + the port's hash."""
    return prefix + port_proto_hash(svc.name_string, svc.proto)


def endpoint_chain(svc: ServicePort, ep: Endpoint) -> str:
    """servicePortEndpointChainName: KUBE-SEP- + base32(sha256(name + protocol + ip:port))[:16]."""
    digest = hashlib.sha256((svc.name_string + svc.proto + ep.address).encode()).digest()
    return "KUBE-SEP-" + base64.b32encode(digest).decode()[:16]


def portmap_chain(network: str, container_id: str) -> str:
    """CNI portmap's per-container chain: ("CNI-DN-" + hex(sha512(name + id)))[:28]."""
    return ("CNI-DN-" + hashlib.sha512((network + container_id).encode()).hexdigest())[:28]


def probability(n: int) -> str:
    """computeProbability: 1/n with 10 decimals."""
    return f"{1.0 / n:0.10f}"


def q(text: str) -> str:
    """A comment as kube-proxy writes it into a restore payload (quoted when it has spaces)."""
    return f'"{text}"' if " " in text else text


# --- tables ------------------------------------------------------------------------------


@dataclass
class NodeTables:
    """The netfilter tables of one node: chains with policies and ordered rules.

    Rules are stored without their `-A CHAIN` prefix. Built-in chains exist from the start
    with policy ACCEPT, as on a fresh node."""

    policies: dict[str, dict[str, str]] = field(default_factory=dict)
    rules: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for table, chains in BUILTIN_CHAINS.items():
            for chain in chains:
                self.chain(table, chain, "ACCEPT")

    def chain(self, table: str, name: str, policy: str = "-") -> None:
        """Create a chain (no-op when it exists)."""
        self.policies.setdefault(table, {}).setdefault(name, policy)
        self.rules.setdefault(table, {}).setdefault(name, [])

    def set_policy(self, table: str, chain: str, policy: str) -> None:
        self.policies[table][chain] = policy

    def append(self, table: str, chain: str, rule: str) -> None:
        self.chain(table, chain)
        self.rules[table][chain].append(rule)

    def ensure_first(self, table: str, chain: str, rule: str) -> None:
        """EnsureRule(Prepend): insert at position 1 unless the rule is already there."""
        self.chain(table, chain)
        if rule not in self.rules[table][chain]:
            self.rules[table][chain].insert(0, rule)

    def ensure_last(self, table: str, chain: str, rule: str) -> None:
        """EnsureRule(Append): append unless the rule is already there."""
        self.chain(table, chain)
        if rule not in self.rules[table][chain]:
            self.rules[table][chain].append(rule)

    def replace_chain(self, table: str, chain: str, rules: Iterable[str]) -> None:
        """What a `:CHAIN` line plus `-A` lines in a --noflush restore does: flush, refill."""
        self.chain(table, chain)
        self.rules[table][chain] = list(rules)

    def restore_noflush(self, payload: str) -> None:
        """Apply an `iptables-restore --noflush` payload: every declared chain is flushed
        (created when missing) and refilled; built-in chains not declared are kept."""
        table = ""
        declared: dict[str, list[str]] = {}
        for line in payload.splitlines():
            if not line or line.startswith("#"):
                continue
            if line.startswith("*"):
                table, declared = line[1:], {}
            elif line == "COMMIT":
                for chain, rules in declared.items():
                    self.replace_chain(table, chain, rules)
            elif line.startswith(":"):
                name, policy = line[1:].split()[:2]
                self.chain(table, name, policy)
                if policy != "-":
                    self.set_policy(table, name, policy)
                declared[name] = []
            elif line.startswith("-A "):
                _, chain, rest = line.split(" ", 2)
                if chain in declared:
                    declared[chain].append(rest)
                else:
                    self.append(table, chain, rest)
            elif line.startswith("-X "):
                chain = line.split()[1]
                declared.pop(chain, None)
                self.policies[table].pop(chain, None)
                self.rules[table].pop(chain, None)
            else:
                raise ValueError(f"unsupported restore line: {line!r}")

    def render(self) -> str:
        """One `iptables-restore` payload with every table (built-in chains first)."""
        out: list[str] = []
        for table in TABLE_ORDER:
            chains = self.policies.get(table, {})
            builtin = [c for c in BUILTIN_CHAINS[table] if c in chains]
            user = sorted(c for c in chains if c not in BUILTIN_CHAINS[table])
            out.append(f"*{table}")
            out += [f":{c} {chains[c]} [0:0]" for c in builtin + user]
            for c in builtin + user:
                out += [f"-A {c} {rule}" for rule in self.rules[table][c]]
            out.append("COMMIT")
        return "\n".join(out) + "\n"


# --- kube-proxy's sync, era by era ---------------------------------------------------------


@dataclass
class _Sync:
    """The buffers of one syncProxyRules run: chain lines and rule lines per table."""

    era: str
    config: ProxyConfig
    filter_chains: list[str] = field(default_factory=list)
    filter_rules: list[str] = field(default_factory=list)
    nat_chains: list[str] = field(default_factory=list)
    nat_rules: list[str] = field(default_factory=list)

    def nat_chain(self, name: str) -> None:
        line = f":{name} - [0:0]"
        if line not in self.nat_chains:
            self.nat_chains.append(line)

    def nat(self, *words: str) -> None:
        self.nat_rules.append(" ".join(w for w in words if w))

    def filter(self, *words: str) -> None:
        self.filter_rules.append(" ".join(w for w in words if w))

    def ip(self, ip: str) -> str:
        """1.20 writes service and endpoint IPs through ToCIDR (`/32`); later eras bare."""
        return f"{ip}/32" if self.era == "1.20" else ip

    def comment(self, text: str) -> str:
        """appendServiceCommentLocked: no comment in large-cluster mode."""
        return "" if self.config.large_cluster else f"-m comment --comment {q(text)}"

    def payload(self) -> str:
        return "\n".join(["*filter", *self.filter_chains, *self.filter_rules, "COMMIT",
                          "*nat", *self.nat_chains, *self.nat_rules, "COMMIT"]) + "\n"


def _masq_rule(sync: _Sync) -> str:
    cfg = sync.config
    rule = '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE'
    return rule + (" --random-fully" if cfg.random_fully else "")


def _sync_head(sync: _Sync) -> None:
    filter_top = ["KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-FORWARD"]
    if sync.era != "1.20":
        filter_top.append("KUBE-NODEPORTS")
    sync.filter_chains += [f":{c} - [0:0]" for c in filter_top]
    sync.nat_chains += [f":{c} - [0:0]" for c in ("KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING",
                                                  "KUBE-MARK-MASQ")]
    mark = sync.config.masq_mark
    sync.nat(f"-A KUBE-POSTROUTING -m mark ! --mark {mark}/{mark} -j RETURN")
    sync.nat(f"-A KUBE-POSTROUTING -j MARK --xor-mark {mark}")
    sync.nat(_masq_rule(sync))
    sync.nat(f"-A KUBE-MARK-MASQ -j MARK --or-mark {mark}")


def _endpoint_rules(sync: _Sync, svc: ServicePort, ep: Endpoint) -> None:
    """Declare a KUBE-SEP chain and write its rules."""
    sync.nat_chain(endpoint_chain(svc, ep))
    _endpoint_rules_only(sync, svc, ep)


def _balance(sync: _Sync, svc: ServicePort, chain: str, endpoints: Sequence[Endpoint],
             comment_of: Callable[[Endpoint], str] | None = None) -> None:
    """Affinity checks, then one statistic rule per endpoint (the last one unconditional)."""
    def comment(ep: Endpoint) -> str:
        return sync.comment(comment_of(ep) if comment_of else svc.name_string)

    if svc.affinity_seconds:
        for ep in endpoints:
            sep = endpoint_chain(svc, ep)
            sync.nat(f"-A {chain}", comment(ep), f"-m recent --name {sep} --rcheck --seconds "
                     f"{svc.affinity_seconds} --reap -j {sep}")
    n = len(endpoints)
    for i, ep in enumerate(endpoints):
        odds = f"-m statistic --mode random --probability {probability(n - i)}" if i < n - 1 else ""
        sync.nat(f"-A {chain}", comment(ep), odds, f"-j {endpoint_chain(svc, ep)}")


def _args(svc: ServicePort, what: str, ip: str, sync: _Sync, port: int | None = None) -> str:
    return (f'-m comment --comment "{svc.name_string} {what}" -m {svc.proto} -p {svc.proto} '
            f"-d {sync.ip(ip)} --dport {port or svc.port}")


def _reject(sync: _Sync, chain: str, svc: ServicePort, match: str) -> None:
    sync.filter(f'-A {chain} -m comment --comment "{svc.name_string} has no endpoints"', match, "-j REJECT")


def _sync_service_1_20(sync: _Sync, svc: ServicePort) -> None:
    """One service port in 1.20's syncProxyRules (proxier.go: 'Build rules for each service')."""
    cidr = sync.config.cluster_cidr
    eps = svc.ready_endpoints()
    has = bool(eps)
    svc_chain, xlb, fw = (service_chain(svc, p) for p in ("KUBE-SVC-", "KUBE-XLB-", "KUBE-FW-"))
    if has:
        sync.nat_chain(svc_chain)
    if svc.etp_local:
        sync.nat_chain(xlb)
    if has:
        args = _args(svc, "cluster IP", svc.cluster_ip, sync)
        sync.nat("-A KUBE-SERVICES", args, f"! -s {cidr} -j KUBE-MARK-MASQ")
        sync.nat("-A KUBE-SERVICES", args, f"-j {svc_chain}")
    else:
        _reject(sync, "KUBE-SERVICES", svc, f"-m {svc.proto} -p {svc.proto} -d {sync.ip(svc.cluster_ip)} "
                f"--dport {svc.port}")
    _load_balancer_rules(sync, svc, has, fw, xlb, svc_chain, sync.ip)
    if svc.node_port:
        np_args = f"-m comment --comment {svc.name_string} -m {svc.proto} -p {svc.proto} --dport {svc.node_port}"
        if has and not svc.etp_local:
            sync.nat("-A KUBE-NODEPORTS", np_args, "-j KUBE-MARK-MASQ")
            sync.nat("-A KUBE-NODEPORTS", np_args, f"-j {svc_chain}")
        elif has:
            sync.nat("-A KUBE-NODEPORTS", np_args, "-s 127.0.0.0/8 -j KUBE-MARK-MASQ")
            sync.nat("-A KUBE-NODEPORTS", np_args, f"-j {xlb}")
        else:
            _reject(sync, "KUBE-EXTERNAL-SERVICES", svc, f"-m addrtype --dst-type LOCAL -m {svc.proto} "
                    f"-p {svc.proto} --dport {svc.node_port}")
    if not has:
        return
    for ep in eps:
        sync.nat_chain(endpoint_chain(svc, ep))
    if svc.affinity_seconds:
        for ep in eps:
            sep = endpoint_chain(svc, ep)
            sync.nat(f"-A {svc_chain}", sync.comment(svc.name_string), f"-m recent --name {sep} --rcheck "
                     f"--seconds {svc.affinity_seconds} --reap -j {sep}")
    for i, ep in enumerate(eps):
        odds = f"-m statistic --mode random --probability {probability(len(eps) - i)}" if i < len(eps) - 1 else ""
        sync.nat(f"-A {svc_chain}", sync.comment(svc.name_string), odds, f"-j {endpoint_chain(svc, ep)}")
        _endpoint_rules_only(sync, svc, ep)
    if svc.etp_local:
        _xlb_chain(sync, svc, svc_chain, xlb, [e for e in eps if e.local], numbered=True)


def _endpoint_rules_only(sync: _Sync, svc: ServicePort, ep: Endpoint) -> None:
    """A KUBE-SEP chain's rules: hairpin masquerade, then DNAT (with the affinity `--set`)."""
    chain = endpoint_chain(svc, ep)
    head = f"-A {chain} {sync.comment(svc.name_string)}".rstrip()
    sync.nat(head, "-s", sync.ip(ep.ip), "-j KUBE-MARK-MASQ")
    recent = f"-m recent --name {chain} --set" if svc.affinity_seconds else ""
    sync.nat(head, recent, f"-m {svc.proto} -p {svc.proto} -j DNAT --to-destination {ep.address}")


def _source_ranges(sync: _Sync, svc: ServicePort, head: str, ingress: str, chosen: str) -> None:
    """The KUBE-FW source-range rules; the LB IP itself too when a range holds the node IP."""
    allow_from_node = False
    for src in svc.source_ranges:
        sync.nat(head, f"-s {src} -j {chosen}")
        if ipaddress.ip_address(sync.config.node_ip) in ipaddress.ip_network(src.strip(), strict=False):
            allow_from_node = True
    if allow_from_node:
        sync.nat(head, f"-s {sync.ip(ingress)} -j {chosen}")


def _load_balancer_rules(sync: _Sync, svc: ServicePort, has: bool, fw: str, xlb: str, svc_chain: str,
                         spell: Callable[[str], str]) -> None:
    """≤ 1.23: every load-balancer IP through KUBE-FW-: masquerade (Cluster policy), the
    allowed source ranges on to XLB/SVC, the rest to KUBE-MARK-DROP; the REJECT twin in
    filter without endpoints. `spell` writes the address in the reject rule (1.20: with /32)."""
    for ingress in svc.lb_ips:
        if not has:
            _reject(sync, "KUBE-EXTERNAL-SERVICES", svc, f"-m {svc.proto} -p {svc.proto} -d {spell(ingress)} "
                    f"--dport {svc.port}")
            continue
        sync.nat_chain(fw)
        sync.nat("-A KUBE-SERVICES", _args(svc, "loadbalancer IP", ingress, sync), f"-j {fw}")
        head = f'-A {fw} -m comment --comment "{svc.name_string} loadbalancer IP"'
        chosen = xlb
        if not svc.etp_local:
            sync.nat(head, "-j KUBE-MARK-MASQ")
            chosen = svc_chain
        _source_ranges(sync, svc, head, ingress, chosen)
        sync.nat(head, "-j KUBE-MARK-DROP")


def _xlb_chain(sync: _Sync, svc: ServicePort, svc_chain: str, xlb: str, local: Sequence[Endpoint],
               numbered: bool) -> None:
    """KUBE-XLB (1.20, 1.23): pods to the cluster chain, node-local sources masqueraded to the
    cluster chain, then the local endpoints or KUBE-MARK-DROP."""
    name = svc.name_string
    sync.nat(f'-A {xlb} -m comment --comment "Redirect pods trying to reach external loadbalancer VIP to clusterIP"',
             f"-s {sync.config.cluster_cidr} -j {svc_chain}")
    sync.nat(f'-A {xlb} -m comment --comment "masquerade LOCAL traffic for {name} LB IP"',
             "-m addrtype --src-type LOCAL -j KUBE-MARK-MASQ")
    sync.nat(f'-A {xlb} -m comment --comment "route LOCAL traffic for {name} LB IP to service chain"',
             f"-m addrtype --src-type LOCAL -j {svc_chain}")
    if not local:
        sync.nat(f'-A {xlb} -m comment --comment "{name} has no local endpoints" -j KUBE-MARK-DROP')
        return
    if not numbered:
        _balance(sync, svc, xlb, local)
        return
    if svc.affinity_seconds:
        for ep in local:
            sep = endpoint_chain(svc, ep)
            sync.nat(f"-A {xlb} -m comment --comment {name} -m recent --name {sep} --rcheck --seconds "
                     f"{svc.affinity_seconds} --reap -j {sep}")
    for i, ep in enumerate(local):
        odds = f"-m statistic --mode random --probability {probability(len(local) - i)}" if i < len(local) - 1 else ""
        sync.nat(f'-A {xlb} -m comment --comment "Balancing rule {i} for {name}"', odds, f"-j {endpoint_chain(svc, ep)}")


def _sync_service_1_23(sync: _Sync, svc: ServicePort) -> None:
    """One service port in 1.23's syncProxyRules: SEP chains first, masquerade rules moved
    from KUBE-SERVICES/KUBE-NODEPORTS into the KUBE-SVC chain, XLB kept."""
    cidr = sync.config.cluster_cidr
    eps = svc.ready_endpoints()
    has = bool(eps)
    local = [e for e in eps if e.local] if svc.etp_local else []
    for ep in eps:
        _endpoint_rules(sync, svc, ep)
    svc_chain, xlb, fw = (service_chain(svc, p) for p in ("KUBE-SVC-", "KUBE-XLB-", "KUBE-FW-"))
    if has:
        sync.nat_chain(svc_chain)
    if svc.etp_local:
        sync.nat_chain(xlb)
    if has:
        args = _args(svc, "cluster IP", svc.cluster_ip, sync)
        sync.nat(f"-A {svc_chain}", args, f"! -s {cidr} -j KUBE-MARK-MASQ")
        sync.nat("-A KUBE-SERVICES", args, f"-j {svc_chain}")
    else:
        _reject(sync, "KUBE-SERVICES", svc, f"-m {svc.proto} -p {svc.proto} -d {svc.cluster_ip} --dport {svc.port}")
    _load_balancer_rules(sync, svc, has, fw, xlb, svc_chain, str)
    if svc.node_port:
        np_args = f"-m comment --comment {svc.name_string} -m {svc.proto} -p {svc.proto} --dport {svc.node_port}"
        if has and not svc.etp_local:
            sync.nat(f"-A {svc_chain}", np_args, "-j KUBE-MARK-MASQ")
            sync.nat("-A KUBE-NODEPORTS", np_args, f"-j {svc_chain}")
        elif has:
            sync.nat("-A KUBE-NODEPORTS", np_args, "-s 127.0.0.0/8 -j KUBE-MARK-MASQ")
            sync.nat("-A KUBE-NODEPORTS", np_args, f"-j {xlb}")
        else:
            _reject(sync, "KUBE-EXTERNAL-SERVICES", svc, f"-m addrtype --dst-type LOCAL -m {svc.proto} "
                    f"-p {svc.proto} --dport {svc.node_port}")
    _health_check(sync, svc)
    if not has:
        return
    _balance(sync, svc, svc_chain, eps)
    if svc.etp_local:
        _xlb_chain(sync, svc, svc_chain, xlb, local, numbered=False)


def _health_check(sync: _Sync, svc: ServicePort) -> None:
    if svc.health_check_node_port:
        sync.filter(f'-A KUBE-NODEPORTS -m comment --comment "{svc.name_string} health check node port" '
                    f"-m tcp -p tcp --dport {svc.health_check_node_port} -j ACCEPT")


def _sync_service_1_24(sync: _Sync, svc: ServicePort) -> None:
    """One service port in 1.24's syncProxyRules: KUBE-EXT for every external destination,
    KUBE-SVL for Local policy, KUBE-FW only with source ranges."""
    cidr = sync.config.cluster_cidr
    eps = svc.ready_endpoints()
    has = bool(eps)
    uses_local = svc.etp_local and svc.externally_accessible
    uses_cluster = True  # internalTrafficPolicy Cluster in this model
    local = [e for e in eps if e.local] if uses_local else []
    reachable = sorted({e.address: e for e in (eps if uses_cluster else []) + local}.values(), key=lambda e: e.address)
    for ep in reachable:
        _endpoint_rules(sync, svc, ep)
    svc_chain, svl, ext, fw = (service_chain(svc, p) for p in ("KUBE-SVC-", "KUBE-SVL-", "KUBE-EXT-", "KUBE-FW-"))
    external_policy = svl if svc.etp_local else svc_chain
    if has and uses_cluster:
        sync.nat_chain(svc_chain)
    if has and uses_local:
        sync.nat_chain(svl)
    name = svc.name_string
    if has and svc.externally_accessible:
        sync.nat_chain(ext)
        if not svc.etp_local:
            sync.nat(f'-A {ext} -m comment --comment "masquerade traffic for {name} external destinations" '
                     "-j KUBE-MARK-MASQ")
        else:
            sync.nat(f'-A {ext} -m comment --comment "pod traffic for {name} external destinations"',
                     f"-s {cidr} -j {svc_chain}")
            sync.nat(f'-A {ext} -m comment --comment "masquerade LOCAL traffic for {name} external destinations"',
                     "-m addrtype --src-type LOCAL -j KUBE-MARK-MASQ")
            sync.nat(f'-A {ext} -m comment --comment "route LOCAL traffic for {name} external destinations"',
                     f"-m addrtype --src-type LOCAL -j {svc_chain}")
        sync.nat(f"-A {ext} -j {external_policy}")
    if has:
        args = _args(svc, "cluster IP", svc.cluster_ip, sync)
        sync.nat(f"-A {svc_chain}", args, f"! -s {cidr} -j KUBE-MARK-MASQ")
        sync.nat("-A KUBE-SERVICES", args, f"-j {svc_chain}")
    else:
        _reject(sync, "KUBE-SERVICES", svc, f"-m {svc.proto} -p {svc.proto} -d {svc.cluster_ip} --dport {svc.port}")
    for external_ip in svc.external_ips:
        if has:
            sync.nat("-A KUBE-SERVICES", _args(svc, "external IP", external_ip, sync), f"-j {ext}")
        else:
            _reject(sync, "KUBE-EXTERNAL-SERVICES", svc, f"-m {svc.proto} -p {svc.proto} -d {external_ip} "
                    f"--dport {svc.port}")
    if svc.lb_ips and has:
        nxt = ext
        if svc.source_ranges:
            sync.nat_chain(fw)
            nxt = fw
        for lbip in svc.lb_ips:
            sync.nat("-A KUBE-SERVICES", _args(svc, "loadbalancer IP", lbip, sync), f"-j {nxt}")
            if svc.source_ranges:
                head = f'-A {fw} -m comment --comment "{name} loadbalancer IP"'
                _source_ranges(sync, svc, head, lbip, ext)
                sync.nat(head, "-j KUBE-MARK-DROP")
    else:
        for lbip in svc.lb_ips:
            _reject(sync, "KUBE-EXTERNAL-SERVICES", svc, f"-m {svc.proto} -p {svc.proto} -d {lbip} --dport {svc.port}")
    if svc.node_port:
        if has:
            sync.nat(f"-A KUBE-NODEPORTS -m comment --comment {name} -m {svc.proto} -p {svc.proto} "
                     f"--dport {svc.node_port} -j {ext}")
        else:
            _reject(sync, "KUBE-EXTERNAL-SERVICES", svc, f"-m addrtype --dst-type LOCAL -m {svc.proto} "
                    f"-p {svc.proto} --dport {svc.node_port}")
    _health_check(sync, svc)
    arrow = lambda ep: f"{name} -> {ep.address}"  # noqa: E731
    if uses_cluster and has:
        _balance(sync, svc, svc_chain, eps, arrow)
    if uses_local:
        if local:
            _balance(sync, svc, svl, local, arrow)
        elif has:
            sync.nat(f'-A {svl} -m comment --comment "{name} has no local endpoints" -j KUBE-MARK-DROP')


def _sync_tail(sync: _Sync) -> None:
    """The node-ports tail call and KUBE-FORWARD."""
    last = '"kubernetes service nodeports; NOTE: this must be the last rule in this chain"'
    if not sync.config.node_port_addresses:
        sync.nat(f"-A KUBE-SERVICES -m comment --comment {last} -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS")
    else:
        for address in sync.config.node_port_addresses:
            sync.nat(f"-A KUBE-SERVICES -m comment --comment {last} -d {address} -j KUBE-NODEPORTS")
    mark = sync.config.masq_mark
    sync.filter("-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP")
    sync.filter(f'-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark {mark}/{mark} '
                "-j ACCEPT")
    if sync.era == "1.20":
        sync.filter('-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack pod source rule" '
                    "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT")
        sync.filter('-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack pod destination rule" '
                    "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT")
    else:
        sync.filter('-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" '
                    "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT")


_SERVICE_SYNC = {"1.20": _sync_service_1_20, "1.23": _sync_service_1_23, "1.24": _sync_service_1_24}


def kube_proxy_payload(era: str, services: Sequence[ServicePort] = SERVICES,
                       config: ProxyConfig = ProxyConfig()) -> str:
    """The `iptables-restore --noflush` payload one syncProxyRules of `era` writes, services in
    name order (upstream walks a Go map: any order)."""
    if era not in _SERVICE_SYNC:
        raise ValueError(f"unknown era {era!r}; one of {', '.join(ERAS)}")
    sync = _Sync(era, config)
    _sync_head(sync)
    for svc in sorted(services, key=lambda s: s.name_string):
        _SERVICE_SYNC[era](sync, svc)
    _sync_tail(sync)
    return sync.payload()


def _jump_chains(era: str) -> list[tuple[str, str, str, str, str]]:
    """iptablesJumpChains: (table, built-in chain, target, comment, extra matches)."""
    new = "-m conntrack --ctstate NEW"
    jumps = [("filter", "INPUT", "KUBE-EXTERNAL-SERVICES", "kubernetes externally-visible service portals", new)]
    jumps.append(("filter", "FORWARD", "KUBE-EXTERNAL-SERVICES", "kubernetes externally-visible service portals", new))
    if era != "1.20":
        jumps.insert(1, ("filter", "INPUT", "KUBE-NODEPORTS", "kubernetes health check service ports", ""))
    jumps += [
        ("filter", "FORWARD", "KUBE-SERVICES", "kubernetes service portals", new),
        ("filter", "OUTPUT", "KUBE-SERVICES", "kubernetes service portals", new),
        ("filter", "FORWARD", "KUBE-FORWARD", "kubernetes forwarding rules", ""),
        ("nat", "OUTPUT", "KUBE-SERVICES", "kubernetes service portals", ""),
        ("nat", "PREROUTING", "KUBE-SERVICES", "kubernetes service portals", ""),
        ("nat", "POSTROUTING", "KUBE-POSTROUTING", "kubernetes postrouting rules", ""),
    ]
    return jumps


def add_kubelet(tables: NodeTables, config: ProxyConfig = ProxyConfig()) -> None:
    """The kubelet's syncNetworkUtil (1.20-1.24): KUBE-MARK-DROP / KUBE-FIREWALL,
    KUBE-MARK-MASQ / KUBE-POSTROUTING, and its canary chains."""
    drop, masq = config.drop_mark, config.masq_mark
    for table in ("mangle", "nat", "filter"):
        tables.chain(table, "KUBE-KUBELET-CANARY")
    tables.ensure_last("nat", "KUBE-MARK-DROP", f"-j MARK --or-mark {drop}")
    tables.ensure_last("filter", "KUBE-FIREWALL", '-m comment --comment "kubernetes firewall for dropping marked '
                       f'packets" -m mark --mark {drop}/{drop} -j DROP')
    tables.ensure_last("filter", "KUBE-FIREWALL", '-m comment --comment "block incoming localnet connections" '
                       "--dst 127.0.0.0/8 ! --src 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP")
    tables.ensure_first("filter", "OUTPUT", "-j KUBE-FIREWALL")
    tables.ensure_first("filter", "INPUT", "-j KUBE-FIREWALL")
    tables.chain("nat", "KUBE-MARK-MASQ")
    tables.chain("nat", "KUBE-POSTROUTING")
    tables.ensure_last("nat", "KUBE-MARK-MASQ", f"-j MARK --or-mark {masq}")
    tables.ensure_first("nat", "POSTROUTING", '-m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING')
    tables.ensure_last("nat", "KUBE-POSTROUTING", f"-m mark ! --mark {masq}/{masq} -j RETURN")
    tables.ensure_last("nat", "KUBE-POSTROUTING", f"-j MARK --xor-mark {masq}")
    masq_rule = '-m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE'
    tables.ensure_last("nat", "KUBE-POSTROUTING", masq_rule + (" --random-fully" if config.random_fully else ""))


def add_kube_proxy(tables: NodeTables, era: str, services: Sequence[ServicePort] = SERVICES,
                   config: ProxyConfig = ProxyConfig()) -> None:
    """kube-proxy of `era` starting on the node: canaries, jump rules (each EnsureRule
    Prepend, so they end up in reverse order), KUBE-MARK-DROP ensured, then one sync."""
    for table in ("mangle", "nat", "filter"):
        tables.chain(table, "KUBE-PROXY-CANARY")
    for table, chain, target, comment, extra in _jump_chains(era):
        tables.chain(table, target)
        tables.ensure_first(table, chain, f"{extra} -m comment --comment {q(comment)} -j {target}".strip())
    tables.chain("nat", "KUBE-MARK-DROP")
    tables.restore_noflush(kube_proxy_payload(era, services, config))


# --- other software -----------------------------------------------------------------------


def add_docker(tables: NodeTables) -> None:
    """dockerd (20.10) with its default bridge docker0 and no containers publishing ports."""
    for table, chain in (("nat", "DOCKER"), ("filter", "DOCKER"), ("filter", "DOCKER-ISOLATION-STAGE-1"),
                         ("filter", "DOCKER-ISOLATION-STAGE-2"), ("filter", "DOCKER-USER")):
        tables.chain(table, chain)
    tables.append("nat", "PREROUTING", "-m addrtype --dst-type LOCAL -j DOCKER")
    tables.append("nat", "OUTPUT", "! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER")
    tables.append("nat", "POSTROUTING", f"-s {DOCKER_CIDR} ! -o docker0 -j MASQUERADE")
    tables.append("nat", "DOCKER", "-i docker0 -j RETURN")
    tables.set_policy("filter", "FORWARD", "DROP")
    for rule in ("-j DOCKER-USER", "-j DOCKER-ISOLATION-STAGE-1",
                 "-o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT", "-o docker0 -j DOCKER",
                 "-i docker0 ! -o docker0 -j ACCEPT", "-i docker0 -o docker0 -j ACCEPT"):
        tables.append("filter", "FORWARD", rule)
    tables.append("filter", "DOCKER-ISOLATION-STAGE-1", "-i docker0 ! -o docker0 -j DOCKER-ISOLATION-STAGE-2")
    tables.append("filter", "DOCKER-ISOLATION-STAGE-1", "-j RETURN")
    tables.append("filter", "DOCKER-ISOLATION-STAGE-2", "-o docker0 -j DROP")
    tables.append("filter", "DOCKER-ISOLATION-STAGE-2", "-j RETURN")
    tables.append("filter", "DOCKER-USER", "-j RETURN")


CALICO_WORKLOAD_IFACE = "cali5f4d3c2b1a0"
CALICO_IPSETS = {
    "cali40masq-ipam-pools": ("hash:net", (CLUSTER_CIDR,)),
    "cali40all-ipam-pools": ("hash:net", (CLUSTER_CIDR,)),
    "cali40all-hosts-net": ("hash:net", (NODE_IP, "172.18.0.3")),
}


def _cali(tables: NodeTables, table: str, chain: str, rule_id: str, rule: str, first: bool = False) -> None:
    text = f'-m comment --comment "cali:{rule_id}" {rule}'.replace("  ", " ")
    if first:
        tables.ensure_first(table, chain, text)
    else:
        tables.append(table, chain, text)


def add_calico(tables: NodeTables, floating_ip: str = FLOATING_IP, floating_target: str = POD_C) -> None:
    """calico-node (felix 3.2x, iptables backend, IPIP pools, ChainInsertMode=insert): its
    top-level jumps go first in the built-in chains, the accept-mark rules last in FORWARD."""
    iface = CALICO_WORKLOAD_IFACE
    for table, chains in {
        "nat": ("cali-PREROUTING", "cali-OUTPUT", "cali-POSTROUTING", "cali-fip-dnat", "cali-fip-snat",
                "cali-nat-outgoing"),
        "filter": ("cali-INPUT", "cali-FORWARD", "cali-OUTPUT", "cali-from-hep-forward", "cali-to-hep-forward",
                   "cali-cidr-block", "cali-from-wl-dispatch", "cali-to-wl-dispatch", "cali-wl-to-host",
                   "cali-from-host-endpoint", "cali-to-host-endpoint", f"cali-fw-{iface}", f"cali-tw-{iface}"),
    }.items():
        for chain in chains:
            tables.chain(table, chain)
    _cali(tables, "nat", "PREROUTING", "6gwbT8clXdHdC1b1", "-j cali-PREROUTING", first=True)
    _cali(tables, "nat", "OUTPUT", "tVnHkvAo15HuiPy0", "-j cali-OUTPUT", first=True)
    _cali(tables, "nat", "POSTROUTING", "O3lYWMrLQYEMJtB5", "-j cali-POSTROUTING", first=True)
    _cali(tables, "nat", "cali-PREROUTING", "r6XmIziWUJsdOK6Z", "-j cali-fip-dnat")
    _cali(tables, "nat", "cali-OUTPUT", "GBTAv2p5CwevEyJm", "-j cali-fip-dnat")
    _cali(tables, "nat", "cali-POSTROUTING", "Z-c7XtVd2Bq7s_hA", "-j cali-fip-snat")
    _cali(tables, "nat", "cali-POSTROUTING", "nYKhEzDlr11Jccal", "-j cali-nat-outgoing")
    _cali(tables, "nat", "cali-POSTROUTING", "SXWvdsbh4Mw7wOln", "-o tunl0 -m addrtype ! --src-type LOCAL "
          "--limit-iface-out -m addrtype --src-type LOCAL -j MASQUERADE --random-fully")
    _cali(tables, "nat", "cali-fip-dnat", "q8xXhT5mZbLB7yYA", f"-d {floating_ip}/32 -j DNAT "
          f"--to-destination {floating_target}")
    _cali(tables, "nat", "cali-fip-snat", "tqMYY2rI0KkaxOYk", f"-s {floating_target}/32 -d {floating_target}/32 "
          f"-j SNAT --to-source {floating_ip}")
    _cali(tables, "nat", "cali-nat-outgoing", "flqWnvo8yq4ULQLa", "-m set --match-set cali40masq-ipam-pools src "
          "-m set ! --match-set cali40all-ipam-pools dst -j MASQUERADE --random-fully")

    _cali(tables, "filter", "INPUT", "Cz_u1IQiXIMmKD4c", "-j cali-INPUT", first=True)
    _cali(tables, "filter", "FORWARD", "wUHhoiAYhphO9Mso", "-j cali-FORWARD", first=True)
    _cali(tables, "filter", "OUTPUT", "tVnHkvAo15HuiPy0", "-j cali-OUTPUT", first=True)
    _cali(tables, "filter", "FORWARD", "S93hcgKJrXEqnTfs", '-m comment --comment "Policy explicitly accepted packet." '
          "-m mark --mark 0x10000/0x10000 -j ACCEPT")
    _cali(tables, "filter", "FORWARD", "mp77cMpurHhyjLrM", "-j MARK --set-xmark 0x10000/0x10000")
    for rid, rule in (
        ("PajejrV4aFdkZojI", '-p ipencap -m comment --comment "Allow IPIP packets from Calico hosts" '
                             "-m set --match-set cali40all-hosts-net src -m addrtype --dst-type LOCAL -j ACCEPT"),
        ("_wjq-Yrma8Ly1Svo", '-p ipencap -m comment --comment "Drop IPIP packets from non-Calico hosts" -j DROP'),
        ("8TZGxLWh_Eiz66wc", "-i cali+ -g cali-wl-to-host"),
        ("6McIeIDvPdL6PE1T", "-m mark --mark 0x10000/0x10000 -j ACCEPT"),
        ("YGPbrUms7NId8xVa", "-j MARK --set-xmark 0x0/0xf0000"),
        ("2gmY7Bg2i0i84Wk_", "-j cali-from-host-endpoint"),
        ("q-Vz2ZT9iGE331LL", '-m comment --comment "Host endpoint policy accepted packet." '
                             "-m mark --mark 0x10000/0x10000 -j ACCEPT"),
    ):
        _cali(tables, "filter", "cali-INPUT", rid, rule)
    for rid, rule in (
        ("vjrMJCRpqwy5oRoX", "-j MARK --set-xmark 0x0/0xe0000"),
        ("A_sPAO0mcxbT9mOV", "-m mark --mark 0x0/0x10000 -j cali-from-hep-forward"),
        ("8ZoYfO5HKXWbB3pk", "-i cali+ -j cali-from-wl-dispatch"),
        ("jdEuaPBe14V2hutn", "-o cali+ -j cali-to-wl-dispatch"),
        ("12bc6HljsMKsmfr-", "-j cali-to-hep-forward"),
        ("NOSxoaGx8OIstr1z", "-j cali-cidr-block"),
    ):
        _cali(tables, "filter", "cali-FORWARD", rid, rule)
    for rid, rule in (
        ("Mq1_rAdXXH3YkrzW", "-m mark --mark 0x10000/0x10000 -j ACCEPT"),
        ("69FkRTJDvD5Vu6Vl", "-o cali+ -j RETURN"),
        ("AnEsmO6bDZbQntWW", '-p ipencap -m comment --comment "Allow IPIP packets to other Calico hosts" '
                             "-m set --match-set cali40all-hosts-net dst -m addrtype --src-type LOCAL -j ACCEPT"),
        ("9e9Uf3GU5tX--Lxy", "-j MARK --set-xmark 0x0/0xf0000"),
        ("OB7J9R_uVVA1B5nk", "-m conntrack ! --ctstate DNAT -j cali-to-host-endpoint"),
        ("aJLc6vrjAnsLUPoT", '-m comment --comment "Host endpoint policy accepted packet." '
                             "-m mark --mark 0x10000/0x10000 -j ACCEPT"),
    ):
        _cali(tables, "filter", "cali-OUTPUT", rid, rule)
    _cali(tables, "filter", "cali-from-wl-dispatch", "tWYbjIMBqoRzJgPC", f"-i {iface} -g cali-fw-{iface}")
    _cali(tables, "filter", "cali-from-wl-dispatch", "bPSP6UlMD3mcB_z7", '-m comment --comment "Unknown interface" '
          "-j DROP")
    _cali(tables, "filter", "cali-to-wl-dispatch", "NF6rNZJ3a_BD8Ow5", f"-o {iface} -g cali-tw-{iface}")
    _cali(tables, "filter", "cali-to-wl-dispatch", "qPC6vGkV9w1oVLRK", '-m comment --comment "Unknown interface" '
          "-j DROP")
    _cali(tables, "filter", "cali-wl-to-host", "Ee9Sbo10IpVujdIY", "-j cali-from-wl-dispatch")
    _cali(tables, "filter", "cali-wl-to-host", "nSZbcOoG1xPONxb8", '-m comment --comment "Configured '
          'DefaultEndpointToHostAction" -j ACCEPT')
    for chain in (f"cali-fw-{iface}", f"cali-tw-{iface}"):
        _cali(tables, "filter", chain, "GjU4qsMQDR6sTDVN", "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT")
        _cali(tables, "filter", chain, "Qdn5C_8DzVEw5D2Z", "-m conntrack --ctstate INVALID -j DROP")
        _cali(tables, "filter", chain, "2IGxXY6OvD8lqr2U", "-j MARK --set-xmark 0x0/0x10000")
        _cali(tables, "filter", chain, "vvS9Fq1tCnXeD5Ma", '-m comment --comment "Drop if no profiles matched" -j DROP')


def calico_ipset_save(sets: dict[str, tuple[str, Sequence[str]]] | None = None) -> str:
    """`ipset save` of Calico's sets: create lines, then add lines."""
    out: list[str] = []
    for name, (kind, members) in (sets or CALICO_IPSETS).items():
        out.append(f"create {name} {kind} family inet hashsize 1024 maxelem 1048576")
        out += [f"add {name} {m}" for m in members]
    return "\n".join(out) + "\n"


def add_portmap(tables: NodeTables, host_port: int, pod: str = POD_C, pod_prefixlen: int = 24,
                container_port: int = 80, mark_bit: int = 13, before_kube: bool = True) -> None:
    """The CNI portmap plugin (v1.1) publishing hostPort `host_port` of pod `pod`.

    portmap appends its PREROUTING/OUTPUT entry rules; `before_kube` puts the PREROUTING
    one in front of KUBE-SERVICES instead (a node whose rules were re-created in that order),
    so a hostPort equal to a Service's NodePort shadows it."""
    dn = portmap_chain(PORTMAP_NETWORK, PORTMAP_CONTAINER)
    mark = 1 << mark_bit
    for chain in ("CNI-HOSTPORT-DNAT", "CNI-HOSTPORT-SETMARK", "CNI-HOSTPORT-MASQ", dn):
        tables.chain("nat", chain)
    tables.ensure_last("nat", "CNI-HOSTPORT-SETMARK", '-m comment --comment "CNI portfwd masquerade mark" '
                       f"-j MARK --set-xmark {mark:#x}/{mark:#x}")
    tables.ensure_last("nat", "CNI-HOSTPORT-MASQ", f"-m mark --mark {mark:#x}/{mark:#x} -j MASQUERADE")
    tables.ensure_first("nat", "POSTROUTING", '-m comment --comment "CNI portfwd requiring masquerade" '
                        "-j CNI-HOSTPORT-MASQ")
    entry = "-m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT"
    if before_kube:
        tables.ensure_first("nat", "PREROUTING", entry)
    else:
        tables.ensure_last("nat", "PREROUTING", entry)
    tables.ensure_last("nat", "OUTPUT", entry)
    comment = f'dnat name: \\"{PORTMAP_NETWORK}\\" id: \\"{PORTMAP_CONTAINER}\\"'
    tables.append("nat", "CNI-HOSTPORT-DNAT", f'-m comment --comment "{comment}" -m multiport -p tcp '
                  f"--destination-ports {host_port} -j {dn}")
    base = f"-p tcp --dport {host_port}"
    tables.append("nat", dn, f"{base} -s {pod}/{pod_prefixlen} -j CNI-HOSTPORT-SETMARK")
    tables.append("nat", dn, f"{base} -s 127.0.0.1 -j CNI-HOSTPORT-SETMARK")
    tables.append("nat", dn, f"{base} -j DNAT --to-destination {pod}:{container_port}")


def current_layout_payload(tables: NodeTables) -> None:
    """Our own renderer's rules for the same services (tests/flowhelpers.py's path), loaded
    as the engine leaves them: payload with --noflush, jump rules at position 1."""
    from flowhelpers import endpoint, endpoint_slice, node as node_obj, service as service_obj, state_of
    from kubectl_proxyctl.modes.iptables.render import jump_rules_text, render
    from kubectl_proxyctl.plan.planner import ProxyConfig as OurConfig, plan

    objects: list[dict[str, object]] = [node_obj(NODE_NAME, (NODE_IP,)), node_obj("node2", ("172.18.0.3",))]
    for svc in SERVICES:
        port = {"name": svc.port_name, "port": svc.port}
        if svc.node_port:
            port["nodePort"] = svc.node_port
        kind = "LoadBalancer" if svc.lb_ips else ("NodePort" if svc.node_port else "ClusterIP")
        objects.append(service_obj(svc.namespace, svc.name, svc.cluster_ip, [port], type=kind, lb_ips=svc.lb_ips,
                                   source_ranges=svc.source_ranges, etp="Local" if svc.etp_local else None,
                                   affinity=svc.affinity_seconds or None,
                                   hc_port=svc.health_check_node_port or None))
        if svc.endpoints:
            eps = [endpoint(e.ip, NODE_NAME if e.local else "node2") for e in svc.endpoints]
            objects.append(endpoint_slice(svc.namespace, svc.name, eps, [(svc.port_name, 80, "TCP")]))
    rendered = render(plan(state_of(objects), OurConfig(node_name=NODE_NAME, cluster_cidrs=(CLUSTER_CIDR,),
                                                        node_ips=(NODE_IP,))))
    for (table, chain), lines in jump_rules_text(rendered.jump_rules).items():
        for line in reversed(lines):
            rest = shlex.split(line)[2:] if line.startswith("-A ") else shlex.split(line)
            words = " ".join(q(w) if " " in w else w for w in rest)
            target = words.rsplit("-j ", 1)[1].split()[0]
            tables.chain(table, target)
            tables.ensure_first(table, chain, words)
    tables.restore_noflush(rendered.text)


# --- nodes --------------------------------------------------------------------------------


def kube_proxy_node(era: str, tables: NodeTables | None = None) -> NodeTables:
    """A node where the kubelet started first, then kube-proxy of `era` synced once."""
    tables = tables or NodeTables()
    add_kubelet(tables)
    add_kube_proxy(tables, era)
    return tables


@dataclass(frozen=True)
class Layout:
    """One dump of the fixed list: its file stem, restore payload and `ipset save` text."""

    name: str
    description: str
    payload: str
    ipsets: str = ""


def _docker_then(era: str) -> NodeTables:
    tables = NodeTables()
    add_docker(tables)
    return kube_proxy_node(era, tables)


def _current_docker_hostport() -> NodeTables:
    tables = NodeTables()
    add_docker(tables)
    add_kubelet(tables)
    current_layout_payload(tables)
    add_portmap(tables, service("nodeport").node_port)
    return tables


def _calico(era: str) -> NodeTables:
    tables = kube_proxy_node(era)
    add_calico(tables)
    return tables


def layouts() -> list[Layout]:
    """The fixed list of dumps under tests/data/layouts/."""
    return [
        Layout("kube-proxy-1.20", "kube-proxy 1.20 (and its kubelet) alone", kube_proxy_node("1.20").render()),
        Layout("kube-proxy-1.23", "kube-proxy 1.23 (and its kubelet) alone", kube_proxy_node("1.23").render()),
        Layout("kube-proxy-1.24", "kube-proxy 1.24 (and its kubelet) alone", kube_proxy_node("1.24").render()),
        Layout("kube-proxy-1.24-docker", "Docker, then the kubelet and kube-proxy 1.24",
               _docker_then("1.24").render()),
        Layout("current-docker-hostport", "Docker, the kubelet, our rules, and a CNI hostPort on the NodePort of "
               "service nodeport", _current_docker_hostport().render()),
        Layout("kube-proxy-1.23-calico", "kube-proxy 1.23 with calico-node 3.2x", _calico("1.23").render(),
               calico_ipset_save()),
    ]


__all__ = [
    "ERAS", "SERVICES", "Endpoint", "Layout", "NodeTables", "ProxyConfig", "ServicePort", "add_calico",
    "add_docker", "add_kube_proxy", "add_kubelet", "add_portmap", "calico_ipset_save", "endpoint_chain",
    "kube_proxy_node", "kube_proxy_payload", "layouts", "port_proto_hash", "portmap_chain", "service",
    "service_chain",
]
