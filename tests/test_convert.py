"""API objects → model: one table row per kube-proxy conversion rule (reference §1)."""

from __future__ import annotations

from typing import Any

import pytest

from kubectl_proxyctl.kube.convert import state_from_objects
from kubectl_proxyctl.model import IPFamily, Protocol, ServicePortName, ServiceType


def svc(name: str = "web", ns: str = "default", **spec: Any) -> dict[str, Any]:
    labels = spec.pop("labels", None)
    status = spec.pop("status", None)
    body: dict[str, Any] = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": ns, **({"labels": labels} if labels else {})},
        "spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}], **spec},
    }
    if status:
        body["status"] = status
    return body


def eps(name: str = "web-1", service: str = "web", ns: str = "default", endpoints: list[Any] | None = None,
        ports: list[Any] | None = None, labels: dict[str, str] | None = None, address_type: str = "IPv4") -> dict[str, Any]:
    lab = {"kubernetes.io/service-name": service}
    lab.update(labels or {})
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": ns, "labels": lab},
        "addressType": address_type,
        "ports": ports if ports is not None else [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints or [],
    }


def ep(ip: str, **kw: Any) -> dict[str, Any]:
    return {"addresses": [ip], **kw}


HTTP = ServicePortName("default", "web", "http", Protocol.TCP)


# --- Services --------------------------------------------------------------------------

SERVICE_CASES = [
    ("headless is not proxied", svc(clusterIP="None"), False, "headless"),
    ("empty clusterIP is not proxied", svc(clusterIP=""), False, "no cluster IP allocated yet"),
    ("ExternalName is not proxied", svc(type="ExternalName", externalName="example.org"), False, "ExternalName"),
    ("service-proxy-name label is not proxied",
     svc(labels={"service.kubernetes.io/service-proxy-name": "other"}), False, "another proxy"),
    ("plain ClusterIP is proxied", svc(), True, ""),
]


@pytest.mark.parametrize("case,obj,proxied,reason", SERVICE_CASES, ids=[c[0] for c in SERVICE_CASES])
def test_which_services_are_proxied(case: str, obj: dict[str, Any], proxied: bool, reason: str) -> None:
    state = state_from_objects([obj])
    service = state.services["default/web"]
    assert service.proxied is proxied
    assert reason in service.skip_reason
    assert (HTTP in state.ports) is proxied


def test_service_port_fields() -> None:
    obj = svc(
        type="LoadBalancer",
        clusterIPs=["10.96.0.10", "fd00::10"],
        externalIPs=["192.0.2.1", "2001:db8::1", "not-an-ip"],
        loadBalancerSourceRanges=["203.0.113.0/24", " 198.51.100.0/24 "],
        externalTrafficPolicy="Local",
        internalTrafficPolicy="Local",
        healthCheckNodePort=31000,
        sessionAffinity="ClientIP",
        sessionAffinityConfig={"clientIP": {"timeoutSeconds": 60}},
        trafficDistribution="PreferClose",
        ports=[{"name": "http", "port": 80, "targetPort": "web", "nodePort": 30080}],
        status={"loadBalancer": {"ingress": [{"ip": "172.18.255.1"}, {"ip": "172.18.255.2", "ipMode": "Proxy"},
                                             {"hostname": "lb.example"}]}},
    )
    sp = state_from_objects([obj]).ports[HTTP]
    assert sp.type == ServiceType.LoadBalancer
    assert sp.cluster_ip(IPFamily.IPv4) == "10.96.0.10"
    assert sp.cluster_ip(IPFamily.IPv6) == "fd00::10"
    assert sp.external_ips_for(IPFamily.IPv4) == ("192.0.2.1",)
    assert sp.external_ips_for(IPFamily.IPv6) == ("2001:db8::1",)
    assert sp.load_balancer_ips == ("172.18.255.1",), "ipMode Proxy and hostnames are skipped"
    assert sp.load_balancer_source_ranges == ("203.0.113.0/24", "198.51.100.0/24")
    assert sp.external_policy_local and sp.internal_policy_local
    assert sp.health_check_node_port == 31000
    assert sp.session_affinity and sp.sticky_max_age_seconds == 60
    assert sp.target_port == "web" and sp.node_port == 30080
    assert sp.traffic_distribution == "PreferClose"
    assert sp.uses_local_endpoints and sp.uses_cluster_endpoints


POLICY_CASES = [
    # (service type, extra spec, expect ETP local, expect health check port)
    ("ClusterIP ignores ETP Local", {"externalTrafficPolicy": "Local"}, False, 0),
    ("ClusterIP with externalIPs honours ETP Local",
     {"externalTrafficPolicy": "Local", "externalIPs": ["192.0.2.1"]}, True, 0),
    ("NodePort ETP Local has no health check port",
     {"type": "NodePort", "externalTrafficPolicy": "Local", "healthCheckNodePort": 31000}, True, 0),
    ("LoadBalancer ETP Cluster has no health check port",
     {"type": "LoadBalancer", "externalTrafficPolicy": "Cluster", "healthCheckNodePort": 31000}, False, 0),
    ("LoadBalancer ETP Local", {"type": "LoadBalancer", "externalTrafficPolicy": "Local",
                                "healthCheckNodePort": 31000}, True, 31000),
]


