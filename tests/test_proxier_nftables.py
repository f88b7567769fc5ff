"""The nftables proxier's sync logic and the `nft` adapter, against fakes (no root needed)."""

from __future__ import annotations

from typing import Any

import pytest
from fakes import Clock, FakeNft, service, slice_

from kubectl_proxyctl.engine.app import EngineFlags
from kubectl_proxyctl.engine.metrics import ProxyMetrics
from kubectl_proxyctl.engine.proxier import Proxier
from kubectl_proxyctl.errors import ApplyError, ProxyctlError
from kubectl_proxyctl.kube.tracker import StateTracker
from kubectl_proxyctl.model import IPFamily
from kubectl_proxyctl.modes.nftables.writer import NftablesWriter
from kubectl_proxyctl.plan.planner import ProxyConfig
from kubectl_proxyctl.system.executor import FakeExecutor, Result
from kubectl_proxyctl.system.nftables import NftSystem, nft_error


@pytest.fixture
def setup() -> tuple[Proxier, FakeNft, Clock, ProxyMetrics]:
    tracker = StateTracker("node1")
    fake = FakeNft()
    clock = Clock()
    metrics = ProxyMetrics()
    proxier = Proxier(ProxyConfig(node_name="node1", cluster_cidrs=("10.244.0.0/16",)), tracker,
                      NftablesWriter(fake, monotonic=clock), metrics=metrics)
    for obj in (service("a", "10.96.0.1"), slice_("a", ["10.244.1.1"]),
                service("b", "10.96.0.2"), slice_("b", ["10.244.1.2"])):
        proxier.on_event(obj["kind"], "ADDED", obj)
    return proxier, fake, clock, metrics


def test_nothing_is_programmed_before_sources_sync() -> None:
    fake = FakeNft()
    proxier = Proxier(ProxyConfig(node_name="n"), StateTracker("n"), NftablesWriter(fake), synced=lambda: False)
    assert proxier.sync() is None and fake.scripts == []


def test_first_sync_is_full_and_recreates_base_chains_once(setup: Any) -> None:
    proxier, fake, _, _ = setup
    first = proxier.sync()
    assert first is not None and first.full and not first.error
    text = fake.scripts[0]
    assert "delete chain ip kube-proxy nat-prerouting" in text  # add+delete once per process
    assert "10.244.1.1:8080" in text and "10.244.1.2:8080" in text
    proxier.schedule.request()
    again = proxier.sync()
    assert again is not None and again.full
    assert "delete chain ip kube-proxy nat-prerouting" not in fake.scripts[-1]


def test_partial_sync_touches_only_the_changed_service(setup: Any) -> None:
    proxier, fake, _, _ = setup
    proxier.sync()
    proxier.on_event("EndpointSlice", "MODIFIED", slice_("a", ["10.244.1.1", "10.244.1.9"]))
    result = proxier.sync()
    assert result is not None and not result.full and not result.error
    text = fake.scripts[-1]
    assert "ns/a/tcp/p" in text and "ns/b/tcp/p" not in text
    assert "10.244.1.9:8080" in text
    assert "add table" not in text  # no fixed structure in a partial transaction
    assert "numgen random mod 2" in text


def test_deleted_service_chains_are_flushed_then_deleted_a_second_later(setup: Any) -> None:
    proxier, fake, clock, _ = setup
    proxier.sync()
    proxier.on_event("Service", "DELETED", service("b", "10.96.0.2"))
    proxier.sync()
    flushed = [ln for ln in fake.scripts[-1].splitlines() if ln.startswith("flush chain") and "ns/b/" in ln]
    assert flushed and not any(ln.startswith("delete chain") for ln in fake.scripts[-1].splitlines())
    assert "delete element ip kube-proxy service-ips { 10.96.0.2 . tcp . 80 }" in fake.scripts[-1]
    clock.now += 0.5
    proxier.sync()  # too early: nothing deleted
    assert not any(ln.startswith("delete chain") for s in fake.scripts for ln in s.splitlines() if "ns/b/" in ln)
    clock.now += 1.0
    proxier.sync()
    deleted = [ln for s in fake.scripts for ln in s.splitlines() if ln.startswith("delete chain") and "ns/b/" in ln]
    assert len(deleted) == len(flushed)
    assert not any("ns/b/" in c for c in fake.existing)


def test_failed_transaction_counts_and_forces_a_full_sync(setup: Any) -> None:
    proxier, fake, _, metrics = setup
    proxier.sync()
    failures: list[int] = []
    proxier.on_failure = lambda: failures.append(1)
    proxier.on_event("EndpointSlice", "MODIFIED", slice_("a", ["10.244.1.3"]))
    fake.fail_next = 1
    failed = proxier.sync()
    assert failed is not None and failed.error and failures == [1]
    exposed = metrics.registry.expose()
    assert 'kubeproxy_sync_proxy_rules_nftables_sync_failures_total{ip_family="IPv4"} 1' in exposed
    again = proxier.sync()
    assert again is not None and again.full and not again.error
    assert "10.244.1.3:8080" in fake.scripts[-1] and "10.244.1.1:8080" not in fake.scripts[-1]


