"""The engine against the real kernel, in iptables and in nftables mode: `kubectl proxyctl
run` inside a node network namespace, real TCP and UDP traffic from a pod, from the node
itself and from an outside client.

One topology serves the whole module (`node_topology`): a node namespace (underlay
172.18.0.2, pod bridge 10.244.1.1/24), pods pod-a/pod-b/pod-c (the endpoints) and pod-d (a
pod client), and a client namespace (172.18.0.100 and 172.18.0.101) whose routes send the
external and load-balancer IPs to the node. The Node object `node1` has the node's underlay
IP; `node2` is a node elsewhere, used to make endpoints remote. Every test first applies the
objects it needs with `run --once`, so tests do not depend on each other's order.

The `lab` fixture runs every test in both modes (`test_x[iptables]`, `test_x[nftables]`);
a test about one mode's own machinery takes only that mode (`@only("nftables")`). Where
nftables mode deliberately behaves differently, as kube-proxy's does, the test says so:

* no localhost NodePorts (127.0.0.1:NODEPORT is not a service; route_localnet is left alone);
* `--nodeport-addresses` defaults to `primary`: NodePorts answer on the node's primary IP
  only, not on its other addresses (here the pod bridge's);
* a connection to a port a ClusterIP does not serve is rejected (`cluster-ips-check`);
* a chain that is no longer used is flushed at once but deleted only by a later sync, a
  second or more afterwards;
* its rules carry no counters: where an iptables test reads a rule's counter, the nftables
  test counts packets just before and just after the base chain that should drop them
  (`NftDropProbe`).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import pytest

from enginehelpers import (
    NftDropProbe,
    Obj,
    endpoint,
    endpoint_slice,
    engine_argv,
    forget_flows,
    nft_base_chains,
    nft_chain_rules,
    nft_tables,
    node,
    reply_sources,
    run_in,
    saved_chains,
    service,
    tcp_burst,
    tcp_from,
    udp_flows,
    write_objects,
)
from kubectl_proxyctl.modes.iptables.render import JUMP_RULES
from kubectl_proxyctl.modes.iptables.writer import OWNED_CHAIN_PREFIXES
from kubectl_proxyctl.system.sysctl import ROUTE_LOCALNET
from netns import Topology, build_topology, requires_lab
from waiting import TIMEOUT, wait_for

pytestmark = [pytest.mark.lab,
              requires_lab("iptables-nft", "iptables-nft-save", "iptables-nft-restore", "nft", "conntrack")]

MODES = ("iptables", "nftables")
OUR_TABLE = ("ip", "kube-proxy")  # nftables mode's table


def only(mode: str) -> pytest.MarkDecorator:
    """Run a test in one mode only (it is about that mode's own machinery)."""
    return pytest.mark.parametrize("lab", [mode], indirect=True)


CLUSTER_CIDR = "10.244.0.0/16"
NODE1_IP = "172.18.0.2"
NODE2_IP = "172.18.0.3"
CLIENT_IP = "172.18.0.100"
CLIENT_IP_BLOCKED = "172.18.0.101"  # a second client address, outside loadBalancerSourceRanges
ENDPOINT_PODS = ("pod-a", "pod-b", "pod-c")
POD_CLIENT = "pod-d"

# Services (namespace e2e): cluster IP, node port, external / load-balancer IPs.
WEB = "10.96.0.10"  # ClusterIP, http/80 TCP and dns/53 UDP over pod-a, pod-b, pod-c
NP = "10.96.0.11"  # NodePort 30080 + externalIP 192.0.2.10
NP_PORT = 30080
EXTERNAL_IP = "192.0.2.10"
LB = "10.96.0.12"  # LoadBalancer 30081, ingress 198.51.100.10
LB_PORT = 30081
LB_IP = "198.51.100.10"
LBFW = "10.96.0.13"  # LoadBalancer 30082, ingress 198.51.100.11, source range CLIENT_IP/32
LBFW_PORT = 30082
LBFW_IP = "198.51.100.11"
LOCAL = "10.96.0.14"  # LoadBalancer ETP Local 30083, ingress 198.51.100.12; pod-a on node1, pod-b on node2
LOCAL_PORT = 30083
LOCAL_LB_IP = "198.51.100.12"
REMOTE = "10.96.0.15"  # NodePort ETP Local 30084; pod-b and pod-c, both on node2
REMOTE_PORT = 30084
EMPTY = "10.96.0.16"  # NodePort 30085 without endpoints
EMPTY_PORT = 30085
STICKY = "10.96.0.17"  # ClusterIP with ClientIP affinity
UDP1 = "10.96.0.18"  # ClusterIP dns/53 UDP, one endpoint (pod-a, or another one)
LATE = "10.96.0.19"  # added later, without endpoints
EXTERNAL_ROUTES = (EXTERNAL_IP, LB_IP, LBFW_IP, LOCAL_LB_IP)
# A connection the rules answer at once (a pod, or a refusal) gets this long: it only bounds
# a hang. Connections that must not be answered (dropped, routed nowhere) keep short
# timeouts: for them the timeout is the observation.
ANSWERED = 10.0


def objects(topo: Topology, *, udp1: str = "pod-a", web: Sequence[str] = ENDPOINT_PODS) -> list[Obj]:
    ip = {p.name: p.ip for p in topo.pods}
    on1 = [endpoint(ip[p], "node1", p) for p in ENDPOINT_PODS]
    http = [("http", 80, "TCP")]
    objs = [
        node("node1", NODE1_IP),
        node("node2", NODE2_IP),
        service("web", WEB, [{"name": "http", "port": 80}, {"name": "dns", "port": 53, "protocol": "UDP"}]),
        endpoint_slice("web", [endpoint(ip[p], "node1", p) for p in web], [("http", 80, "TCP"), ("dns", 53, "UDP")]),
        service("np", NP, [{"name": "http", "port": 80, "nodePort": NP_PORT}], type="NodePort",
                external_ips=[EXTERNAL_IP]),
        endpoint_slice("np", on1, http),
        service("lb", LB, [{"name": "http", "port": 80, "nodePort": LB_PORT}], type="LoadBalancer", lb_ips=[LB_IP]),
        endpoint_slice("lb", on1, http),
        service("lbfw", LBFW, [{"name": "http", "port": 80, "nodePort": LBFW_PORT}], type="LoadBalancer",
                lb_ips=[LBFW_IP], source_ranges=[f"{CLIENT_IP}/32"]),
        endpoint_slice("lbfw", on1, http),
        service("local", LOCAL, [{"name": "http", "port": 80, "nodePort": LOCAL_PORT}], type="LoadBalancer",
                lb_ips=[LOCAL_LB_IP], etp="Local"),
        endpoint_slice("local", [endpoint(ip["pod-a"], "node1", "pod-a"), endpoint(ip["pod-b"], "node2", "pod-b")],
                       http),
        service("remote", REMOTE, [{"name": "http", "port": 80, "nodePort": REMOTE_PORT}], type="NodePort",
                etp="Local"),
        endpoint_slice("remote", [endpoint(ip[p], "node2", p) for p in ("pod-b", "pod-c")], http),
        service("empty", EMPTY, [{"name": "http", "port": 80, "nodePort": EMPTY_PORT}], type="NodePort"),
        service("sticky", STICKY, [{"name": "http", "port": 80}], affinity=10800),
        endpoint_slice("sticky", on1, http),
        service("udp1", UDP1, [{"name": "dns", "port": 53, "protocol": "UDP"}]),
        endpoint_slice("udp1", [endpoint(ip[udp1], "node1", udp1)], [("dns", 53, "UDP")]),
    ]
    return objs


@dataclass
class Lab:
    topo: Topology
    workdir: str
    mode: str
    processes: list[subprocess.Popen[Any]] = field(default_factory=list)

    @property
    def node(self) -> str:
        return self.topo.node

    @property
    def other_mode(self) -> str:
        return "nftables" if self.mode == "iptables" else "iptables"

    def ns(self, role: str) -> str:
        return self.topo.netns(role)

    def write(self, objs: Sequence[Obj], name: str = "objects.json") -> str:
        return write_objects(os.path.join(self.workdir, name), objs)

    def flags(self, path: str, node_name: str = "node1", mode: str | None = None) -> list[str]:
        return ["--from-file", path, "--node-name", node_name, "--cluster-cidr", CLUSTER_CIDR,
                "--mode", mode or self.mode, "--healthz-bind-address", "", "--metrics-bind-address", ""]

    def once(self, objs: Sequence[Obj] | None = None, node_name: str = "node1", mode: str | None = None,
             extra: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
        """`run --once` inside the node namespace (in this lab's mode unless `mode` says
        otherwise); fails the test when it fails."""
        path = self.write(objs if objs is not None else objects(self.topo))
        done = subprocess.run(engine_argv(self.node, "run", "--once", *self.flags(path, node_name, mode), *extra),
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, f"run --once failed ({done.returncode}):\n{done.stderr}"
        return done

    def cleanup(self) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(engine_argv(self.node, "run", "--cleanup"), capture_output=True, text=True,
                              timeout=60, check=False)
        assert done.returncode == 0, f"run --cleanup failed ({done.returncode}):\n{done.stderr}"
        return done

    def start(self, objs: Sequence[Obj], sync_period: str, log_path: str) -> subprocess.Popen[Any]:
        """The long-running engine in the background (stopped by the caller, or at teardown)."""
        path = self.write(objs, "serve.json")
        with open(log_path, "w", encoding="utf-8") as log:  # the child keeps its own copy of the fd
            proc = subprocess.Popen(
                engine_argv(self.node, "run", "-v", *self.flags(path), "--sync-period", sync_period),
                stdout=log, stderr=subprocess.STDOUT,
            )
        self.processes.append(proc)
        return proc

    def tcp(self, role: str, ip: str, port: int, timeout: float = 2.0) -> str:
        return self.topo.tcp_request(role, ip, port, timeout)

    def ipt(self, *args: str, table: str = "filter", check: bool = True) -> str:
        return run_in(self.node, ["iptables", "-w", str(int(TIMEOUT)), "-t", table, *args], check=check).stdout

    def nft(self, *args: str, check: bool = True, script: str | None = None) -> str:
        """`nft ARGS` in the node namespace, or `nft -f -` with `script`."""
        argv = ["nft", "-f", "-"] if script is not None else ["nft", *args]
        return run_in(self.node, argv, check=check, input=script).stdout

    def counter(self, table: str, chain: str, needle: str) -> int:
        """Packets counted by the first iptables rule of `chain` whose listing contains `needle`."""
        for line in self.ipt("-L", chain, "-n", "-v", "-x", table=table).splitlines():
            if needle in line:
                return int(line.split()[0])
        raise AssertionError(f"no rule with {needle!r} in {table}/{chain}")

    def layouts(self) -> dict[str, bool]:
        """Which of our two layouts the node holds: any KUBE- chain of kube-proxy's iptables
        layout; nftables mode's table."""
        chains = saved_chains(self.node)
        return {"iptables": any(c.startswith(OWNED_CHAIN_PREFIXES) for cs in chains.values() for c in cs),
                "nftables": OUR_TABLE in nft_tables(self.node)}

    def dropped(self, send: Callable[[], str], *, chain: str, needle: str, check: str, hook: str,
                match: str) -> str:
        """Run `send` and check that its packets were dropped by our filter rules. iptables
        mode: the counter of the first rule of filter/`chain` listing `needle` grows.
        nftables mode: packets matching `match` pass a probe just before our base chain at
        `hook` that jumps to `check` (e.g. firewall-check), and never the one just after it.
        Returns what `send` returned."""
        if self.mode == "iptables":
            before = self.counter("filter", chain, needle)
            answer = send()
            assert self.counter("filter", chain, needle) > before, f"not counted by filter/{chain} {needle}"
            return answer
        with NftDropProbe(self.node, hook, match, priority=_base_chain_priority(check, hook)) as probe:
            answer = send()
            seen_before, seen_after = probe.counts()
        assert seen_before > 0 and seen_after == 0, \
            f"{match}: {seen_before} packets before our {hook} chain jumping to {check}, {seen_after} after"
        return answer


def _base_chain_priority(check: str, hook: str) -> int:
    """The priority of nftables mode's base chain at `hook` that jumps to `check`."""
    from kubectl_proxyctl.modes.nftables.render import BASE_CHAINS, JUMP_CHAINS

    sources = {src for dst, src, _ in JUMP_CHAINS if dst == check}
    found = [prio for name, _, chain_hook, prio in BASE_CHAINS if name in sources and chain_hook == hook]
    assert len(found) == 1, (check, hook, found)
    return found[0]


@pytest.fixture(scope="module")
def node_topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Topology, str]]:
    topo = build_topology(pods=[*ENDPOINT_PODS, POD_CLIENT], client=True, tcp_ports=(80,), udp_ports=(53,))
    try:
        batch = [f"addr add {CLIENT_IP_BLOCKED}/24 dev eth0"]
        batch += [f"route add {ip}/32 via {NODE1_IP}" for ip in EXTERNAL_ROUTES]
        subprocess.run(["ip", "-n", topo.netns("client"), "-batch", "-"], input="\n".join(batch) + "\n",
                       text=True, capture_output=True, check=True)
        yield topo, str(tmp_path_factory.mktemp("engine"))
    finally:
        topo.close()


@pytest.fixture(scope="module", params=MODES)
def lab(request: pytest.FixtureRequest, node_topology: tuple[Topology, str]) -> Iterator[Lab]:
    topo, workdir = node_topology
    lab = Lab(topo, workdir, request.param)
    # Each mode starts from an empty conntrack table: no flow of the other mode's tests (some
    # tried while no rule DNATed them) steers this mode's connections.
    forget_flows(lab.node)
    try:
        yield lab
    finally:
        for proc in lab.processes:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=TIMEOUT)


