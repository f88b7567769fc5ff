"""What a real kernel printed for a node running `run --mode ipvs` (tests/data/ipvs-vm/, saved
by tests/vm/regenerate-data from the VM suite), read back by the inspector: the tools' own
output must parse, be recognised as IPVS mode, and trace to the pods the suite served."""

from __future__ import annotations

from pathlib import Path

from kubectl_proxyctl.inspect.graph import load_texts
from kubectl_proxyctl.inspect.paths import trace_packet
from kubectl_proxyctl.modes.base import Mode
from kubectl_proxyctl.modes.tracing import LocalNode, Packet, Verdict

DATA = Path(__file__).parent / "data" / "ipvs-vm"
PODS = {"10.244.1.10:8080", "10.244.1.11:8080", "10.244.1.12:8080"}


def graph():  # type: ignore[no-untyped-def]
    return load_texts([(n, (DATA / n).read_text()) for n in ("ipvsadm-save.txt", "ipset-save.txt",
                                                              "iptables-save.txt")])


def test_the_captures_are_ipvs_mode_and_trace_to_the_pods() -> None:
    g = graph()
    assert g.mode == Mode.IPVS
    node = LocalNode(("172.18.0.2",))
    r = trace_packet(g, Mode.IPVS, Packet("172.18.0.100", "10.96.0.10", 80, "tcp", "external"), node)
    assert r.verdict == Verdict.DNAT and {e.destination for e in r.endpoints} == PODS
    local = trace_packet(g, Mode.IPVS, Packet("172.18.0.100", "172.18.0.2", 30081, "tcp", "external"), node)
    assert {e.destination for e in local.endpoints} == {"10.244.1.12:8080"}


def test_the_list_form_parses_too() -> None:
    g = load_texts([(n, (DATA / n).read_text()) for n in ("ipvsadm-list.txt", "ipset-save.txt", "iptables-save.txt")])
    assert g.mode == Mode.IPVS
    assert len(g.ipvs_services()) >= 4
