"""`dump`, `explain` and `verify` on the nftables table our engine writes, read back from the kernel.

Our renderer's script (modes.nftables.render) for several golden cases is loaded with `nft -f`
into a throwaway network namespace; `nft -j list ruleset` is what the commands read with
--rules-file, the way users run them on a copy of a node's rules, and a few runs happen
inside the namespace (`ip netns exec NS kubectl-proxyctl …`), where the commands collect the
live rules themselves and must detect nftables mode. Checked:

* dump names every service port's chains and map/set elements; `-o raw` is an `nft -f`
  script that loads back into an empty namespace as the same table;
* explain gives the endpoints with their odds (1/N through `numgen`), masquerading, REJECT
  through reject-chain for no endpoints, DROP for a Local traffic policy without a local
  endpoint, firewall drops and their source ranges, affinity timeouts, IPv6;
* verify finds every case in sync, and names seeded drift (a deleted map element, a flushed
  endpoint chain, a changed DNAT target, a removed chain, a missing jump) in clear words;
* all of it also for kube-proxy's base-chain layout before 1.34 (filter-prerouting,
  filter-input, filter-forward and filter-output at priority -110, filter-output-post-dnat at
  -90), which nodes that have not been upgraded still have, made by rewriting our script
  (kube-proxy's current layout) with `nfthelpers.older_layout` before loading it ("@older").
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest
from clihelpers import cli
import yaml

from enginehelpers import engine_argv, run_in
from kubectl_proxyctl.modes.nftables.render import RenderedNft, render
from kubectl_proxyctl.plan.planner import NodePlan, ProxyConfig, plan
from kubectl_proxyctl.kube.convert import state_from_objects
from kubectl_proxyctl.kube.snapshot import load_objects
from kubectl_proxyctl.modes.nftables.parse import canonical, parse_nft_json
from netns import empty_netns, requires_lab
from nfthelpers import older_layout

pytestmark = [pytest.mark.lab, requires_lab("nft")]

GOLDEN = Path(__file__).parent / "golden"
SIX = "upstream-six-services"
SIX_NODE = ["--node-name", "test-node", "--node-ip", "192.168.0.2"]
T = "ip kube-proxy"


@dataclass(frozen=True)
class Case:
    name: str  # a golden case directory
    config: dict[str, Any]  # ProxyConfig fields over the case's config.yaml
    service_cidrs: tuple[str, ...] = ()

    @property
    def objects(self) -> str:
        return str(GOLDEN / self.name / "objects.yaml")


CASES = {
    SIX: Case(SIX, {"cluster_cidrs": ["10.0.0.0/8"], "nodeport_addresses": ["192.168.0.2/32"]}),
    "etp-local": Case("etp-local", {}),
    "etp-local-no-local-endpoints": Case("etp-local-no-local-endpoints", {}),
    "affinity": Case("affinity", {}),
    "loadbalancer-source-ranges": Case("loadbalancer-source-ranges", {"nodeport_addresses": ["172.18.0.2/32"]}),
    "no-endpoints": Case("no-endpoints", {}, ("10.96.0.0/12",)),
    "ipv6": Case("ipv6", {"nodeport_addresses": ["fc00:f853:ccd:e793::2/128"]}),
    "itp-local": Case("itp-local", {}),
    "itp-local-no-local-endpoints": Case("itp-local-no-local-endpoints", {}),
    "options": Case("options", {}),  # --masquerade-all, a bridge-interface detector, masquerade bit 5
    "large-cluster": Case("large-cluster", {}),  # a service with 1,001 endpoints
}


def case_config(case: Case) -> dict[str, Any]:
    config = yaml.safe_load((GOLDEN / case.name / "config.yaml").read_text())
    config.pop("render", None)  # iptables-restore options
    config.update(case.config)
    return config  # type: ignore[no-any-return]


def case_plan(case: Case) -> NodePlan:
    warnings: list[str] = []
    state = state_from_objects(load_objects(case.objects), warn=warnings.append)
    assert not warnings, warnings
    return plan(state, ProxyConfig.from_mapping(case_config(case)))


def rendered(case: Case) -> RenderedNft:
    return render(case_plan(case), first=True, service_cidrs=case.service_cidrs)


def node_args(case: Case) -> list[str]:
    config = case_config(case)
    return ["--node-name", config["node_name"], *[a for ip in config["node_ips"] for a in ("--node-ip", ip)]]


def load(ns: str, script: str, *commands: list[str]) -> str:
    """Load `script` into the namespace's empty ruleset, run `nft` commands on it (seeded
    drift), and return `nft -j list ruleset`."""
    run_in(ns, ["nft", "flush", "ruleset"])
    run_in(ns, ["nft", "-f", "-"], input=script)
    for command in commands:
        run_in(ns, ["nft", *command])
    return run_in(ns, ["nft", "-j", "list", "ruleset"]).stdout


@dataclass
class Lab:
    ns: str
    dir: Path
    scripts: dict[str, str]
    files: dict[str, str]  # case (or "<case>@older") → its `nft -j list ruleset` file

    def write(self, name: str, text: str) -> str:
        path = self.dir / name
        path.write_text(text)
        return str(path)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    directory = tmp_path_factory.mktemp("nft-inspect")
    with empty_netns("nftinspect") as ns:
        scripts: dict[str, str] = {}
        files: dict[str, str] = {}
        for name, case in CASES.items():
            scripts[name] = rendered(case).text
            scripts[f"{name}@older"] = older_layout(scripts[name])
        lab = Lab(ns, directory, scripts, files)
        for name, script in scripts.items():
            files[name] = lab.write(f"{name}.json", load(ns, script))
        yield lab


def cli_json(capsys: pytest.CaptureFixture[str], *args: str, codes: tuple[int, ...] = (0,)) -> Any:
    code, out, err = cli(capsys, *args, "-o", "json")
    assert code in codes, err
    return json.loads(out)


def paths(doc: dict[str, Any], kind: str, client: str, address: str | None = None) -> list[dict[str, Any]]:
    return [p for port in doc["ports"] for e in port["entries"] if e["kind"] == kind
            and (address is None or e["address"] == address) for p in e["paths"] if p["client"] == client]


def one(doc: dict[str, Any], kind: str, client: str, address: str | None = None) -> dict[str, Any]:
    found = paths(doc, kind, client, address)
    assert len(found) == 1, (kind, client, found)
    return found[0]


def messages(doc: dict[str, Any]) -> list[str]:
    return [p["message"] for p in doc["problems"]]


# --- what the kernel holds is what was rendered ---------------------------------------------


NAT_BASE = {"nat-prerouting": ("nat", "prerouting", -100), "nat-output": ("nat", "output", -100),
            "nat-postrouting": ("nat", "postrouting", 100)}


@pytest.mark.parametrize("layout", ["", "@older"])
def test_each_layout_loads_as_such(lab: Lab, layout: str) -> None:
    (table,) = parse_nft_json(Path(lab.files[SIX + layout]).read_text()).kube_proxy_tables()
    base = {c.name: (c.type, c.hook, c.priority) for c in table.chains.values() if c.hook}
    jumps = {c.name: [r.text for r in c.rules] for c in table.chains.values() if c.hook and c.type == "filter"}
    if layout == "@older":
        assert base == {
            "filter-prerouting": ("filter", "prerouting", -110), "filter-input": ("filter", "input", -110),
            "filter-forward": ("filter", "forward", -110), "filter-output": ("filter", "output", -110),
            "filter-output-post-dnat": ("filter", "output", -90), **NAT_BASE}
        assert jumps["filter-output"] == ["ct state new jump service-endpoints-check",
                                          "ct state new jump firewall-check"]
        assert jumps["filter-output-post-dnat"] == ["ct state new jump cluster-ips-check"]
    else:
        assert base == {
            "filter-prerouting-pre-dnat": ("filter", "prerouting", -110),
            "filter-output-pre-dnat": ("filter", "output", -110), "filter-input": ("filter", "input", 0),
            "filter-forward": ("filter", "forward", 0), "filter-output": ("filter", "output", 0), **NAT_BASE}
        assert jumps["filter-output"] == ["ct state new jump service-endpoints-check",
                                          "ct state new jump cluster-ips-check"]
        assert jumps["filter-output-pre-dnat"] == ["ct state new jump firewall-check"]


# --- dump -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CASES))
def test_dump_names_every_service_port_its_chains_and_elements(lab: Lab, capsys: pytest.CaptureFixture[str],
                                                               name: str) -> None:
    records = cli_json(capsys, "dump", "--rules-file", lab.files[name])
    state = rendered(CASES[name]).state
    by_chain: dict[str, set[str]] = {}
    for r in records:
        assert r["backend"] == "nftables"
        by_chain.setdefault(r["chain"], set()).add(r["service"])
    for spn, out in state.services.items():
        for chain, rules in out.chains:
            if rules:
                assert by_chain.get(chain) == {str(spn)}, (chain, by_chain.get(chain))
    elements = {(r["chain"], canonical(r["rule"].split(" comment ")[0].split(" : ")[0])): r["service"]
                for r in records if r["chain"] in state.elements}
    for container, store in state.elements.items():
        for key, (_, _, owner) in store.items():
            assert str(owner) in (elements[(container, canonical(key))] or "").split(", "), (container, key)


def test_dump_of_one_service_and_its_affinity_set(lab: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "dump", "svc/svc5", "-n", "ns5", "--rules-file", lab.files[SIX])
    assert code == 0
    assert "  172.30.0.45  # ns5/svc5:p80" in out  # its cluster-ips element
    assert "set affinity-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80 { type ipv4_addr ; flags timeout ; " \
           "timeout 10800s }  # ns5/svc5:p80 → 10.180.0.3:80" in out
    assert "    ip saddr != 203.0.113.0/25 drop  # ns5/svc5:p80" in out
    assert "svc4" not in out and "filter-input" not in out
    code, out, _ = cli(capsys, "dump", "svc/dual", "-n", "demo", "--rules-file", lab.files["ipv6"], "-o", "table")
    assert code == 0
    assert re.search(r"nftables\s+endpoint-\S+\s+demo/dual:http\s+\[fd00:10:244:1::22\]:8080\s+meta l4proto tcp "
                     r"dnat to \[fd00:10:244:1::22\]:8080", out), out


@pytest.mark.parametrize("name", [SIX, f"{SIX}@older", "ipv6", "ipv6@older", "options"])
def test_raw_dump_loads_back_as_the_same_table(lab: Lab, capsys: pytest.CaptureFixture[str], name: str) -> None:
    code, raw, _ = cli(capsys, "dump", "--rules-file", lab.files[name], "-o", "raw")
    assert code == 0 and raw.startswith("add table ")
    again = load(lab.ns, raw)

    def shape(text: str) -> Any:
        (table,) = parse_nft_json(text).kube_proxy_tables()
        return ({n: (c.type, c.hook, c.priority, sorted(canonical(r.text) for r in c.rules))
                 for n, c in table.chains.items()},
                {n: (s.type, s.map, s.timeout, sorted(canonical(json.dumps(e.key)) + json.dumps(e.value)
                                                     for e in s.elements)) for n, s in table.sets.items()})

    assert shape(again) == shape(Path(lab.files[name]).read_text())


# --- explain --------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["", "@older"])
def test_explain_six_services(lab: Lab, capsys: pytest.CaptureFixture[str], layout: str) -> None:
    rules = ["--rules-file", lab.files[SIX + layout], "--node-ip", "192.168.0.2"]

    svc4 = cli_json(capsys, "explain", "svc/svc4", "-n", "ns4", *rules)
    assert svc4["backend"] == "nftables"
    pod = one(svc4, "ClusterIP", "pod")
    assert (pod["verdict"], pod["masquerade"]) == ("DNAT", False)
    assert [(e["ip"], e["probability"]) for e in pod["endpoints"]] == [("10.180.0.4", 0.5), ("10.180.0.5", 0.5)]
    assert pod["sentence"] == "pod → 172.30.0.44:80 → 1 of 2 endpoints, 50.0 % each, no SNAT"
    assert any("numgen random mod 2 vmap" in r for r in pod["rules"])
    assert (one(svc4, "ClusterIP", "node")["masquerade"], one(svc4, "ClusterIP", "external")["masquerade"]) == (True, True)
    assert one(svc4, "ExternalIP", "external")["verdict"] == "DNAT"

    svc6 = cli_json(capsys, "explain", "svc/svc6", "-n", "ns6", *rules)
    rejected = one(svc6, "ClusterIP", "pod")
    assert rejected["verdict"] == "REJECT"
    assert [s["chain"] for s in rejected["steps"]][-2:] == ["service-endpoints-check", "reject-chain"]
    assert "ns6/svc6:p80 has no endpoints: connections to ClusterIP 172.30.0.46:80 are rejected" in messages(svc6)

    svc2 = cli_json(capsys, "explain", "svc/svc2", "-n", "ns2", *rules)
    assert one(svc2, "NodePort", "external")["verdict"] == "DROP"
    assert one(svc2, "NodePort", "pod")["verdict"] == "DNAT"
    assert ("ns2/svc2:p80: externalTrafficPolicy Local and no endpoint on this node: outside clients of NodePort "
            "192.168.0.2:3001 are dropped here (pods and the node itself still reach the cluster-wide endpoints)"
            in messages(svc2))
    # The layouts differ for the node itself: in ours (kube-proxy 1.34+) service-endpoints-check
    # runs after DNAT (filter-output, priority 0), when nat-output has already short-circuited
    # the node's connection to an external IP without a local endpoint to the cluster-wide
    # endpoints; in the older layout it ran before DNAT (priority -110) and dropped it.
    node = one(svc2, "ExternalIP", "node", "1.2.3.4")
    if layout == "@older":
        assert node["verdict"] == "DROP", node["sentence"]
        assert [s["chain"] for s in node["steps"]][:2] == ["filter-output", "service-endpoints-check"]
    else:
        assert (node["verdict"], node["masquerade"]) == ("DNAT", True), node["sentence"]
        assert [e["ip"] for e in node["endpoints"]] == ["10.180.0.2"]
    who = ("the node itself and outside clients calling ExternalIP 1.2.3.4:80 are dropped here (pods still reach"
           if layout == "@older" else "outside clients of ExternalIP 1.2.3.4:80 are dropped here (pods and the node "
           "itself still reach")
    assert (f"ns2/svc2:p80: externalTrafficPolicy Local and no endpoint on this node: {who} the cluster-wide "
            "endpoints)") in messages(svc2)

    svc5 = cli_json(capsys, "explain", "svc/svc5", "-n", "ns5", *rules)
    assert one(svc5, "LoadBalancer", "pod")["verdict"] == "DROP"
    outside = paths(svc5, "LoadBalancer", "external")
    assert [(p["source"], p["verdict"]) for p in outside] == [("203.0.113.1", "DNAT"), ("198.51.100.200", "DROP")]
    assert outside[1]["steps"][-1]["chain"] == "firewall-HVFWP5L3-ns5/svc5/tcp/p80"
    assert outside[0]["affinity_seconds"] == 10800
    assert "ns5/svc5:p80: loadBalancerSourceRanges: LoadBalancer 5.6.7.8:80 drops sources outside 203.0.113.0/25" \
        in messages(svc5)
    assert not [m for m in messages(svc5) + messages(svc2) if "cannot" in m or "base chain" in m]


def test_explain_local_policies_affinity_and_ipv6(lab: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    etp = cli_json(capsys, "explain", "svc/local", "-n", "demo", "--rules-file", lab.files["etp-local"],
                   *node_args(CASES["etp-local"]))
    outside = one(etp, "NodePort", "external")
    assert (outside["verdict"], outside["masquerade"]) == ("DNAT", False)
    assert [e["ip"] for e in outside["endpoints"]] == ["10.244.1.12"]  # the only local endpoint, source kept
    assert len(one(etp, "NodePort", "pod")["endpoints"]) == 3

    dropped = cli_json(capsys, "explain", "svc/itp", "-n", "demo", "--rules-file",
                       lab.files["itp-local-no-local-endpoints"], *node_args(CASES["itp-local-no-local-endpoints"]))
    assert {p["verdict"] for p in paths(dropped, "ClusterIP", "pod") + paths(dropped, "ClusterIP", "node")} == {"DROP"}
    assert ("demo/itp:http: internalTrafficPolicy Local and no endpoint on this node: ClusterIP 10.96.70.1:80 drops "
            "traffic from this node") in messages(dropped)

    sticky = cli_json(capsys, "explain", "svc/sticky", "-n", "demo", "--rules-file", lab.files["affinity"],
                      *node_args(CASES["affinity"]))
    pod = one(sticky, "ClusterIP", "pod")
    assert pod["affinity_seconds"] == 600 and len(pod["endpoints"]) == 3
    assert {round(e["probability"], 3) for e in pod["endpoints"]} == {0.333}

    v6 = cli_json(capsys, "explain", "svc/dual", "-n", "demo", "--rules-file", lab.files["ipv6"],
                  *node_args(CASES["ipv6"]))
    pod = one(v6, "ClusterIP", "pod")
    assert pod["source"].startswith("fd00:10:244:") and pod["verdict"] == "DNAT"
    assert [(e["ip"], e["port"], e["probability"]) for e in pod["endpoints"]] == [
        ("fd00:10:244:1::22", 8080, 0.5), ("fd00:10:244:2::22", 8080, 0.5)]
    nodeport = one(v6, "NodePort", "external")
    assert nodeport["verdict"] == "DNAT" and nodeport["masquerade"] is True

    lbfw = cli_json(capsys, "explain", "svc/lbfw", "-n", "demo", "--rules-file",
                    lab.files["loadbalancer-source-ranges"], *node_args(CASES["loadbalancer-source-ranges"]))
    (entry,) = [e for e in lbfw["ports"][0]["entries"] if e["kind"] == "LoadBalancer"]
    assert [(p["source"], p["verdict"]) for p in entry["paths"] if p["client"] == "external"] == [
        ("172.18.0.1", "DNAT"), ("198.51.100.200", "DROP")]
    assert ("demo/lbfw:http: loadBalancerSourceRanges: LoadBalancer 172.18.255.2:80 drops sources outside "
            "172.18.0.0/24, 203.0.113.0/25") in messages(lbfw)

    opts = cli_json(capsys, "explain", "svc/np", "-n", "demo", "--rules-file", lab.files["options"],
                    *node_args(CASES["options"]), "--client", "node")
    node = one(opts, "NodePort", "node", "172.18.0.2")  # `iifname != "cbr0"` on a packet the node sends
    assert (node["verdict"], node["masquerade"]) == ("DNAT", True), node["sentence"]
    assert one(opts, "NodePort", "node", "192.168.50.2")["verdict"] == "NONE"  # not a --nodeport-addresses address


def test_explain_a_service_with_a_thousand_endpoints(lab: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "explain", "svc/big", "-n", "demo", "--rules-file", lab.files["large-cluster"],
                         *node_args(CASES["large-cluster"]), "--client", "pod", "-o", "json")
    assert code == 0, err
    assert len(out) < 2_000_000  # the numgen map is listed once per path, not once per endpoint
    pod = one(json.loads(out), "ClusterIP", "pod")
    assert len(pod["endpoints"]) == 1001 and {e["probability"] for e in pod["endpoints"]} == {round(1 / 1001, 6)}
    assert sum("numgen random mod 1001 vmap" in r for r in pod["rules"]) == 1
    assert pod["sentence"] == "pod → 10.96.130.1:80 → 1 of 1001 endpoints, 0.1 % each, no SNAT"


def test_explain_with_the_service_objects_shows_no_drift(lab: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    for name, svc, ns in ((SIX, "svc2", "ns2"), ("ipv6", "dual", "demo"), ("etp-local", "local", "demo")):
        case = CASES[name]
        doc = cli_json(capsys, "explain", f"svc/{svc}", "-n", ns, "--rules-file", lab.files[name], "--from-file",
                       case.objects, *node_args(case))
        assert not [m for m in messages(doc) if m.startswith("drift")], (name, messages(doc))
        assert all(p["desired"]["cluster_endpoints"] for p in doc["ports"])
        if name == "ipv6":
            assert doc["ports"][0]["desired"]["cluster_endpoints"][0].startswith("[fd00:")


# --- verify ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CASES) + [f"{n}@older" for n in sorted(CASES)])
def test_verify_finds_our_table_in_sync(lab: Lab, capsys: pytest.CaptureFixture[str], name: str) -> None:
    case = CASES[name.split("@")[0]]
    doc = cli_json(capsys, "verify", "-A", "--rules-file", lab.files[name], "--from-file", case.objects,
                   *node_args(case), codes=(0, 1))
    assert (doc["in_sync"], doc["findings"]) == (True, []), doc["findings"]
    assert doc["backend"] == "nftables" and doc["services_checked"] == len(case_plan(case).services)
    assert doc["config"]["layout"] == ("filter-output-post-dnat" if name.endswith("@older") else "pre-dnat")
    if name.startswith("options"):
        assert (doc["config"]["masquerade_all"], doc["config"]["masquerade_bit"]) == (True, 5)
        assert doc["config"]["detect_local_mode"] == "BridgeInterface"
    if name == "no-endpoints":
        assert doc["config"]["service_cidrs"] == ["10.96.0.0/12"]


SVC4_EP4 = "endpoint-UNZV3OEC-ns4/svc4/tcp/p80__10.180.0.4/80"
SVC4_EP5 = "endpoint-5RFCDDV7-ns4/svc4/tcp/p80__10.180.0.5/80"
SVC3_EP = "endpoint-UEIP74TE-ns3/svc3/tcp/p80__10.180.0.3/80"
SVC5_EXT = "external-HVFWP5L3-ns5/svc5/tcp/p80"

# name → (nft commands on the healthy six-service table, the findings as (kind, service), a
# message that must be among them). "HANDLE chain text" stands for the handle of that rule.
DRIFT: dict[str, tuple[list[list[str]], set[tuple[str, str | None]], str]] = {
    "deleted element": (
        [["delete", "element", T, "service-ips", "{ 172.30.0.41 . tcp . 80 }"]],
        {("missing-element", "ns1/svc1")},
        "ns1/svc1:p80: service-ips has no element 172.30.0.41 . tcp . 80: new connections to it are not sent to "
        "the service's chains"),
    "flushed endpoint chain": (
        [["flush", "chain", T, SVC4_EP4]],
        {("flushed", "ns4/svc4")},
        f"ns4/svc4:p80: chain {SVC4_EP4} is empty (flushed): connections sent to endpoint 10.180.0.4:80 are not "
        "DNATed"),
    "changed dnat target": (
        [["replace", "rule", T, SVC3_EP, "HANDLE dnat", "meta", "l4proto", "tcp", "dnat", "to", "10.180.0.99:8080"]],
        {("rules-differ", "ns3/svc3")},
        f"ns3/svc3:p80: {SVC3_EP} DNATs to 10.180.0.99:8080, not to 10.180.0.3:80 (the endpoint its name says)"),
    "removed endpoint chain": (
        [["replace", "rule", T, "service-LAUZTJTB-ns4/svc4/tcp/p80", "HANDLE numgen", "numgen", "random", "mod", "1",
          "vmap", f"{{ 0 : goto {SVC4_EP4} }}"],
         ["flush", "chain", T, SVC4_EP5], ["delete", "chain", T, SVC4_EP5]],
        {("missing-endpoint", "ns4/svc4")},
        f"ns4/svc4:p80: endpoint 10.180.0.5:80 has no {SVC4_EP5} chain in ip kube-proxy"),
    "removed external chain": (
        [["delete", "element", T, "service-ips", "{ 5.6.7.8 . tcp . 80 }"],
         ["delete", "element", T, "service-nodeports", "{ tcp . 3002 }"],
         ["flush", "chain", T, SVC5_EXT], ["delete", "chain", T, SVC5_EXT]],
        {("missing-element", "ns5/svc5"), ("missing-chain", "ns5/svc5")},
        f"ns5/svc5:p80: chain {SVC5_EXT} is missing from ip kube-proxy"),
    "no-endpoints verdict dropped": (
        [["delete", "element", T, "no-endpoint-services", "{ 172.30.0.46 . tcp . 80 }"]],
        {("missing-element", "ns6/svc6")},
        "ns6/svc6:p80: no-endpoint-services has no element 172.30.0.46 . tcp . 80: connections to it are not "
        "rejected (there are no usable endpoints for them)"),
    "wrong odds": (
        [["replace", "rule", T, "service-LAUZTJTB-ns4/svc4/tcp/p80", "HANDLE numgen", "numgen", "random", "mod", "4",
          "vmap", f"{{ 0 : goto {SVC4_EP4}, 1 : goto {SVC4_EP4}, 2 : goto {SVC4_EP4}, 3 : goto {SVC4_EP5} }}"]],
        {("wrong-odds", "ns4/svc4")},
        "ns4/svc4:p80: service-LAUZTJTB-ns4/svc4/tcp/p80: 10.180.0.4:80 75.0 % (want 50.0 %), 10.180.0.5:80 25.0 % "
        "(want 50.0 %)"),
    "firewall ranges": (
        [["flush", "chain", T, "firewall-HVFWP5L3-ns5/svc5/tcp/p80"],
         ["add", "rule", T, "firewall-HVFWP5L3-ns5/svc5/tcp/p80", "ip", "saddr", "!=", "0.0.0.0/0", "drop"]],
        {("rules-differ", "ns5/svc5")},
        "ns5/svc5:p80: chain firewall-HVFWP5L3-ns5/svc5/tcp/p80 differs from the plan"),
    "affinity timeout": (
        [["delete", "rule", T, "service-HVFWP5L3-ns5/svc5/tcp/p80", "HANDLE @affinity"],
         ["delete", "rule", T, "endpoint-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80", "HANDLE update"],
         ["delete", "set", T, "affinity-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80"],
         ["add", "set", T, "affinity-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80",
          "{ type ipv4_addr ; flags dynamic,timeout ; timeout 60s ; }"]],
        {("rules-differ", "ns5/svc5")},
        "ns5/svc5:p80: affinity set affinity-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80 keeps a client 60 s, the "
        "plan says 10800 s"),
    "missing jump": (
        [["delete", "rule", T, "nat-output", "HANDLE jump services"]],
        {("missing-jump", None)},
        "ip kube-proxy: no nat output base chain jumps to services: no Service works for connections the node "
        "itself opens"),
    "stale service": (
        [["add", "chain", T, "service-AAAAAAAA-ns9/gone/tcp/p80"],
         ["add", "element", T, "service-ips", "{ 172.30.0.99 . tcp . 80 : goto service-AAAAAAAA-ns9/gone/tcp/p80 }"]],
        {("stale-service", "ns9/gone"), ("orphan-chain", None)},
        "ip kube-proxy service-ips still maps 172.30.0.99 . tcp . 80 to goto service-AAAAAAAA-ns9/gone/tcp/p80 "
        "(ns9/gone:p80), which the API does not have"),
}


def with_handles(ns: str, commands: list[list[str]]) -> list[list[str]]:
    """Replace "HANDLE text" by `handle N` of the rule of that chain containing `text`."""
    out = []
    for command in commands:
        marker = next((c for c in command if c.startswith("HANDLE ")), None)
        if marker is not None:
            chain = command[command.index(marker) - 1]
            listing = run_in(ns, ["nft", "-a", "list", "chain", *T.split(), chain]).stdout
            line = next(ln for ln in listing.splitlines() if marker[7:] in ln and "# handle" in ln)
            handle = line.rsplit("# handle ", 1)[1].strip()
            i = command.index(marker)
            command = [*command[:i], "handle", handle, *command[i + 1:]]
        out.append(command)
    return out


def seeded(lab: Lab, name: str, commands: list[list[str]], layout: str = "") -> str:
    script = lab.scripts[SIX + layout]
    run_in(lab.ns, ["nft", "flush", "ruleset"])
    run_in(lab.ns, ["nft", "-f", "-"], input=script)
    for command in with_handles(lab.ns, commands):
        run_in(lab.ns, ["nft", *command])
    return lab.write(f"drift-{name.replace(' ', '-')}{layout}.json", run_in(lab.ns, ["nft", "-j", "list", "ruleset"]).stdout)


@pytest.mark.parametrize("name", sorted(DRIFT))
def test_verify_names_seeded_drift(lab: Lab, capsys: pytest.CaptureFixture[str], name: str) -> None:
    commands, kinds, message = DRIFT[name]
    path = seeded(lab, name, commands)
    doc = cli_json(capsys, "verify", "-A", "--rules-file", path, "--from-file", CASES[SIX].objects, *SIX_NODE,
                   codes=(1,))
    assert doc["in_sync"] is False
    assert {(f["kind"], f["service"]) for f in doc["findings"]} == kinds, doc["findings"]
    assert message in [f["message"] for f in doc["findings"]], doc["findings"]
    code, text, _ = cli(capsys, "verify", "-A", "--rules-file", path, "--from-file", CASES[SIX].objects, *SIX_NODE)
    assert code == 1 and text.startswith("Drift on node test-node (nftables mode): ") and message in text


def test_verify_reads_kube_proxy_133s_masquerade_rule_as_in_sync(lab: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    """kube-proxy 1.33 matched `tcp dport <port>` again in the ClusterIP masquerade rule; 1.34
    (which we write) does not. The older form for the service's own port is in sync; another
    port is drift."""
    ours = "ip daddr 172.30.0.41 ip saddr != 10.0.0.0/8 jump mark-for-masquerade"
    assert ours in lab.scripts[SIX]
    for port, in_sync in ((80, True), (81, False)):
        script = lab.scripts[SIX].replace(ours, ours.replace(" ip saddr", f" tcp dport {port} ip saddr"))
        run_in(lab.ns, ["nft", "flush", "ruleset"])
        run_in(lab.ns, ["nft", "-f", "-"], input=script)
        path = lab.write(f"masquerade-port-{port}.json", run_in(lab.ns, ["nft", "-j", "list", "ruleset"]).stdout)
        doc = cli_json(capsys, "verify", "-A", "--rules-file", path, "--from-file", CASES[SIX].objects, *SIX_NODE,
                       codes=(0, 1))
        if in_sync:
            assert (doc["in_sync"], doc["findings"]) == (True, []), doc["findings"]
        else:
            assert [(f["kind"], f["service"]) for f in doc["findings"]] == [("rules-differ", "ns1/svc1")], doc
            assert any("tcp dport 81" in r for r in doc["findings"][0]["extra_rules"]), doc["findings"][0]


# layout → (the base chain holding the output firewall jump; a base chain moved to the wrong
# side of DNAT: (its declaration, moved), the jump that then has no fitting chain).
BASE_DRIFT = {
    "": ("filter-output-pre-dnat",
         ("filter-prerouting-pre-dnat { type filter hook prerouting priority -110 ; }",
          "filter-prerouting-pre-dnat { type filter hook prerouting priority 0 ; }"),
         "no filter prerouting base chain running before DNAT (priority below -100) jumps to firewall-check"),
    # cluster-ips-check before DNAT would reject the node's connections to every cluster IP.
    "@older": ("filter-output",
               ("filter-output-post-dnat { type filter hook output priority -90 ; }",
                "filter-output-post-dnat { type filter hook output priority -110 ; }"),
               "no filter output base chain running after DNAT (priority above -100) jumps to cluster-ips-check"),
}


@pytest.mark.parametrize("layout", sorted(BASE_DRIFT))
def test_verify_drift_in_the_base_chains(lab: Lab, capsys: pytest.CaptureFixture[str], layout: str) -> None:
    holder, (declared, moved), lost = BASE_DRIFT[layout]
    path = seeded(lab, "output-firewall-jump", [["delete", "rule", T, holder, "HANDLE firewall-check"],
                                                ["flush", "chain", T, SVC4_EP4]], layout)
    doc = cli_json(capsys, "verify", "-A", "--rules-file", path, "--from-file", CASES[SIX].objects, *SIX_NODE,
                   codes=(1,))
    assert {(f["kind"], f["service"]) for f in doc["findings"]} == {("missing-jump", None), ("flushed", "ns4/svc4")}
    jump = next(f for f in doc["findings"] if f["kind"] == "missing-jump")
    assert jump["message"] == ("ip kube-proxy: no filter output base chain running before DNAT (priority below -100) "
                               "jumps to firewall-check: loadBalancerSourceRanges are not enforced for packets the "
                               "node sends")
    assert jump["missing_rules"] == [f"add rule ip kube-proxy {holder} ct state new jump firewall-check"]
    explained = cli_json(capsys, "explain", "svc/svc5", "-n", "ns5", "--rules-file", path, *SIX_NODE,
                         "--client", "node")
    assert f"warning: {jump['message']}" in [f"{p['severity']}: {p['message']}" for p in explained["problems"]]
    assert one(explained, "LoadBalancer", "node")["verdict"] == "DNAT"  # the firewall is not on the way any more
    # A filter chain moved to the other side of DNAT cannot do its work there.
    script = lab.scripts[SIX + layout]
    assert declared in script
    path = lab.write(f"moved{layout}.json", load(lab.ns, script.replace(declared, moved)))
    doc = cli_json(capsys, "verify", "-A", "--rules-file", path, "--from-file", CASES[SIX].objects, *SIX_NODE,
                   codes=(1,))
    assert [f["kind"] for f in doc["findings"]] == ["missing-jump", "rules-differ"], doc["findings"]
    assert lost in doc["findings"][0]["message"]
    assert doc["findings"][1]["chain"] == declared.split()[0]
    assert doc["config"]["layout"] == ("filter-output-post-dnat" if layout else "pre-dnat")


def test_verify_of_one_service_reports_only_its_drift(lab: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    """As explain's drift problems use it."""
    path = seeded(lab, "one-service", DRIFT["flushed endpoint chain"][0] + DRIFT["deleted element"][0])
    doc = cli_json(capsys, "verify", "svc/svc4", "-n", "ns4", "--rules-file", path, "--from-file",
                   CASES[SIX].objects, *SIX_NODE, codes=(1,))
    assert (doc["services_checked"], [f["kind"] for f in doc["findings"]]) == (1, ["flushed"])
    explained = cli_json(capsys, "explain", "svc/svc1", "-n", "ns1", "--rules-file", path, "--from-file",
                         CASES[SIX].objects, *SIX_NODE)
    assert "drift: ns1/svc1:p80: service-ips has no element 172.30.0.41 . tcp . 80: new connections to it are not " \
           "sent to the service's chains" in [p["message"] for p in explained["problems"]]


