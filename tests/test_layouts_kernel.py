"""Real-world node layouts: what packets do, and whether the tracer says the same.

The dumps under tests/data/layouts/ are real `iptables-legacy-save` output of the layouts
tests/layouts.py generates (kube-proxy 1.20 / 1.23 / 1.24 with their kubelet; 1.24 under
Docker; our own rules under Docker with a CNI hostPort on a NodePort; 1.23 with Calico and
its ipsets); `tests/data/layouts/make` rewrites them.

`CASES` is the table of what must happen to one TCP connection per row, written out:
which pods answer (the set, over enough connections that both of two endpoints show up),
or "refused" / "timeout". `test_packets_match_the_table` (lab) restores each dump into the
node namespace of a fresh topology (pods pod-a, pod-b, pod-c; a client at 172.18.0.100
and 172.18.0.101) and sends the connections; `test_tracer_matches_the_table` traces the
same packets through the parsed dump and checks verdict and endpoint set against the
same table. Where today's tracer is wrong the row names what it gets wrong, and only
that tracer check is an expected failure.

`test_1_24_generator_reproduces_upstream_expectations` checks the 1.24 generator against
the full expected dump of kube-proxy 1.24's TestOverallIPTablesRulesWithMultipleServices.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections import Counter
from dataclasses import dataclass
from typing import Iterator

import pytest

import layouts
from flowhelpers import compare_with_upstream
from layouts import BLOCKED_IP, FLOATING_IP, LB_IP, POD_A, POD_B, POD_C, Endpoint, ProxyConfig, ServicePort
from netns import BRIDGE, BRIDGE_IP, CLIENT_IP, NODE_IP, POD_PREFIXLEN, UNDERLAY_PREFIXLEN, Topology, build_topology, requires_lab
from kubectl_proxyctl.modes.iptables.parse import parse
from kubectl_proxyctl.modes.iptables.trace import trace
from kubectl_proxyctl.modes.ipvs.parse import parse_ipset
from kubectl_proxyctl.modes.tracing import LocalNode, Packet, Verdict
from kubectl_proxyctl.system.netns import socket_in_netns

DATA = os.path.join(os.path.dirname(__file__), "data", "layouts")
DUMPS = ("kube-proxy-1.20", "kube-proxy-1.23", "kube-proxy-1.24", "kube-proxy-1.24-docker",
         "current-docker-hostport", "kube-proxy-1.23-calico")
POD_IPS = {"pod-a": POD_A, "pod-b": POD_B, "pod-c": POD_C}
SOURCES = {"pod-c": POD_C, "client": CLIENT_IP, "blocked": BLOCKED_IP, "node": NODE_IP}
ORIGINS = {"pod-c": "pod", "client": "external", "blocked": "external", "node": "node"}
SVC = {s.name: s.cluster_ip for s in layouts.SERVICES}
NODE_PORT = {s.name: s.node_port for s in layouts.SERVICES}
CONNECT_TIMEOUT = 1.0

BOTH = frozenset({"pod-a", "pod-b"})

# A packet for a load-balancer IP the node does not own that KUBE-FW marks for drop is not
# dropped on the node in these eras (the kubelet's KUBE-FIREWALL runs in INPUT and OUTPUT
# only): it is routed on, back out to the client's network, where nobody answers it. The
# tracer tells it as DROP, saying where the packet went: the rules' intent, and what a
# client sees.


@dataclass(frozen=True)
class Case:
    """One row: a connection from `client` to `dst:port` on node layout `dump`.

    `real` is the set of pods that must answer, or "refused" / "timeout"; `sticky` means
    every connection must reach the same one of them (ClientIP affinity). `tracer_wrong`
    is why today's tracer gets this row wrong (its check is then an expected failure)."""

    dump: str
    name: str
    client: str
    dst: str
    port: int
    real: frozenset[str] | str
    sticky: bool = False
    tracer_wrong: str = ""

    @property
    def id(self) -> str:
        return f"{self.dump}:{self.name}"

    @property
    def verdict(self) -> Verdict:
        """What the tracer must answer for this row's real outcome."""
        if isinstance(self.real, frozenset):
            return Verdict.DNAT
        return Verdict.REJECT if self.real == "refused" else Verdict.DROP

    @property
    def endpoints(self) -> set[str]:
        return {f"{POD_IPS[p]}:80" for p in self.real} if isinstance(self.real, frozenset) else set()


