"""Golden tests: real API objects + a proxy config → the exact iptables-restore payload.

Each directory tests/golden/<case>/ holds `objects.yaml` (Services, EndpointSlices and
Nodes as `kubectl get -o yaml` prints them), `config.yaml` (ProxyConfig fields, plus a
`render:` map of renderer options) and `expected.iptables` (and nftables mode's files, see
tests/test_golden_nftables.py). Review changes to expected files
as diffs; regenerate them with `PROXYCTL_UPDATE_GOLDEN=1 pytest tests/test_golden_iptables.py`.

`upstream-six-services` is kube-proxy's own TestOverallIPTablesRules translated into objects;
its `upstream.iptables` is kube-proxy's expected output, verbatim, which ours must equal chain by
chain (only the order of different services inside KUBE-SERVICES/KUBE-NODEPORTS, the mark's
zero padding and, when asked, nfacct counters may differ).
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

import golden
from flowhelpers import assert_consistent, compare_with_upstream
from kubectl_proxyctl.modes.iptables.render import RenderedRules, render
from kubectl_proxyctl.plan.planner import NodePlan, ProxyConfig, plan
from kubectl_proxyctl.kube.convert import state_from_objects
from kubectl_proxyctl.kube.snapshot import load_objects
from kubectl_proxyctl.modes.iptables.parse import parse

GOLDEN = golden.GOLDEN
CASES = sorted(d.name for d in GOLDEN.iterdir() if (d / "objects.yaml").is_file())


def load_case(case: str) -> tuple[NodePlan, dict[str, Any]]:
    directory = GOLDEN / case
    warnings: list[str] = []
    state = state_from_objects(load_objects(str(directory / "objects.yaml")), warn=warnings.append)
    assert not warnings, warnings
    config = yaml.safe_load((directory / "config.yaml").read_text())
    options = config.pop("render", {}) or {}
    return plan(state, ProxyConfig.from_mapping(config)), options


def render_case(case: str, **overrides: Any) -> RenderedRules:
    node_plan, options = load_case(case)
    options.update(overrides)
    return render(node_plan, **options)


def test_cases_exist() -> None:
    assert len(CASES) >= 18, CASES


@pytest.mark.parametrize("case", CASES)
def test_golden(case: str) -> None:
    golden.check(GOLDEN / case / "expected.iptables", render_case(case).text, f"{case}: the rendered rules")


@pytest.mark.parametrize("case", CASES)
def test_golden_payload_is_consistent(case: str) -> None:
    text = render_case(case).text
    assert_consistent(text)
    parse(text)


def test_six_services_equal_kube_proxys_expected_rules() -> None:
    upstream = (GOLDEN / "upstream-six-services" / "upstream.iptables").read_text()
    ours = render_case("upstream-six-services").text
    assert compare_with_upstream(ours, upstream) == []


def test_six_services_without_nfacct_counters() -> None:
    upstream = (GOLDEN / "upstream-six-services" / "upstream.iptables").read_text()
    ours = render_case("upstream-six-services", nfacct=False).text
    assert "nfacct" not in ours
    assert compare_with_upstream(ours, upstream) != []  # the counters are the only difference
    assert compare_with_upstream(ours, upstream, ignore_nfacct=True) == []


def test_comparison_helper_catches_differences() -> None:
    upstream = (GOLDEN / "upstream-six-services" / "upstream.iptables").read_text()
    ours = render_case("upstream-six-services").text
    broken = ours.replace("--probability 0.5000000000", "--probability 0.4000000000")
    problems = compare_with_upstream(broken, upstream)
    assert len(problems) == 1 and "KUBE-SVC-4SW47YFZTEDKD3PK" in problems[0]
    # Reordering rules of one service within KUBE-SVC is a difference; across services it is not.
    lines = ours.splitlines(True)
    svc = [i for i, l in enumerate(lines) if l.startswith("-A KUBE-SVC-4SW47YFZTEDKD3PK -m comment --comment \"ns4/svc4:p80 ->")]
    lines[svc[0]], lines[svc[1]] = lines[svc[1]], lines[svc[0]]
    assert compare_with_upstream("".join(lines), upstream) != []
    nat_services = [i for i, l in enumerate(ours.splitlines(True)) if l.startswith("-A KUBE-SERVICES -m comment --comment \"ns1/")]
    moved = ours.splitlines(True)
    rule = moved.pop(nat_services[0])
    moved.insert(len(moved) - 2, rule)  # just before the nodeports jump: order across services
    assert compare_with_upstream("".join(moved), upstream) == []
    # The jump to KUBE-NODEPORTS must stay the last rule of KUBE-SERVICES: moving it first is a difference.
    lines = ours.splitlines(True)
    jump = next(i for i, l in enumerate(lines) if "must be the last rule" in l)
    nat = lines.index("*nat\n")
    first = next(i for i, l in enumerate(lines) if i > nat and l.startswith("-A KUBE-SERVICES "))
    lines.insert(first, lines.pop(jump))
    problems = compare_with_upstream("".join(lines), upstream)
    assert len(problems) == 1 and "not the last rule of KUBE-SERVICES" in problems[0], problems
