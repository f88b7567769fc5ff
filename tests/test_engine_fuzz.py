"""Fuzzing the engine's pure core with malformed and extreme Services and EndpointSlices.

Objects are generated as an API server (or a hand-written `--from-file`) would hand them
over: valid ones with extreme values (ports 1 and 65535, node port 0, huge endpoint lists,
dual-stack and mixed-family addresses, duplicate port numbers, every type and protocol),
and broken ones, each carrying one known defect (out-of-range or wrongly typed ports,
unknown protocols and types, strange or unicode names, None or wrongly typed fields).

For every batch:

* conversion (`state_from_objects`, and the engine's own `StateTracker` path), planning for
  IPv4 and IPv6 and rendering (full and partial) never raise;
* each broken object is reported exactly once through the warn callback (also when the
  same event is delivered twice), a valid object never;
* (lab) the rendered payload is accepted by the real `iptables-restore --test --noflush`
  (`ip6tables-restore` for IPv6) inside a throwaway network namespace.
"""

from __future__ import annotations

import copy
import ipaddress
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import pytest
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st

from kubectl_proxyctl.modes.iptables.render import render
from kubectl_proxyctl.plan.planner import DetectLocalMode, ProxyConfig, plan
from kubectl_proxyctl.kube.convert import state_from_objects
from kubectl_proxyctl.kube.tracker import StateTracker
from kubectl_proxyctl.model import ClusterState, IPFamily
from kubectl_proxyctl.system.executor import SubprocessExecutor
from kubectl_proxyctl.system.iptables import Backend, IptablesSystem
from netns import empty_netns, lab_skip_reason

Obj = dict[str, Any]

FUZZ = settings(max_examples=60, deadline=None, derandomize=True, phases=[Phase.explicit, Phase.generate],
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# --- valid pieces ---------------------------------------------------------------------------

dns_label = st.from_regex(r"[a-z]([-a-z0-9]{0,14}[a-z0-9])?", fullmatch=True)
named_port = st.from_regex(r"[a-z]([-a-z0-9]{0,8}[a-z0-9])?", fullmatch=True)
port_name = st.one_of(st.just(""), named_port)
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
any_ip = st.one_of(ipv4, ipv6)
port = st.one_of(st.sampled_from([1, 53, 80, 443, 8080, 65535]), st.integers(1, 65535))
node_port = st.one_of(st.sampled_from([0, 1, 30000, 32767, 65535]), st.integers(0, 65535))
protocol = st.sampled_from(["TCP", "UDP", "SCTP", None])
svc_type = st.sampled_from(["ClusterIP", "NodePort", "LoadBalancer", "ExternalName", None])
cidr = st.one_of(
    st.builds(lambda ip, n: f"{ip}/{n}", ipv4, st.integers(0, 32)),
    st.builds(lambda ip, n: f"{ip}/{n}", ipv6, st.integers(0, 128)),
)
# Strings a lenient converter filters out silently (kube-proxy drops bad IPs and CIDRs).
junk_text = st.one_of(st.text(max_size=12), st.sampled_from(["", " ", "None", "1.2.3", "::g", "10.0.0.0/33"]))


@st.composite
def cluster_ips(draw: Any) -> list[str]:
    shape = draw(st.sampled_from(["v4", "v6", "v4v6", "v6v4"]))
    v4, v6 = draw(ipv4), draw(ipv6)
    return {"v4": [v4], "v6": [v6], "v4v6": [v4, v6], "v6v4": [v6, v4]}[shape]


@st.composite
def service_port(draw: Any, name: str) -> Obj:
    p: Obj = {"name": name, "port": draw(port)}
    proto = draw(protocol)
    if proto is not None:
        p["protocol"] = proto
    if draw(st.booleans()):
        p["nodePort"] = draw(node_port)
    if draw(st.booleans()):
        p["targetPort"] = draw(st.one_of(port, dns_label))
    return p


@st.composite
def valid_service(draw: Any, ns: str, name: str) -> Obj:
    ips = draw(cluster_ips())
    count = draw(st.integers(1, 4))
    names = [f"{draw(named_port)}{i}"[-15:] for i in range(count)] if count > 1 else [draw(port_name)]
    ports = [draw(service_port(n)) for n in names]
    if count > 1 and draw(st.booleans()):  # duplicate port numbers under different names
        ports[1]["port"] = ports[0]["port"]
    spec: Obj = {"type": draw(svc_type), "clusterIP": ips[0], "clusterIPs": ips, "ports": ports,
                 "selector": {"app": name}}
    if spec["type"] is None:
        del spec["type"]
    if draw(st.booleans()):
        spec["externalIPs"] = draw(st.lists(st.one_of(any_ip, junk_text), max_size=3))
    if draw(st.booleans()):
        spec["loadBalancerSourceRanges"] = draw(st.lists(st.one_of(cidr, junk_text), max_size=3))
    for key in ("externalTrafficPolicy", "internalTrafficPolicy"):
        if draw(st.booleans()):
            spec[key] = draw(st.sampled_from(["Local", "Cluster", "local", ""]))
    if draw(st.booleans()):
        spec["sessionAffinity"] = "ClientIP"
        if draw(st.booleans()):
            spec["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": draw(st.sampled_from([1, 10800, 86400]))}}
    if draw(st.booleans()):
        spec["healthCheckNodePort"] = draw(node_port)
    obj: Obj = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns}, "spec": spec}
    if draw(st.booleans()):
        ingress = [{"ip": ip} for ip in draw(st.lists(st.one_of(any_ip, junk_text), max_size=3))]
        if ingress and draw(st.booleans()):
            ingress[0]["ipMode"] = draw(st.sampled_from(["VIP", "Proxy"]))
        obj["status"] = {"loadBalancer": {"ingress": ingress}}
    return obj