# --- reaching the pods ----------------------------------------------------------------------


def test_cluster_ip_tcp_and_udp_from_pod_node_and_outside(lab: Lab) -> None:
    lab.once()
    pod_d_ip = lab.topo.pod(POD_CLIENT).ip
    for role in (POD_CLIENT, "node", "client"):
        tcp = [lab.topo.tcp_exchange(role, WEB, 80) for _ in range(12)]
        udp = [lab.topo.udp_exchange(role, WEB, 53) for _ in range(12)]
        assert {x.answer for x in tcp} <= set(ENDPOINT_PODS) and len({x.answer for x in tcp}) > 1, (role, tcp)
        assert {x.answer for x in udp} <= set(ENDPOINT_PODS) and len({x.answer for x in udp}) > 1, (role, udp)
        seen = {x.seen_ip for x in tcp + udp}
        # Pod traffic keeps its source; node and outside traffic is masqueraded (not in the cluster CIDR).
        assert seen == ({pod_d_ip} if role == POD_CLIENT else {lab.topo.bridge_ip}), (role, seen)


def test_node_port_external_ip_and_load_balancer_ip(lab: Lab) -> None:
    sysctl = lab.topo.sysctl("node")
    sysctl.set(ROUTE_LOCALNET, 0)
    lab.once()
    bridge = lab.topo.bridge_ip  # another address of the node
    if lab.mode == "iptables":
        assert sysctl.get(ROUTE_LOCALNET) == "1"  # set by the engine
        assert lab.tcp("node", "127.0.0.1", NP_PORT) in ENDPOINT_PODS  # localhost node port
        assert lab.tcp(POD_CLIENT, bridge, NP_PORT) in ENDPOINT_PODS  # node ports on every local address
    else:
        # kube-proxy's nftables mode has no localhost node ports (and leaves route_localnet
        # alone), and accepts node ports on the primary node IP only (--nodeport-addresses
        # defaults to `primary`): nothing listens on those ports, so the kernel refuses.
        assert sysctl.get(ROUTE_LOCALNET) == "0"
        assert lab.tcp("node", "127.0.0.1", NP_PORT, timeout=ANSWERED) == "refused"
        assert lab.tcp(POD_CLIENT, bridge, NP_PORT, timeout=ANSWERED) == "refused"
    assert lab.tcp("client", NODE1_IP, NP_PORT) in ENDPOINT_PODS
    assert lab.tcp("node", NODE1_IP, NP_PORT) in ENDPOINT_PODS
    assert lab.tcp(POD_CLIENT, NODE1_IP, NP_PORT) in ENDPOINT_PODS
    assert lab.topo.udp_request("client", NODE1_IP, NP_PORT) == "refused"  # TCP only: the node's own port
    assert lab.tcp("client", EXTERNAL_IP, 80) in ENDPOINT_PODS
    assert lab.tcp("client", LB_IP, 80) in ENDPOINT_PODS
    assert lab.tcp("client", NODE1_IP, LB_PORT) in ENDPOINT_PODS
    assert lab.tcp(POD_CLIENT, LB_IP, 80) in ENDPOINT_PODS
    if lab.mode == "nftables":
        # All addresses on request: node ports then answer on the bridge's address too, and
        # still never on 127.0.0.1.
        lab.once(extra=["--nodeport-addresses", "0.0.0.0/0"])
        assert lab.tcp(POD_CLIENT, bridge, NP_PORT) in ENDPOINT_PODS
        assert lab.tcp("client", NODE1_IP, NP_PORT) in ENDPOINT_PODS
        assert lab.tcp("node", "127.0.0.1", NP_PORT, timeout=ANSWERED) == "refused"
        assert sysctl.get(ROUTE_LOCALNET) == "0"