def _rows(dump: str, outcomes: dict[str, frozenset[str] | str], wrong: dict[str, str]) -> list[Case]:
    """The shared row shapes, with this dump's real outcomes and tracer problems."""
    shapes = {
        "clusterip-from-pod": ("pod-c", SVC["web"], 80),
        "clusterip-from-node": ("node", SVC["web"], 80),
        "nodeport-from-client": ("client", NODE_IP, NODE_PORT["nodeport"]),
        "nodeport-from-pod": ("pod-c", NODE_IP, NODE_PORT["nodeport"]),
        "nodeport-from-node": ("node", NODE_IP, NODE_PORT["nodeport"]),
        "etp-local-nodeport": ("client", NODE_IP, NODE_PORT["local"]),
        "etp-local-remote-only": ("client", NODE_IP, NODE_PORT["remote"]),
        "lb-allowed-source": ("client", LB_IP, 80),
        "lb-blocked-source": ("blocked", LB_IP, 80),
        "no-endpoints-clusterip": ("pod-c", SVC["empty"], 80),
        "no-endpoints-nodeport": ("client", NODE_IP, NODE_PORT["empty"]),
        "affinity": ("pod-c", SVC["sticky"], 80),
        "calico-floating-ip": ("client", FLOATING_IP, 80),
    }
    return [Case(dump, name, *shapes[name], real=real, sticky=name == "affinity", tracer_wrong=wrong.get(name, ""))
            for name, real in outcomes.items()]


def _kube_proxy_alone(era: str) -> list[Case]:
    return _rows(f"kube-proxy-{era}", {
        "clusterip-from-pod": BOTH, "clusterip-from-node": BOTH, "nodeport-from-client": BOTH,
        "nodeport-from-pod": BOTH, "nodeport-from-node": BOTH, "etp-local-nodeport": frozenset({"pod-a"}),
        "etp-local-remote-only": "timeout", "lb-allowed-source": BOTH, "lb-blocked-source": "timeout",
        "no-endpoints-clusterip": "refused", "no-endpoints-nodeport": "refused", "affinity": BOTH,
    }, {})


CASES: list[Case] = [
    *_kube_proxy_alone("1.20"),
    *_kube_proxy_alone("1.23"),
    *_kube_proxy_alone("1.24"),
    # Docker's FORWARD policy DROP: only what KUBE-FORWARD accepts (the masquerade mark) is
    # forwarded to pods; pod -> service -> pod and ETP=Local node ports are dropped.
    *_rows("kube-proxy-1.24-docker", {
        "clusterip-from-pod": "timeout", "clusterip-from-node": BOTH, "nodeport-from-client": BOTH,
        "nodeport-from-pod": BOTH, "etp-local-nodeport": "timeout", "etp-local-remote-only": "timeout",
        "lb-allowed-source": BOTH, "lb-blocked-source": "timeout", "no-endpoints-clusterip": "refused",
        "no-endpoints-nodeport": "refused", "affinity": "timeout",
    }, {}),
    # The hostPort's DNAT (to pod-c) runs before KUBE-SERVICES in PREROUTING and takes the
    # NodePort from arriving packets, which Docker's FORWARD policy then drops (no masquerade
    # mark); the node's own connections go through nat OUTPUT, where KUBE-SERVICES is first.
    *_rows("current-docker-hostport", {
        "clusterip-from-pod": "timeout", "clusterip-from-node": BOTH, "nodeport-from-client": "timeout",
        "nodeport-from-pod": "timeout", "nodeport-from-node": BOTH, "etp-local-nodeport": "timeout",
        "etp-local-remote-only": "timeout", "lb-allowed-source": BOTH, "lb-blocked-source": "timeout",
        "no-endpoints-clusterip": "refused", "no-endpoints-nodeport": "refused", "affinity": "timeout",
    }, {}),
    # Calico's chains do not stop traffic of interfaces that are not cali*: kube-proxy 1.23's
    # outcomes, plus Calico's floating IP DNAT to pod-c.
    *_rows("kube-proxy-1.23-calico", {
        "clusterip-from-pod": BOTH, "clusterip-from-node": BOTH, "nodeport-from-client": BOTH,
        "nodeport-from-pod": BOTH, "etp-local-nodeport": frozenset({"pod-a"}), "etp-local-remote-only": "timeout",
        "lb-allowed-source": BOTH, "lb-blocked-source": "timeout", "no-endpoints-clusterip": "refused",
        "no-endpoints-nodeport": "refused", "affinity": BOTH, "calico-floating-ip": frozenset({"pod-c"}),
    }, {}),
]


