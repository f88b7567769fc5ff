"""`explain` and `verify` on a live node agree with the kernel.

One node namespace with pods pod-a, pod-b, pod-c (the endpoints) and pod-d (a client), and
an outside client (172.18.0.100, plus 172.18.0.101 outside the load balancer's source range).
The rules are programmed by the engine (`run --once`); `explain -o json` and `verify` then
read them back from the live node, and real connections must go where explain said: the
endpoint shares of 1,000 connections within ±5 points of the printed odds, and the verdict
(DNAT / REJECT / DROP) and SNAT of a few shapes (ClusterIP, no endpoints, ETP Local without
a local endpoint, source ranges) matching what packets meet.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import pytest

from enginehelpers import (
    Obj,
    endpoint,
    endpoint_slice,
    engine_argv,
    node,
    run_in,
    service,
    tcp_burst,
    tcp_from,
    write_objects,
)
from netns import Topology, build_topology, requires_lab
from waiting import TIMEOUT

pytestmark = [pytest.mark.lab, requires_lab("iptables-nft", "iptables-nft-save", "iptables-nft-restore")]

CLUSTER_CIDR = "10.244.0.0/16"
NODE_IP = "172.18.0.2"
CLIENT_IP = "172.18.0.100"
BLOCKED_IP = "172.18.0.101"
PODS = ("pod-a", "pod-b", "pod-c")
POD_CLIENT = "pod-d"
WEB = "10.96.0.10"
EMPTY = "10.96.0.16"
REMOTE, REMOTE_PORT = "10.96.0.15", 30084
LBFW, LBFW_PORT, LBFW_IP = "10.96.0.13", 30082, "198.51.100.11"


def objects(topo: Topology) -> list[Obj]:
    ip = {p.name: p.ip for p in topo.pods}
    here = [endpoint(ip[p], "node1", p) for p in PODS]
    http = [("http", 80, "TCP")]
    return [
        node("node1", NODE_IP),
        node("node2", "172.18.0.3"),
        service("web", WEB, [{"name": "http", "port": 80}]),
        endpoint_slice("web", here, http),
        service("empty", EMPTY, [{"name": "http", "port": 80}]),
        service("remote", REMOTE, [{"name": "http", "port": 80, "nodePort": REMOTE_PORT}], type="NodePort",
                etp="Local"),
        endpoint_slice("remote", [endpoint(ip[p], "node2", p) for p in ("pod-b", "pod-c")], http),
        service("lbfw", LBFW, [{"name": "http", "port": 80, "nodePort": LBFW_PORT}], type="LoadBalancer",
                lb_ips=[LBFW_IP], source_ranges=[f"{CLIENT_IP}/32"]),
        endpoint_slice("lbfw", here, http),
    ]


@dataclass
class Node:
    topo: Topology
    objects: str

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(engine_argv(self.topo.node, *args), capture_output=True, text=True, timeout=120,
                              check=False)
        if check:
            assert done.returncode == 0, f"{' '.join(args)} failed ({done.returncode}):\n{done.stderr}"
        return done

    def explain(self, svc: str, *args: str) -> dict[str, Any]:
        done = self.cli("explain", f"svc/{svc}", "-n", "e2e", "--from-file", self.objects, "--node-name", "node1",
                        "--node-ip", NODE_IP, "-o", "json", *args)
        return json.loads(done.stdout)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    topo = build_topology(pods=[*PODS, POD_CLIENT], client=True, tcp_ports=(80,), udp_ports=())
    try:
        batch = [f"addr add {BLOCKED_IP}/24 dev eth0", f"route add {LBFW_IP}/32 via {NODE_IP}"]
        subprocess.run(["ip", "-n", topo.netns("client"), "-batch", "-"], input="\n".join(batch) + "\n",
                       text=True, capture_output=True, check=True)
        path = write_objects(os.path.join(str(tmp_path_factory.mktemp("explain")), "objects.json"), objects(topo))
        live = Node(topo, path)
        live.cli("run", "--once", "--from-file", path, "--node-name", "node1", "--cluster-cidr", CLUSTER_CIDR,
                 "--healthz-bind-address", "", "--metrics-bind-address", "")
        yield live
    finally:
        topo.close()


def path_of(doc: dict[str, Any], kind: str, client: str, source: str | None = None) -> dict[str, Any]:
    found = [p for port in doc["ports"] for e in port["entries"] if e["kind"] == kind for p in e["paths"]
             if p["client"] == client and (source is None or p["source"] == source)]
    assert len(found) == 1, (kind, client, found)
    path: dict[str, Any] = found[0]
    return path


def expected_answer(path: dict[str, Any], pods: dict[str, str]) -> set[str]:
    """What a real connection should answer with, given explain's verdict."""
    if path["verdict"] == "DNAT":
        return {pods[e["ip"]] for e in path["endpoints"]}
    return {"REJECT": {"refused"}, "DROP": {"timeout"}}.get(path["verdict"], {path["verdict"]})