def test_stale_chains_found_in_the_kernel_are_flushed_by_a_full_sync(setup: Any) -> None:
    proxier, fake, _, _ = setup
    fake.existing = {"service-AAAAAAAA-old/gone/tcp/p", "services"}
    fake.affinity = {"affinity-BBBBBBBB-old/gone/tcp/p__10.0.0.1/80"}
    proxier.sync()
    text = fake.scripts[-1]
    assert "flush chain ip kube-proxy service-AAAAAAAA-old/gone/tcp/p" in text
    assert "delete set ip kube-proxy affinity-BBBBBBBB-old/gone/tcp/p__10.0.0.1/80" in text


def test_canary_check_reports_a_deleted_table(setup: Any) -> None:
    proxier, fake, _, _ = setup
    proxier.sync()
    assert proxier.state_missing() == []
    fake.masquerading_rules = None
    assert proxier.state_missing() == ["table ip kube-proxy"]


def test_stale_chains_wait_while_changes_pend_so_a_change_pays_one_transaction(setup: Any) -> None:
    proxier, fake, clock, _ = setup
    proxier.sync()
    proxier.on_event("Service", "DELETED", service("b", "10.96.0.2"))
    proxier.sync()
    for i in range(3):  # a stream of changes: each sync is exactly one transaction
        clock.now += 2.0
        before = len(fake.scripts)
        proxier.on_event("EndpointSlice", "MODIFIED", slice_("a", [f"10.244.1.{10 + i}"]))
        proxier.sync()
        assert len(fake.scripts) == before + 1
        assert not any(ln.startswith("delete chain") for ln in fake.scripts[-1].splitlines())
    clock.now += NftablesWriter.STALE_CHAIN_MAX_AGE  # ... until the stale chains are old enough
    proxier.on_event("EndpointSlice", "MODIFIED", slice_("a", ["10.244.1.99"]))
    proxier.sync()
    assert any(ln.startswith("delete chain") and "ns/b/" in ln for ln in fake.scripts[-2].splitlines())


def test_delete_stale_chains_now_waits_out_the_delay(setup: Any) -> None:
    proxier, fake, clock, _ = setup
    proxier.sync()
    proxier.on_event("Service", "DELETED", service("b", "10.96.0.2"))
    proxier.sync()
    waited: list[float] = []

    def wait(seconds: float) -> None:
        waited.append(seconds)
        clock.now += seconds

    assert proxier.writer.delete_stale(wait=wait) >= 2 and waited and waited[0] <= 1.0
    assert not any("ns/b/" in c for c in fake.existing)
    assert proxier.writer.delete_stale(wait=wait) == 0


def test_no_periodic_full_sync_but_a_flushed_table_is_noticed_at_the_next_check(setup: Any) -> None:
    proxier, fake, clock, _ = setup
    proxier.sync()
    clock.now += 10 * 3600
    assert proxier.schedule.due() is False
    assert proxier.state_missing() == []  # the hourly listing finds everything in place
    fake.masquerading_rules = 0  # `nft flush table ip kube-proxy`: chains empty, sets still there
    missing = proxier.state_missing()
    assert len(missing) == 1 and missing[0].startswith("the rules of ") and "table ip kube-proxy" in missing[0]
    assert "rules changed" in missing[0], missing
    proxier.schedule.request()
    assert proxier.sync().full and proxier.state_missing() == []


def test_the_check_lists_the_table_only_when_the_generation_moved(setup: Any, monkeypatch: Any) -> None:
    proxier, fake, clock, _ = setup
    proxier.sync()
    listings: list[int] = []
    summary = fake.summary
    monkeypatch.setattr(fake, "summary", lambda: listings.append(1) or summary())
    assert proxier.state_missing() == [] and listings == [1]  # after a full transaction: listed once
    assert proxier.state_missing() == [] and listings == [1]  # nothing changed: no listing
    fake.run("add table inet other\n")  # another program's transaction
    assert proxier.state_missing() == [] and listings == [1, 1]  # listed once more, ours intact
    assert proxier.state_missing() == [] and listings == [1, 1]  # and not again


@pytest.mark.parametrize("tamper,what", [
    (lambda fake: setattr(fake, "masquerading_rules", None), "table ip kube-proxy"),
    (lambda fake: fake.run("flush chain ip kube-proxy services\n"), "rules changed"),
    (lambda fake: fake.run("delete element ip kube-proxy service-ips { 10.96.0.1 . tcp . 80 }\n"), "elements of service-ips"),
])
def test_every_kind_of_tampering_is_noticed(setup: Any, tamper: Any, what: str) -> None:
    proxier, fake, _, _ = setup
    proxier.sync()
    tamper(fake)
    missing = proxier.state_missing()
    assert missing and what in " ".join(missing), missing


# --- the adapter ------------------------------------------------------------------------------


