"""kube-proxy's chain names, probabilities and mark format, checked against known values."""

from __future__ import annotations

import base64
import hashlib
import random

import pytest

from kubectl_proxyctl.modes.iptables import naming
from kubectl_proxyctl.model import Protocol, ServicePortName

# Reference §2.2: each matches a real kube-proxy ruleset.
HASH_VECTORS = [
    ("ns1/svc1:p80tcp", "XPGD46QRK7WJZT7O"),
    ("ns2/svc2:p80tcp", "GNZBNJ2PO5MGZ6GT"),
    ("default/kubernetes:httpstcp", "NPX46M4PTMTKRN6Y"),
    ("kube-system/kube-dns:dnsudp", "TCOU7JCQXEZGVUNU"),
    ("kube-system/kube-dns:dns-tcptcp", "ERIFXISQEP7F7OF4"),
    ("kube-system/kube-dns:metricstcp", "JD5MR3NA4I4DYORP"),
]


@pytest.mark.parametrize("text,expected", HASH_VECTORS)
def test_hash16_vectors(text: str, expected: str) -> None:
    assert naming.hash16(text) == expected


def test_hash16_equals_base32_of_sha256() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        text = "".join(rng.choice("abcdefghijklmnop/:-.0123456789[]") for _ in range(rng.randint(0, 60)))
        full = base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()
        assert naming.hash16(text) == full[:16]


def test_service_chains_share_one_hash() -> None:
    spn = ServicePortName("ns1", "svc1", "p80", Protocol.TCP)
    chains = naming.service_chains(spn)
    assert chains.svc == "KUBE-SVC-XPGD46QRK7WJZT7O"
    assert chains.svl == "KUBE-SVL-XPGD46QRK7WJZT7O"
    assert chains.ext == "KUBE-EXT-XPGD46QRK7WJZT7O"
    assert chains.fw == "KUBE-FW-XPGD46QRK7WJZT7O"
    assert naming.service_chain(spn) == chains.svc
    assert naming.local_chain(spn) == chains.svl
    assert naming.external_chain(spn) == chains.ext
    assert naming.firewall_chain(spn) == chains.fw


def test_protocol_is_lower_case_and_unnamed_port_has_no_colon() -> None:
    dns = ServicePortName("kube-system", "kube-dns", "dns", Protocol.UDP)
    assert naming.service_chain(dns) == "KUBE-SVC-TCOU7JCQXEZGVUNU"
    unnamed = ServicePortName("ns", "web", "", Protocol.TCP)
    assert naming.service_chain(unnamed) == "KUBE-SVC-" + naming.hash16("ns/webtcp")


@pytest.mark.parametrize(
    "spn,endpoint,expected",
    [
        (ServicePortName("ns1", "svc1", "p80"), "10.180.0.1:80", "KUBE-SEP-SXIVWICOYRO3J4NJ"),
        (ServicePortName("default", "kubernetes", "https"), "172.18.0.2:6443", "KUBE-SEP-V2PECCYPB6X2GSCW"),
        # From kube-proxy's TestOverallIPTablesRules.
        (ServicePortName("ns4", "svc4", "p80"), "10.180.0.4:80", "KUBE-SEP-UKSFD7AGPMPPLUHC"),
        (ServicePortName("ns4", "svc4", "p80"), "10.180.0.5:80", "KUBE-SEP-C6EBXVWJJZMIWKLZ"),
        (ServicePortName("ns5", "svc5", "p80"), "10.180.0.3:80", "KUBE-SEP-I77PXRDZVX7PMWMN"),
    ],
)
def test_endpoint_chain_vectors(spn: ServicePortName, endpoint: str, expected: str) -> None:
    assert naming.endpoint_chain(spn, endpoint) == expected


def test_endpoint_chain_ipv6_uses_brackets() -> None:
    spn = ServicePortName("ns1", "svc1", "p80")
    assert naming.endpoint_chain(spn, "[fd00::1]:80") == "KUBE-SEP-" + naming.hash16("ns1/svc1:p80tcp[fd00::1]:80")


def test_chain_names_fit_iptables_limit() -> None:
    spn = ServicePortName("a-very-long-namespace-name", "a-very-long-service-name", "a-long-port-name")
    for chain in (*vars(naming.service_chains(spn)).values(), naming.endpoint_chain(spn, "[fd00::1]:65535")):
        assert len(chain) <= 28


@pytest.mark.parametrize(
    "n,expected",
    [
        (1, "1.0000000000"),
        (2, "0.5000000000"),
        (3, "0.3333333333"),
        (4, "0.2500000000"),
        (6, "0.1666666667"),
        (7, "0.1428571429"),
        (10, "0.1000000000"),
        (100, "0.0100000000"),
        (1000, "0.0010000000"),
        (10000, "0.0001000000"),
        (100000, "0.0000100000"),
        (100001, "0.0000099999"),
    ],
)
def test_probability(n: int, expected: str) -> None:
    # kube-proxy's TestComputeProbability plus the reference's examples.
    assert naming.probability(n) == expected


def test_probability_strictly_decreases() -> None:
    values = [float(naming.probability(n)) for n in range(1, 5001)]
    assert all(a > b for a, b in zip(values, values[1:]))


def test_probability_needs_an_endpoint() -> None:
    with pytest.raises(ValueError):
        naming.probability(0)


def test_marks() -> None:
    assert naming.masquerade_mark(14) == 0x4000
    assert naming.format_mark(naming.masquerade_mark(14)) == "0x00004000"
    assert naming.format_mark(1 << 31) == "0x80000000"
    assert naming.format_mark(1) == "0x00000001"
    with pytest.raises(ValueError):
        naming.masquerade_mark(32)


@pytest.mark.parametrize(
    "chain,expected",
    [
        ("KUBE-SVC-XPGD46QRK7WJZT7O", True),
        ("KUBE-SVL-XPGD46QRK7WJZT7O", True),
        ("KUBE-EXT-XPGD46QRK7WJZT7O", True),
        ("KUBE-FW-XPGD46QRK7WJZT7O", True),
        ("KUBE-SEP-SXIVWICOYRO3J4NJ", True),
        ("KUBE-SERVICES", False),
        ("KUBE-MARK-MASQ", False),
        ("KUBE-NODEPORTS", False),
        ("CNI-HOSTPORT-DNAT", False),
    ],
)
def test_is_service_chain(chain: str, expected: bool) -> None:
    assert naming.is_service_chain(chain) is expected
