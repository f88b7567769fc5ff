"""Legacy IPv4 text with leading zeros, read exactly as kube-proxy reads it.

kube-proxy parses Service, EndpointSlice and Node addresses with k8s.io/utils/net
ParseIPSloppy / ParseCIDRSloppy: Go's pre-1.17 parser, where every IPv4 part is decimal and
leading zeros are ignored (`010` is ten, never octal eight), and a CIDR's prefix length may
have them too. Old clusters still store such text (upstream's own TestOverallIPTablesRules
uses `172.30.0.041` and `10.180.00.001`). We used to skip such a Service entirely.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kubectl_proxyctl.cli.main import run
from kubectl_proxyctl.kube.convert import parse_cidr_sloppy, parse_ip_sloppy, state_from_objects
from kubectl_proxyctl.kube.tracker import StateTracker
from kubectl_proxyctl.model import Protocol, ServicePortName

GOLDEN = Path(__file__).parent / "golden" / "upstream-six-services"
RULES = Path(__file__).parent / "data" / "rules"

IP_CASES = [
    ("172.30.0.041", "172.30.0.41"),
    ("10.180.00.001", "10.180.0.1"),
    ("010.000.000.010", "10.0.0.10"),  # decimal: 010 is ten, not octal eight
    ("08.09.0.0", "8.9.0.0"),  # digits an octal parser would refuse
    ("0000000001.2.3.4", "1.2.3.4"),  # Go's dtoi ignores any number of leading zeros
    ("192.168.0.2", "192.168.0.2"),
    ("::ffff:10.0.0.01", "10.0.0.1"),  # Go prints an IPv4-mapped address as IPv4
    ("fd00::0a", "fd00::a"),
    ("00fd::1", "fd::1"),
    ("1.2.3.256", None),
    ("1.2.3", None),
    ("1.2.3.4.5", None),
    ("1.2.3.-4", None),
    (" 1.2.3.4", None),
    ("1.2.3.4 ", None),
    ("0x1.2.3.4", None),
    ("1.2.3.4/24", None),
    ("", None),
    ("::1::2", None),
    ("fd00::1.2.3.4.5", None),
]


@pytest.mark.parametrize("text,want", IP_CASES, ids=[repr(c[0]) for c in IP_CASES])
def test_parse_ip_sloppy(text: str, want: str | None) -> None:
    assert parse_ip_sloppy(text) == want


CIDR_CASES = [
    ("203.0.113.000/025", "203.0.113.0/25"),
    ("10.0.0.1/08", "10.0.0.0/8"),  # the network: ParseCIDR masks the address
    ("010.1.0.0/016", "10.1.0.0/16"),
    ("0.0.0.0/0", "0.0.0.0/0"),
    ("fd00::/0064", "fd00::/64"),
    ("1.2.3.4/33", None),
    ("1.2.3.4/+8", None),
    ("1.2.3.4/", None),
    ("1.2.3.4", None),
    ("1.2.3.4/8/8", None),
]


@pytest.mark.parametrize("text,want", CIDR_CASES, ids=[repr(c[0]) for c in CIDR_CASES])
def test_parse_cidr_sloppy(text: str, want: str | None) -> None:
    assert parse_cidr_sloppy(text) == want


def service(**spec: Any) -> dict[str, Any]:
    status = spec.pop("status", None)
    obj: dict[str, Any] = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "ns1"},
                           "spec": {"ports": [{"name": "http", "port": 80}], **spec}}
    if status:
        obj["status"] = status
    return obj


HTTP = ServicePortName("ns1", "web", "http", Protocol.TCP)


def test_every_service_address_field_is_normalised_with_one_warning() -> None:
    warnings: list[str] = []
    obj = service(type="LoadBalancer", clusterIP="172.30.0.041", clusterIPs=["172.30.0.041"],
                  externalIPs=["192.168.099.022"], loadBalancerSourceRanges=[" 203.0.113.000/025 "],
                  status={"loadBalancer": {"ingress": [{"ip": "001.002.003.004"}]}})
    state = state_from_objects([obj], warnings.append)
    svc = state.services["ns1/web"]
    assert svc.proxied and svc.cluster_ips == ("172.30.0.41",)
    port = state.ports[HTTP]
    assert port.cluster_ips == ("172.30.0.41",)
    assert port.external_ips == ("192.168.99.22",)
    assert port.load_balancer_ips == ("1.2.3.4",)
    assert port.load_balancer_source_ranges == ("203.0.113.0/25",)
    assert warnings == [
        "Service ns1/web: IPv4 text with leading zeros read as kube-proxy reads it (decimal): "
        "spec.clusterIPs[0] '172.30.0.041' → 172.30.0.41, spec.clusterIP '172.30.0.041' → 172.30.0.41, "
        "spec.externalIPs[0] '192.168.099.022' → 192.168.99.22, "
        "status.loadBalancer.ingress[0].ip '001.002.003.004' → 1.2.3.4, "
        "spec.loadBalancerSourceRanges[0] '203.0.113.000/025' → 203.0.113.0/25"]


def test_a_strict_address_is_kept_and_garbage_still_rejected() -> None:
    warnings: list[str] = []
    state = state_from_objects([service(clusterIP="10.96.0.10")], warnings.append)
    assert state.services["ns1/web"].cluster_ips == ("10.96.0.10",) and warnings == []
    state = state_from_objects([service(clusterIP="10.96.0.300")], warnings.append)
    assert "ns1/web" not in state.services
    assert warnings == ["skipping invalid Service ns1/web: spec.clusterIP '10.96.0.300' is not an IP address"]


def test_endpoint_addresses_are_normalised_and_merged() -> None:
    warnings: list[str] = []
    slice_ = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
              "metadata": {"name": "web-1", "namespace": "ns1", "labels": {"kubernetes.io/service-name": "web"}},
              "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}, {"name": "metrics", "port": 9090}],
              "endpoints": [{"addresses": ["10.180.00.001"]}, {"addresses": ["10.180.0.1"]},
                            {"addresses": ["10.180.000.2"]}]}
    state = state_from_objects([service(clusterIP="10.96.0.10"), slice_], warnings.append)
    assert [e.address for e in state.endpoints_of(HTTP)] == ["10.180.0.1:8080", "10.180.0.2:8080"]
    # one warning for the slice, however many ports it has
    assert warnings == ["EndpointSlice ns1/web-1: IPv4 text with leading zeros read as kube-proxy reads it "
                        "(decimal): endpoints[0].addresses[0] '10.180.00.001' → 10.180.0.1, "
                        "endpoints[2].addresses[0] '10.180.000.2' → 10.180.0.2"]


def test_node_addresses_are_normalised() -> None:
    warnings: list[str] = []
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node1"},
            "spec": {"podCIDR": "10.244.001.0/24"},
            "status": {"addresses": [{"type": "InternalIP", "address": "172.018.000.002"},
                                     {"type": "Hostname", "address": "node1"}]}}
    info = state_from_objects([node], warnings.append).nodes["node1"]
    assert info.addresses == (("InternalIP", "172.18.0.2"), ("Hostname", "node1"))
    assert info.pod_cidrs == ("10.244.1.0/24",)
    assert len(warnings) == 1 and warnings[0].startswith("Node node1: IPv4 text with leading zeros")
    assert "status.addresses[0].address '172.018.000.002' → 172.18.0.2" in warnings[0]


def test_the_engine_tracker_warns_once_per_object_version() -> None:
    warnings: list[str] = []
    tracker = StateTracker("node1", warn=warnings.append)
    obj = service(clusterIP="172.30.0.041")
    obj["metadata"]["resourceVersion"] = "7"
    for event in ("ADDED", "MODIFIED", "MODIFIED"):
        tracker.apply("Service", event, obj)
    assert tracker.snapshot().state.ports[HTTP].cluster_ips == ("172.30.0.41",)
    assert len(warnings) == 1 and "172.30.0.041' → 172.30.0.41" in warnings[0]


def upstream_objects(tmp_path: Path) -> str:
    """The upstream six-services case with its addresses written the way upstream's test does."""
    text = (GOLDEN / "objects.yaml").read_text()
    for old, new in [("172.30.0.41\n", "172.30.0.041\n"), ("- 10.180.0.1\n", "- 10.180.00.001\n"),
                     ('" 203.0.113.0/25"', '" 203.0.113.000/025"'), ("address: 192.168.0.2", "address: 192.168.000.002")]:
        assert old in text
        text = text.replace(old, new)
    path = tmp_path / "objects.yaml"
    path.write_text(text)
    return str(path)


