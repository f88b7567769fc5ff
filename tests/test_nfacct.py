"""nfacct counters (`system/nfacct.py`) and what iptables mode does with them, as kube-proxy
does: each full sync ensures `ct_state_invalid_dropped_pkts` and `localhost_nps_accepted_pkts`,
the INVALID drop and the localhost NodePort accept count into them, and /metrics serves
kubeproxy_iptables_ct_state_invalid_dropped_packets_total and
kubeproxy_iptables_localhost_nodeports_accepted_packets_total read from them at each scrape.

Unit tests use a fake counter store; the lab tests use the host kernel (nfnetlink_acct) in a
throw-away network namespace.
"""

from __future__ import annotations

import socket
from typing import Iterator

import pytest

from enginehelpers import endpoint, endpoint_slice, service
from fakes import FakeIptables

from kubectl_proxyctl.engine.metrics import ProxyMetrics, Registry
from kubectl_proxyctl.engine.proxier import Proxier
from kubectl_proxyctl.kube.tracker import StateTracker
from kubectl_proxyctl.errors import ApplyError
from kubectl_proxyctl.modes.base import Written
from kubectl_proxyctl.modes.iptables.writer import NFACCT_COUNTERS, IptablesWriter
from kubectl_proxyctl.plan.planner import ProxyConfig
from kubectl_proxyctl.system.netns import call_in_netns
from netns import exec_in, lab_skip_reason, lone_netns

LAB_SKIP = lab_skip_reason("iptables-nft")


class FakeCounters:
    def __init__(self, refuse: bool = False) -> None:
        self.counts: dict[str, tuple[int, int]] = {}
        self.refuse = refuse

    def ensure(self, name: str) -> None:
        if self.refuse:
            raise ApplyError(f"cannot create nfacct counter {name}: Operation not permitted (EPERM)")
        self.counts.setdefault(name, (0, 0))

    def get(self, name: str) -> tuple[int, int] | None:
        return self.counts.get(name)


def synced_writer(counters: FakeCounters) -> tuple[IptablesWriter, ProxyMetrics, FakeIptables]:
    """A full sync of a one-NodePort cluster (localhost node ports on) against the stateful
    iptables fake."""
    fake = FakeIptables()
    writer = IptablesWriter(fake, counters=counters)
    metrics = ProxyMetrics()
    proxier = Proxier(ProxyConfig(node_name="node1", cluster_cidrs=("10.244.0.0/16",), localhost_nodeports=True),
                      StateTracker("node1"), writer, metrics=metrics)
    objects = (service("a", "10.96.0.1", [{"name": "p", "port": 80, "targetPort": 8080, "nodePort": 30080}],
                       type="NodePort"),
               endpoint_slice("a", [endpoint("10.244.1.1", "node1")], [("p", 8080, "TCP")]))
    for obj in objects:
        proxier.on_event(obj["kind"], "ADDED", obj)
    assert proxier.sync() is not None
    return writer, metrics, fake


def test_a_read_counter_is_exposed_only_while_it_has_a_value() -> None:
    registry = Registry()
    value: list[float | None] = [None]
    registry.read_counter("kubeproxy_x_total", "[ALPHA] x", lambda: value[0])
    assert registry.expose() == ""
    value[0] = 3
    assert registry.expose() == "# HELP kubeproxy_x_total [ALPHA] x\n# TYPE kubeproxy_x_total counter\nkubeproxy_x_total 3\n"

    def broken() -> float:
        raise ApplyError("cannot read nfacct counter x: No such device")

    registry.read_counter("kubeproxy_y_total", "y", broken)
    assert "kubeproxy_y_total" not in registry.expose()  # a failed read leaves it out, as kube-proxy's collector does
    with pytest.raises(ValueError):
        registry.read_counter("kubeproxy_x_total", "again", lambda: 1)


def test_the_writer_creates_the_counters_and_the_metrics_read_them() -> None:
    counters = FakeCounters()
    writer, metrics, fake = synced_writer(counters)
    assert set(counters.counts) == set(NFACCT_COUNTERS) and writer.nfacct
    saved = fake.save()
    assert "-m nfacct --nfacct-name ct_state_invalid_dropped_pkts -j DROP" in saved
    assert "-m nfacct --nfacct-name localhost_nps_accepted_pkts" in saved
    counters.counts["ct_state_invalid_dropped_pkts"] = (7, 420)
    text = metrics.registry.expose()
    assert "kubeproxy_iptables_ct_state_invalid_dropped_packets_total 7\n" in text
    assert "kubeproxy_iptables_localhost_nodeports_accepted_packets_total 0\n" in text
    writer.record_metrics(metrics, "IPv4", Written(False, 0, writer._rendered))  # a later sync: registered once


def test_without_counters_the_rules_go_without_them_and_no_metric_is_served() -> None:
    writer, metrics, fake = synced_writer(FakeCounters(refuse=True))
    assert not writer.nfacct and "nfacct" not in fake.save()
    assert "nfacct" not in metrics.registry.expose() and "ct_state_invalid" not in metrics.registry.expose()


@pytest.fixture()
def netns() -> Iterator[str]:
    yield from lone_netns("nfacct", LAB_SKIP)


def sh(netns: str, *args: str) -> str:
    return exec_in(netns, *args)


@pytest.mark.lab
def test_counters_on_the_kernel_count_what_a_rule_matches(netns: str) -> None:
    from kubectl_proxyctl.system import nfacct

    def create() -> tuple[str, tuple[int, int] | None, tuple[int, int] | None]:
        with nfacct.Nfacct() as counters:
            before = counters.get("proxyctl_test")
            counters.ensure("proxyctl_test")
            counters.ensure("proxyctl_test")  # again: no error, no reset
            return nfacct.available(), before, counters.get("proxyctl_test")

    why, before, after = call_in_netns(netns, create)
    assert (why, before, after) == ("", None, (0, 0))
    sh(netns, "iptables", "-A", "OUTPUT", "-o", "lo", "-p", "udp", "--dport", "9", "-m", "nfacct",
       "--nfacct-name", "proxyctl_test")

    def send_and_read() -> tuple[int, int] | None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for _ in range(3):
                sock.sendto(b"x" * 10, ("127.0.0.1", 9))
        with nfacct.Nfacct() as counters:
            return counters.get("proxyctl_test")

    packets, octets = call_in_netns(netns, send_and_read) or (0, 0)
    assert packets == 3 and octets == 3 * 38  # 20 IP + 8 UDP + 10 bytes each

    def bad_name() -> None:
        with nfacct.Nfacct() as counters:
            counters.ensure("x" * 40)

    with pytest.raises(ApplyError, match="1 to 31 characters"):
        call_in_netns(netns, bad_name)