def read(name: str, kind: str) -> str:
    path = os.path.join(DATA, f"{name}.{kind}.txt")
    if not os.path.exists(path):
        return ""
    with open(path) as f:
        return f.read()


def test_every_dump_has_rows_and_exists() -> None:
    assert {c.dump for c in CASES} == set(DUMPS)
    assert {layout.name for layout in layouts.layouts()} == set(DUMPS)
    for name in DUMPS:
        assert read(name, "iptables-save").startswith("*"), name


# --- the tracer -----------------------------------------------------------------------------


# The topology's node: its pods behind the bridge, the client's network on eth0 (the routes
# `ip -json route show` gives there, which is how explain knows the interfaces).
NODE = LocalNode((NODE_IP,), "node1", routes=((f"{BRIDGE_IP}/{POD_PREFIXLEN}", BRIDGE),
                                              (f"{NODE_IP}/{UNDERLAY_PREFIXLEN}", "eth0"), ("default", "eth0")))


def traced(case: Case):  # type: ignore[no-untyped-def]
    ipsets_text = read(case.dump, "ipset")
    ipsets = parse_ipset(ipsets_text) if ipsets_text else None
    packet = Packet(SOURCES[case.client], case.dst, case.port, "tcp", ORIGINS[case.client])
    return trace(parse(read(case.dump, "iptables-save")), packet, NODE, ipsets)


def _tracer_params() -> list[object]:
    """Every row; the ones the tracer gets wrong as strict expected failures, so a tracer
    fix shows up (XPASS fails) and the row's mark must go."""
    return [pytest.param(c, id=c.id, marks=pytest.mark.xfail(strict=True, reason=c.tracer_wrong))
            if c.tracer_wrong else pytest.param(c, id=c.id) for c in CASES]


@pytest.mark.parametrize("case", _tracer_params())
def test_tracer_matches_the_table(case: Case) -> None:
    result = traced(case)
    got = (result.verdict, {e.destination for e in result.endpoints})
    assert got == (case.verdict, case.endpoints), result.summary()
    if case.sticky:
        assert result.affinity_seconds == layouts.service("sticky").affinity_seconds, result.summary()


# --- the kernel -----------------------------------------------------------------------------


def _connect(topo: Topology, case: Case) -> str:
    """One connection of `case`; the answering pod or what went wrong."""
    if case.client != "blocked":
        got = topo.tcp_exchange(case.client, case.dst, case.port, timeout=CONNECT_TIMEOUT)
        snat = got.kind == "ok" and case.client != "node" and got.seen_ip != SOURCES[case.client]
        return got.answer + (SNAT if snat else "")
    sock = socket_in_netns(topo.netns("client"), socket.AF_INET, socket.SOCK_STREAM)
    with sock:
        sock.settimeout(CONNECT_TIMEOUT)
        try:
            sock.bind((BLOCKED_IP, 0))
            sock.connect((case.dst, case.port))
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
        except ConnectionRefusedError:
            return "refused"
        except (TimeoutError, socket.timeout):
            return "timeout"
        except OSError as exc:
            return f"error {exc}"
    return data.decode(errors="replace").split(" ", 1)[0] or "error"


SNAT = "/snat"  # appended to an answer when the pod saw another source than the client's address


def _attempts(case: Case) -> int:
    if isinstance(case.real, frozenset):
        return 12 if case.sticky else (30 if len(case.real) > 1 else 4)
    return 1 if case.real == "timeout" else 3


