"""`explain` and `verify` on the nodes people have: kube-proxy's older layouts and other
software's rules next to them (the dumps of tests/data/layouts, made by tests/layouts.py and
checked against real packets in test_layouts_kernel.py).

* verify on a healthy node of an older layout exits 0, names the layout, and compares where
  packets go; a node whose rules send them elsewhere than the API says still drifts;
* explain names the layout and the other software, never calls a hostPort's pod an endpoint
  of the Service, reports the hostPort that takes a NodePort as a finding (text and JSON),
  and with the node's routes answers Docker's and Calico's interface matches for certain;
* without the routes or the ipsets it says on what the answer depends and which command's
  output would settle it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

import layouts
from clihelpers import cli
from enginehelpers import Obj, endpoint, endpoint_slice, node, service, write_objects
from netns import BRIDGE, BRIDGE_IP, NODE_IP, POD_PREFIXLEN, UNDERLAY_PREFIXLEN

DATA = Path(__file__).parent / "data" / "layouts"
NS = layouts.NAMESPACE


def dump(name: str) -> str:
    return str(DATA / f"{name}.iptables-save.txt")


def api_objects(services: tuple[layouts.ServicePort, ...] = layouts.SERVICES) -> list[Obj]:
    """The Services and EndpointSlices the layouts' rules were written for."""
    out: list[Obj] = [node(layouts.NODE_NAME, NODE_IP), node("node2", "172.18.0.3")]
    for sp in services:
        kind = "LoadBalancer" if sp.lb_ips else "NodePort" if sp.node_port else "ClusterIP"
        port: dict[str, Any] = {"name": sp.port_name, "port": sp.port, "targetPort": sp.port}
        if sp.node_port:
            port["nodePort"] = sp.node_port
        obj = service(sp.name, sp.cluster_ip, [port], ns=NS, type=kind, lb_ips=sp.lb_ips,
                      source_ranges=sp.source_ranges, etp="Local" if sp.etp_local else None,
                      affinity=sp.affinity_seconds or None)
        if sp.health_check_node_port:
            obj["spec"]["healthCheckNodePort"] = sp.health_check_node_port
        out.append(obj)
        eps = [endpoint(e.ip, layouts.NODE_NAME if e.local else "node2") for e in sp.endpoints]
        out.append(endpoint_slice(sp.name, eps, [(sp.port_name, sp.port, sp.protocol)], ns=NS))
    return out


@pytest.fixture
def objects(tmp_path: Path) -> str:
    return write_objects(str(tmp_path / "objects.json"), api_objects())


@pytest.fixture
def routes(tmp_path: Path) -> str:
    """`ip -json route show` of the layouts' node: pods behind the bridge, the rest on eth0."""
    path = tmp_path / "routes.json"
    path.write_text(json.dumps([
        {"dst": "default", "gateway": "172.18.0.100", "dev": "eth0", "flags": []},
        {"dst": f"{BRIDGE_IP.rsplit('.', 1)[0]}.0/{POD_PREFIXLEN}", "dev": BRIDGE, "protocol": "kernel",
         "scope": "link", "prefsrc": BRIDGE_IP, "flags": []},
        {"dst": f"{NODE_IP.rsplit('.', 1)[0]}.0/{UNDERLAY_PREFIXLEN}", "dev": "eth0", "protocol": "kernel",
         "scope": "link", "prefsrc": NODE_IP, "flags": []}]))
    return str(path)


def verify(capsys: pytest.CaptureFixture[str], rules: str, objects: str, *extra: str) -> tuple[int, str]:
    code, out, err = cli(capsys, "verify", "--rules-file", rules, "--from-file", objects, "--node-name",
                         layouts.NODE_NAME, "--node-ip", NODE_IP, "--cluster-cidr", layouts.CLUSTER_CIDR, *extra)
    return code, out + err


@pytest.mark.parametrize("era,title", [("1.20", "kube-proxy 1.20–1.23"), ("1.23", "kube-proxy 1.20–1.23"),
                                       ("1.24", "kube-proxy 1.24")])
