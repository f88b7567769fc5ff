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
    assert fake.canaries and any(j.chain == "PREROUTING" for j in fake.jumps)
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
    assert fake.payloads[-1] == good  # the last good full payload was put back
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