def _measure(topo: Topology, cases: list[Case]) -> dict[str, Counter[str]]:
    return {c.id: Counter(_connect(topo, c) for _ in range(_attempts(c))) for c in cases}


def _run_dump(name: str) -> dict[str, Counter[str]]:
    """Restore one dump into a fresh topology and send every row's connections; everything
    (namespaces, their ipsets and processes) is removed before returning."""
    topo = build_topology(pods=["pod-a", "pod-b", "pod-c"], client=True, tcp_ports=(80,), udp_ports=())
    try:
        subprocess.run(["ip", "-n", topo.netns("client"), "-batch", "-"], check=True, capture_output=True, text=True,
                       input=f"addr add {BLOCKED_IP}/24 dev eth0\nroute add 198.51.100.0/24 via {NODE_IP}\n")
        ipsets = read(name, "ipset")
        if ipsets:
            topo.exec("node", ["ipset", "restore"], input=ipsets)
        try:
            topo.exec("node", ["iptables-legacy-restore"], input=read(name, "iptables-save"))
            return _measure(topo, [c for c in CASES if c.dump == name])
        finally:
            topo.exec("node", ["iptables-legacy", "-F"], check=False)
            for table in ("nat", "mangle", "raw"):
                topo.exec("node", ["iptables-legacy", "-t", table, "-F"], check=False)
            if ipsets:
                topo.exec("node", ["ipset", "destroy"], check=False)
    finally:
        topo.close()


@pytest.fixture(scope="module")
def kernel() -> Iterator[dict[str, dict[str, Counter[str]]]]:
    """Per dump, the outcomes of its rows' connections (measured on first use)."""
    measured: dict[str, dict[str, Counter[str]]] = {}

    class Lazy(dict):  # type: ignore[type-arg]
        def __missing__(self, name: str) -> dict[str, Counter[str]]:
            measured[name] = _run_dump(name)
            self[name] = measured[name]
            return measured[name]

    yield Lazy()


@pytest.mark.lab
@requires_lab("iptables-legacy-restore", "iptables-legacy", "ipset")
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_packets_match_the_table(case: Case, kernel: dict[str, dict[str, Counter[str]]]) -> None:
    answers = kernel[case.dump][case.id]
    if isinstance(case.real, frozenset) and case.client != "node":
        # SNAT as the endpoint saw it (the node's own connections leave from its addresses
        # either way) is what the tracer says about masquerading.
        snat = {a.endswith(SNAT) for a in answers}
        assert len(snat) == 1 and traced(case).masquerade is snat.pop(), (answers, traced(case).summary())
    seen = Counter({a.removesuffix(SNAT): n for a, n in answers.items()})
    if isinstance(case.real, str):
        assert set(seen) == {case.real}, seen
    elif case.sticky:
        assert len(seen) == 1 and set(seen) <= case.real, seen
    else:
        assert set(seen) == case.real, seen


# --- upstream's own expectations ------------------------------------------------------------