def test_thousand_connections_spread_evenly(lab: Lab) -> None:
    lab.once()
    counts = tcp_burst(lab.ns(POD_CLIENT), WEB, 80, 1000)
    print(f"\n{lab.mode}: 1000 connections to {WEB}:80: {dict(sorted(counts.items()))}")
    assert sum(counts[p] for p in ENDPOINT_PODS) == 1000, counts
    for pod in ENDPOINT_PODS:
        assert abs(counts[pod] - 1000 / 3) <= 0.15 * 1000 / 3, counts


def test_client_ip_affinity_pins_each_client(lab: Lab) -> None:
    lab.once()
    from_pod = tcp_burst(lab.ns(POD_CLIENT), STICKY, 80, 60)
    assert len(from_pod) == 1 and next(iter(from_pod)) in ENDPOINT_PODS, from_pod
    from_outside = tcp_burst(lab.ns("client"), STICKY, 80, 30)
    assert len(from_outside) == 1 and next(iter(from_outside)) in ENDPOINT_PODS, from_outside
    # The same client spreads over every pod of the service without affinity.
    spread = tcp_burst(lab.ns(POD_CLIENT), WEB, 80, 60)
    assert set(spread) == set(ENDPOINT_PODS), spread


def test_wrong_port_of_a_cluster_ip(lab: Lab) -> None:
    lab.once()
    assert lab.tcp(POD_CLIENT, WEB, 80) in ENDPOINT_PODS
    if lab.mode == "nftables":
        # kube-proxy's nftables mode rejects traffic to a port a ClusterIP does not serve
        # (cluster-ips-check), TCP and UDP alike.
        assert lab.tcp(POD_CLIENT, WEB, 8080, timeout=ANSWERED) == "refused"
        assert lab.tcp("node", WEB, 8080, timeout=ANSWERED) == "refused"
        assert lab.topo.udp_request(POD_CLIENT, WEB, 54) == "refused"
    else:
        # iptables mode has no rule for it: the packet is routed like any other, never to a pod.
        assert lab.tcp(POD_CLIENT, WEB, 8080, timeout=1.0) not in ENDPOINT_PODS


