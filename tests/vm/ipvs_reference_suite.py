"""Our engine against the real kube-proxy in IPVS mode: runs INSIDE the VM, in the same boot
as the other IPVS suites (tests/test_ipvs_vm.py), because the host's kernel has no IP_VS and
no dummy links. Not collected on the host (the file name does not start with `test_`).

The same twin as tests/reference/test_reference_kube_proxy.py (oracle.py draws it): the
upstream kube-proxy (`$PROXYCTL_KUBE_PROXY`, built on the host by tests/referencebuild.py)
with `--proxy-mode ipvs` in one node namespace, `kubectl proxyctl run --mode ipvs` in its
twin, one lab API server. The tests are the iptables and nftables twins' own, imported, so
they are written once and run per mode: every golden case and the churn, after each step
the nodes' `iptables-save` (nat, filter), `ipvsadm -Sn`, `ipset save` (IPv4 sets) and
kube-ipvs0's addresses must be the same up to the named exceptions; kube-proxy's log has
no errors; /healthz, /livez, /proxyMode and the metric names agree; `verify` finds no drift
in kube-proxy's own IPVS node; the deterministic metric values agree. (The health-check node
ports are served by code no mode changes: the host's twins compare them.) IPv4 only (ip6tables is hidden from kube-proxy, which
would otherwise run every command of each sync for IPv6 too, slow under emulation): the IPv6
side of IPVS mode is checked against the real kernel by ipvs_settings_suite.py. Two golden
cases run, then the whole churn compared after every other change
(test_reference_kube_proxy.IPVS_CASES and CHURN_STRIDE say why: each comparison takes about
20 s here); PROXYCTL_IPVS_REFERENCE_CASES=all runs every case but large-cluster and
compares after each change.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "reference"))

import oracle  # noqa: E402
from kubectl_proxyctl.system.ipvs import ensure_br_netfilter, ensure_dummy, ensure_loaded  # noqa: E402
from oracle import Twin  # noqa: E402
from test_reference_kube_proxy import (  # noqa: E402,F401 (the shared tests, collected here for IPVS mode)
    started_twin, test_deterministic_metric_values_are_kube_proxys, test_health_answers_have_kube_proxys_shape,
    test_kube_proxy_runs_against_the_lab_api_server, test_metrics_have_kube_proxys_names,
    test_proxy_mode_answer_is_kube_proxys, test_same_rules_as_kube_proxy,
    test_verify_on_kube_proxys_rules_no_drift_then_seeded_drift,
)

pytestmark = pytest.mark.lab
PACE = 2.0  # under emulation everything takes several times as long as on the host


@pytest.fixture(scope="module")
def twin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Twin]:
    binary = os.environ.get("PROXYCTL_KUBE_PROXY", "")
    if not binary:
        pytest.fail("PROXYCTL_KUBE_PROXY is not set (tests/test_ipvs_vm.py passes the host's build)")
    why = ensure_loaded("ip_vs", "/proc/net/ip_vs") or ensure_dummy() or ensure_br_netfilter()
    assert not why, why
    t = started_twin("ipvs", binary, tmp_path_factory.mktemp("reference-ipvs"), pace=PACE, ipv4_only_reference=True)
    try:
        yield t
    finally:
        t.close()
        assert not [n for n in os.listdir("/var/run/netns") if n.startswith(oracle.PREFIX_ROOT)]
