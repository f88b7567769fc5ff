"""What one iptables sync costs in calls, against the stateful fake: a full sync is one save
and one restore (missing jump rules and canaries go into that restore), and a partial sync
does no work for the service ports that did not change."""

from __future__ import annotations

from typing import Any

import pytest
from fakes import FakeIptables, service, slice_

from kubectl_proxyctl.engine.proxier import Proxier
from kubectl_proxyctl.errors import ProxyctlError
from kubectl_proxyctl.kube.tracker import StateTracker
from kubectl_proxyctl.modes.iptables import render as render_module
from kubectl_proxyctl.modes.iptables.render import JUMP_RULES, render
from kubectl_proxyctl.modes.iptables.writer import IptablesWriter
from kubectl_proxyctl.plan.planner import ProxyConfig


class CountingFake(FakeIptables):
    """The fake, counting the adapter calls a sync makes."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def save(self, table: str | None = None) -> str:
        self.calls.append(f"save {table or 'all'}")
        return super().save(table)

    def restore(self, payload: str, noflush: bool = True, counters: bool = False) -> None:
        self.calls.append("restore")
        super().restore(payload, noflush, counters)

    def ensure_jumps(self, jumps: Any) -> list[Any]:
        self.calls.append("ensure_jumps")
        return super().ensure_jumps(jumps)

    def ensure_canaries(self) -> None:
        self.calls.append("ensure_canaries")
        super().ensure_canaries()

    def rule_exists(self, table: str, chain: str, args: Any) -> bool:
        self.calls.append("rule_exists")
        return super().rule_exists(table, chain, args)


SERVICES = ("a", "b", "c", "d")


@pytest.fixture
def setup() -> tuple[Proxier, CountingFake]:
    fake = CountingFake()
    proxier = Proxier(ProxyConfig(node_name="node1", cluster_cidrs=("10.244.0.0/16",)), StateTracker("node1"),
                      IptablesWriter(fake))
    for i, name in enumerate(SERVICES):
        for obj in (service(name, f"10.96.0.{i + 1}"), slice_(name, [f"10.244.1.{i + 1}"])):
            proxier.on_event(obj["kind"], "ADDED", obj)
    return proxier, fake


def jumps_in(fake: FakeIptables) -> list[tuple[str, str, str]]:
    return [(t, c, r.target or "") for t in ("filter", "nat") for c in fake.tables.get(t, {})
            if fake.tables[t][c].builtin for r in fake.tables[t][c].rules]


def test_a_full_sync_is_one_save_and_one_restore(setup: Any) -> None:
    proxier, fake = setup
    assert proxier.sync().full
    assert fake.calls == ["save all", "restore"]  # the first: jumps and canaries in that restore
    assert fake.canaries and len(jumps_in(fake)) == len(JUMP_RULES)
    fake.calls.clear()
    proxier.schedule.request()
    assert proxier.sync().full
    assert fake.calls == ["save all", "restore"]  # steady state: the same
    assert not [ln for ln in fake.payloads[-1].splitlines() if ln.startswith("-I ") or "CANARY" in ln]
    assert len(jumps_in(fake)) == len(JUMP_RULES)  # nothing inserted twice


def test_a_missing_jump_and_canary_are_put_back_in_the_same_restore(setup: Any) -> None:
    proxier, fake = setup
    proxier.sync()
    fake.restore('*nat\n-D PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES\n'
                 "COMMIT\n*mangle\n-X KUBE-PROXY-CANARY\nCOMMIT\n")
    assert ("nat", "PREROUTING", "KUBE-SERVICES") not in jumps_in(fake) and not fake.canaries
    fake.calls.clear()
    proxier.schedule.request()
    assert proxier.sync().full
    assert fake.calls == ["save all", "restore"]
    payload = fake.payloads[-1]
    added = [ln for ln in payload.splitlines() if ln.startswith("-I ") or "CANARY" in ln]
    assert added == ['-I PREROUTING 1 -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
                     ":KUBE-PROXY-CANARY - [0:0]"]
    assert payload.endswith("*mangle\n:KUBE-PROXY-CANARY - [0:0]\nCOMMIT\n")
    assert fake.canaries and sorted(jumps_in(fake)) == sorted({(j.table, j.chain, j.target) for j in JUMP_RULES}
                                                             | {("nat", "PREROUTING", "KUBE-SERVICES")})


def test_a_jump_spelled_differently_is_confirmed_not_duplicated(setup: Any, monkeypatch: Any) -> None:
    proxier, fake = setup
    proxier.sync()
    # The rule as another iptables version may print it (here: the module after the target),
    # which `iptables -C` recognises as the rule we would insert.
    assert [r.target for r in fake.tables["nat"]["POSTROUTING"].rules] == ["KUBE-POSTROUTING"]
    fake.restore("*nat\n-D POSTROUTING 1\n-A POSTROUTING -j KUBE-POSTROUTING -m comment "
                 '--comment "kubernetes postrouting rules"\nCOMMIT\n')
    monkeypatch.setattr(FakeIptables, "rule_exists", lambda self, table, chain, args: chain == "POSTROUTING")
    fake.calls.clear()
    proxier.schedule.request()
    assert proxier.sync().full
    assert fake.calls == ["save all", "rule_exists", "restore"]
    assert [r.target for r in fake.tables["nat"]["POSTROUTING"].rules] == ["KUBE-POSTROUTING"]


def test_without_a_save_the_sync_still_programs_everything(setup: Any, monkeypatch: Any) -> None:
    proxier, fake = setup

    def broken(table: str | None = None) -> str:
        fake.calls.append("save failed")
        raise ProxyctlError("iptables-save: cannot initialize")

    monkeypatch.setattr(fake, "save", broken)
    result = proxier.sync()
    assert result.full and not result.error
    assert fake.calls == ["save failed", "restore", "ensure_jumps", "ensure_canaries"]
    assert fake.canaries and len(jumps_in(fake)) == len(JUMP_RULES)


def test_a_partial_sync_renders_only_the_changed_service(setup: Any, monkeypatch: Any) -> None:
    proxier, fake = setup
    proxier.sync()
    rendered: list[str] = []
    for step in ("_filter_entry_rules", "_nat_entry_rules", "_chain_rules"):
        monkeypatch.setattr(render_module, step,
                            lambda sp, *a, f=getattr(render_module, step): rendered.append(sp.name.name) or f(sp, *a))
    proxier.on_event("EndpointSlice", "MODIFIED", slice_("c", ["10.244.1.3", "10.244.2.3"]))
    fake.calls.clear()
    result = proxier.sync()
    assert result is not None and not result.full
    assert fake.calls == ["restore"]
    assert rendered == ["c", "c", "c"]  # its filter and nat entry rules and its chains; nothing for a, b, d
    # ... and the payload and counts are what a render from scratch gives
    monkeypatch.undo()
    writer = proxier.writer
    assert isinstance(writer, IptablesWriter) and writer._rendered is not None
    again = render(proxier.applied.plan, changed={"ns/c"}, existing_nat_chains=writer.service_chains)
    assert fake.payloads[-1] == again.text
    assert (writer._rendered.nat_rules_total, writer._rendered.nat_rules, writer._rendered.filter_rules) == (
        again.nat_rules_total, again.nat_rules, again.filter_rules)
    assert writer._rendered.service_chains == again.service_chains


def test_partial_render_with_previous_equals_render_without() -> None:
    from kubectl_proxyctl.kube.tracker import StateTracker as Tracker
    from kubectl_proxyctl.plan.planner import plan

    tracker = Tracker("node1")
    for i, name in enumerate(SERVICES):
        for obj in (service(name, f"10.96.0.{i + 1}"), slice_(name, [f"10.244.1.{i + 1}", f"10.244.2.{i + 1}"])):
            tracker.apply(obj["kind"], "ADDED", obj)
    config = ProxyConfig(node_name="node1", cluster_cidrs=("10.244.0.0/16",))
    first = plan(tracker.snapshot().state, config)
    full = render(first)
    tracker.apply("EndpointSlice", "MODIFIED", slice_("b", ["10.244.9.9"]))
    tracker.apply("Service", "DELETED", service("d", "10.96.0.4"))
    snap = tracker.snapshot()
    second = plan(snap.state, config, previous=first, changed=snap.changed_services)
    kwargs: dict[str, Any] = {"changed": snap.changed_services, "existing_nat_chains": full.service_chains}
    reused, scratch = render(second, previous=full, **kwargs), render(second, **kwargs)
    assert reused.text == scratch.text
    for attr in ("service_chains", "written_chains", "deleted_chains", "chains_by_service", "filter_rules",
                 "nat_rules", "nat_rules_total", "skipped_services"):
        assert getattr(reused, attr) == getattr(scratch, attr), attr
