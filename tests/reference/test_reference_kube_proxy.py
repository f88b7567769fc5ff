"""Our engine against the real kube-proxy, side by side, in iptables and in nftables mode.

The upstream kube-proxy (built from `k8s.io/kubernetes` at the version in go.mod, see
conftest.py) runs unmodified in one node namespace and `kubectl proxyctl run` in its twin,
both watching the same lab API server (oracle.py draws the topology). The cluster goes
through every golden case's objects, then through churn (endpoints added, removed and
terminating, traffic policies and affinity flipped, a Service and its slices deleted); after
each step, once both nodes' rules have settled, the rules must be the same, apart from the
named exceptions in oracle.EXCEPTIONS. Each mode's twin also checks that kube-proxy ran
without errors against the lab API server, compares /healthz and /metrics, and runs
`verify` on kube-proxy's own rules.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

import oracle
from enginehelpers import endpoint, endpoint_slice, engine_command, node, service, write_objects
from netns import requires_lab
from oracle import NODE_IP, NODE_NAME, ROLES, Difference, Twin
from waiting import wait_for

pytestmark = [pytest.mark.lab, pytest.mark.slow,
              requires_lab("iptables-nft", "iptables-save", "iptables-restore", "nft")]

MODES = ("iptables", "nftables")
# Cases that need flags of their own (several node IPs, --masquerade-all, …) run in their
# own twin (test_options_case); every other case shares the default flags.
OWN_FLAGS_CASES = {"options"}
CASES = sorted(d.name for d in oracle.GOLDEN.iterdir()
               if (d / "objects.yaml").is_file() and d.name not in OWN_FLAGS_CASES)

NS = "churn"
OTHER_NODE = "kind-worker2"


def baseline_node(ipv6: bool = False) -> dict[str, Any]:
    obj = node(NODE_NAME, NODE_IP)
    obj["spec"] = {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"]}
    if ipv6:
        obj["status"]["addresses"].append({"type": "InternalIP", "address": oracle.NODE_IP6})
    return obj


# Every 1.33+ cluster has this ServiceCIDR (kube-apiserver makes it from
# --service-cluster-ip-range). It exists before the proxies start: kube-proxy reads it only
# in a full sync, which nftables mode does at start and then hourly.
SERVICE_CIDR = {"apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR", "metadata": {"name": "kubernetes"},
                "spec": {"cidrs": ["10.96.0.0/12"]}}

# The golden case "options" with the flags its config.yaml describes (its render options
# random_fully and tcp_be_liberal are the kernel's and kube-proxy's own choices here).
OPTIONS_FLAGS = ("--masquerade-all", "--detect-local-mode", "BridgeInterface", "--pod-bridge-interface", "cbr0",
                 "--nodeport-addresses", "172.18.0.0/24", "--iptables-masquerade-bit", "5")


# --- churn --------------------------------------------------------------------------------


def _ep(ip: str, node_name: str, *, ready: bool = True, serving: bool = True, terminating: bool = False,
        zone: str | None = None) -> dict[str, Any]:
    ep = endpoint(ip, node_name)
    ep["conditions"] = {"ready": ready, "serving": serving, "terminating": terminating}
    if zone:
        ep["zone"] = zone
    return ep


def churn_objects() -> dict[str, dict[str, Any]]:
    http = [("http", 8080, "TCP")]
    web = service("web", "10.96.50.1", [{"name": "http", "port": 80, "targetPort": 8080}], ns=NS)
    np = service("np", "10.96.50.2", [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30150}],
                 ns=NS, type="NodePort")
    lb = service("lb", "10.96.50.3", [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30151}],
                 ns=NS, type="LoadBalancer", lb_ips=["198.51.100.50"], etp="Local")
    lb["spec"]["healthCheckNodePort"] = 32050
    dns = service("dns", "10.96.50.10", [{"name": "dns", "port": 53, "protocol": "UDP"},
                                         {"name": "dns-tcp", "port": 53}], ns=NS)
    return {
        "node1": baseline_node(),
        "node2": node(OTHER_NODE, "172.18.0.3"),
        "web": web,
        "web-slice": endpoint_slice("web", [_ep("10.244.1.10", NODE_NAME), _ep("10.244.2.10", OTHER_NODE)],
                                    http, ns=NS),
        "np": np,
        "np-slice": endpoint_slice("np", [_ep("10.244.1.11", NODE_NAME), _ep("10.244.2.11", OTHER_NODE)],
                                   http, ns=NS),
        "lb": lb,
        "lb-slice": endpoint_slice("lb", [_ep("10.244.1.12", NODE_NAME), _ep("10.244.2.12", OTHER_NODE)],
                                   http, ns=NS),
        "dns": dns,
        "dns-slice": endpoint_slice("dns", [_ep("10.244.1.13", NODE_NAME)],
                                    [("dns", 53, "UDP"), ("dns-tcp", 53, "TCP")], ns=NS),
    }


class Churn:
    """The churn objects, changed one step at a time and re-applied as a whole."""

    def __init__(self) -> None:
        self.objs = churn_objects()

    def edit(self, change: Callable[[dict[str, dict[str, Any]]], None]) -> Callable[[Twin], None]:
        def step(twin: Twin) -> None:
            change(self.objs)
            twin.replace_all(list(self.objs.values()))
        return step


def churn_steps() -> list[tuple[str, Callable[[Twin], None]]]:
    c = Churn()

    def add_endpoint(o: dict[str, Any]) -> None:
        o["web-slice"]["endpoints"].append(_ep("10.244.1.20", NODE_NAME))

    def remove_endpoint(o: dict[str, Any]) -> None:
        o["web-slice"]["endpoints"] = [e for e in o["web-slice"]["endpoints"] if e["addresses"] != ["10.244.2.10"]]

    def one_terminating(o: dict[str, Any]) -> None:
        o["web-slice"]["endpoints"][0]["conditions"] = {"ready": False, "serving": True, "terminating": True}

    def all_terminating(o: dict[str, Any]) -> None:
        for e in o["web-slice"]["endpoints"]:
            e["conditions"] = {"ready": False, "serving": True, "terminating": True}

    def terminating_not_serving(o: dict[str, Any]) -> None:
        o["web-slice"]["endpoints"][0]["conditions"] = {"ready": False, "serving": False, "terminating": True}

    def local_lb_endpoint_terminating(o: dict[str, Any]) -> None:
        o["lb-slice"]["endpoints"][0]["conditions"] = {"ready": False, "serving": True, "terminating": True}

    def np_local(o: dict[str, Any]) -> None:
        o["np"]["spec"]["externalTrafficPolicy"] = "Local"

    def np_cluster(o: dict[str, Any]) -> None:
        o["np"]["spec"]["externalTrafficPolicy"] = "Cluster"

    def web_itp_local(o: dict[str, Any]) -> None:
        o["web"]["spec"]["internalTrafficPolicy"] = "Local"

    def web_affinity(o: dict[str, Any]) -> None:
        o["web"]["spec"]["internalTrafficPolicy"] = "Cluster"
        o["web"]["spec"]["sessionAffinity"] = "ClientIP"
        o["web"]["spec"]["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": 600}}

    def second_slice(o: dict[str, Any]) -> None:
        # The endpoint in both slices has the same conditions in each: where they differ for
        # a local endpoint, kube-proxy keeps the one of whichever slice Go's map order visits
        # last, so its own result varies from run to run.
        extra = copy.deepcopy(o["web-slice"])
        extra["metadata"]["name"] = "web-fghij"
        extra["endpoints"] = [_ep("10.244.2.30", OTHER_NODE), copy.deepcopy(o["web-slice"]["endpoints"][1])]
        o["web-slice-2"] = extra

    def port_renamed(o: dict[str, Any]) -> None:
        o["dns"]["spec"]["ports"][1]["port"] = 5353

    def delete_np(o: dict[str, Any]) -> None:
        del o["np"]

    def delete_np_slice(o: dict[str, Any]) -> None:
        del o["np-slice"]

    def lb_no_endpoints(o: dict[str, Any]) -> None:
        o["lb-slice"]["endpoints"] = []

    return [
        ("churn: start", c.edit(lambda o: None)),
        ("churn: endpoint added", c.edit(add_endpoint)),
        ("churn: endpoint removed", c.edit(remove_endpoint)),
        ("churn: one endpoint terminating", c.edit(one_terminating)),
        ("churn: all endpoints terminating (serving fallback)", c.edit(all_terminating)),
        ("churn: a terminating endpoint stops serving", c.edit(terminating_not_serving)),
        ("churn: the local LB endpoint terminating", c.edit(local_lb_endpoint_terminating)),
        ("churn: NodePort externalTrafficPolicy Local", c.edit(np_local)),
        ("churn: NodePort externalTrafficPolicy Cluster again", c.edit(np_cluster)),
        ("churn: internalTrafficPolicy Local", c.edit(web_itp_local)),
        ("churn: ClientIP affinity", c.edit(web_affinity)),
        ("churn: a second EndpointSlice with an overlapping endpoint", c.edit(second_slice)),
        ("churn: a port number changed", c.edit(port_renamed)),
        ("churn: Service deleted, its slice left", c.edit(delete_np)),
        ("churn: the orphan slice deleted", c.edit(delete_np_slice)),
        ("churn: LoadBalancer without endpoints", c.edit(lb_no_endpoints)),
        ("churn: everything deleted", lambda t: t.replace_all([baseline_node(t.ipv6)])),
    ]


def case_step(case: str) -> Callable[[Twin], None]:
    return lambda twin: twin.replace_all(oracle.case_objects(case))


# The golden cases IPVS mode's twin runs by default. It runs inside the VM, where kube-proxy
# takes about 10 s to sync under emulation (it runs `ipset list` for each of its sets) and a
# step about 20 s, so every case would add minutes the test run does not have: these two
# cover what the churn does not (source ranges and their sets, SCTP), and the churn covers
# endpoints, policies, affinity, UDP, a Service without endpoints and deletions.
# PROXYCTL_IPVS_REFERENCE_CASES=all runs every case but large-cluster (about 13 minutes).
IPVS_CASES = ("loadbalancer-source-ranges", "udp-sctp")
_IPVS_LEFT_OUT = ("each step costs about 20 s under the VM's emulation; IPVS_CASES and the churn cover the "
                  "paths of IPVS mode this case takes (PROXYCTL_IPVS_REFERENCE_CASES=all runs it)")
_IPVS_SCALE = ("1,000 endpoints change how iptables mode writes its rules, not IPVS mode's (one real server "
               "each either way), and the case takes minutes under emulation")
# Golden cases a mode's twin leaves out, with the reason.
CASES_LEFT_OUT: dict[str, dict[str, str]] = {
    "ipvs": ({"large-cluster": _IPVS_SCALE} if os.environ.get("PROXYCTL_IPVS_REFERENCE_CASES") == "all"
             else {case: _IPVS_LEFT_OUT for case in CASES if case not in IPVS_CASES}),
}


# Modes whose twin compares the churn after every N steps rather than after each: every
# change is still made and its result compared, the states in between are not. IPVS mode's
# twin, where each comparison costs about 20 s (see IPVS_CASES), compares every other step.
CHURN_STRIDE: dict[str, int] = {"ipvs": 1 if os.environ.get("PROXYCTL_IPVS_REFERENCE_CASES") == "all" else 2}


def grouped(steps: list[tuple[str, Callable[[Twin], None]]], n: int) -> list[tuple[str, Callable[[Twin], None]]]:
    """Consecutive steps taken n at a time as one step (named "a + b")."""
    out = []
    for i in range(0, len(steps), n):
        group = steps[i:i + n]

        def run(twin: Twin, group: list[tuple[str, Callable[[Twin], None]]] = group) -> None:
            for _, step in group:
                step(twin)

        out.append((" + ".join(name for name, _ in group), run))
    return out


def all_steps(mode: str = "") -> list[tuple[str, Callable[[Twin], None]]]:
    """Every golden case (but those `CASES_LEFT_OUT` of this mode), then the churn (fresh
    objects for each run; `CHURN_STRIDE` steps at a time)."""
    left_out = CASES_LEFT_OUT.get(mode, {})
    cases = [(f"case {case}", case_step(case)) for case in CASES if case not in left_out]
    return cases + grouped(churn_steps(), CHURN_STRIDE.get(mode, 1))


# --- fixtures -----------------------------------------------------------------------------


def started_twin(mode: str, binary: str, workdir: Path, flags: tuple[str, ...] = (), ipv6: bool = False,
                 pace: float = 1.0, ipv4_only_reference: bool = False) -> Twin:
    t = Twin(mode, binary, workdir, ipv6=ipv6, pace=pace, ipv4_only_reference=ipv4_only_reference)
    try:
        t.start([baseline_node(ipv6), SERVICE_CIDR], flags)
        t.wait_ready()
    except BaseException:
        t.close()
        raise
    return t


@pytest.fixture(scope="module", params=MODES)
def twin(request: pytest.FixtureRequest, kube_proxy_binary: str,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Twin]:
    mode = request.param
    t = started_twin(mode, kube_proxy_binary, tmp_path_factory.mktemp(f"reference-{mode}"), ipv6=True)
    try:
        yield t
    finally:
        t.close()


@pytest.fixture(params=MODES)
def options_twin(request: pytest.FixtureRequest, kube_proxy_binary: str,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[Twin]:
    mode = request.param
    t = started_twin(mode, kube_proxy_binary, tmp_path_factory.mktemp(f"reference-options-{mode}"), OPTIONS_FLAGS)
    try:
        yield t
    finally:
        t.close()


def run_steps(twin: Twin, steps: list[tuple[str, Callable[[Twin], None]]]) -> list[Difference]:
    found: list[Difference] = []
    sizes: dict[str, list[int]] = {family: [] for family in twin.families}
    def differences(name: str, rules: dict[str, dict[str, list[str]]]) -> list[Difference]:
        out = []
        for family in twin.families:
            where = name if family == "IPv4" else f"{name} [IPv6]"
            out += oracle.compare(where, twin.mode, rules["ref"][family], rules["ours"][family], oracle.EXCEPTIONS)
        return out

    took = []
    for name, step in steps:
        changed_at = time.time()
        step(twin)
        rules = twin.settle(changed_at)
        took.append((time.time() - changed_at, name))
        for family in twin.families:
            sizes[family].append(len(rules["ref"][family]))
        found += differences(name, rules)
    print(f"\n{twin.mode}: {len(steps)} steps in {sum(t for t, _ in took):.0f} s; slowest: "
          + ", ".join(f"{name} {t:.0f} s" for t, name in sorted(took, reverse=True)[:5]))
    # The steps did reach kube-proxy, in every family.
    assert max(sizes["IPv4"]) > 100 and all(max(n) > min(n) for n in sizes.values()), sizes
    return found


def report(found: list[Difference]) -> str:
    """One line per distinct difference, with the steps that showed it."""
    steps: dict[tuple[str, str], list[str]] = {}
    for d in found:
        steps.setdefault((d.side, d.line), []).append(d.step)
    out = []
    for (side, line), where in steps.items():
        who = "kube-proxy only" if side == "ref" else "ours only"
        shown = ", ".join(where[:3]) + (f" and {len(where) - 3} more steps" if len(where) > 3 else "")
        out.append(f"{who}: {line}\n    in: {shown}")
    return "\n".join(out)


# --- tests --------------------------------------------------------------------------------


def test_kube_proxy_runs_against_the_lab_api_server(twin: Twin) -> None:
    """kube-proxy listed and watched everything it needs: no error lines, no failed request."""
    log = twin.log("ref")
    assert twin.alive()["ref"] is None, log[-3000:]
    errors = [line for line in oracle.klog_warnings(log)
              if line.startswith("E") and not any(expected in line for expected in oracle.EXPECTED_KUBE_PROXY_ERRORS)]
    assert errors == [], "\n".join(errors)
    assert not oracle.grep_log(log, r"Failed to (list|watch)|failed to list|the server could not find"), log
    assert twin.api is not None
    started = [e for e in twin.api.list("events", "default") if e.get("reason") == "Starting"]
    assert started and started[0]["regarding"]["name"] == NODE_NAME, twin.api.list("events", "default")


def test_same_rules_as_kube_proxy(twin: Twin) -> None:
    steps = all_steps(twin.mode)
    found = run_steps(twin, steps)
    unexplained = [d for d in found if not d.exception]
    assert unexplained == [], f"{len(unexplained)} unexplained differences:\n{report(unexplained)}"
    explained = sorted({d.exception for d in found})
    print(f"\n{twin.mode}: {len(steps)} steps, named exceptions seen: {explained or 'none'}")


def test_same_rules_as_kube_proxy_with_other_flags(options_twin: Twin) -> None:
    """--masquerade-all, BridgeInterface local detection, --nodeport-addresses, another
    masquerade bit: the golden case "options", then the churn."""
    steps = [(f"case {case}", case_step(case)) for case in sorted(OWN_FLAGS_CASES)] + churn_steps()
    found = run_steps(options_twin, steps)
    unexplained = [d for d in found if not d.exception]
    assert unexplained == [], f"{len(unexplained)} unexplained differences:\n{report(unexplained)}"


def _shape(value: Any) -> Any:
    """The keys of a JSON document, recursively (values only by type)."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    return type(value).__name__