def test_verify_on_a_healthy_old_layout_node_is_in_sync_and_names_the_layout(
        capsys: pytest.CaptureFixture[str], objects: str, era: str, title: str) -> None:
    code, out = verify(capsys, dump(f"kube-proxy-{era}"), objects)
    assert code == 0, out
    assert out.startswith("In sync: 7 service port(s) on node node1 match the API (iptables mode).")
    assert f"note: rules of {title} (" in out and "compared by behaviour" in out
    code, out = verify(capsys, dump(f"kube-proxy-{era}"), objects, "-o", "json")
    doc = json.loads(out)
    assert doc["in_sync"] is True and doc["findings"] == [] and title in doc["notes"][0]


def test_verify_still_finds_drift_on_an_old_layout(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # The API lost pod-b from web: the 1.23 node still sends half the connections there.
    web = layouts.service("web")
    changed = tuple(sp if sp is not web else layouts.ServicePort(**{**web.__dict__, "endpoints": web.endpoints[:1]})
                    for sp in layouts.SERVICES)
    objects = write_objects(str(tmp_path / "objects.json"), api_objects(changed))
    code, out = verify(capsys, dump("kube-proxy-1.23"), objects)
    assert code == 1, out
    assert "[behaviour-differs] layouts/web:http: cluster IP 10.96.0.10:80 from pod" in out
    assert f"DNAT to {layouts.POD_A}:80 50.0 %, {layouts.POD_B}:80 50.0 %" in out


def test_verify_of_the_current_layout_compares_rules(capsys: pytest.CaptureFixture[str], objects: str) -> None:
    code, out = verify(capsys, dump("current-docker-hostport"), objects, "-o", "json")
    assert json.loads(out)["notes"] == []


def explain_json(capsys: pytest.CaptureFixture[str], svc: str, *rules: str) -> dict[str, Any]:
    args = ["explain", f"svc/{svc}", "-n", NS, "--node-ip", NODE_IP, "-o", "json"]
    for r in rules:
        args += ["--rules-file", r]
    code, out, err = cli(capsys, *args)
    assert code == 0, err
    return json.loads(out)  # type: ignore[no-any-return]


def paths(doc: dict[str, Any], kind: str, client: str) -> list[dict[str, Any]]:
    return [p for port in doc["ports"] for e in port["entries"] if e["kind"] == kind for p in e["paths"]
            if p["client"] == client]


def test_a_hostport_taking_a_nodeport_is_a_finding_and_never_an_endpoint(
        capsys: pytest.CaptureFixture[str], routes: str) -> None:
    # Without the routes the answer depends on docker0; either way the hostPort's pod is no endpoint.
    doc = explain_json(capsys, "nodeport", dump("current-docker-hostport"))
    [external] = paths(doc, "NodePort", "external")
    assert external["verdict"] == "UNKNOWN"
    taken = [b for b in external["depends_on"] if b["verdict"] == "DNAT"]
    assert taken and taken[0]["endpoints"][0]["ip"] == layouts.POD_C
    assert taken[0]["endpoints"][0]["dnat_by"] == "CNI portmap"
    assert "not an endpoint of the Service" in taken[0]["sentence"]
    finding = [f for f in doc["findings"] if f["kind"] == "foreign-dnat"]
    assert finding and "taken by a hostPort rule in CNI-HOSTPORT-DNAT before kube-proxy's rules see it" \
        in finding[0]["message"] and finding[0]["chain"] == "CNI-HOSTPORT-DNAT"
    # With them: Docker's FORWARD policy drops what the hostPort rewrote, as real packets show.
    doc = explain_json(capsys, "nodeport", dump("current-docker-hostport"), routes)
    [external] = paths(doc, "NodePort", "external")
    assert (external["verdict"], external["depends_on"]) == ("DROP", [])
    assert "after CNI portmap's rule in nat/CNI-DN-" in external["sentence"]
    assert {f["kind"] for f in doc["findings"]} == {"foreign-dnat", "foreign-drop"}
    code, out, _ = cli(capsys, "explain", "svc/nodeport", "-n", NS, "--node-ip", NODE_IP,
                       "--rules-file", dump("current-docker-hostport"), "--rules-file", routes)
    assert "Other software's rules in the way:\n" in out
    assert "is taken by a hostPort rule in CNI-HOSTPORT-DNAT before kube-proxy's rules see it" in out


def test_docker_interface_matches_are_settled_by_the_routes(capsys: pytest.CaptureFixture[str], routes: str) -> None:
    doc = explain_json(capsys, "web", dump("kube-proxy-1.24-docker"), routes)
    verdicts = {p["client"]: p["verdict"] for p in paths(doc, "ClusterIP", "pod") + paths(doc, "ClusterIP", "node")}
    assert verdicts == {"pod": "DROP", "node": "DNAT"}
    assert all(p["verdict"] != "UNKNOWN" for port in doc["ports"] for e in port["entries"] for p in e["paths"])
    assert any("these are the rules of kube-proxy 1.24" in p["message"] for p in doc["problems"])
    assert any(p["message"].startswith("other software's rules on this node: Docker (DOCKER") for p in doc["problems"])


def test_calico_without_routes_and_ipsets_says_what_would_settle_it(capsys: pytest.CaptureFixture[str]) -> None:
    doc = explain_json(capsys, "web", dump("kube-proxy-1.23-calico"))
    [pod] = paths(doc, "ClusterIP", "pod")
    assert pod["verdict"] == "UNKNOWN" and len(pod["depends_on"]) >= 2
    assert pod["notes"][0].startswith("the answer depends on whether ")
    assert any("`ipset save` output" in n for n in pod["notes"])
    assert any("`ip -json route show`" in n for n in pod["notes"])


def test_calico_with_routes_and_ipsets_is_certain(capsys: pytest.CaptureFixture[str], routes: str) -> None:
    doc = explain_json(capsys, "web", dump("kube-proxy-1.23-calico"), routes,
                       str(DATA / "kube-proxy-1.23-calico.ipset.txt"))
    [pod] = paths(doc, "ClusterIP", "pod")
    assert (pod["verdict"], pod["masquerade"], pod["depends_on"]) == ("DNAT", False, [])
    assert {e["ip"] for e in pod["endpoints"]} == {layouts.POD_A, layouts.POD_B}


@pytest.mark.parametrize("era", ["1.20", "1.23", "1.24"])
def test_old_layouts_drop_outside_the_source_ranges(capsys: pytest.CaptureFixture[str], era: str) -> None:
    doc = explain_json(capsys, "lb", dump(f"kube-proxy-{era}"))
    lb = paths(doc, "LoadBalancer", "external")
    verdicts = {p["source"]: p["verdict"] for p in lb}
    assert verdicts == {layouts.CLIENT_IP: "DNAT",
                        "203.0.113.10": "DROP"}
    assert any("loadBalancerSourceRanges" in p["message"] for p in doc["problems"])


def test_a_dump_of_one_table_says_which_output_settles_it(capsys: pytest.CaptureFixture[str],
                                                          tmp_path: Path) -> None:
    text = Path(dump("kube-proxy-1.23")).read_text()
    nat_only = tmp_path / "nat.txt"
    nat_only.write_text(text[text.index("*nat"):text.index("COMMIT", text.index("*nat")) + 7])
    doc = explain_json(capsys, "web", str(nat_only))
    assert any("the filter table is not in the input" in p["message"] and "`iptables-save` output settles it"
               in p["message"] for p in doc["problems"])


@pytest.mark.parametrize("era", layouts.ERAS)
def test_large_cluster_mode_without_endpoint_comments(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                      objects: str, era: str) -> None:
    # Above 1,000 endpoints kube-proxy writes no comments on endpoint rules: the services are
    # still found, explained and verified by behaviour.
    tables = layouts.NodeTables()
    layouts.add_kubelet(tables)
    layouts.add_kube_proxy(tables, era, config=layouts.ProxyConfig(large_cluster=True))
    rules = tmp_path / "large.txt"
    rules.write_text(tables.render())
    doc = explain_json(capsys, "local", str(rules))
    [external] = paths(doc, "NodePort", "external")
    assert (external["verdict"], [e["ip"] for e in external["endpoints"]]) == ("DNAT", [layouts.POD_A])
    code, out = verify(capsys, str(rules), objects)
    assert code == 0 and "compared by behaviour" in out, out


def test_a_settled_open_condition_is_mentioned_only_with_rules(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["explain", "svc/empty", "-n", NS, "--node-ip", NODE_IP, "--rules-file", dump("current-docker-hostport")]
    _, plain, _ = cli(capsys, *args)
    _, walk, _ = cli(capsys, *args, "--rules")
    assert "whether or not" not in plain
    assert "note: the same answer whether or not the packet arrives on docker0" in walk