def _nth_ip(v6: bool, base: int, i: int) -> str:
    if v6:
        return str(ipaddress.IPv6Address((0xFD00 << 112) + base * 65536 + i))
    return str(ipaddress.IPv4Address((10 << 24) + ((base % 256) << 16) + i))


@st.composite
def valid_slice(draw: Any, ns: str, service: Obj, index: int) -> Obj:
    ports = service["spec"]["ports"]
    family = draw(st.sampled_from(["IPv4", "IPv6"]))
    v6 = family == "IPv6"
    count = draw(st.sampled_from([0, 1, 2, 3, 7, 40, 1100]))  # 1100: large-cluster mode on its own
    endpoints = []
    for i in range(count):
        # Mostly the slice's family; a few of the other one (kube-proxy ignores them per family).
        other = i < 3 and draw(st.booleans())
        ep: Obj = {"addresses": [_nth_ip(v6 != other, index, i)]}
        if i < 8:  # give the first few random conditions, nodes and hints
            conditions = {k: draw(st.sampled_from([True, False, None])) for k in ("ready", "serving", "terminating")}
            ep["conditions"] = {k: v for k, v in conditions.items() if v is not None}
            ep["nodeName"] = draw(st.sampled_from(["node1", "node2", ""]))
            if draw(st.booleans()):
                ep["hints"] = {"forZones": [{"name": "z1"}], "forNodes": [{"name": "node1"}]}
        endpoints.append(ep)
    slice_ports = []
    for p in ports:
        entry: Obj = {"name": p["name"], "port": draw(port)}
        if "protocol" in p:
            entry["protocol"] = p["protocol"]
        slice_ports.append(entry)
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": f"{service['metadata']['name']}-{index}", "namespace": ns,
                     "labels": {"kubernetes.io/service-name": service["metadata"]["name"]}},
        "addressType": family, "ports": slice_ports, "endpoints": endpoints,
    }


# --- defects --------------------------------------------------------------------------------


def _set(path: tuple[Any, ...], value: Any) -> Callable[[Obj], object]:
    def apply(obj: Obj) -> None:
        target = obj
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return apply