def test_nft_error_names_the_failing_line() -> None:
    script = "add table ip kube-proxy\nadd chain ip kube-proxy x\nadd rule ip kube-proxy nope accept\nadd chain ip kube-proxy y\n"
    stderr = ("/dev/stdin:3:25-28: Error: No such file or directory; did you mean chain 'x' in table ip 'kube-proxy'?\n"
              "add rule ip kube-proxy nope accept\n                        ^^^^\n")
    err = nft_error(script, Result(1, "", stderr))
    text = str(err)
    assert "failed at line 3" in text and "No such file or directory" in text
    assert ">     3: add rule ip kube-proxy nope accept" in text
    assert "atomic" in text and err.line == 3


def test_adapter_lists_only_our_tables_objects() -> None:
    fake = FakeExecutor()
    fake.script(["nft", "-j", "list", "chains", "ip"], Result(0, '{"nftables": [{"metainfo": {}},'
                '{"chain": {"family": "ip", "table": "kube-proxy", "name": "services"}},'
                '{"chain": {"family": "ip", "table": "filter", "name": "INPUT"}}]}'))
    fake.script(["nft", "-j", "list", "tables", "ip"], Result(0, '{"nftables": [{"table": {"family": "ip", "name": "nat"}}]}'))
    system = NftSystem(IPFamily.IPv4, fake)
    assert system.chains() == {"services"}
    assert system.table_present() is False
    assert system.delete_table() is False  # nothing to delete, no delete issued
    assert not any(c.argv[:2] == ("nft", "-f") for c in fake.calls)


def test_adapter_run_raises_apply_error_and_sends_the_script_on_stdin() -> None:
    fake = FakeExecutor()
    fake.script(["nft", "-f", "-"], Result(1, "", "/dev/stdin:1:1-3: Error: syntax error\n"))
    system = NftSystem(IPFamily.IPv6, fake)
    with pytest.raises(ApplyError, match="line 1"):
        system.run("bad thing\n")
    assert fake.calls[-1].stdin == "bad thing\n"
    system.run("   \n")  # an empty transaction runs nothing
    assert len(fake.calls) == 1


def test_check_available_explains_a_missing_binary_and_an_old_nft() -> None:
    missing = NftSystem(IPFamily.IPv4, FakeExecutor(missing={"nft"}))
    with pytest.raises(ProxyctlError, match="install the nftables package"):
        missing.check_available()
    old = FakeExecutor()
    old.script(["nft", "--version"], Result(0, "nftables v0.9.8 (E.D.S.)\n"))
    with pytest.raises(ProxyctlError, match=r"nft >= 1\.0\.1"):
        NftSystem(IPFamily.IPv4, old).check_available()
    refused = FakeExecutor()
    refused.script(["nft", "--version"], Result(0, "nftables v1.0.6 (Lester Gooch #5)\n"))
    refused.script(["nft", "-c", "-f", "-"], Result(1, "", "Error: Could not process rule: Operation not supported\n"))
    with pytest.raises(ProxyctlError, match="nf_tables support"):
        NftSystem(IPFamily.IPv4, refused).check_available()


# --- flags --------------------------------------------------------------------------------------


def _flags(**over: Any) -> dict[str, Any]:
    flags: dict[str, Any] = dict(
        mode="iptables", node_name="n1", node_ips=(), ip_family="IPv4", cluster_cidr="", detect_local_mode="ClusterCIDR",
        pod_bridge_interface="", pod_interface_name_prefix="", masquerade_all=False, masquerade_bit=14,
        nodeport_addresses="", localhost_nodeports=True, sync_period=30.0, min_sync_period=1.0,
        healthz_bind_address="", metrics_bind_address="", bind_address_hard_fail=False, cleanup=False,
        dry_run=False, once=False)
    flags.update(over)
    return flags


def test_nftables_mode_defaults_nodeport_addresses_to_primary_and_has_no_localhost_nodeports() -> None:
    nft = EngineFlags.from_flags(_flags(mode="nftables"), default_node=lambda: "x")
    assert nft.config.nodeport_addresses == ("primary",) and nft.config.localhost_nodeports is False
    explicit = EngineFlags.from_flags(_flags(mode="nftables", nodeport_addresses="10.0.0.0/8"), default_node=lambda: "x")
    assert explicit.config.nodeport_addresses == ("10.0.0.0/8",)
    ipt = EngineFlags.from_flags(_flags(), default_node=lambda: "x")
    assert ipt.config.nodeport_addresses == () and ipt.config.localhost_nodeports is True


def test_listings_are_spaced_when_other_software_keeps_committing(setup: Any, monkeypatch: Any) -> None:
    proxier, fake, clock, _ = setup
    proxier.sync()
    listings: list[float] = []
    summary = fake.summary

    def slow_summary() -> Any:
        listings.append(clock.now)
        clock.now += 2.0  # a listing of a big table takes a while
        return summary()

    monkeypatch.setattr(fake, "summary", slow_summary)
    for i in range(30):  # another program commits before every check, one check per 2 s
        fake.run(f"add table inet other{i}\n")
        assert proxier.state_missing() == []
        clock.now += 2.0
    # 30 checks, but a 2 s listing is followed by 20 x 2 s without one: at most 5 % of the time
    assert 1 < len(listings) <= 3, listings
    fake.masquerading_rules = None  # `nft delete table`: noticed between listings too
    assert proxier.state_missing() == ["table ip kube-proxy"]
