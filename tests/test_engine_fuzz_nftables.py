"""Fuzzing the nftables renderer with malformed and extreme Services and EndpointSlices.

The objects come from tests/test_engine_fuzz.py's strategies (valid objects with extreme
values, and broken ones with one known defect each). For every batch:

* planning and rendering (full, first, partial from another state, stale deletion) never
  raise, and every statement is one line of a known kind, with names nft accepts;
* (lab) the real kernel accepts every transaction: `nft -c -f` (check mode) on the full one in
  a fresh table, and on the partial one over the full transaction of an earlier state, which
  is loaded for that; then the stale-chain deletion.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Iterator

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from kubectl_proxyctl.modes.nftables.render import NAME_LENGTH_MAX, RenderedNft, render, stale_deletion
from kubectl_proxyctl.plan.planner import ProxyConfig, plan
from kubectl_proxyctl.kube.convert import state_from_objects
from kubectl_proxyctl.model import ClusterState, IPFamily
from nfthelpers import NFT_SKIP, Scratch, scratch_netns
from test_engine_fuzz import FUZZ, Case, _nth_ip, cases, configs

SERVICE_CIDRS = ("10.96.0.0/12", "fd00:10:96::/112")
with_cidrs = st.sampled_from([(), SERVICE_CIDRS])

_STATEMENT = re.compile(r"^(add|flush|delete) (table|chain|rule|set|map|element) (ip|ip6) kube-proxy( |$)")
_NAME = re.compile(r"^(?:add|flush|delete) (?:chain|rule|set|map|element) \S+ kube-proxy (\S+)")


def family_cidrs(cidrs: tuple[str, ...], family: IPFamily) -> tuple[str, ...]:
    v6 = family == IPFamily.IPv6
    return tuple(c for c in cidrs if (ipaddress.ip_network(c).version == 6) == v6)


def state_of(batch: list[Case]) -> ClusterState:
    return state_from_objects([c.obj for c in batch], lambda _: None)


def renders(batch: list[Case], config: ProxyConfig, cidrs: tuple[str, ...]) -> tuple[RenderedNft, RenderedNft, RenderedNft]:
    """(full transaction of an earlier state, partial one from it to the batch's state, full
    transaction of the batch's state as a process's first)."""
    cidrs = family_cidrs(cidrs, config.family)
    earlier = plan(state_of(batch[: len(batch) // 2]), config)
    now = plan(state_of(batch), config)
    before = render(earlier, service_cidrs=cidrs)
    changed = {sp.name.service for sp in now.services} | {sp.name.service for sp in earlier.services}
    partial = render(now, previous=before.state, changed=changed, now=10.0, service_cidrs=cidrs)
    first = render(now, first=True, service_cidrs=cidrs, existing_chains=partial.state.chains,
                   existing_affinity_sets=partial.state.affinity_sets)
    for rendered in (before, partial, first):
        for line in rendered.text.splitlines():
            assert _STATEMENT.match(line), line
            name = _NAME.match(line)
            assert name is None or len(name.group(1)) < NAME_LENGTH_MAX, line
            assert "\r" not in line and len(line) < 1 << 20
    assert partial.state.services == first.state.services
    assert partial.state.active_chains == first.state.active_chains
    text, due = stale_deletion(partial.state, 20.0)
    assert set(due) == set(partial.state.stale)
    assert text.count("\n") == len(due)
    leftover = render(now, existing_chains={"endpoint-X-a/b/tcp/__10.0.0.1/1", "services"},
                      existing_affinity_sets={"affinity-X-a/b/tcp/__10.0.0.1/1"}, service_cidrs=cidrs)
    assert leftover.stale_flushed == ("endpoint-X-a/b/tcp/__10.0.0.1/1",)
    assert leftover.affinity_deleted == ("affinity-X-a/b/tcp/__10.0.0.1/1",)
    return before, partial, first


@given(batch=cases(), config=configs, cidrs=with_cidrs)
@settings(FUZZ, max_examples=40)
def test_render_never_raises(batch: list[Case], config: ProxyConfig, cidrs: tuple[str, ...]) -> None:
    renders(batch, config, cidrs)


# --- the real kernel ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scratch() -> Iterator[Scratch]:
    if NFT_SKIP:
        pytest.skip(NFT_SKIP)
    yield from scratch_netns("nftfuzz")


def kernel_check(scratch: Scratch, family: IPFamily, before: RenderedNft, partial: RenderedNft,
                 first: RenderedNft) -> None:
    scratch.reset()
    scratch.check(before.text, family)
    scratch.load(before.text, family)
    scratch.check(partial.text, family)
    scratch.load(partial.text, family)
    text, _ = stale_deletion(partial.state, 20.0)
    scratch.check(text, family)
    scratch.check(first.text, family)  # over the table it finds (stale chains flushed, not recreated)


@pytest.mark.lab
@given(batch=cases(), config=configs, cidrs=with_cidrs)
@settings(FUZZ, max_examples=25)
def test_transactions_pass_nft_check(scratch: Scratch, batch: list[Case], config: ProxyConfig,
                                     cidrs: tuple[str, ...]) -> None:
    state = state_of(batch)
    assume(state.ports)
    kernel_check(scratch, config.family, *renders(batch, config, cidrs))


ENDPOINTS = 300  # per family and port: nft 1.0.6 needs ~3 s for a 23,000-line transaction


@pytest.mark.lab
def test_extreme_cluster_passes_nft_check(scratch: Scratch) -> None:
    """Fixed extremes: 65535 everywhere, maximal names, 300 endpoints per family, every protocol, dual-stack, ETP Local, affinity
    beyond its API maximum (capped) and source ranges at once."""
    ns, name = "n" * 63, "s" * 63
    ports = [{"name": f"p{i}-" + "x" * 10, "port": p, "protocol": proto, "nodePort": np}
             for i, (p, proto, np) in enumerate([(65535, "TCP", 65535), (1, "UDP", 1), (80, "SCTP", 0)])]
    objs: list[Any] = [
        {"kind": "Service", "metadata": {"name": name, "namespace": ns},
         "spec": {"type": "LoadBalancer", "clusterIPs": ["10.96.255.255", "fd00:10:96::ffff"], "ports": ports,
                  "externalIPs": ["192.0.2.1", "2001:db8::1"], "externalTrafficPolicy": "Local",
                  "healthCheckNodePort": 65535, "sessionAffinity": "ClientIP",
                  "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 2**40}},
                  "loadBalancerSourceRanges": ["172.18.0.0/16", "0.0.0.0/0", "fd00::/8"]},
         "status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.1"}, {"ip": "2001:db8::2"}]}}},
    ]
    for family, v6 in (("IPv4", False), ("IPv6", True)):
        objs.append({
            "kind": "EndpointSlice",
            "metadata": {"name": f"{name[:50]}-{family.lower()}", "namespace": ns,
                         "labels": {"kubernetes.io/service-name": name}},
            "addressType": family, "ports": [{"name": p["name"], "port": 65535, "protocol": p["protocol"]} for p in ports],
            "endpoints": [{"addresses": [_nth_ip(v6, 1, i)], "nodeName": "node1" if i % 2 else "node2"}
                          for i in range(ENDPOINTS)],
        })
    batch = [Case(o, "ok") for o in objs]
    for family in IPFamily:
        config = ProxyConfig(node_name="node1", family=family, cluster_cidrs=("10.244.0.0/16", "fd00:10:244::/56"),
                             node_ips=("172.18.0.2", "fd00:18::2"))
        before, partial, first = renders(batch, config, SERVICE_CIDRS)
        assert plan(state_of(batch), config).total_endpoints == 3 * ENDPOINTS
        assert "timeout 86400s ;" in first.text
        kernel_check(scratch, family, before, partial, first)
