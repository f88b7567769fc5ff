"""What makes the proxier write everything rather than only what changed, in every mode."""

from __future__ import annotations

from typing import Any, Callable

import pytest
from fakes import Clock, FakeIptables, FakeNft, service, slice_

from kubectl_proxyctl.engine.proxier import Proxier
from kubectl_proxyctl.kube.tracker import StateTracker
from kubectl_proxyctl.modes.iptables.writer import IptablesWriter
from kubectl_proxyctl.modes.nftables.writer import NftablesWriter
from kubectl_proxyctl.plan.planner import ProxyConfig

ZONE = "topology.kubernetes.io/zone"


def node(zone: str, resource_version: str) -> dict[str, Any]:
    return {"kind": "Node",
            "metadata": {"name": "node1", "resourceVersion": resource_version, "labels": {ZONE: zone}},
            "status": {"addresses": [{"type": "InternalIP", "address": "172.18.0.2"}]}}


WRITERS: dict[str, Callable[[], tuple[Any, Any]]] = {
    "iptables": lambda: (fake := FakeIptables(), IptablesWriter(fake)),
    "nftables": lambda: (fake := FakeNft(), NftablesWriter(fake, monotonic=Clock())),
}


@pytest.fixture(params=sorted(WRITERS))
def proxier(request: pytest.FixtureRequest) -> Proxier:
    _, writer = WRITERS[request.param]()
    p = Proxier(ProxyConfig(node_name="node1", cluster_cidrs=("10.244.0.0/16",)), StateTracker("node1"), writer)
    for obj in (node("zone-a", "1"), service("a", "10.96.0.1"), slice_("a", ["10.244.1.1"]),
                service("b", "10.96.0.2"), slice_("b", ["10.244.1.2"])):
        p.on_event(obj["kind"], "ADDED", obj)
    return p


def test_a_change_of_this_node_forces_a_full_sync(proxier: Proxier) -> None:
    first = proxier.sync()
    assert first is not None and first.full and not first.error
    proxier.on_event("EndpointSlice", "MODIFIED", slice_("a", ["10.244.1.1", "10.244.1.3"]))
    partial = proxier.sync()
    assert partial is not None and not partial.full and not partial.error, "an endpoint change is partial"
    proxier.on_event("Node", "MODIFIED", node("zone-b", "2"))
    after_node = proxier.sync()
    assert after_node is not None and after_node.full and not after_node.error, (
        "this node's labels or addresses changed: every service port must be re-planned and rewritten")
    assert after_node.services == 2


def test_another_nodes_change_does_not(proxier: Proxier) -> None:
    proxier.sync()
    other = node("zone-b", "3")
    other["metadata"]["name"] = "node2"
    proxier.on_event("Node", "ADDED", other)
    result = proxier.sync()
    assert result is not None and not result.full


def test_a_failed_sync_makes_the_next_one_full(proxier: Proxier) -> None:
    proxier.sync()
    fake = proxier.writer.system
    fake.fail_next = 1
    proxier.on_event("EndpointSlice", "MODIFIED", slice_("b", ["10.244.1.4"]))
    failed = proxier.sync()
    assert failed is not None and failed.error
    retried = proxier.sync()
    assert retried is not None and retried.full and not retried.error


def service_cidr(cidrs: list[str], resource_version: str) -> dict[str, Any]:
    return {"kind": "ServiceCIDR", "metadata": {"name": "kubernetes", "resourceVersion": resource_version},
            "spec": {"cidrs": cidrs}}


def test_a_service_cidr_change_rewrites_everything_and_nftables_drops_unallocated_cluster_ips() -> None:
    fake, writer = WRITERS["nftables"]()
    p = Proxier(ProxyConfig(node_name="node1", cluster_cidrs=("10.244.0.0/16",)), StateTracker("node1"), writer)
    for obj in (node("zone-a", "1"), service("a", "10.96.0.1"), slice_("a", ["10.244.1.1"])):
        p.on_event(obj["kind"], "ADDED", obj)
    first = p.sync()
    assert first is not None and first.full and "unallocated" not in fake.scripts[-1]
    p.on_event("ServiceCIDR", "ADDED", service_cidr(["10.96.0.0/16", "fd00:96::/112"], "5"))
    second = p.sync()
    assert second is not None and second.full
    assert 'ip daddr { 10.96.0.0/16 } drop comment "Drop traffic to unallocated ClusterIPs"' in fake.scripts[-1]
    p.on_event("ServiceCIDR", "MODIFIED", service_cidr(["10.96.0.0/16", "fd00:96::/112"], "6"))  # same ranges
    third = p.sync()
    assert third is not None and not third.full
    p.on_event("ServiceCIDR", "DELETED", service_cidr(["10.96.0.0/16"], "7"))
    fourth = p.sync()
    assert fourth is not None and fourth.full and "unallocated" not in fake.scripts[-1]