@pytest.mark.parametrize("path", ["/healthz", "/livez"])
def test_health_answers_have_kube_proxys_shape(twin: Twin, path: str) -> None:
    def answers() -> dict[str, tuple[int, str]] | None:
        got = {role: oracle.http_get(twin.netns(role), oracle.HEALTHZ_PORT, path) for role in ROLES}
        # Each family's status appears with its first sync; both have synced once by then.
        return got if all('"IPv4"' in body for _, body in got.values()) else None

    bodies = wait_for(answers, what=f"both nodes' {path} after their first sync")
    assert bodies["ref"][0] == bodies["ours"][0] == 200, bodies
    shapes = {role: _shape(json.loads(body)) for role, (_, body) in bodies.items()}
    # Per-family status: kube-proxy has both families in one process, we one per process.
    for shape in shapes.values():
        shape.get("status", {}).pop("IPv6", None)
    assert shapes["ours"] == shapes["ref"], bodies


def test_proxy_mode_answer_is_kube_proxys(twin: Twin) -> None:
    answers = {role: oracle.http_get(twin.netns(role), oracle.METRICS_PORT, "/proxyMode") for role in ROLES}
    assert answers["ours"] == answers["ref"] == (200, twin.mode), answers


def test_metrics_have_kube_proxys_names(twin: Twin) -> None:
    names = {}
    for role in ROLES:
        code, body = oracle.http_get(twin.netns(role), oracle.METRICS_PORT, "/metrics")
        assert code == 200, body[:500]
        names[role] = {n for n in oracle.metric_names(body) if n.startswith("kubeproxy_")}
    missing = names["ref"] - names["ours"] - set(oracle.METRICS_NOT_SERVED)
    assert not missing, f"kube-proxy serves metrics we do not: {sorted(missing)}"