# kube-proxy v1.24.17 pkg/proxy/iptables/proxier_test.go, TestOverallIPTablesRulesWithMultipleServices.
UPSTREAM_1_24 = """\
*filter
:KUBE-EXTERNAL-SERVICES - [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-SERVICES - [0:0]
-A KUBE-NODEPORTS -m comment --comment "ns2/svc2:p80 health check node port" -m tcp -p tcp --dport 30000 -j ACCEPT
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
COMMIT
*nat
:KUBE-EXT-4SW47YFZTEDKD3PK - [0:0]
:KUBE-EXT-GNZBNJ2PO5MGZ6GT - [0:0]
:KUBE-EXT-PAZTZYUUMV5KCDZL - [0:0]
:KUBE-EXT-X27LE4BHSL4DOUIK - [0:0]
:KUBE-FW-GNZBNJ2PO5MGZ6GT - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-SEP-C6EBXVWJJZMIWKLZ - [0:0]
:KUBE-SEP-OYPFS5VJICHGATKP - [0:0]
:KUBE-SEP-QDCEFMBQEGWIV4VT - [0:0]
:KUBE-SEP-RS4RBKLTHTF2IUXJ - [0:0]
:KUBE-SEP-SXIVWICOYRO3J4NJ - [0:0]
:KUBE-SEP-UKSFD7AGPMPPLUHC - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-4SW47YFZTEDKD3PK - [0:0]
:KUBE-SVC-GNZBNJ2PO5MGZ6GT - [0:0]
:KUBE-SVC-PAZTZYUUMV5KCDZL - [0:0]
:KUBE-SVC-X27LE4BHSL4DOUIK - [0:0]
:KUBE-SVC-XPGD46QRK7WJZT7O - [0:0]
:KUBE-SVL-GNZBNJ2PO5MGZ6GT - [0:0]
-A KUBE-NODEPORTS -m comment --comment ns2/svc2:p80 -m tcp -p tcp --dport 3001 -j KUBE-EXT-GNZBNJ2PO5MGZ6GT
-A KUBE-NODEPORTS -m comment --comment ns2b/svc2b:p80 -m tcp -p tcp --dport 3002 -j KUBE-EXT-PAZTZYUUMV5KCDZL
-A KUBE-NODEPORTS -m comment --comment ns3/svc3:p80 -m tcp -p tcp --dport 3003 -j KUBE-EXT-X27LE4BHSL4DOUIK
-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O
-A KUBE-SERVICES -m comment --comment "ns2/svc2:p80 cluster IP" -m tcp -p tcp -d 172.30.0.42 --dport 80 -j KUBE-SVC-GNZBNJ2PO5MGZ6GT
-A KUBE-SERVICES -m comment --comment "ns2/svc2:p80 external IP" -m tcp -p tcp -d 192.168.99.22 --dport 80 -j KUBE-EXT-GNZBNJ2PO5MGZ6GT
-A KUBE-SERVICES -m comment --comment "ns2/svc2:p80 loadbalancer IP" -m tcp -p tcp -d 1.2.3.4 --dport 80 -j KUBE-FW-GNZBNJ2PO5MGZ6GT
-A KUBE-SERVICES -m comment --comment "ns2b/svc2b:p80 cluster IP" -m tcp -p tcp -d 172.30.0.43 --dport 80 -j KUBE-SVC-PAZTZYUUMV5KCDZL
-A KUBE-SERVICES -m comment --comment "ns2b/svc2b:p80 loadbalancer IP" -m tcp -p tcp -d 5.6.7.8 --dport 80 -j KUBE-EXT-PAZTZYUUMV5KCDZL
-A KUBE-SERVICES -m comment --comment "ns3/svc3:p80 cluster IP" -m tcp -p tcp -d 172.30.0.43 --dport 80 -j KUBE-SVC-X27LE4BHSL4DOUIK
-A KUBE-SERVICES -m comment --comment "ns4/svc4:p80 cluster IP" -m tcp -p tcp -d 172.30.0.44 --dport 80 -j KUBE-SVC-4SW47YFZTEDKD3PK
-A KUBE-SERVICES -m comment --comment "ns4/svc4:p80 external IP" -m tcp -p tcp -d 192.168.99.33 --dport 80 -j KUBE-EXT-4SW47YFZTEDKD3PK
-A KUBE-EXT-4SW47YFZTEDKD3PK -m comment --comment "masquerade traffic for ns4/svc4:p80 external destinations" -j KUBE-MARK-MASQ
-A KUBE-EXT-4SW47YFZTEDKD3PK -j KUBE-SVC-4SW47YFZTEDKD3PK
-A KUBE-EXT-GNZBNJ2PO5MGZ6GT -m comment --comment "pod traffic for ns2/svc2:p80 external destinations" -s 10.0.0.0/8 -j KUBE-SVC-GNZBNJ2PO5MGZ6GT
-A KUBE-EXT-GNZBNJ2PO5MGZ6GT -m comment --comment "masquerade LOCAL traffic for ns2/svc2:p80 external destinations" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ
-A KUBE-EXT-GNZBNJ2PO5MGZ6GT -m comment --comment "route LOCAL traffic for ns2/svc2:p80 external destinations" -m addrtype --src-type LOCAL -j KUBE-SVC-GNZBNJ2PO5MGZ6GT
-A KUBE-EXT-GNZBNJ2PO5MGZ6GT -j KUBE-SVL-GNZBNJ2PO5MGZ6GT
-A KUBE-EXT-PAZTZYUUMV5KCDZL -m comment --comment "masquerade traffic for ns2b/svc2b:p80 external destinations" -j KUBE-MARK-MASQ
-A KUBE-EXT-PAZTZYUUMV5KCDZL -j KUBE-SVC-PAZTZYUUMV5KCDZL
-A KUBE-EXT-X27LE4BHSL4DOUIK -m comment --comment "masquerade traffic for ns3/svc3:p80 external destinations" -j KUBE-MARK-MASQ
-A KUBE-EXT-X27LE4BHSL4DOUIK -j KUBE-SVC-X27LE4BHSL4DOUIK
-A KUBE-FW-GNZBNJ2PO5MGZ6GT -m comment --comment "ns2/svc2:p80 loadbalancer IP" -s 203.0.113.0/25 -j KUBE-EXT-GNZBNJ2PO5MGZ6GT
-A KUBE-FW-GNZBNJ2PO5MGZ6GT -m comment --comment "ns2/svc2:p80 loadbalancer IP" -j KUBE-MARK-DROP
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE
-A KUBE-SEP-C6EBXVWJJZMIWKLZ -m comment --comment ns4/svc4:p80 -s 10.180.0.5 -j KUBE-MARK-MASQ
-A KUBE-SEP-C6EBXVWJJZMIWKLZ -m comment --comment ns4/svc4:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.5:80
-A KUBE-SEP-OYPFS5VJICHGATKP -m comment --comment ns3/svc3:p80 -s 10.180.0.3 -j KUBE-MARK-MASQ
-A KUBE-SEP-OYPFS5VJICHGATKP -m comment --comment ns3/svc3:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.3:80
-A KUBE-SEP-QDCEFMBQEGWIV4VT -m comment --comment ns2b/svc2b:p80 -s 10.180.0.3 -j KUBE-MARK-MASQ
-A KUBE-SEP-QDCEFMBQEGWIV4VT -m comment --comment ns2b/svc2b:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.3:80
-A KUBE-SEP-RS4RBKLTHTF2IUXJ -m comment --comment ns2/svc2:p80 -s 10.180.0.2 -j KUBE-MARK-MASQ
-A KUBE-SEP-RS4RBKLTHTF2IUXJ -m comment --comment ns2/svc2:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.2:80
-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -s 10.180.0.1 -j KUBE-MARK-MASQ
-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.1:80
-A KUBE-SEP-UKSFD7AGPMPPLUHC -m comment --comment ns4/svc4:p80 -s 10.180.0.4 -j KUBE-MARK-MASQ
-A KUBE-SEP-UKSFD7AGPMPPLUHC -m comment --comment ns4/svc4:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.4:80
-A KUBE-SVC-4SW47YFZTEDKD3PK -m comment --comment "ns4/svc4:p80 cluster IP" -m tcp -p tcp -d 172.30.0.44 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
-A KUBE-SVC-4SW47YFZTEDKD3PK -m comment --comment "ns4/svc4:p80 -> 10.180.0.4:80" -m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-UKSFD7AGPMPPLUHC
-A KUBE-SVC-4SW47YFZTEDKD3PK -m comment --comment "ns4/svc4:p80 -> 10.180.0.5:80" -j KUBE-SEP-C6EBXVWJJZMIWKLZ
-A KUBE-SVC-GNZBNJ2PO5MGZ6GT -m comment --comment "ns2/svc2:p80 cluster IP" -m tcp -p tcp -d 172.30.0.42 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
-A KUBE-SVC-GNZBNJ2PO5MGZ6GT -m comment --comment "ns2/svc2:p80 -> 10.180.0.2:80" -j KUBE-SEP-RS4RBKLTHTF2IUXJ
-A KUBE-SVC-PAZTZYUUMV5KCDZL -m comment --comment "ns2b/svc2b:p80 cluster IP" -m tcp -p tcp -d 172.30.0.43 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
-A KUBE-SVC-PAZTZYUUMV5KCDZL -m comment --comment "ns2b/svc2b:p80 -> 10.180.0.3:80" -j KUBE-SEP-QDCEFMBQEGWIV4VT
-A KUBE-SVC-X27LE4BHSL4DOUIK -m comment --comment "ns3/svc3:p80 cluster IP" -m tcp -p tcp -d 172.30.0.43 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
-A KUBE-SVC-X27LE4BHSL4DOUIK -m comment --comment "ns3/svc3:p80 -> 10.180.0.3:80" -j KUBE-SEP-OYPFS5VJICHGATKP
-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.180.0.1:80" -j KUBE-SEP-SXIVWICOYRO3J4NJ
-A KUBE-SVL-GNZBNJ2PO5MGZ6GT -m comment --comment "ns2/svc2:p80 has no local endpoints" -j KUBE-MARK-DROP
COMMIT
"""


