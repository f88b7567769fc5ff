"""The parsers on what the real tools print, in throwaway network namespaces.

* Every golden case, rendered by our renderer (with kube-proxy's jump rules), restored with
  `iptables-nft-restore` and with `iptables-legacy-restore` (ip6tables for IPv6), then
  saved: the save parses lazily to the same rules, every service chain is named and its
  hash checked, `verify` finds the node in sync, and the tracer gives the same answers on
  the saved rules as on the rendered ones.
* The stored fixtures in tests/data/rules/ are what the tools print today.
* The hand-written kube-proxy.nft loads into nft and prints as the stored JSON.
* A 10,000-service × 5-endpoint cluster (bench/synth.py): rendered, restored (legacy, the
  faster backend for a first load), saved once and kept in pytest's cache; `explain` on it
  through the CLI, and one service's `verify`.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from kubectl_proxyctl.modes.iptables.render import RenderedRules, render, with_jump_rules
from kubectl_proxyctl.plan.planner import NodePlan, ProxyConfig, plan
from kubectl_proxyctl.kube.convert import state_from_objects
from kubectl_proxyctl.kube.snapshot import load_objects
from kubectl_proxyctl.model import ClusterState, IPFamily
from kubectl_proxyctl.inspect.graph import load_texts
from kubectl_proxyctl.modes.base import Mode
from kubectl_proxyctl.modes.iptables.parse import parse
from kubectl_proxyctl.modes.iptables.names import resolve_iptables
from kubectl_proxyctl.modes.nftables.parse import parse_nft_json
from kubectl_proxyctl.inspect.nodeinfo import node_context
from kubectl_proxyctl.modes.iptables.trace import trace
from kubectl_proxyctl.modes.tracing import LocalNode, Packet
from kubectl_proxyctl.inspect.verify import verify
from kubectl_proxyctl.modes.iptables.verify import rule_key
from netns import empty_netns, requires_lab
from enginehelpers import run_in

pytestmark = [pytest.mark.lab, requires_lab("iptables-nft-restore", "iptables-legacy-restore", "nft")]

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden"
DATA = ROOT / "tests" / "data" / "rules"
CASES = sorted(d.name for d in GOLDEN.iterdir() if (d / "objects.yaml").is_file())
BACKENDS = ("nft", "legacy")


@pytest.fixture(scope="module")
def netns() -> Iterator[str]:
    with empty_netns("rules") as name:
        yield name


def payload_with_jumps(rendered: RenderedRules) -> str:
    """The restore payload plus kube-proxy's jump rules (and the empty chains they need)."""
    return with_jump_rules(rendered.text)


def load_case(case: str) -> tuple[ClusterState, ProxyConfig, NodePlan, RenderedRules]:
    state = state_from_objects(load_objects(str(GOLDEN / case / "objects.yaml")), warn=lambda _m: None)
    raw = yaml.safe_load((GOLDEN / case / "config.yaml").read_text())
    options = raw.pop("render", {}) or {}
    options["nfacct"] = False  # the counters do not exist in a fresh namespace
    config = ProxyConfig.from_mapping(raw)
    node_plan = plan(state, config)
    return state, config, node_plan, render(node_plan, **options)


def restore_and_save(netns: str, backend: str, family: IPFamily, text: str) -> str:
    prefix = "ip6tables" if family == IPFamily.IPv6 else "iptables"
    run_in(netns, [f"{prefix}-{backend}-restore", "-w", "5"], input=text)
    return run_in(netns, [f"{prefix}-{backend}-save"]).stdout


def probes(node_plan: NodePlan) -> list[Packet]:
    pod = "fd00:10:244::7" if node_plan.family == IPFamily.IPv6 else "10.244.0.7"
    node_ip = node_plan.node_ips[0] if node_plan.node_ips else "192.168.0.2"
    out = []
    for sp in node_plan.services:
        proto = sp.protocol.value.lower()
        for ip in (sp.cluster_ip, *sp.external_ips, *sp.load_balancer_ips):
            out += [Packet(pod, ip, sp.port, proto, "pod"), Packet("203.0.113.9", ip, sp.port, proto, "external")]
        if sp.node_port:
            out += [Packet(node_ip, node_ip, sp.node_port, proto, "node"),
                    Packet("203.0.113.9", node_ip, sp.node_port, proto, "external")]
    return out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES)