# --- traffic policies and source ranges ------------------------------------------------------


def test_external_traffic_policy_local(lab: Lab) -> None:
    lab.once()
    # A local endpoint: outside traffic goes only to it and keeps the client's address.
    for ip, port in ((NODE1_IP, LOCAL_PORT), (LOCAL_LB_IP, 80)):
        for _ in range(8):
            ex = lab.topo.tcp_exchange("client", ip, port)
            assert (ex.answer, ex.seen_ip) == ("pod-a", CLIENT_IP), (ip, port, ex)
    # All endpoints remote: outside traffic is dropped by the filter rules...
    answer = lab.dropped(lambda: lab.tcp("client", NODE1_IP, REMOTE_PORT, timeout=1.0),
                         chain="KUBE-EXTERNAL-SERVICES", needle=f"dpt:{REMOTE_PORT}",
                         check="nodeport-endpoints-check", hook="input",
                         match=f"ip daddr {NODE1_IP} tcp dport {REMOTE_PORT}")
    assert answer == "timeout"
    # ...while pods are short-circuited to the cluster-wide endpoints.
    assert {lab.tcp(POD_CLIENT, NODE1_IP, REMOTE_PORT) for _ in range(10)} <= {"pod-b", "pod-c"}

    # The same objects, with the engine running as node2, where pod-b and pod-c are local.
    # In nftables mode node ports answer on the primary node IP only, and node2's Node object
    # says 172.18.0.3: tell the engine the address this namespace really has.
    lab.once(node_name="node2", extra=["--node-ip", NODE1_IP] if lab.mode == "nftables" else [])
    for _ in range(6):
        ex = lab.topo.tcp_exchange("client", NODE1_IP, REMOTE_PORT)
        assert ex.answer in ("pod-b", "pod-c") and ex.seen_ip == CLIENT_IP, ex
        ex = lab.topo.tcp_exchange("client", NODE1_IP, LOCAL_PORT)
        assert (ex.answer, ex.seen_ip) == ("pod-b", CLIENT_IP), ex


def test_load_balancer_source_ranges(lab: Lab) -> None:
    lab.once()
    assert tcp_from(lab.ns("client"), CLIENT_IP, LBFW_IP, 80)[0] in ENDPOINT_PODS
    # nftables mode enforces the ranges in a filter chain before DNAT (firewall-check, from the
    # prerouting filter chain), iptables mode in KUBE-PROXY-FIREWALL.
    answer = lab.dropped(lambda: tcp_from(lab.ns("client"), CLIENT_IP_BLOCKED, LBFW_IP, 80, timeout=1.0)[0],
                         chain="KUBE-PROXY-FIREWALL", needle=LBFW_IP,
                         check="firewall-check", hook="prerouting",
                         match=f"ip saddr {CLIENT_IP_BLOCKED} ip daddr {LBFW_IP} tcp dport 80")
    assert answer == "timeout"
    # Source ranges guard the load-balancer IP only, not the node port.
    assert tcp_from(lab.ns("client"), CLIENT_IP_BLOCKED, NODE1_IP, LBFW_PORT)[0] in ENDPOINT_PODS
    # An allowed client after a blocked one still gets through.
    assert tcp_from(lab.ns("client"), CLIENT_IP, LBFW_IP, 80)[0] in ENDPOINT_PODS


def test_service_without_endpoints_is_refused(lab: Lab) -> None:
    lab.once()
    cases = [(POD_CLIENT, EMPTY, 80), ("node", EMPTY, 80), ("client", EMPTY, 80), ("client", NODE1_IP, EMPTY_PORT)]
    if lab.mode == "iptables":  # the localhost node port (nftables mode has none)
        cases.append(("node", "127.0.0.1", EMPTY_PORT))
    for role, ip, port in cases:
        answer = lab.tcp(role, ip, port, timeout=ANSWERED)
        assert answer == "refused", (role, ip, port, answer)


# --- coexistence, clean-up ------------------------------------------------------------------


FOREIGN = "MY-CHAIN"
# Tables of someone else: one of another name, and one named like ours in another family.
FOREIGN_TABLES = (("ip", "e2e-foreign"), ("inet", "kube-proxy"))