@pytest.mark.parametrize("case,spec,local,hc", POLICY_CASES, ids=[c[0] for c in POLICY_CASES])
def test_external_policy(case: str, spec: dict[str, Any], local: bool, hc: int) -> None:
    sp = state_from_objects([svc(**spec)]).ports[HTTP]
    assert sp.external_policy_local is local
    assert sp.health_check_node_port == hc


def test_affinity_timeout_defaults_to_10800() -> None:
    sp = state_from_objects([svc(sessionAffinity="ClientIP")]).ports[HTTP]
    assert sp.sticky_max_age_seconds == 10800


def test_unnamed_port_string_has_no_colon() -> None:
    state = state_from_objects([svc(ports=[{"port": 53, "protocol": "UDP"}])])
    (name,) = state.ports
    assert str(name) == "default/web" and name.protocol == Protocol.UDP
    assert str(HTTP) == "default/web:http"


# --- EndpointSlices --------------------------------------------------------------------

def endpoints_of(*objs: dict[str, Any], spn: ServicePortName = HTTP) -> list[tuple[str, bool, bool, bool]]:
    state = state_from_objects([svc(), *objs])
    return [(e.address, e.ready, e.serving, e.terminating) for e in state.endpoints_of(spn)]


SLICE_IGNORE_CASES = [
    ("service-proxy-name label", {"labels": {"service.kubernetes.io/service-proxy-name": "x"}}),
    ("headless label", {"labels": {"service.kubernetes.io/headless": ""}}),
    ("FQDN address type", {"address_type": "FQDN"}),
]


@pytest.mark.parametrize("case,kw", SLICE_IGNORE_CASES, ids=[c[0] for c in SLICE_IGNORE_CASES])
def test_ignored_slices(case: str, kw: dict[str, Any]) -> None:
    state = state_from_objects([svc(), eps(endpoints=[ep("10.0.0.1")], **kw)])
    assert state.endpoints_of(HTTP) == ()
    assert len(state.ignored_slices) == 1


def test_slice_without_service_name_label_is_ignored() -> None:
    obj = eps(endpoints=[ep("10.0.0.1")])
    del obj["metadata"]["labels"]["kubernetes.io/service-name"]
    state = state_from_objects([svc(), obj])
    assert state.endpoints == {} and state.ignored_slices[0].reason.startswith("no kubernetes.io/service-name")


def test_only_first_address_is_used() -> None:
    assert endpoints_of(eps(endpoints=[{"addresses": ["10.0.0.1", "10.0.0.2"]}])) == [
        ("10.0.0.1:8080", True, True, False)]


CONDITION_CASES = [
    ("nil conditions: ready, serving, not terminating", {}, (True, True, False)),
    ("explicit not ready", {"ready": False}, (False, True, False)),
    ("terminating and serving", {"ready": False, "serving": True, "terminating": True}, (False, True, True)),
    ("null values are defaults", {"ready": None, "serving": None, "terminating": None}, (True, True, False)),
]


@pytest.mark.parametrize("case,conditions,want", CONDITION_CASES, ids=[c[0] for c in CONDITION_CASES])
def test_condition_defaults(case: str, conditions: dict[str, Any], want: tuple[bool, bool, bool]) -> None:
    (row,) = endpoints_of(eps(endpoints=[ep("10.0.0.1", conditions=conditions)]))
    assert row[1:] == want


def test_port_needs_name_and_number() -> None:
    ports = [{"port": 8080}, {"name": "http", "port": 0}, {"name": "http"}]
    assert endpoints_of(eps(endpoints=[ep("10.0.0.1")], ports=ports)) == []


def test_dedup_prefers_non_terminating_and_merges_slices() -> None:
    a = eps("web-a", endpoints=[ep("10.0.0.1", conditions={"ready": False, "terminating": True}),
                                ep("10.0.0.2")])
    b = eps("web-b", endpoints=[ep("10.0.0.1"), ep("10.0.0.3")])
    assert endpoints_of(a, b) == [
        ("10.0.0.1:8080", True, True, False),
        ("10.0.0.2:8080", True, True, False),
        ("10.0.0.3:8080", True, True, False),
    ]
    # order of the slices does not matter
    assert endpoints_of(b, a) == endpoints_of(a, b)


def test_endpoints_sort_as_strings_like_kube_proxy() -> None:
    s = eps(endpoints=[ep("10.244.0.5"), ep("10.244.0.10"), ep("10.244.0.100")],
            ports=[{"name": "http", "port": 53}])
    assert [a for a, *_ in endpoints_of(s)] == ["10.244.0.100:53", "10.244.0.10:53", "10.244.0.5:53"]


