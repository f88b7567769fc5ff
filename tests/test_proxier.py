"""The proxier's sync logic against a stateful fake of the iptables adapter."""

from __future__ import annotations

from typing import Any

import pytest
from fakes import FakeIptables, service, slice_

from kubectl_proxyctl.engine.proxier import Proxier
from kubectl_proxyctl.kube.tracker import StateTracker
from kubectl_proxyctl.modes.iptables.writer import IptablesWriter
from kubectl_proxyctl.plan.planner import ProxyConfig


@pytest.fixture
def setup() -> tuple[Proxier, FakeIptables]:
    tracker = StateTracker("node1")
    fake = FakeIptables()
    proxier = Proxier(ProxyConfig(node_name="node1", cluster_cidrs=("10.244.0.0/16",)), tracker, IptablesWriter(fake))
    for obj in (service("a", "10.96.0.1"), slice_("a", ["10.244.1.1"]),
                service("b", "10.96.0.2"), slice_("b", ["10.244.1.2"])):
        proxier.on_event(obj["kind"], "ADDED", obj)
    return proxier, fake


def test_nothing_is_programmed_before_sources_sync() -> None:
    fake = FakeIptables()
    proxier = Proxier(ProxyConfig(node_name="n"), StateTracker("n"), IptablesWriter(fake), synced=lambda: False)
    assert proxier.sync() is None and fake.payloads == []


def test_first_sync_is_full_then_partial_writes_only_changed_service(setup: Any) -> None:
    proxier, fake = setup
    first = proxier.sync()
    assert first is not None and first.full and not first.error
    assert fake.canaries and any(r.target == "KUBE-SERVICES" for r in fake.tables["nat"]["PREROUTING"].rules)
    assert "10.244.1.1" in fake.payloads[0] and "10.244.1.2" in fake.payloads[0]

    proxier.on_event("EndpointSlice", "MODIFIED", slice_("b", ["10.244.1.2", "10.244.2.2"]))
    second = proxier.sync()
    assert second is not None and not second.full
    payload = fake.payloads[-1]
    assert "DNAT --to-destination 10.244.2.2:8080" in payload
    assert "DNAT --to-destination 10.244.1.1:8080" not in payload  # service a's chains untouched
    assert "-d 10.96.0.1" in payload  # but KUBE-SERVICES is complete


def test_deleted_service_chains_are_removed(setup: Any) -> None:
    proxier, fake = setup
    proxier.sync()
    chains_a = {c for c in proxier.writer.service_chains if c.startswith("KUBE-SEP-")}
    proxier.on_event("Service", "DELETED", service("a", "10.96.0.1"))
    proxier.on_event("EndpointSlice", "DELETED", slice_("a", ["10.244.1.1"]))
    result = proxier.sync()
    assert result is not None and not result.full
    deleted = {line.split()[1] for line in fake.payloads[-1].splitlines() if line.startswith("-X ")}
    assert deleted and deleted <= chains_a | {c for c in deleted if c.startswith("KUBE-SVC-")}
    assert "-d 10.96.0.1" not in fake.payloads[-1]


def test_failed_restore_rolls_back_and_forces_full_sync(setup: Any) -> None:
    proxier, fake = setup
    proxier.sync()
    good = fake.payloads[-1]
    proxier.on_event("EndpointSlice", "MODIFIED", slice_("b", ["10.244.9.9"]))
    fake.fail_next = 1
    failed = proxier.sync()
    assert failed is not None and "line 3 failed" in failed.error
    # the last good full payload was put back (without the jumps and canaries the first
    # restore added: they are still there)
    assert fake.payloads[-1] == proxier.writer.payload
    assert set(good.splitlines()) - set(fake.payloads[-1].splitlines()) == {
        line for line in good.splitlines() if line.startswith(("-I ", ":KUBE-PROXY-CANARY", "*mangle"))}
    retry = proxier.sync()
    assert retry is not None and retry.full and "10.244.9.9" in fake.payloads[-1]


def test_stale_chains_found_by_save_are_deleted_on_full_sync(setup: Any) -> None:
    proxier, fake = setup
    fake.nat_chains = ["KUBE-SVC-AAAAAAAAAAAAAAAA", "KUBE-SEP-BBBBBBBBBBBBBBBB", "MY-CHAIN"]
    proxier.sync()
    assert "-X KUBE-SVC-AAAAAAAAAAAAAAAA" in fake.payloads[0]
    assert "-X KUBE-SEP-BBBBBBBBBBBBBBBB" in fake.payloads[0]
    assert "MY-CHAIN" not in fake.payloads[0]