def _add_foreign_rules(lab: Lab) -> None:
    for table, hook in (("nat", "PREROUTING"), ("filter", "INPUT")):
        lab.ipt("-N", FOREIGN, table=table)
        lab.ipt("-A", FOREIGN, "-j", "RETURN", table=table)
        lab.ipt("-A", hook, "-j", FOREIGN, table=table)
    script = ""
    for family, name in FOREIGN_TABLES:
        script += (f"add table {family} {name}\n"
                   f"add chain {family} {name} input {{ type filter hook input priority 0 ; }}\n"
                   f"add chain {family} {name} mine\n"
                   f"add rule {family} {name} input tcp dport 9999 counter jump mine\n"
                   f"add rule {family} {name} mine counter accept\n")
    lab.nft(script=script)


def _remove_foreign_rules(lab: Lab) -> None:
    for table, hook in (("nat", "PREROUTING"), ("filter", "INPUT")):
        lab.ipt("-D", hook, "-j", FOREIGN, table=table, check=False)
        lab.ipt("-F", FOREIGN, table=table, check=False)
        lab.ipt("-X", FOREIGN, table=table, check=False)
    for family, name in FOREIGN_TABLES:
        lab.nft("delete", "table", family, name, check=False)


def test_foreign_rules_survive_sync_and_cleanup(lab: Lab) -> None:
    _add_foreign_rules(lab)
    try:
        foreign = {t: [ln for ln in run_in(lab.node, ["iptables-save", "-t", t]).stdout.splitlines()
                       if FOREIGN in ln] for t in ("nat", "filter")}
        assert all(len(lines) == 3 for lines in foreign.values()), foreign
        foreign_nft = {t: lab.nft("list", "table", *t) for t in FOREIGN_TABLES}

        def still_there(when: str) -> None:
            for t, lines in foreign.items():
                now = run_in(lab.node, ["iptables-save", "-t", t]).stdout.splitlines()
                assert [ln for ln in now if FOREIGN in ln] == lines, (when, t)
            for nft_table, text in foreign_nft.items():
                assert lab.nft("list", "table", *nft_table, check=False) == text, (when, nft_table)

        # Starting in one mode removes the other mode's rules, and only those.
        lab.once(mode=lab.other_mode)
        assert lab.layouts() == {lab.other_mode: True, lab.mode: False}
        lab.once()
        assert lab.layouts() == {lab.other_mode: False, lab.mode: True}
        lab.once()  # and a second sync over existing rules
        still_there("after two syncs")
        assert lab.tcp(POD_CLIENT, WEB, 80) in ENDPOINT_PODS

        done = lab.cleanup()
        still_there("after --cleanup")
        assert lab.layouts() == {"iptables": False, "nftables": False}
        assert not any(c.startswith("KUBE-") for chains in saved_chains(lab.node).values() for c in chains)
        jumps = [ln for ln in run_in(lab.node, ["iptables-save"]).stdout.splitlines() if "-j KUBE-" in ln]
        assert not jumps, jumps
        assert set(FOREIGN_TABLES) <= nft_tables(lab.node)
        if lab.mode == "iptables":
            assert "IPv4 iptables: removed " in done.stderr and "IPv4 iptables: removed nothing" not in done.stderr
        else:
            assert "IPv4 nftables: deleted table kube-proxy" in done.stderr, done.stderr
        # A cleanup of a clean node is a no-op, and the engine programs it again afterwards.
        again = lab.cleanup()
        assert "IPv4 iptables: removed nothing" in again.stderr and "IPv4 nftables: no table" in again.stderr
        still_there("after a second --cleanup")
        lab.once()
        assert lab.tcp(POD_CLIENT, WEB, 80) in ENDPOINT_PODS
        still_there("after a resync")
    finally:
        _remove_foreign_rules(lab)


@only("iptables")
def test_jump_rules_are_not_duplicated_by_repeated_syncs(lab: Lab) -> None:
    lab.once()
    lab.once()
    saved = {t: run_in(lab.node, ["iptables-save", "-t", t]).stdout.splitlines() for t in ("filter", "nat")}
    for jump in JUMP_RULES:
        hits = [ln for ln in saved[jump.table] if ln.startswith(f"-A {jump.chain} ")
                and ln.endswith(f"-j {jump.target}") and (not jump.comment or jump.comment in ln)
                and ("--ctstate NEW" in ln) == ("NEW" in jump.extra)]
        assert len(hits) == 1, (jump, hits)


def _nft_proxier(lab: Lab, system: Any = None, monotonic: Callable[[], float] = time.monotonic) -> Any:
    """An nftables proxier in this process, programming the node namespace (its writer's
    clock is `monotonic`)."""
    from kubectl_proxyctl.plan.planner import ProxyConfig
    from kubectl_proxyctl.engine.proxier import Proxier
    from kubectl_proxyctl.modes.nftables.writer import NftablesWriter
    from kubectl_proxyctl.kube.tracker import StateTracker
    from kubectl_proxyctl.system.conntrack import ConntrackSystem
    from kubectl_proxyctl.system.executor import SubprocessExecutor
    from kubectl_proxyctl.system.nftables import NftSystem

    executor = SubprocessExecutor(netns=lab.node)
    config = ProxyConfig(node_name="node1", cluster_cidrs=(CLUSTER_CIDR,), nodeport_addresses=("primary",),
                         localhost_nodeports=False)
    return Proxier(config, StateTracker("node1"),
                   NftablesWriter(system or NftSystem(executor=executor), monotonic=monotonic),
                   conntrack=ConntrackSystem(executor=executor))


def _feed(proxier: Any, objs: Sequence[Obj], event: str = "ADDED") -> None:
    for obj in objs:
        proxier.on_event(obj["kind"], event, obj)