def test_dual_stack_endpoints_split_by_family() -> None:
    v4 = eps("web-v4", endpoints=[ep("10.0.0.1")])
    v6 = eps("web-v6", endpoints=[ep("fd00::1")], address_type="IPv6")
    state = state_from_objects([svc(clusterIPs=["10.96.0.10", "fd00::10"]), v4, v6])
    got = {e.family: e.address for e in state.endpoints_of(HTTP)}
    assert got == {IPFamily.IPv4: "10.0.0.1:8080", IPFamily.IPv6: "[fd00::1]:8080"}


def test_endpoint_details() -> None:
    s = eps(endpoints=[ep("10.0.0.1", nodeName="node1", zone="z1", hints={"forZones": [{"name": "z1"}],
                                                                          "forNodes": [{"name": "node1"}]},
                          targetRef={"kind": "Pod", "name": "web-abc", "namespace": "default"})])
    (e,) = state_from_objects([svc(), s]).endpoints_of(HTTP)
    assert (e.node_name, e.zone, e.zone_hints, e.node_hints, e.pod_name, e.slice_name) == (
        "node1", "z1", ("z1",), ("node1",), "web-abc", "web-1")


def test_udp_and_sctp_ports_are_distinct_service_ports() -> None:
    obj = svc(ports=[{"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "sctp", "port": 99, "protocol": "SCTP"}])
    state = state_from_objects([obj])
    assert {(n.port, n.protocol) for n in state.ports} == {("dns", Protocol.UDP), ("sctp", Protocol.SCTP)}


# --- bad input never aborts a conversion --------------------------------------------------

BAD_OBJECTS = [
    ("no metadata", {"kind": "Service", "spec": {}}),
    ("port out of range", svc(ports=[{"port": 70000}])),
    ("unknown protocol", svc(ports=[{"port": 80, "protocol": "ICMP"}])),
    ("ports not a list", svc(ports="80")),
    ("bad cluster IP", svc(clusterIP="10.96.0.999")),
    ("unknown type", svc(type="Fancy")),
    ("labels not a map", {"kind": "Service", "metadata": {"name": "x", "labels": ["a"]}}),
    ("slice endpoints not a list", {**eps(), "endpoints": "x"}),
    ("not an object", "just a string"),
]


@pytest.mark.parametrize("case,obj", BAD_OBJECTS, ids=[c[0] for c in BAD_OBJECTS])
def test_bad_objects_are_skipped_with_one_warning(case: str, obj: Any) -> None:
    warnings: list[str] = []
    state = state_from_objects([obj, svc("good")], warnings.append)
    assert "default/good" in state.services
    assert len(warnings) == 1, warnings


def test_unknown_kinds_are_skipped_with_a_warning() -> None:
    warnings: list[str] = []
    state_from_objects([{"kind": "ConfigMap", "metadata": {"name": "c", "namespace": "default"}}], warnings.append)
    assert warnings == ["skipping ConfigMap default/c: kind 'ConfigMap' is not used (only Service, "
                        "EndpointSlice, Node, Pod, ServiceCIDR)"]


def test_service_cidrs_are_collected_sorted_and_checked() -> None:
    warnings: list[str] = []
    objs = [{"kind": "ServiceCIDR", "metadata": {"name": "kubernetes"}, "spec": {"cidrs": ["10.96.0.0/16", "fd00:96::/112"]}},
            {"kind": "ServiceCIDR", "metadata": {"name": "extra"}, "spec": {"cidrs": ["10.100.0.0/24"]}},
            {"kind": "ServiceCIDR", "metadata": {"name": "bad"}, "spec": {"cidrs": ["10.1.2.3/8"]}}]
    state = state_from_objects(objs, warnings.append)
    assert state.service_cidrs == ("10.100.0.0/24", "10.96.0.0/16", "fd00:96::/112")
    assert warnings == ["skipping invalid ServiceCIDR bad: spec.cidrs: '10.1.2.3/8' is not a CIDR"]


def test_nodes_and_pods() -> None:
    node = {"kind": "Node", "metadata": {"name": "n1", "labels": {"topology.kubernetes.io/zone": "z1"}},
            "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24", "fd00:1::/64"]},
            "status": {"addresses": [{"type": "InternalIP", "address": "172.18.0.2"},
                                     {"type": "Hostname", "address": "n1"}]}}
    pod = {"kind": "Pod", "metadata": {"name": "p", "namespace": "default", "labels": {"app": "web"}},
           "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": [{"name": "web", "containerPort": 80}]}]},
           "status": {"podIP": "10.244.1.5", "conditions": [{"type": "Ready", "status": "True"}]}}
    state = state_from_objects([node, pod])
    n = state.nodes["n1"]
    assert n.zone == "z1" and n.addresses_of("InternalIP") == ("172.18.0.2",)
    assert n.pod_cidrs == ("10.244.1.0/24", "fd00:1::/64")
    p = state.pods["default/p"]
    assert p.ready and p.ip == "10.244.1.5" and p.container_ports == (("web", 80, Protocol.TCP),)