def test_tampering_is_noticed_and_someone_elses_change_costs_one_check(setup: Any, monkeypatch: Any) -> None:
    proxier, fake = setup
    proxier.sync()
    summaries: list[int] = []
    summary = fake.summary
    monkeypatch.setattr(fake, "summary", lambda *a: summaries.append(1) or summary(*a))
    assert proxier.state_missing() == [] and summaries == [1]  # after a full sync: checked once
    assert proxier.state_missing() == [] and summaries == [1]  # nothing changed: fingerprint only
    fake.restore("*filter\n:OTHER - [0:0]\n-A OTHER -j ACCEPT\nCOMMIT\n")  # someone else's rules
    assert proxier.state_missing() == [] and summaries == [1, 1]
    fake.restore("*nat\n:KUBE-POSTROUTING - [0:0]\nCOMMIT\n")  # declaring a chain flushes it
    assert proxier.state_missing() == ["the rules of nat KUBE-POSTROUTING"]
    proxier.schedule.request()
    assert proxier.sync().full and proxier.state_missing() == []


class FakeConntrack:
    """Counts the cleanups the proxier asks for, and can refuse one."""

    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, set[str]], dict[int, set[str]]]] = []
        self.fail_next = False

    def reconcile_udp(self, by_ip: dict[str, set[str]], by_nodeport: dict[int, set[str]]) -> int:
        if self.fail_next:
            self.fail_next = False
            from kubectl_proxyctl.errors import ApplyError

            raise ApplyError("conntrack: netlink refused")
        self.calls.append(({k: set(v) for k, v in by_ip.items()}, {k: set(v) for k, v in by_nodeport.items()}))
        return 0


def _udp(name: str, ip: str) -> dict[str, Any]:
    svc = service(name, ip)
    svc["spec"]["ports"][0]["protocol"] = "UDP"
    return svc


def _udp_slice(name: str, ips: list[str]) -> dict[str, Any]:
    sl = slice_(name, ips)
    sl["ports"][0]["protocol"] = "UDP"
    return sl


def test_udp_conntrack_cleanup_runs_only_when_what_a_udp_address_serves_changed() -> None:
    conntrack = FakeConntrack()
    proxier = Proxier(ProxyConfig(node_name="node1"), StateTracker("node1"), IptablesWriter(FakeIptables()),
                      conntrack=conntrack)
    for obj in (service("web", "10.96.0.1"), slice_("web", ["10.244.1.1"]),
                _udp("dns", "10.96.0.10"), _udp_slice("dns", ["10.244.1.5", "10.244.1.6"])):
        proxier.on_event(obj["kind"], "ADDED", obj)
    proxier.sync()
    assert conntrack.calls == [({"10.96.0.10": {"10.244.1.5", "10.244.1.6"}}, {})]
    # a TCP service's change, or a UDP service's that serves the same: no conntrack work
    proxier.on_event("EndpointSlice", "MODIFIED", slice_("web", ["10.244.1.2"]))
    proxier.sync()
    proxier.on_event("Service", "MODIFIED", _udp("dns", "10.96.0.10") | {"metadata": {
        "name": "dns", "namespace": "ns", "resourceVersion": "2", "labels": {"x": "y"}}})
    proxier.sync()
    assert len(conntrack.calls) == 1
    # an endpoint of the UDP service leaves: one cleanup, over every UDP address
    proxier.on_event("EndpointSlice", "MODIFIED", _udp_slice("dns", ["10.244.1.5"]))
    conntrack.fail_next = True
    proxier.sync()
    assert len(conntrack.calls) == 1  # refused ...
    proxier.sync()
    assert conntrack.calls[-1] == ({"10.96.0.10": {"10.244.1.5"}}, {})  # ... and tried again
    proxier.on_event("Service", "DELETED", _udp("dns", "10.96.0.10"))
    proxier.on_event("EndpointSlice", "DELETED", _udp_slice("dns", ["10.244.1.5"]))
    proxier.sync()
    assert conntrack.calls[-1] == ({}, {})
