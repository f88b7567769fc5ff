"""Golden tests of IPVS mode: the golden cases' objects → `run --mode ipvs --dry-run` text.

Each tests/golden/<case>/ gets `expected.ipvs` beside the other modes' files: the virtual
servers as `ipvsadm -Sn` prints them, the ipsets as `ipset save` does and the companion
rules as an `iptables-restore` payload (`RenderedIpvs.save_text`). Regenerate with
`PROXYCTL_UPDATE_GOLDEN=1 pytest tests/test_ipvs_golden.py` and review the diff. The rendered
text is also fed back through the inspector (parse → trace): what `explain` would say of a
node holding it must be where the plan sends the packet.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

import golden
from kubectl_proxyctl.inspect.graph import RuleGraph, load_texts
from kubectl_proxyctl.inspect.paths import trace_packet
from kubectl_proxyctl.kube.convert import state_from_objects
from kubectl_proxyctl.kube.snapshot import load_objects
from kubectl_proxyctl.modes.base import Mode
from kubectl_proxyctl.modes.ipvs.render import Options, RenderedIpvs, render
from kubectl_proxyctl.modes.tracing import LocalNode, Packet, Verdict
from kubectl_proxyctl.plan.planner import NodePlan, ProxyConfig, plan

GOLDEN = golden.GOLDEN
CASES = sorted(d.name for d in GOLDEN.iterdir() if (d / "objects.yaml").is_file())


def load_case(case: str) -> NodePlan:
    directory = GOLDEN / case
    state = state_from_objects(load_objects(str(directory / "objects.yaml")), warn=lambda m: None)
    config: dict[str, Any] = yaml.safe_load((directory / "config.yaml").read_text())
    config.pop("render", None)
    return plan(state, ProxyConfig.from_mapping(config))


def render_case(case: str) -> RenderedIpvs:
    return render(load_case(case), Options())


def graph_of(rendered: RenderedIpvs) -> RuleGraph:
    """The rendered state as the inspector reads a node's dumps (one text per tool)."""
    text = rendered.save_text()
    ipvsadm, rest = text.split("# ipset save\n", 1)
    ipset, iptables = rest.split("# iptables-save\n", 1)
    return load_texts([("ipvsadm", ipvsadm), ("ipset", ipset), ("iptables", iptables)])


@pytest.mark.parametrize("case", CASES)
def test_golden(case: str) -> None:
    golden.check(GOLDEN / case / "expected.ipvs", render_case(case).save_text(), f"{case}: the rendered IPVS state")


def test_every_case_has_an_expected_ipvs_file_not_rewritten_by_a_run() -> None:
    for case in CASES:
        assert (GOLDEN / case / "expected.ipvs").is_file(), f"{case} has no expected.ipvs"
    changed = golden.rewritten_by_this_checkout()
    if changed is None:
        pytest.skip("not a git checkout")
    tracked = {p for p in changed if p.name == "expected.ipvs"}
    import subprocess

    committed = subprocess.run(["git", "ls-files", "--", "tests/golden"], cwd=GOLDEN.parent.parent,
                               capture_output=True, text=True).stdout
    rewritten = [p for p in tracked if str(p.relative_to(GOLDEN.parent.parent)) in committed
                 and p.read_text() == render_case(p.parent.name).save_text()]
    assert not rewritten, f"expected.ipvs rewritten by a run and not committed: {rewritten}"


@pytest.mark.parametrize("case", CASES)
def test_rendered_state_traces_to_the_planned_endpoints(case: str) -> None:
    """A new connection from a pod to every ClusterIP lands on the endpoints the plan chose."""
    node_plan = load_case(case)
    rendered = render_case(case)
    graph = graph_of(rendered)
    assert graph.mode == Mode.IPVS
    node = LocalNode(tuple(node_plan.node_ips) or ("172.18.0.2",))
    for sp in node_plan.services:
        if sp.protocol.value != "TCP":
            continue
        result = trace_packet(graph, Mode.IPVS, Packet("10.244.9.9" if ":" not in sp.cluster_ip else "fd00:10:244::99",
                                                       sp.cluster_ip, sp.port, "tcp", "pod"), node)
        local = sp.local_endpoints if sp.internal_policy_local and sp.local_endpoints else sp.cluster_endpoints
        want = sorted({e.address for e in local})
        if want:
            assert result.verdict == Verdict.DNAT, (case, str(sp.name), result)
            assert sorted(e.destination for e in result.endpoints) == want, (case, str(sp.name))
        else:
            assert result.verdict != Verdict.DNAT, (case, str(sp.name), result)