def _upstream_1_24_services() -> list[ServicePort]:
    """The same inputs as upstream's test (its endpoints without a nodeName are remote)."""
    def ep(ip: str, local: bool = False) -> Endpoint:
        return Endpoint(ip, 80, local)

    return [
        ServicePort("ns1", "svc1", "p80", "172.30.0.41", 80, endpoints=(ep("10.180.0.1"),)),
        ServicePort("ns2", "svc2", "p80", "172.30.0.42", 80, node_port=3001, external_ips=("192.168.99.22",),
                    lb_ips=("1.2.3.4",), source_ranges=("203.0.113.0/25",), etp_local=True,
                    health_check_node_port=30000, endpoints=(ep("10.180.0.2"),)),
        ServicePort("ns2b", "svc2b", "p80", "172.30.0.43", 80, node_port=3002, lb_ips=("5.6.7.8",),
                    endpoints=(ep("10.180.0.3"),)),
        ServicePort("ns3", "svc3", "p80", "172.30.0.43", 80, node_port=3003, endpoints=(ep("10.180.0.3"),)),
        ServicePort("ns4", "svc4", "p80", "172.30.0.44", 80, external_ips=("192.168.99.33",),
                    endpoints=(ep("10.180.0.4"), ep("10.180.0.5", local=True))),
    ]