@only("nftables")
def test_base_chain_rules_are_not_duplicated_and_stale_chains_go(lab: Lab) -> None:
    from kubectl_proxyctl.engine.runner import FakeClock
    from kubectl_proxyctl.modes.nftables.render import BASE_CHAINS, JUMP_CHAINS, STALE_CHAIN_DELAY

    want_base = sorted((name, hook, prio) for name, _, hook, prio in BASE_CHAINS)
    want_jumps = {name: [f"{match + ' ' if match else ''}jump {dst}" for dst, src, match in JUMP_CHAINS if src == name]
                  for name, _, _, _ in BASE_CHAINS}

    def check(when: str) -> dict[str, list[str]]:
        assert nft_base_chains(lab.node) == want_base, when
        rules = nft_chain_rules(lab.node)
        assert {name: rules[name] for name in want_jumps} == want_jumps, when
        return rules

    lab.once()
    first = check("after one run --once")
    lab.once()  # a new process re-creates the base chains (deleted and added again)
    assert check("after two") == first

    # One process, repeated full and partial syncs; its writer's clock moves when told to.
    clock = FakeClock()
    proxier = _nft_proxier(lab, monotonic=clock.monotonic)
    _feed(proxier, objects(lab.topo))
    for _ in range(2):
        proxier.schedule.request()
        result = proxier.sync()
        assert result is not None and not result.error and result.full, result
        assert check("after full syncs in one process") == first

    # udp1 moves from pod-a to pod-b: a partial sync flushes pod-a's endpoint chain, and a
    # sync at least a second (STALE_CHAIN_DELAY) later deletes it.
    ip = {p.name: p.ip for p in lab.topo.pods}
    old_chain = next(c for c in first if c.startswith("endpoint-") and f"-e2e/udp1/udp/dns__{ip['pod-a']}/" in c)
    proxier.on_event("EndpointSlice", "MODIFIED", endpoint_slice(
        "udp1", [endpoint(ip["pod-b"], "node1", "pod-b")], [("dns", 53, "UDP")]))
    partial = proxier.sync()
    assert partial is not None and not partial.error and not partial.full, partial
    rules = check("after a partial sync")
    assert rules[old_chain] == [], rules[old_chain]  # flushed, not deleted yet
    assert lab.topo.udp_request(POD_CLIENT, UDP1, 53) == "pod-b"
    clock.advance(STALE_CHAIN_DELAY)
    later = proxier.sync()
    assert later is not None and not later.error, later
    rules = check("after the stale chain was deleted")
    assert old_chain not in rules
    udp1 = {c for c in rules if c.startswith("endpoint-") and "-e2e/udp1/udp/dns__" in c}
    assert len(udp1) == 1 and f"-e2e/udp1/udp/dns__{ip['pod-b']}/" in udp1.pop(), rules.keys()
    assert lab.topo.udp_request(POD_CLIENT, UDP1, 53) == "pod-b"


# --- the long-running engine ----------------------------------------------------------------


def _flush_iptables(lab: Lab) -> None:
    """Someone flushes nat and deletes our chains by hand."""
    lab.ipt("-F", table="nat")
    for chain in sorted(saved_chains(lab.node, "nat")["nat"]):
        if chain.startswith("KUBE-"):
            lab.ipt("-X", chain, table="nat")
    assert not any(c.startswith("KUBE-") for c in saved_chains(lab.node, "nat")["nat"])


def _web_chain(lab: Lab) -> str:
    """The service chain of WEB's http port, read from the node's rules."""
    if lab.mode == "iptables":
        for line in lab.ipt("-S", "KUBE-SERVICES", table="nat").splitlines():
            if f"-d {WEB}/32" in line and "--dport 80 " in line:
                return line.rsplit(" -j ", 1)[1]
    else:
        m = re.search(rf"{re.escape(WEB)} \. tcp \. 80 : goto (\S+)", lab.nft("list", "map", *OUR_TABLE, "service-ips"))
        if m:
            return m.group(1).rstrip(",")
    raise AssertionError(f"no service chain for {WEB}:80 in the node's rules")


def _delete_web_element(lab: Lab) -> None:
    lab.nft("delete", "element", *OUR_TABLE, "service-ips", "{", f"{WEB} . tcp . 80", "}")


# (what someone does, how, whether it breaks pod → WEB:80). Each must be noticed at the next
# sync period and repaired by a full sync.
TAMPERING: dict[str, list[tuple[str, Callable[[Lab], Any], bool]]] = {
    "iptables": [
        ("iptables -t nat -F", lambda lab: lab.ipt("-F", table="nat"), True),
        ("iptables -t nat -F and -X", _flush_iptables, True),
        ("iptables -t filter -F", lambda lab: lab.ipt("-F", table="filter"), False),
        ("a deleted jump nat PREROUTING -> KUBE-SERVICES",
         lambda lab: lab.ipt("-D", "PREROUTING", "-m", "comment", "--comment", "kubernetes service portals",
                             "-j", "KUBE-SERVICES", table="nat"), True),
        ("a deleted jump nat POSTROUTING -> KUBE-POSTROUTING",
         lambda lab: lab.ipt("-D", "POSTROUTING", "-m", "comment", "--comment", "kubernetes postrouting rules",
                             "-j", "KUBE-POSTROUTING", table="nat"), False),
        ("iptables -t mangle -X KUBE-PROXY-CANARY", lambda lab: lab.ipt("-X", "KUBE-PROXY-CANARY", table="mangle"), False),
        ("a flushed service chain", lambda lab: lab.ipt("-F", _web_chain(lab), table="nat"), True),
    ],
    "nftables": [
        ("nft delete table ip kube-proxy", lambda lab: lab.nft("delete", "table", *OUR_TABLE), True),
        ("nft flush ruleset", lambda lab: lab.nft("flush", "ruleset"), True),  # every table, ours included
        ("nft flush table ip kube-proxy", lambda lab: lab.nft("flush", "table", *OUR_TABLE), True),
        ("a deleted service-ips element", _delete_web_element, True),
        ("a flushed service chain", lambda lab: lab.nft("flush", "chain", *OUR_TABLE, _web_chain(lab)), True),
    ],
}


