"""Shared helpers for the iptables tests: API object builders, plan → render → parse, packet
flow tables, and the comparison with kube-proxy's own expected rules.

Objects are built as the API server returns them (plain dicts) and go through
`kube.convert.state_from_objects`, the same boundary the product uses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from kubectl_proxyctl.modes.iptables.render import RenderedRules, render
from kubectl_proxyctl.plan.planner import NodePlan, ProxyConfig, plan
from kubectl_proxyctl.kube.convert import state_from_objects
from kubectl_proxyctl.model import ClusterState, IPFamily
from kubectl_proxyctl.modes.iptables.parse import Ruleset, parse
from kubectl_proxyctl.modes.iptables.trace import trace
from kubectl_proxyctl.modes.tracing import Origin, Packet, TraceResult, Verdict

Obj = dict[str, Any]

# kube-proxy's test conventions (proxier_test.go): pods 10.0.0.0/8, service IPs 172.30.0.0/16,
# node 192.168.0.2 (and a second address 192.168.1.2), external clients 203.0.113.0/24.
NODE = "test-node"
NODE_IP = "192.168.0.2"
NODE_IP_ALT = "192.168.1.2"
NODE_IPS = (NODE_IP, NODE_IP_ALT)
POD_CIDR = "10.0.0.0/8"
POD = "10.0.0.2"
EXTERNAL = "203.0.113.2"
EXTERNAL_BLOCKED = "203.0.113.130"


def service(
    ns: str,
    name: str,
    cluster_ip: str,
    ports: Sequence[dict[str, Any]],
    *,
    type: str = "ClusterIP",
    external_ips: Sequence[str] = (),
    lb_ips: Sequence[str] = (),
    source_ranges: Sequence[str] = (),
    etp: str | None = None,
    itp: str | None = None,
    affinity: int | None = None,
    hc_port: int | None = None,
    cluster_ips: Sequence[str] | None = None,
) -> Obj:
    spec: dict[str, Any] = {
        "type": type,
        "clusterIP": cluster_ip,
        "clusterIPs": list(cluster_ips) if cluster_ips else [cluster_ip],
        "ports": [dict({"protocol": "TCP"}, **p) for p in ports],
    }
    if external_ips:
        spec["externalIPs"] = list(external_ips)
    if source_ranges:
        spec["loadBalancerSourceRanges"] = list(source_ranges)
    if etp:
        spec["externalTrafficPolicy"] = etp
    if itp:
        spec["internalTrafficPolicy"] = itp
    if affinity is not None:
        spec["sessionAffinity"] = "ClientIP"
        spec["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": affinity}}
    if hc_port:
        spec["healthCheckNodePort"] = hc_port
    obj: Obj = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns}, "spec": spec}
    if lb_ips:
        obj["status"] = {"loadBalancer": {"ingress": [{"ip": ip} for ip in lb_ips]}}
    return obj


def endpoint(
    ip: str,
    node: str | None = None,
    *,
    ready: bool | None = None,
    serving: bool | None = None,
    terminating: bool | None = None,
    zones: Sequence[str] = (),
    nodes: Sequence[str] = (),
    zone: str | None = None,
) -> Obj:
    ep: Obj = {"addresses": [ip]}
    conditions = {k: v for k, v in (("ready", ready), ("serving", serving), ("terminating", terminating)) if v is not None}
    if conditions:
        ep["conditions"] = conditions
    if node:
        ep["nodeName"] = node
    if zone:
        ep["zone"] = zone
    hints: Obj = {}
    if zones:
        hints["forZones"] = [{"name": z} for z in zones]
    if nodes:
        hints["forNodes"] = [{"name": n} for n in nodes]
    if hints:
        ep["hints"] = hints
    return ep


def endpoint_slice(
    ns: str,
    service_name: str,
    endpoints: Sequence[Obj],
    ports: Sequence[tuple[str, int, str]] | Sequence[tuple[str, int]],
    *,
    name: str | None = None,
    family: str = "IPv4",
) -> Obj:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name or f"{service_name}-1",
            "namespace": ns,
            "labels": {"kubernetes.io/service-name": service_name},
        },
        "addressType": family,
        "endpoints": list(endpoints),
        "ports": [
            {"name": p[0], "port": p[1], "protocol": p[2] if len(p) > 2 else "TCP"}  # type: ignore[misc]
            for p in ports
        ],
    }


def node(name: str = NODE, ips: Sequence[str] = NODE_IPS, zone: str | None = None, pod_cidrs: Sequence[str] = ()) -> Obj:
    obj: Obj = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "spec": {"podCIDRs": list(pod_cidrs)} if pod_cidrs else {},
        "status": {"addresses": [{"type": "InternalIP", "address": ip} for ip in ips]},
    }
    if zone:
        obj["metadata"]["labels"]["topology.kubernetes.io/zone"] = zone
    return obj


def state_of(objects: Iterable[Obj]) -> ClusterState:
    warnings: list[str] = []
    state = state_from_objects(objects, warn=warnings.append)
    assert not warnings, warnings
    return state


def default_config(**overrides: Any) -> ProxyConfig:
    values: dict[str, Any] = {
        "node_name": NODE,
        "cluster_cidrs": (POD_CIDR,),
        "node_ips": NODE_IPS,
    }
    values.update(overrides)
    return ProxyConfig(**values)


@dataclass
class Built:
    plan: NodePlan
    rendered: RenderedRules
    ruleset: Ruleset  # the payload plus the jump rules, as installed on a node
    local_ips: tuple[str, ...]

    def trace(self, src: str, dst: str, port: int, origin: str = "pod", protocol: str = "tcp", **kw: Any) -> TraceResult:
        return trace(self.ruleset, Packet(src, dst, port, protocol, Origin(origin), **kw), self.local_ips)


def build(objects: Iterable[Obj], config: ProxyConfig | None = None, local_ips: Sequence[str] | None = None, **render_options: Any) -> Built:
    cfg = config or default_config()
    p = plan(state_of(objects), cfg)
    rendered = render(p, **render_options)
    ruleset = parse(rendered.text).with_jump_rules(rendered.jump_rules)
    return Built(p, rendered, ruleset, tuple(local_ips if local_ips is not None else cfg.node_ips))


@dataclass(frozen=True)
class Flow:
    """One row of a packet-flow table: where must this packet go?

    `output` is kube-proxy's packetFlowTest notation: the DNAT destinations joined with ", "
    in rule order, or ACCEPT / DROP / REJECT, or "" when no rule touches the packet.
    """

    name: str
    src: str
    dst: str
    port: int
    output: str
    masq: bool = False
    origin: str = "pod"
    protocol: str = "tcp"


def outcome_text(result: TraceResult) -> str:
    if result.verdict == Verdict.DNAT:
        return ", ".join(e.destination for e in result.endpoints)
    if result.verdict == Verdict.NONE:
        return ""
    return result.verdict.value


def check_flows(built: Built, flows: Sequence[Flow]) -> None:
    """Trace each flow; fail with every mismatch and the traced paths."""
    errors: list[str] = []
    for f in flows:
        result = built.trace(f.src, f.dst, f.port, f.origin, f.protocol)
        got = outcome_text(result)
        problems = []
        if got != f.output:
            problems.append(f"output {got!r}, want {f.output!r}")
        if result.verdict == Verdict.DNAT:
            n = len(result.endpoints)
            for e in result.endpoints:
                if abs(e.probability - 1.0 / n) > 1e-6:
                    problems.append(f"{e.destination} has probability {e.probability}, want 1/{n}")
        masq = bool(result.masquerade)
        if got not in ("DROP", "REJECT") and masq != f.masq:
            problems.append(f"masquerade {result.masquerade}, want {f.masq}")
        if problems:
            errors.append(f"{f.name}: " + "; ".join(problems) + "\n" + result.summary())
    assert not errors, "\n\n".join(errors)


def assert_consistent(text: str) -> None:
    """kube-proxy's checkIPTablesRuleJumps: every jump and every -A names a declared chain,
    every jumped-to chain has rules, every declared service chain is used."""
    fixed = {"ACCEPT", "REJECT", "DROP", "MARK", "RETURN", "DNAT", "SNAT", "MASQUERADE"}
    top = {"KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING",
           "KUBE-FORWARD", "KUBE-MARK-MASQ", "KUBE-PROXY-FIREWALL", "KUBE-FIREWALL"}
    for table, body in re.findall(r"\*(\w+)\n(.*?)COMMIT\n", text, re.S):
        lines = body.splitlines()
        created = {m.group(1) for line in lines if (m := re.match(r"^:(\S+)", line))}
        created -= {m.group(1) for line in lines if (m := re.match(r"^-X (\S+)", line))}
        filled = {m.group(1) for line in lines if (m := re.match(r"^-A (\S+)", line))}
        jumped = {m.group(1) for line in lines if (m := re.search(r" -j (\S+)", line))} - fixed
        assert not (jumped - created), f"{table}: jumps to undeclared {jumped - created}"
        assert not (filled - created), f"{table}: rules for undeclared {filled - created}"
        assert not (jumped - filled - {"KUBE-NODEPORTS"}), f"{table}: empty jumped-to {jumped - filled}"
        assert not (created - jumped - top), f"{table}: unused {created - jumped - top}"


# --- comparing with kube-proxy's expected output -------------------------------------------

_MARK = re.compile(r"\b0x0*([0-9a-f]+)\b")
_NFACCT = re.compile(r" -m nfacct --nfacct-name \S+")


def _service_of(comment: str | None) -> str:
    """kube-proxy's orderByCommentServiceName: the comment up to the first space or colon."""
    if comment is None:
        return ""
    return re.split(r"[ :]", comment, maxsplit=1)[0]