HEALTH_CHECK_NODE_PORT = 32050  # the churn's LoadBalancer "lb" (externalTrafficPolicy Local)

# Metrics whose values are settled facts of the cluster and the rules, not of timing: after
# the same objects both proxies must report the same values.
DETERMINISTIC_METRICS = ("kubeproxy_sync_proxy_rules_iptables_total",
                         "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
                         "kubeproxy_sync_proxy_rules_endpoint_changes_pending",
                         "kubeproxy_sync_proxy_rules_service_changes_pending")


def health_check_answers(twin: Twin) -> dict[str, tuple[int, Any]]:
    out: dict[str, tuple[int, Any]] = {}
    for role in ROLES:
        code, body = oracle.http_get(twin.netns(role), HEALTH_CHECK_NODE_PORT, "/", host=NODE_IP)
        try:
            out[role] = (code, json.loads(body))
        except ValueError:
            out[role] = (code, body)
    return out


def test_service_health_check_node_port_answers_like_kube_proxy(twin: Twin) -> None:
    """The LoadBalancer's healthCheckNodePort: with a local endpoint (200, localEndpoints 1),
    then with that endpoint terminating (503, 0): the same status and JSON on both nodes."""
    churn = Churn()
    changed = time.time()
    churn.edit(lambda o: None)(twin)
    twin.settle(changed)
    seen = []
    for terminating in (False, True):
        if terminating:
            def local_terminating(o: dict[str, Any]) -> None:
                o["lb-slice"]["endpoints"][0]["conditions"] = {"ready": False, "serving": True, "terminating": True}
            changed = time.time()
            churn.edit(local_terminating)(twin)
            twin.settle(changed)
        last: dict[str, tuple[int, Any]] = {}

        def same() -> bool:
            last.update(health_check_answers(twin))
            return last["ref"] == last["ours"] and last["ref"][0] != 0

        wait_for(same, 5 * twin.pace, lambda: f"the same health check answer on both nodes: {last}", interval=0.3)
        answers = last
        seen.append(answers["ref"])
    assert seen[0][0] == 200 and seen[0][1]["localEndpoints"] == 1, seen
    assert seen[1][0] == 503 and seen[1][1]["localEndpoints"] == 0, seen