def test_the_upstream_case_with_leading_zeros_is_in_sync(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    objects = upstream_objects(tmp_path)
    code = run(["verify", "--rules-file", str(RULES / "six-services.nft-save.txt"), "--from-file", objects,
                "--node-name", "test-node"])
    out, err = capsys.readouterr()
    assert code == 0 and out.startswith("In sync: 6 service port(s)"), out + err
    notes = err.splitlines()
    assert len(notes) == 4 and all(n.startswith("warning: ") and "IPv4 text with leading zeros" in n for n in notes)
    assert any("Service ns1/svc1:" in n and "spec.clusterIP '172.30.0.041' → 172.30.0.41" in n for n in notes)


def test_run_dry_run_writes_the_normalised_addresses(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    objects = upstream_objects(tmp_path)
    assert run(["run", "--dry-run", "--from-file", objects, "--node-name", "test-node"]) == 0
    out, _ = capsys.readouterr()
    assert "-d 172.30.0.41 --dport 80" in out and "--to-destination 10.180.0.1:80" in out
    assert "203.0.113.0/25" in out and "041" not in out and "00.001" not in out
    assert run(["endpoints", "svc/svc1", "-n", "ns1", "--from-file", objects]) == 0
    out, err = capsys.readouterr()
    assert "10.180.0.1:80" in out and "is not an IP address" not in err