# Each makes a Service that the API server would refuse and the converter must skip and report.
SERVICE_DEFECTS: dict[str, Callable[[Obj], object]] = {
    "port 0": _set(("spec", "ports", 0, "port"), 0),
    "port 65536": _set(("spec", "ports", 0, "port"), 65536),
    "port -1": _set(("spec", "ports", 0, "port"), -1),
    "port as text": _set(("spec", "ports", 0, "port"), "80"),
    "port None": _set(("spec", "ports", 0, "port"), None),
    "port True": _set(("spec", "ports", 0, "port"), True),
    "port float": _set(("spec", "ports", 0, "port"), 80.5),
    "protocol ICMP": _set(("spec", "ports", 0, "protocol"), "ICMP"),
    "protocol lower-case": _set(("spec", "ports", 0, "protocol"), "tcp"),
    "protocol number": _set(("spec", "ports", 0, "protocol"), 6),
    "type unknown": _set(("spec", "type"), "Ingress"),
    "type number": _set(("spec", "type"), 3),
    "type list": _set(("spec", "type"), ["NodePort"]),
    "clusterIP garbage": _set(("spec", "clusterIP"), "10.0.0.300"),
    "clusterIPs garbage": _set(("spec", "clusterIPs"), ["fd00::zz"]),
    "clusterIPs not a list": _set(("spec", "clusterIPs"), "10.0.0.1"),
    "ports a map": _set(("spec", "ports"), {"port": 80}),
    "ports a string": _set(("spec", "ports"), "80"),
    "port entry a string": _set(("spec", "ports", 0), "http"),
    "port name a number": _set(("spec", "ports", 0, "name"), 80),
    "spec a list": _set(("spec",), [1, 2]),
    "status a string": _set(("status",), "up"),
    "metadata None": _set(("metadata",), None),
    "metadata a list": _set(("metadata",), ["x"]),
    "name missing": _set(("metadata", "name"), None),
    "name empty": _set(("metadata", "name"), ""),
    "name a number": _set(("metadata", "name"), 42),
    "labels a list": _set(("metadata", "labels"), ["app"]),
    "externalIPs a string": _set(("spec", "externalIPs"), "1.2.3.4"),
    "externalIPs numbers": _set(("spec", "externalIPs"), [1, 2]),
    "source ranges a string": _set(("spec", "loadBalancerSourceRanges"), "0.0.0.0/0"),
    "selector a list": _set(("spec", "selector"), ["app"]),
    "targetPort a list": _set(("spec", "ports", 0, "targetPort"), [80]),
    "nodePort 70000": lambda o: (o["spec"].__setitem__("type", "NodePort"),
                                 o["spec"]["ports"][0].__setitem__("nodePort", 70000)),
    "nodePort as text": lambda o: (o["spec"].__setitem__("type", "LoadBalancer"),
                                   o["spec"]["ports"][0].__setitem__("nodePort", "30000")),
    # Names the API server refuses; they end up in chain comments, so they must not get through.
    "name with a quote": _set(("metadata", "name"), 'we"b'),
    "name with a space": _set(("metadata", "name"), "my web"),
    "name with a newline": _set(("metadata", "name"), "web\n-A INPUT -j DROP"),
    "name unicode": _set(("metadata", "name"), "wéb-名前"),
    "name too long": _set(("metadata", "name"), "a" * 300),
    "namespace a number": _set(("metadata", "namespace"), 7),
    "namespace with a quote": _set(("metadata", "namespace"), 'ns"1'),
    "namespace upper-case": _set(("metadata", "namespace"), "Prod"),
    "port name with a quote": _set(("spec", "ports", 0, "name"), 'h"ttp'),
    "port name with spaces": _set(("spec", "ports", 0, "name"), "my port"),
    "port name unicode": _set(("spec", "ports", 0, "name"), "pört"),
    "port name too long": _set(("spec", "ports", 0, "name"), "p" * 200),
}

SLICE_DEFECTS: dict[str, Callable[[Obj], object]] = {
    "port 70000": lambda o: o["ports"].append({"name": "x", "port": 70000}),
    "port negative": lambda o: o["ports"].append({"name": "x", "port": -5}),
    "port as text": lambda o: o["ports"].append({"name": "x", "port": "80"}),
    "protocol ICMP": lambda o: o["ports"].append({"name": "x", "port": 80, "protocol": "ICMP"}),
    "ports a map": _set(("ports",), {"name": "x"}),
    "endpoints a string": _set(("endpoints",), "10.0.0.1"),
    "endpoints a map": _set(("endpoints",), {"addresses": ["10.0.0.1"]}),
    "conditions a string": lambda o: o["endpoints"].append({"addresses": ["10.9.9.9"], "conditions": "ready"}),
    "hints a list": lambda o: o["endpoints"].append({"addresses": ["10.9.9.9"], "hints": ["z"]}),
    "metadata a list": _set(("metadata",), ["x"]),
    "name missing": _set(("metadata", "name"), None),
    "labels a list": _set(("metadata", "labels"), ["kubernetes.io/service-name"]),
}