def test_long_running_engine_repairs_a_flush_and_survives_sigkill(lab: Lab, tmp_path: Any) -> None:
    sync_period = 2.0
    lab.cleanup()
    assert lab.tcp(POD_CLIENT, WEB, 80, timeout=0.5) not in ENDPOINT_PODS
    log = str(tmp_path / "engine.log")
    proc = lab.start(objects(lab.topo), f"{sync_period:g}s", log)

    def engine_log() -> str:
        with open(log, encoding="utf-8") as fh:
            return fh.read()

    def flushes_noticed() -> int:
        return engine_log().count("someone flushed our rules")

    def serving() -> bool:
        assert proc.poll() is None, "the engine exited:\n" + engine_log()
        return lab.tcp(POD_CLIENT, WEB, 80, timeout=0.3) in ENDPOINT_PODS

    repaired: dict[str, float] = {}
    try:
        wait_for(serving, TIMEOUT, lambda: "the engine to program the node:\n" + engine_log())
        # The connections tried while there were no rules left conntrack entries without DNAT.
        forget_flows(lab.node, WEB)

        for what, tamper, breaks in TAMPERING[lab.mode]:
            noticed = flushes_noticed()
            full_syncs = engine_log().count(" sync full ")
            started = time.monotonic()
            tamper(lab)
            if breaks:  # the tampering broke the service (unless the engine already repaired it)
                assert not serving() or flushes_noticed() > noticed, what
            # The engine notices at its next sync period and programs everything again; the
            # deadline only bounds a hang.
            wait_for(lambda: flushes_noticed() > noticed, 2 * sync_period + TIMEOUT,
                     lambda: f"the engine to notice {what}:\n" + engine_log())
            # The repair is the full sync that follows (the next tampering must not race it).
            wait_for(lambda: engine_log().count(" sync full ") > full_syncs, TIMEOUT,
                     lambda: f"the full sync after {what}:\n" + engine_log())
            wait_for(serving, 2 * sync_period + TIMEOUT, lambda: f"a repair after {what}:\n" + engine_log())
            repaired[what] = time.monotonic() - started
            forget_flows(lab.node, WEB)  # as above: tried while the rules were gone
            assert flushes_noticed() == noticed + 1, engine_log()
            assert lab.tcp("client", NODE1_IP, NP_PORT) in ENDPOINT_PODS
        print(f"{lab.mode}: repaired after (s, sync period {sync_period:g} s): "
              + ", ".join(f"{what} {seconds:.1f}" for what, seconds in repaired.items()))

        # SIGKILL: no chance to clean anything; the rules keep serving.
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=TIMEOUT)
        assert proc.returncode == -signal.SIGKILL
        spread = tcp_burst(lab.ns(POD_CLIENT), WEB, 80, 30)
        assert set(spread) == set(ENDPOINT_PODS), spread
        assert lab.topo.udp_request(POD_CLIENT, WEB, 53) in ENDPOINT_PODS
        assert lab.tcp("client", NODE1_IP, NP_PORT) in ENDPOINT_PODS
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=TIMEOUT)


# --- UDP conntrack --------------------------------------------------------------------------


def _endpoint_chains(lab: Lab, service_name: str) -> dict[str, int]:
    """Our chains of one service's endpoints → how many rules each holds."""
    if lab.mode == "iptables":
        # KUBE-SEP chains are hashed; find this service's by the comment of their DNAT rule.
        text = run_in(lab.node, ["iptables-save", "-t", "nat"]).stdout.splitlines()
        chains = {ln.split()[1] for ln in text
                  if ln.startswith("-A KUBE-SEP-") and f"e2e/{service_name}:" in ln}
        return {c: sum(1 for ln in text if ln.startswith(f"-A {c} ")) for c in chains}
    return {c: len(r) for c, r in nft_chain_rules(lab.node).items()
            if c.startswith("endpoint-") and f"-e2e/{service_name}/" in c}


def test_udp_conntrack_entries_to_a_removed_endpoint_are_deleted(lab: Lab) -> None:
    pod_a, pod_b = lab.topo.pod("pod-a").ip, lab.topo.pod("pod-b").ip
    lab.once(objects(lab.topo, udp1="pod-a"))
    sport = 40053
    assert lab.topo.udp_request(POD_CLIENT, UDP1, 53, sport=sport) == "pod-a"
    assert lab.topo.udp_request(POD_CLIENT, UDP1, 53, sport=sport) == "pod-a"
    assert reply_sources(udp_flows(lab.node, UDP1)) == [pod_a]
    old = _endpoint_chains(lab, "udp1")
    assert len(old) == 1 and all(old.values()), old

    lab.once(objects(lab.topo, udp1="pod-b"))  # pod-a is gone, pod-b serves
    assert pod_a not in reply_sources(udp_flows(lab.node, UDP1)), udp_flows(lab.node, UDP1)
    # The same 5-tuple now reaches the new endpoint instead of sticking to the old one.
    assert lab.topo.udp_request(POD_CLIENT, UDP1, 53, sport=sport) == "pod-b"
    assert reply_sources(udp_flows(lab.node, UDP1)) == [pod_b]
    new = _endpoint_chains(lab, "udp1")
    serving = {c for c, rules in new.items() if rules}
    assert len(serving) == 1 and not serving & set(old), (old, new)
    # The stale endpoint chain is gone in both modes. nftables mode flushes a stale chain at
    # once and deletes it a second or more later (kube-proxy's way: older kernels notice late
    # that no map element points at it any more); `--once` waits that second out itself.
    assert set(new) == serving, (old, new)


# --- a failing sync --------------------------------------------------------------------------