def normalized_chains(text: str, ignore_nfacct: bool = False) -> dict[tuple[str, str], list[str]]:
    """(table, chain) → rules, normalised for comparing with kube-proxy's test fixtures.

    Marks lose their zero padding (the fixtures use 0x4000, kube-proxy writes 0x00004000).
    In KUBE-SERVICES and KUBE-NODEPORTS, whose order across services follows Go map order,
    rules are stably grouped by service; the "must be the last rule" rule is not moved: where
    it is not last, a line saying so takes its place, so the comparison shows it. With
    `ignore_nfacct` nfacct matches are dropped, and the localhost node-port rules that only
    exist for an nfacct counter with them.
    """
    ruleset = parse(text)
    out: dict[tuple[str, str], list[str]] = {}
    for table_name, table in ruleset.tables.items():
        for chain_name, chain in table.chains.items():
            rules = list(chain.rules)
            if ignore_nfacct:
                rules = [r for r in rules if "localhost_nps_accepted_pkts" not in r.text]
            if chain_name in ("KUBE-SERVICES", "KUBE-NODEPORTS"):
                last = [r for r in rules if r.comment and "must be the last rule" in r.comment]
                others = [r for r in rules if r not in last]
                in_place = rules[len(others):] == last
                rules = sorted(others, key=lambda r: _service_of(r.comment)) + last
            else:
                in_place = True
            lines = []
            for r in rules:
                line = _MARK.sub(lambda m: "0x" + m.group(1), str(r))
                if ignore_nfacct:
                    line = _NFACCT.sub("", line)
                lines.append(line)
            if not in_place:
                lines.append(f"<the node-ports jump is not the last rule of {chain_name}>")
            out[(table_name, chain_name)] = lines
    return out


def compare_with_upstream(ours: str, upstream: str, ignore_nfacct: bool = False) -> list[str]:
    """Differences between our payload and kube-proxy's expected one; [] when equivalent."""
    a = normalized_chains(ours, ignore_nfacct)
    b = normalized_chains(upstream, ignore_nfacct)
    problems: list[str] = []
    for key in sorted(set(a) | set(b)):
        if key not in a:
            problems.append(f"chain {key[0]}/{key[1]} missing from ours")
        elif key not in b:
            problems.append(f"chain {key[0]}/{key[1]} not in upstream")
        elif a[key] != b[key]:
            diff = [f"  - {line}" for line in b[key] if line not in a[key]]
            diff += [f"  + {line}" for line in a[key] if line not in b[key]]
            if not diff:
                diff = ["  (same rules, different order)"]
            problems.append(f"chain {key[0]}/{key[1]} differs:\n" + "\n".join(diff))
    return problems


def family_of(text: str) -> IPFamily:
    return IPFamily.IPv6 if text.lower() == "ipv6" else IPFamily.IPv4