def test_deterministic_metric_values_are_kube_proxys(twin: Twin) -> None:
    changed = time.time()
    twin.replace_all(list(churn_objects().values()))
    twin.settle(changed)
    compared = []
    for name in DETERMINISTIC_METRICS:
        samples = {}
        for role in ROLES:
            code, body = oracle.http_get(twin.netns(role), oracle.METRICS_PORT, "/metrics")
            assert code == 200, body[:300]
            samples[role] = oracle.metric_samples(body, name)
        if samples["ref"]:
            compared.append(name)
            assert samples["ours"] == samples["ref"], f"{name}: {samples}"
    assert compared, "kube-proxy served none of the deterministic metrics"


SEEDED_ENDPOINT = "10.244.1.10"  # web's local endpoint in the churn objects


def kube_proxys_dumps(twin: Twin) -> list[str]:
    """What `verify --rules-file` reads of the real node, one text per file."""
    ref = twin.netns("ref")
    if twin.mode == "nftables":
        return [oracle.run_in(ref, ["nft", "-j", "list", "ruleset"])]
    if twin.mode == "ipvs":
        # The virtual servers and sets, their iptables rules, and the node's addresses (node
        # ports are virtual servers on each of them).
        return [oracle.run_in(ref, ["ipvsadm", "-Sn"]) + oracle.run_in(ref, ["ipset", "save"])
                + oracle.run_in(ref, ["iptables-save"]), oracle.run_in(ref, ["ip", "-json", "address", "show"])]
    return [oracle.run_in(ref, ["iptables-save"])]