# Odd but acceptable: skipped silently, like kube-proxy does (reported at most once).
SLICE_ODDITIES: dict[str, Callable[[Obj], object]] = {
    "port 0": lambda o: o["ports"].append({"name": "x", "port": 0}),
    "port without a name": lambda o: o["ports"].append({"port": 81}),
    "address not an IP": lambda o: o["endpoints"].append({"addresses": ["not-an-ip"]}),
    "addresses a string": lambda o: o["endpoints"].append({"addresses": "10.0.0.1"}),
    "addresses empty": lambda o: o["endpoints"].append({"addresses": []}),
    "endpoint a string": lambda o: o["endpoints"].append("10.0.0.1"),
    "no service-name label": _set(("metadata", "labels"), {}),
    "FQDN slice": _set(("addressType",), "FQDN"),
    "endpoints None": _set(("endpoints",), None),
    "duplicate endpoints": lambda o: o["endpoints"].extend(copy.deepcopy(o["endpoints"][:2])),
    "unicode node name": lambda o: o["endpoints"].append({"addresses": ["10.9.9.8"], "nodeName": "nöde"}),
}

SERVICE_ODDITIES: dict[str, Callable[[Obj], object]] = {
    "spec None": _set(("spec",), None),
    "ports None": _set(("spec", "ports"), None),
    "clusterIP None (headless)": lambda o: (o["spec"].__setitem__("clusterIP", "None"),
                                             o["spec"].__setitem__("clusterIPs", ["None"])),
    "no clusterIP": lambda o: (o["spec"].pop("clusterIP"), o["spec"].pop("clusterIPs")),
    "affinity timeout 0": _set(("spec", "sessionAffinityConfig"), {"clientIP": {"timeoutSeconds": 0}}),
    "affinity timeout huge": lambda o: (o["spec"].__setitem__("sessionAffinity", "ClientIP"),
                                        o["spec"].__setitem__("sessionAffinityConfig",
                                                              {"clientIP": {"timeoutSeconds": 2**40}})),
    "healthCheckNodePort text": _set(("spec", "healthCheckNodePort"), "3000"),
    "trafficDistribution odd": _set(("spec", "trafficDistribution"), 5),
    "unknown fields": lambda o: o["spec"].update({"frobnicate": {"x": [1, None]}, "ports2": 3}),
    "ingress entries odd": _set(("status",), {"loadBalancer": {"ingress": ["1.2.3.4", None, {"ip": 5}]}}),
    "load balancer a list": _set(("status",), {"loadBalancer": ["x"]}),
}


@dataclass
class Case:
    obj: Any
    expect: str  # "ok", "reject" (reported exactly once) or "odd" (at most once)
    defect: str = ""


@st.composite
def cases(draw: Any) -> list[Case]:
    out: list[Case] = []
    for i in range(draw(st.integers(1, 6))):
        ns = draw(st.sampled_from(["default", "kube-system", "a", "n" * 63]))
        name = f"s{i}-{draw(dns_label)}"[:63].rstrip("-")
        svc = draw(valid_service(ns, name))
        kind = draw(st.sampled_from(["ok", "ok", "reject", "odd"]))
        defect = ""
        if kind == "reject":
            defect = draw(st.sampled_from(sorted(SERVICE_DEFECTS)))
            SERVICE_DEFECTS[defect](svc)
        elif kind == "odd":
            defect = draw(st.sampled_from(sorted(SERVICE_ODDITIES)))
            SERVICE_ODDITIES[defect](svc)
        out.append(Case(svc, kind, defect))
        source = svc if kind == "ok" else draw(valid_service(ns, name))
        for j in range(draw(st.integers(0, 2))):
            sl = draw(valid_slice(ns, source, i * 4 + j))
            skind = draw(st.sampled_from(["ok", "ok", "ok", "reject", "odd"]))
            sdefect = ""
            if skind == "reject":
                sdefect = draw(st.sampled_from(sorted(SLICE_DEFECTS)))
                SLICE_DEFECTS[sdefect](sl)
            elif skind == "odd":
                sdefect = draw(st.sampled_from(sorted(SLICE_ODDITIES)))
                SLICE_ODDITIES[sdefect](sl)
            out.append(Case(sl, skind, sdefect))
    if draw(st.booleans()):
        out.append(Case({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node1"},
                         "status": {"addresses": [{"type": "InternalIP", "address": draw(ipv4)},
                                                  {"type": "InternalIP", "address": draw(ipv6)}]}}, "ok"))
    if draw(st.booleans()):
        junk = draw(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                                 lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
                                 max_leaves=8))
        out.append(Case(junk, "odd", "random JSON"))
    return out