def test_odds_match_a_thousand_connections(live: Node) -> None:
    doc = live.explain("web", "--client", "pod", "--source", live.topo.pod(POD_CLIENT).ip)
    path = path_of(doc, "ClusterIP", "pod")
    assert path["verdict"] == "DNAT" and path["masquerade"] is False
    odds = {e["ip"]: e["probability"] for e in path["endpoints"]}
    pod_of = {p.ip: p.name for p in live.topo.pods}
    assert {pod_of[ip] for ip in odds} == set(PODS)
    counts: Counter[str] = tcp_burst(live.topo.netns(POD_CLIENT), WEB, 80, 1000)
    assert sum(counts[p] for p in PODS) == 1000, counts
    for ip, p in odds.items():
        share = counts[pod_of[ip]] / 1000
        assert abs(share - p) <= 0.05, (pod_of[ip], share, p, counts)


# A dropped connection is seen as a timeout, so that wait is the observation and stays short;
# anything else (a pod's answer, a refusal) comes at once and gets a timeout that only
# bounds a hang.
DROP_SEEN_AFTER = 1.5


def check(live: Node, path: dict[str, Any], ns: str, source: str, ip: str, port: int) -> None:
    pods = {p.ip: p.name for p in live.topo.pods}
    timeout = DROP_SEEN_AFTER if path["verdict"] == "DROP" else TIMEOUT
    answer, seen = tcp_from(live.topo.netns(ns), source, ip, port, timeout=timeout)
    assert answer in expected_answer(path, pods), (path["sentence"], answer)
    if path["verdict"] == "DNAT":
        assert (seen != source) is path["masquerade"], (path["sentence"], source, seen)


@pytest.mark.parametrize("svc,kind,client,ns,source,dst", [
    ("web", "ClusterIP", "pod", POD_CLIENT, None, (WEB, 80)),
    ("web", "ClusterIP", "node", "node", NODE_IP, (WEB, 80)),
    ("empty", "ClusterIP", "pod", POD_CLIENT, None, (EMPTY, 80)),
    ("remote", "NodePort", "external", "client", CLIENT_IP, (NODE_IP, REMOTE_PORT)),
    ("remote", "NodePort", "pod", POD_CLIENT, None, (NODE_IP, REMOTE_PORT)),
    ("lbfw", "LoadBalancer", "external", "client", CLIENT_IP, (LBFW_IP, 80)),
    ("lbfw", "LoadBalancer", "external", "client", BLOCKED_IP, (LBFW_IP, 80)),
])
def test_verdicts_match_real_packets(live: Node, svc: str, kind: str, client: str, ns: str, source: str | None,
                                     dst: Sequence[Any]) -> None:
    source = source or live.topo.pod(POD_CLIENT).ip
    doc = live.explain(svc, "--client", client, "--source", source)
    path = path_of(doc, kind, client)
    want = {("web", "pod"): ("DNAT", False), ("web", "node"): ("DNAT", True), ("empty", "pod"): ("REJECT", False),
            ("remote", "external"): ("DROP", False), ("remote", "pod"): ("DNAT", False),
            ("lbfw", "external"): ("DNAT" if source == CLIENT_IP else "DROP", source == CLIENT_IP)}[(svc, client)]
    assert (path["verdict"], bool(path["masquerade"])) == want, path["sentence"]
    check(live, path, ns, source, dst[0], dst[1])


def test_verify_a_live_node_then_a_deleted_endpoint_chain(live: Node) -> None:
    flags = ["--from-file", live.objects, "--node-name", "node1", "--node-ip", NODE_IP]
    done = live.cli("verify", *flags, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    save = run_in(live.topo.node, ["iptables-nft-save", "-t", "nat"]).stdout
    jump = next(line for line in save.splitlines() if line.startswith("-A KUBE-SVC-") and "-j KUBE-SEP-" in line
                and "e2e/web:http" in line)
    sep = jump.rsplit(" ", 1)[1]
    run_in(live.topo.node, ["iptables-nft", "-w", str(int(TIMEOUT)), "-t", "nat", "-D", *shlex.split(jump)[1:]])
    run_in(live.topo.node, ["iptables-nft", "-w", str(int(TIMEOUT)), "-t", "nat", "-F", sep])
    run_in(live.topo.node, ["iptables-nft", "-w", str(int(TIMEOUT)), "-t", "nat", "-X", sep])
    try:
        done = live.cli("verify", *flags, "-o", "json", check=False)
        assert done.returncode == 1, done.stderr
        findings = json.loads(done.stdout)["findings"]
        assert {(f["kind"], f["service"]) for f in findings} == {("missing-endpoint", "e2e/web")}, findings
    finally:
        live.cli("run", "--once", "--from-file", live.objects, "--node-name", "node1", "--cluster-cidr",
                 CLUSTER_CIDR, "--healthz-bind-address", "", "--metrics-bind-address", "")