def test_1_24_generator_reproduces_upstream_expectations() -> None:
    config = ProxyConfig(cluster_cidr="10.0.0.0/8", node_ip="127.0.0.1", masq_mark="0x4000", random_fully=False)
    ours = layouts.kube_proxy_payload("1.24", _upstream_1_24_services(), config)
    # Upstream compares after sortIPTablesRules (proxier_test.go), which lists the node-ports
    # jump first in KUBE-SERVICES; syncProxyRules writes it last, as the generator does.
    assert compare_with_upstream(ours, UPSTREAM_1_24) == [
        "chain nat/KUBE-SERVICES differs:\n  - <the node-ports jump is not the last rule of KUBE-SERVICES>"]
    assert ours.count("\n-A ") == UPSTREAM_1_24.count("\n-A ")


def test_chain_names_are_upstreams() -> None:
    """Names from upstream fixtures: KUBE-SVC/SEP (1.24 test above), KUBE-XLB and KUBE-FW
    share the hash (1.20's TestLoadBalancer uses ns1/svc1:p80)."""
    svc1 = _upstream_1_24_services()[0]
    assert layouts.service_chain(svc1, "KUBE-SVC-") == "KUBE-SVC-XPGD46QRK7WJZT7O"
    assert layouts.endpoint_chain(svc1, svc1.endpoints[0]) == "KUBE-SEP-SXIVWICOYRO3J4NJ"
    assert layouts.service_chain(svc1, "KUBE-XLB-") == "KUBE-XLB-XPGD46QRK7WJZT7O"


@pytest.mark.parametrize("name", DUMPS)
def test_saved_dumps_are_what_the_generators_give(name: str) -> None:
    """The saved files still come from today's generators: same chains and rule counts per
    table (the saves normalise rule text, so the text itself is not compared)."""
    layout = next(lay for lay in layouts.layouts() if lay.name == name)
    saved, generated = parse(read(name, "iptables-save")), parse(layout.payload)
    for table, body in generated.tables.items():
        assert set(body.chains) == set(saved.tables[table].chains), table
        for chain, content in body.chains.items():
            assert len(content.rules) == len(saved.tables[table].chains[chain].rules), (table, chain)
    assert read(name, "ipset") == layout.ipsets