configs = st.builds(
    lambda fam, masq_all, localhost, npa, mode: ProxyConfig(
        node_name="node1", family=fam, cluster_cidrs=("10.244.0.0/16", "fd00:10:244::/56"),
        detect_local_mode=mode, pod_bridge_interface="cbr0", pod_interface_name_prefix="veth",
        masquerade_all=masq_all, localhost_nodeports=localhost, nodeport_addresses=npa,
        node_ips=("172.18.0.2", "fd00:18::2")),
    st.sampled_from(list(IPFamily)), st.booleans(), st.booleans(),
    st.sampled_from([(), ("primary",), ("127.0.0.0/8", "172.18.0.0/24"), ("0.0.0.0/0",), ("fd00:18::/64",)]),
    st.sampled_from(list(DetectLocalMode)),
)


# --- the checks -----------------------------------------------------------------------------


def _identity(obj: Obj) -> tuple[str, str]:
    meta = obj.get("metadata")
    meta = meta if isinstance(meta, dict) else {}
    return str(obj.get("kind")), f"{meta.get('namespace', '')}/{meta.get('name', '')}"


def convert_and_check_reports(batch: list[Case]) -> tuple[ClusterState, ClusterState]:
    """Both conversion paths; asserts the one-report-per-bad-object contract. Returns the
    states of `state_from_objects` and of the tracker."""
    per_object: list[int] = []
    for case in batch:
        seen: list[str] = []
        state_from_objects([case.obj], seen.append)
        n = len(seen)
        per_object.append(n)
        if case.expect == "reject":
            assert n == 1, (case.defect, seen, case.obj)
        elif case.expect == "ok":
            assert n == 0, (seen, case.obj)
        else:
            assert n <= 1, (case.defect, seen)
    everything: list[str] = []
    state = state_from_objects([c.obj for c in batch], everything.append)
    assert len(everything) == sum(per_object), everything

    # The engine's path: informer events into the tracker, each delivered twice.
    tracked: list[str] = []
    tracker = StateTracker("node1", warn=tracked.append)
    for _ in range(2):
        for case in batch:
            obj = case.obj
            kind = obj.get("kind") if isinstance(obj, dict) else None
            if kind in ("Service", "EndpointSlice", "Node"):
                tracker.apply(kind, "ADDED", obj)
    snap = tracker.snapshot()
    tracked_services = sum(1 for c in batch if isinstance(c.obj, dict) and c.obj.get("kind") == "Service")
    # The tracker reports per object identity (kind, namespace/name): objects without a usable
    # name share one identity.
    rejected = {_identity(c.obj) for c in batch if c.expect == "reject" and c.obj.get("kind") != "Node"}
    assert len(rejected) <= len(tracked) <= sum(per_object), (tracked, [c.defect for c in batch])
    assert len(tracked) == len(set(tracked)), tracked  # never the same report twice
    assert len(snap.state.services) <= tracked_services
    # Both paths agree on what gets proxied.
    assert set(snap.state.ports) == set(state.ports)
    return state, snap.state


def plan_and_render(state: ClusterState, config: ProxyConfig) -> list[str]:
    """Full and partial renders of the state's plan; returns the payloads."""
    node_plan = plan(state, config)
    full = render(node_plan, existing_nat_chains={"KUBE-SVC-AAAAAAAAAAAAAAAA", "KUBE-SEP-BBBBBBBBBBBBBBBB"})
    changed = {sp.name.service for sp in node_plan.services[::2]}
    again = plan(state, config, previous=node_plan, changed=changed)
    assert again.services == node_plan.services
    partial = render(again, changed=changed, existing_nat_chains=full.service_chains | {"KUBE-FW-CCCCCCCCCCCCCCCC"})
    large = render(node_plan, large_cluster=True, random_fully=False, nfacct=True, tcp_be_liberal=True)
    for rendered in (full, partial, large):
        assert rendered.text.endswith("COMMIT\n")
        assert all(len(line) < 4096 and "\r" not in line for line in rendered.text.splitlines())
    return [full.text, partial.text, large.text]