def _old_rules_serve_then_the_retry_applies_the_new_state(lab: Lab, proxier: Any) -> None:
    """After a failed sync the old rules still serve; the retry is a full sync that brings in
    the new state (only pod-a behind web, a `late` service without endpoints)."""
    spread = tcp_burst(lab.ns(POD_CLIENT), WEB, 80, 30)
    assert set(spread) == set(ENDPOINT_PODS), spread
    assert lab.tcp(POD_CLIENT, NP, 80) in ENDPOINT_PODS
    retry = proxier.sync()
    assert retry is not None and not retry.error and retry.full, retry
    only_a = tcp_burst(lab.ns(POD_CLIENT), WEB, 80, 20)
    assert only_a == {"pod-a": 20}, only_a
    assert lab.tcp(POD_CLIENT, LATE, 80, timeout=ANSWERED) == "refused"


@only("iptables")
def test_failed_restore_keeps_the_old_rules_and_the_next_sync_succeeds(lab: Lab) -> None:
    from kubectl_proxyctl.plan.planner import ProxyConfig
    from kubectl_proxyctl.engine.proxier import Proxier
    from kubectl_proxyctl.modes.iptables.writer import IptablesWriter
    from kubectl_proxyctl.kube.tracker import StateTracker
    from kubectl_proxyctl.system.conntrack import ConntrackSystem
    from kubectl_proxyctl.system.executor import SubprocessExecutor
    from kubectl_proxyctl.system.iptables import IptablesSystem

    class FailingOnce(IptablesSystem):
        """Corrupts the nat table of the next sync payload, so the real iptables-restore
        fails after it committed the filter table."""

        fail_next = False
        failures = 0

        def restore(self, payload: str, noflush: bool = True, counters: bool = False) -> None:
            if self.fail_next and payload.startswith("*filter") and "\n*nat\n" in payload:
                self.fail_next = False
                self.failures += 1
                head, _, tail = payload.rpartition("COMMIT\n")
                payload = head + "-A KUBE-SERVICES -m no-such-match -j ACCEPT\nCOMMIT\n" + tail
            super().restore(payload, noflush, counters)

    executor = SubprocessExecutor(netns=lab.node)
    system = FailingOnce(executor=executor)
    config = ProxyConfig(node_name="node1", cluster_cidrs=(CLUSTER_CIDR,))
    tracker = StateTracker("node1")
    proxier = Proxier(config, tracker, IptablesWriter(system, random_fully=system.supports_random_fully()),
                      conntrack=ConntrackSystem(executor=executor))

    def load(objs: Sequence[Obj]) -> None:
        for obj in objs:
            proxier.on_event(obj["kind"], "ADDED", obj)

    lab.cleanup()
    load(objects(lab.topo))
    first = proxier.sync()
    assert first is not None and not first.error and first.full, first
    spread = tcp_burst(lab.ns(POD_CLIENT), WEB, 80, 30)
    assert set(spread) == set(ENDPOINT_PODS), spread

    # The next state: web keeps only pod-a, and "late" appears without endpoints (a filter REJECT).
    proxier.on_event("EndpointSlice", "MODIFIED", endpoint_slice(
        "web", [endpoint(lab.topo.pod("pod-a").ip, "node1", "pod-a")], [("http", 80, "TCP"), ("dns", 53, "UDP")]))
    proxier.on_event("Service", "ADDED", service("late", LATE, [{"name": "http", "port": 80}]))
    system.fail_next = True
    failed = proxier.sync()
    assert system.failures == 1
    assert failed is not None and failed.error and "line" in failed.error, failed
    assert "tables already committed by this restore: filter" in failed.error, failed.error
    # The filter table had committed before nat failed: it was put back, and the old rules serve.
    filter_table = run_in(lab.node, ["iptables-save", "-t", "filter"]).stdout
    assert "e2e/late:http has no endpoints" not in filter_table, filter_table
    _old_rules_serve_then_the_retry_applies_the_new_state(lab, proxier)


@only("nftables")
def test_failed_nft_transaction_keeps_the_old_rules_and_the_next_sync_succeeds(lab: Lab) -> None:
    from kubectl_proxyctl.system.executor import SubprocessExecutor
    from kubectl_proxyctl.system.nftables import NftSystem

    class FailingOnce(NftSystem):
        """Appends to the next sync's transaction a rule the kernel refuses (a jump to a
        chain that does not exist), so the real `nft -f` fails at its last line, after
        everything before it was sent in the same batch."""

        fail_next = False
        failures = 0

        def run(self, script: str, check: bool = False) -> None:
            if self.fail_next and not check and "add rule" in script:
                self.fail_next = False
                self.failures += 1
                script += "add rule ip kube-proxy services jump no-such-chain\n"
            super().run(script, check)

    system = FailingOnce(executor=SubprocessExecutor(netns=lab.node))
    proxier = _nft_proxier(lab, system)

    lab.cleanup()
    _feed(proxier, objects(lab.topo))
    first = proxier.sync()
    assert first is not None and not first.error and first.full, first
    spread = tcp_burst(lab.ns(POD_CLIENT), WEB, 80, 30)
    assert set(spread) == set(ENDPOINT_PODS), spread
    before = lab.nft("list", "table", *OUR_TABLE)

    # The next state: web keeps only pod-a, and "late" appears without endpoints (a reject).
    proxier.on_event("EndpointSlice", "MODIFIED", endpoint_slice(
        "web", [endpoint(lab.topo.pod("pod-a").ip, "node1", "pod-a")], [("http", 80, "TCP"), ("dns", 53, "UDP")]))
    proxier.on_event("Service", "ADDED", service("late", LATE, [{"name": "http", "port": 80}]))
    system.fail_next = True
    failed = proxier.sync()
    assert system.failures == 1
    assert failed is not None and failed.error, failed
    assert "line" in failed.error and "nothing was applied" in failed.error, failed.error
    assert "no-such-chain" in failed.error, failed.error
    # The transaction is atomic: the table is exactly what it was, and the old rules serve.
    assert lab.nft("list", "table", *OUR_TABLE) == before
    assert "e2e/late" not in before
    _old_rules_serve_then_the_retry_applies_the_new_state(lab, proxier)
    assert "e2e/late" in lab.nft("list", "table", *OUR_TABLE)