def test_real_saves_parse_name_verify_and_trace(netns: str, case: str, backend: str) -> None:
    state, config, node_plan, rendered = load_case(case)
    payload = payload_with_jumps(rendered)
    saved = restore_and_save(netns, backend, config.family, payload)
    graph = load_texts([(f"{backend}-save", saved)])
    (dump,) = graph.iptables
    assert dump.backend == backend and graph.mode == Mode.IPTABLES

    # The save holds the same rules as the payload, by meaning.
    ours = parse(payload)
    for table in ours.tables:
        for chain in ours.chains(table):
            got, want = dump.ruleset.chain(table, chain), ours.chain(table, chain)
            assert got is not None and want is not None, (table, chain)
            assert sorted(rule_key(r) for r in got.rules) == sorted(rule_key(r) for r in want.rules)

    # Every service chain is named, and the name checks out.
    names = resolve_iptables(dump.ruleset)
    assert not names.unowned and all(o.verified for o in names.owners.values())
    assert set(names.owners) == set(rendered.service_chains)

    # verify: in sync.
    ctx = node_context(graph, state, config.node_name, config.node_ips, config.cluster_cidrs)
    report = verify(graph, Mode.IPTABLES, state, ctx)
    assert report.in_sync, [f.message for f in report.findings]

    # The tracer answers the same on the saved rules as on the rendered ones.
    local = LocalNode(node_plan.node_ips or ("192.168.0.2",))
    for packet in probes(node_plan):
        a, b = trace(ours, packet, local), trace(dump.ruleset, packet, local)
        # The kernel keeps a probability as a 32-bit fraction: 1/3 comes back as 0.33333333349.
        odds_a = {k: round(v, 6) for k, v in a.endpoint_probabilities().items()}
        odds_b = {k: round(v, 6) for k, v in b.endpoint_probabilities().items()}
        assert (a.verdict, odds_a, a.masquerade) == (b.verdict, odds_b, b.masquerade), \
            (packet, a.summary(), b.summary())


def test_the_stored_fixtures_are_what_the_tools_print(netns: str) -> None:
    _, config, _, rendered = load_case("upstream-six-services")
    for backend in BACKENDS:
        fresh = parse(restore_and_save(netns, backend, config.family, payload_with_jumps(rendered)))
        stored = parse((DATA / f"six-services.{backend}-save.txt").read_text())
        for table in stored.tables:
            assert fresh.chains(table) == stored.chains(table)
            for chain in stored.chains(table):
                a, b = fresh.chain(table, chain), stored.chain(table, chain)
                assert a is not None and b is not None
                assert [r.text for r in a.rules] == [r.text for r in b.rules]


def test_the_hand_written_nft_ruleset_loads_and_prints_as_stored() -> None:
    with empty_netns("nft") as ns:
        run_in(ns, ["nft", "-f", str(DATA / "kube-proxy.nft")])
        printed = run_in(ns, ["nft", "-j", "list", "ruleset"]).stdout

    def shape(text: str) -> Any:
        (table,) = parse_nft_json(text).kube_proxy_tables()
        return ({n: [r.expr for r in c.rules] for n, c in table.chains.items()},
                {n: (s.type, s.map, s.flags, s.timeout, sorted(json.dumps(e.key) for e in s.elements))
                 for n, s in table.sets.items()})

    assert shape(printed) == shape((DATA / "kube-proxy.nft.json").read_text())


# --- a large cluster ------------------------------------------------------------------------


def large_dump(cache: pytest.Cache) -> tuple[Path, Path]:
    """(iptables-legacy-save of a 10,000 × 5 cluster, its objects as JSON), made once."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import synth
    finally:  # bench/ (its `common` module, say) must not shadow anything for later tests
        sys.path.remove(str(ROOT / "bench"))

    # Whatever shapes the dump: the synthetic cluster and the code that plans and renders it.
    sources = [ROOT / "bench" / "synth.py", *(ROOT / "kubectl_proxyctl" / p for p in (
        "modes/iptables/render.py", "plan/planner.py", "plan/marks.py", "modes/iptables/naming.py",
        "kube/convert.py", "model.py"))]
    key = hashlib.sha256(b"".join(p.read_bytes() for p in sources)).hexdigest()[:16]
    where = cache.mkdir(f"proxyctl-10k-{key}")
    dump, objs = where / "iptables-legacy-save.txt", where / "objects.json"
    if not dump.exists():
        objects = synth.cluster(10000, 5)
        state = state_from_objects(objects, warn=lambda _m: None)
        rendered = render(plan(state, ProxyConfig(node_name="node1", cluster_cidrs=("10.128.0.0/9",),
                                                  node_ips=("172.18.0.2",))))
        with empty_netns("large") as ns:
            text = restore_and_save(ns, "legacy", IPFamily.IPv4, payload_with_jumps(rendered))
        objs.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}))
        dump.write_text(text)
    return dump, objs


def test_ten_thousand_services(request: pytest.FixtureRequest) -> None:
    assert request.config.cache is not None
    dump, objs = large_dump(request.config.cache)
    text = dump.read_text()
    assert text.count("\n-A ") > 170000 and "-> " not in text  # large-cluster mode: no SVC/SEP comments
    cmd = [sys.executable, "-m", "kubectl_proxyctl", "explain", "svc/svc-4321", "-n", "bench", "--rules-file",
           str(dump), "--node-ip", "172.18.0.2", "-o", "json"]
    # How fast: bench/bench_explain.py holds the target; here the timeout only bounds a hang.
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    (pod,) = [p for e in doc["ports"][0]["entries"] for p in e["paths"] if p["client"] == "pod"]
    assert [round(e["probability"], 6) for e in pod["endpoints"]] == [0.2] * 5
    assert pod["sentence"].endswith("1 of 5 endpoints, 20.0 % each, no SNAT")

    done = subprocess.run([sys.executable, "-m", "kubectl_proxyctl", "verify", "svc/svc-4321", "-n", "bench",
                           "--rules-file", str(dump), "--from-file", str(objs), "--node-name", "node1",
                           "--node-ip", "172.18.0.2"], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("In sync: 1 service port(s)")