@given(batch=cases(), config=configs)
@FUZZ
def test_conversion_plan_and_render_never_raise_and_report_once(batch: list[Case], config: ProxyConfig) -> None:
    state, tracked = convert_and_check_reports(batch)
    for s in (state, tracked):
        plan_and_render(s, config)


# --- the real iptables-restore --test ---------------------------------------------------------

LAB_SKIP = lab_skip_reason("iptables-nft-restore", "ip6tables-nft-restore", "iptables-legacy-restore")


@pytest.fixture(scope="module")
def scratch_netns() -> Iterator[str]:
    if LAB_SKIP:
        pytest.skip(LAB_SKIP)
    with empty_netns("fuzz") as name:
        yield name


def restore_test(netns: str, family: IPFamily, payload: str, backend: Backend = Backend.NFT) -> None:
    IptablesSystem(family, SubprocessExecutor(netns=netns), backend=backend).test(payload, noflush=True)


@pytest.mark.lab
@given(batch=cases(), config=configs)
@settings(FUZZ, max_examples=40)
def test_rendered_payloads_pass_iptables_restore_test(scratch_netns: str, batch: list[Case],
                                                      config: ProxyConfig) -> None:
    state, _ = convert_and_check_reports(batch)
    assume(state.ports)
    for payload in plan_and_render(state, config):
        restore_test(scratch_netns, config.family, payload)


@pytest.mark.lab
@pytest.mark.parametrize("backend", list(Backend))
def test_extreme_cluster_passes_iptables_restore_test(scratch_netns: str, backend: Backend) -> None:
    """Fixed extremes, on both backends: 65535 everywhere, maximal names, 1,100 endpoints per
    family (large-cluster mode on its own), every protocol, dual-stack, ETP Local, affinity
    and source ranges at once."""
    ns, name = "n" * 63, "s" * 63
    ports = [{"name": f"p{i}-" + "x" * 10, "port": p, "protocol": proto, "nodePort": np}
             for i, (p, proto, np) in enumerate([(65535, "TCP", 65535), (1, "UDP", 1), (80, "SCTP", 0)])]
    objs: list[Obj] = [
        {"kind": "Service", "metadata": {"name": name, "namespace": ns},
         "spec": {"type": "LoadBalancer", "clusterIPs": ["10.96.255.255", "fd00::ffff"], "ports": ports,
                  "externalIPs": ["192.0.2.1", "2001:db8::1"], "externalTrafficPolicy": "Local",
                  "healthCheckNodePort": 65535, "sessionAffinity": "ClientIP",
                  "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 86400}},
                  "loadBalancerSourceRanges": ["172.18.0.0/16", "0.0.0.0/0", "fd00::/8"]},
         "status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.1"}, {"ip": "2001:db8::2"}]}}},
    ]
    for family, v6 in (("IPv4", False), ("IPv6", True)):
        objs.append({
            "kind": "EndpointSlice",
            "metadata": {"name": f"{name[:50]}-{family.lower()}", "namespace": ns,
                         "labels": {"kubernetes.io/service-name": name}},
            "addressType": family, "ports": [{"name": p["name"], "port": 65535, "protocol": p["protocol"]} for p in ports],
            "endpoints": [{"addresses": [_nth_ip(v6, 1, i)], "nodeName": "node1" if i % 2 else "node2"}
                          for i in range(1100)],
        })
    warnings: list[str] = []
    state = state_from_objects(objs, warnings.append)
    assert not warnings
    for family in IPFamily:
        config = ProxyConfig(node_name="node1", family=family, cluster_cidrs=("10.244.0.0/16", "fd00:10:244::/56"),
                             node_ips=("172.18.0.2", "fd00:18::2"))
        payloads = plan_and_render(state, config)
        assert plan(state, config).total_endpoints == 3 * 1100
        for payload in payloads[::2]:  # the full and the comment-less one (the partial one is a subset)
            restore_test(scratch_netns, family, payload, backend)