# --- on the node itself ---------------------------------------------------------------------


def live(lab: Lab, *args: str) -> tuple[int, str, str]:
    """`ip netns exec NS kubectl-proxyctl ARGS`: the command reads the namespace's own rules."""
    done = subprocess.run(engine_argv(lab.ns, *args), capture_output=True, text=True, timeout=60, check=False)
    return done.returncode, done.stdout, done.stderr


@pytest.mark.skipif(shutil.which("iptables-nft") is None, reason="needs iptables-nft")
def test_live_node_is_detected_as_nftables_and_checked(lab: Lab) -> None:
    load(lab.ns, lab.scripts[SIX])
    # What kubelet leaves in iptables on an nftables node: no service chains, so not iptables mode.
    for rule in (["-t", "mangle", "-N", "KUBE-KUBELET-CANARY"], ["-N", "KUBE-FIREWALL"],
                 ["-A", "INPUT", "-j", "KUBE-FIREWALL"]):
        run_in(lab.ns, ["iptables-nft", "-w", "5", *rule])
    try:
        code, out, err = live(lab, "dump", "svc/svc4", "-n", "ns4", "-o", "json")
        assert code == 0, err
        assert {r["backend"] for r in json.loads(out)} == {"nftables"}
        code, out, err = live(lab, "verify", "-A", "--from-file", CASES[SIX].objects, *SIX_NODE, "-o", "json")
        assert code == 0 and json.loads(out)["findings"] == [], out + err
        code, out, err = live(lab, "explain", "svc/svc4", "-n", "ns4", "--from-file", CASES[SIX].objects, *SIX_NODE,
                              "--client", "pod", "-o", "json")
        doc = json.loads(out)
        assert code == 0 and doc["backend"] == "nftables", err
        assert [e["probability"] for e in one(doc, "ClusterIP", "pod")["endpoints"]] == [0.5, 0.5]
        run_in(lab.ns, ["nft", "flush", "chain", *T.split(), SVC4_EP4])
        code, out, err = live(lab, "verify", "-A", "--from-file", CASES[SIX].objects, *SIX_NODE)
        assert code == 1 and f"ERROR [flushed] ns4/svc4:p80: chain {SVC4_EP4} is empty (flushed)" in out, out + err
    finally:
        run_in(lab.ns, ["iptables-nft", "-F"], check=False)
        run_in(lab.ns, ["iptables-nft", "-X"], check=False)
        run_in(lab.ns, ["iptables-nft", "-t", "mangle", "-X"], check=False)


def test_live_ipv6_table(lab: Lab) -> None:
    load(lab.ns, lab.scripts["ipv6"])
    case = CASES["ipv6"]
    code, out, err = live(lab, "verify", "-A", "--ip-family", "IPv6", "--from-file", case.objects, *node_args(case),
                          "-o", "json")
    doc = json.loads(out)
    assert code == 0 and doc["config"]["family"] == "IPv6" and doc["services_checked"] == 2, out + err