def without_endpoint(mode: str, dumps: list[str], ip: str) -> list[str]:
    """The dumps with the rule (or real server) that sends traffic to `ip` taken out: drift."""
    first = dumps[0]
    if mode == "nftables":
        doc = json.loads(first)
        kept = [item for item in doc["nftables"]
                if not ("rule" in item and "dnat" in json.dumps(item) and f'"{ip}"' in json.dumps(item))]
        assert len(kept) < len(doc["nftables"]), f"no DNAT rule to {ip}"
        seeded = json.dumps({"nftables": kept})
    else:
        target = f"-r {ip}:" if mode == "ipvs" else f"--to-destination {ip}:"
        lines = first.splitlines()
        seeded = "\n".join(line for line in lines if target not in line) + "\n"
        assert len(seeded.splitlines()) < len(lines), f"nothing sends traffic to {ip}"
    return [seeded, *dumps[1:]]


def run_verify(twin: Twin, tmp_path: Path, dumps: list[str], objs: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
    files = []
    for i, text in enumerate(dumps):
        files += ["--rules-file", str(tmp_path / f"rules-{i}")]
        (tmp_path / f"rules-{i}").write_text(text)
    objects_file = write_objects(str(tmp_path / "objects.json"), objs)
    return subprocess.run([*engine_command(), "verify", *files, "--from-file", objects_file,
                           "--node-name", NODE_NAME, "--cluster-cidr", oracle.CLUSTER_CIDR],
                          capture_output=True, text=True, timeout=120 * twin.pace, check=False)


def test_verify_on_kube_proxys_rules_no_drift_then_seeded_drift(twin: Twin, tmp_path: Path) -> None:
    """`verify --rules-file` of the real node's rules against the objects it was given: in
    sync; then the same rules without the DNAT rule (real server) of one endpoint: drift,
    naming that endpoint."""
    objs = list(churn_objects().values())
    changed = time.time()
    twin.replace_all(objs)
    twin.settle(changed)
    dumps = kube_proxys_dumps(twin)
    done = run_verify(twin, tmp_path, dumps, objs)
    assert done.returncode == 0, f"verify exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    drifted = run_verify(twin, tmp_path, without_endpoint(twin.mode, dumps, SEEDED_ENDPOINT), objs)
    assert drifted.returncode == 1, f"verify exited {drifted.returncode}:\n{drifted.stdout}\n{drifted.stderr}"
    assert SEEDED_ENDPOINT in drifted.stdout and "Traceback" not in drifted.stderr, drifted.stdout
