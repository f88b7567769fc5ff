"""(lab) A new engine over a table a previous run programmed, in the real kernel: its first
sync writes only the difference, and the table then lists exactly as after a fresh full
sync of the same cluster (1,000 services x 5 endpoints, in namespaces of its own)."""

from __future__ import annotations

from typing import Any, Iterator

import pytest
from fakes import service, slice_
from netns import empty_netns, requires_lab

from kubectl_proxyctl.engine.proxier import Proxier
from kubectl_proxyctl.kube.tracker import StateTracker
from kubectl_proxyctl.modes.nftables.reconcile import comparable_listing
from kubectl_proxyctl.modes.nftables.writer import NftablesWriter
from kubectl_proxyctl.plan.planner import ProxyConfig
from kubectl_proxyctl.system.executor import Result, SubprocessExecutor
from kubectl_proxyctl.system.nftables import NftSystem

pytestmark = [pytest.mark.lab, pytest.mark.slow, requires_lab("nft")]

SERVICES = 1000
ENDPOINTS = 5
CONFIG = ProxyConfig(node_name="node1", cluster_cidrs=("10.244.0.0/16",), nodeport_addresses=("primary",),
                     localhost_nodeports=False)


def cluster(services: int, moved: int = 0, gone: range = range(0), added: int = 0) -> list[dict[str, Any]]:
    """`services` Services with ENDPOINTS endpoints each; the first `moved` have their first
    endpoint elsewhere, those in `gone` are left out, `added` more come after them."""
    out: list[dict[str, Any]] = []
    for i in range(services + added):
        if i in gone:
            continue
        ips = [f"10.244.{(i * ENDPOINTS + j) // 250 % 250}.{(i * ENDPOINTS + j) % 250 + 1}" for j in range(ENDPOINTS)]
        if i < moved:
            ips[0] = f"10.245.{i // 250}.{i % 250 + 1}"
        out += [service(f"svc{i}", f"10.96.{i // 250}.{i % 250 + 1}"), slice_(f"svc{i}", ips)]
    return out


class Recording(SubprocessExecutor):
    """Remembers the nft scripts it ran."""

    def __init__(self, netns: str) -> None:
        super().__init__(netns=netns)
        self.scripts: list[str] = []

    def run(self, argv: Any, stdin: str | None = None, timeout: float = 60.0) -> Result:
        if list(argv[:2]) == ["nft", "-f"] and stdin:
            self.scripts.append(stdin)
        return super().run(argv, stdin=stdin, timeout=timeout)


def engine(netns: str, objects: list[dict[str, Any]]) -> tuple[Proxier, Recording]:
    executor = Recording(netns)
    proxier = Proxier(CONFIG, StateTracker("node1"), NftablesWriter(NftSystem(CONFIG.family, executor=executor)))
    for obj in objects:
        proxier.on_event(obj["kind"], "ADDED", obj)
    return proxier, executor


def listing(netns: str) -> list[str]:
    """`nft list table ip kube-proxy`, comparable (`reconcile.comparable_listing`)."""
    text = NftSystem(CONFIG.family, executor=SubprocessExecutor(netns=netns)).listing()
    assert text is not None
    return comparable_listing(text)


@pytest.fixture
def netns() -> Iterator[str]:
    with empty_netns("reconcile") as name:
        yield name


def test_a_restart_over_the_same_cluster_writes_only_the_fixed_part(netns: str) -> None:
    objects = cluster(SERVICES)
    first, _ = engine(netns, objects)
    assert first.sync().full
    fresh = listing(netns)
    again, executor = engine(netns, objects)
    result = again.sync()
    assert result is not None and result.full and not result.error
    assert len(executor.scripts) == 1 and len(executor.scripts[0].splitlines()) < 100
    assert "svc" not in executor.scripts[0]
    assert listing(netns) == fresh


def test_a_restart_after_changes_and_tampering_lists_as_a_fresh_full_sync(netns: str) -> None:
    first, _ = engine(netns, cluster(SERVICES))
    assert first.sync().full
    system = NftSystem(CONFIG.family, executor=SubprocessExecutor(netns=netns))
    chain = next(c for c in system.chains() if c.startswith("endpoint-") and "/svc500/" in c)
    system.run(f"flush chain ip kube-proxy {chain}\ndelete element ip kube-proxy cluster-ips {{ 10.96.3.1 }}\n")
    changed = cluster(SERVICES, moved=20, gone=range(100, 110), added=5)
    proxier, executor = engine(netns, changed)
    result = proxier.sync()
    assert result is not None and result.full and not result.error
    script = executor.scripts[-1]
    assert "flush map" not in script and len(script.splitlines()) < 1000
    assert f"add rule ip kube-proxy {chain} " in script and "10.96.3.1" in script
    assert proxier.delete_stale_chains() > 0  # the gone services' chains, a second later
    with empty_netns("fresh") as other:
        fresh, _ = engine(other, changed)
        assert fresh.sync().full
        want = listing(other)
    assert listing(netns) == want
    # and the next change is a partial sync on the reconciled state
    proxier.on_event("EndpointSlice", "MODIFIED", slice_("svc7", ["10.246.0.1"]))
    partial = proxier.sync()
    assert partial is not None and not partial.full and not partial.error


def test_the_listing_through_libnftables_is_what_nft_prints(netns: str) -> None:
    first, _ = engine(netns, cluster(20))
    assert first.sync().full
    executor = SubprocessExecutor(netns=netns)
    printed = executor.run(["nft", "list", "table", "ip", "kube-proxy"])
    assert printed.ok
    assert NftSystem(CONFIG.family, executor=executor).listing() == printed.stdout
    assert NftSystem(CONFIG.family, executor=executor).listing("no-such-table") is None
