"""The inspector's side of eBPF mode: the collected document read back, traced, verified, dumped
and explained, without a kernel.

The maps are built the way the writer fills them: `modes.ebpf.render` of the plan for
tests/data/ebpf/objects.yaml, packed with `modes.ebpf.maps` and spelled as `bpftool -j map
dump` spells bytes. The entry-point table (tests/data/ebpf/entry-table.nft.json) is
`nft -j list table ip proxyctl-ebpf` of `modes.nftables.render(plan, table="proxyctl-ebpf",
entry_points_only=True)` for the same objects, loaded into a network namespace once (see
tests/data/ebpf/README). Drift is seeded by editing the document the way it happens on nodes: an
entry deleted, a backend replaced, a program detached.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import pytest
from clihelpers import cli

from kubectl_proxyctl.errors import RulesetParseError
from kubectl_proxyctl.inspect.graph import RuleGraph, load_texts
from kubectl_proxyctl.kube.convert import state_from_objects
from kubectl_proxyctl.kube.snapshot import load_objects
from kubectl_proxyctl.model import ClusterState
from kubectl_proxyctl.modes import reader
from kubectl_proxyctl.modes.base import Mode
from kubectl_proxyctl.modes.ebpf import maps
from kubectl_proxyctl.modes.ebpf.parse import collection, parse_document
from kubectl_proxyctl.modes.ebpf.render import ServiceEntry, render
from kubectl_proxyctl.modes.ebpf.trace import NO_ENDPOINTS
from kubectl_proxyctl.modes.nodecontext import NodeContext
from kubectl_proxyctl.modes.owners import ServiceSelector
from kubectl_proxyctl.modes.tracing import LocalNode, Origin, Packet, TraceResult, Verdict
from kubectl_proxyctl.plan.planner import ProxyConfig, plan
from kubectl_proxyctl.system.executor import FakeExecutor, Result
from kubectl_proxyctl.system.noderules import collect

DATA = Path(__file__).parent / "data" / "ebpf"
OBJECTS = str(DATA / "objects.yaml")
ENTRY_TABLE = str(DATA / "entry-table.nft.json")
NODE_NAME, NODE_IP, POD_CIDR = "test-node", "192.168.0.2", "10.0.0.0/8"
NODE = ["--node-name", NODE_NAME, "--node-ip", NODE_IP, "--cluster-cidr", POD_CIDR]
CGROUP = "/sys/fs/cgroup"
POD, EXTERNAL = "10.0.9.9", "203.0.113.10"
WEB, STICKY, EMPTY, LB, DNS = "172.30.0.41", "172.30.0.42", "172.30.0.43", "172.30.0.44", "172.30.0.45"
WEB_ENDPOINTS = {"10.0.1.1:8080", "10.0.2.1:8080", "10.0.3.1:8080"}
LOCAL = LocalNode((NODE_IP,), NODE_NAME)

Doc = dict[str, Any]


# --- building documents --------------------------------------------------------------------


def cluster() -> ClusterState:
    return state_from_objects(load_objects(OBJECTS), warn=lambda w: None)


def desired() -> dict[maps.ServiceKey, ServiceEntry]:
    config = ProxyConfig(node_name=NODE_NAME, cluster_cidrs=(POD_CIDR,), node_ips=(NODE_IP,))
    return render(plan(cluster(), config))


def entry(key: bytes, value: bytes, spelling: Callable[[bytes], Any] = maps.entry_json) -> dict[str, Any]:
    return {"key": spelling(key), "value": spelling(value)}


def document(entries: dict[maps.ServiceKey, ServiceEntry] | None = None, *,
             programs: list[maps.ProgramSpec] | None = None, marker: str | None = maps.LAYOUT_MARKER,
             cgroup: str = CGROUP, named: bool = True,
             spelling: Callable[[bytes], Any] = maps.entry_json) -> Doc:
    """The document the collector would read from a node the writer synced to `entries`."""
    entries = desired() if entries is None else entries
    ids = {name: i + 1 for i, name in enumerate(sorted({e.name for e in entries.values()}))}
    tables: dict[str, list[dict[str, Any]]] = {name: [] for name in maps.MAPS}
    slot = 100
    for key, e in sorted(entries.items()):
        value = maps.ServiceValue(ids[e.name], len(e.backends), e.flags, slot, e.affinity_seconds)
        tables[f"services{key.family}"].append(entry(key.pack(), value.pack(), spelling))
        for backend in e.backends:
            tables[f"backends{key.family}"].append(entry(maps.pack_slot(slot), backend.pack(), spelling))
            slot += 1
    if named:
        tables["names"] += [entry(maps.pack_slot(i), maps.pack_name(n), spelling) for n, i in ids.items()]
    if marker is not None:
        tables["names"].append(entry(maps.pack_slot(maps.MARKER_NAME_ID), maps.pack_name(marker), spelling))
    tables["names"].append(entry(maps.pack_slot(maps.CGROUP_NAME_ID), maps.pack_name(cgroup), spelling))
    attached = maps.PROGRAMS if programs is None else programs
    listed = [{"id": 40 + i, "attach_type": p.attach_type, "attach_flags": "", "name": p.name}
              for i, p in enumerate(attached)]
    return maps.document(maps.PIN_ROOT, cgroup, tables, listed)


def graph_of(doc: Doc, table: bool = True) -> RuleGraph:
    texts = [("doc", json.dumps(doc))] + ([("nft", Path(ENTRY_TABLE).read_text())] if table else [])
    return load_texts(texts)


def without(key: maps.ServiceKey) -> dict[maps.ServiceKey, ServiceEntry]:
    entries = desired()
    del entries[key]
    return entries


def changed(key: maps.ServiceKey, **fields: Any) -> dict[maps.ServiceKey, ServiceEntry]:
    entries = desired()
    entries[key] = replace(entries[key], **fields)
    return entries


def write(tmp_path: Path, doc: Doc) -> str:
    path = tmp_path / "ebpf.json"
    path.write_text(json.dumps(doc))
    return str(path)


def key(ip: str, port: int, protocol: str = "TCP") -> maps.ServiceKey:
    return maps.ServiceKey(ip, port, protocol)


def trace(graph: RuleGraph, src: str, dst: str, port: int, origin: str = "pod", protocol: str = "tcp") -> TraceResult:
    return reader(Mode.EBPF).trace(graph, Packet(src, dst, port, protocol, Origin(origin)), LOCAL)


def odds(result: TraceResult) -> dict[str, float]:
    return {d: round(p, 4) for d, p in result.endpoint_probabilities().items()}


def node_context() -> NodeContext:
    return NodeContext(NODE_NAME, (NODE_IP,), True, (POD_CIDR,), "flag")


def findings(doc: Doc, table: bool = True, selector: ServiceSelector | None = None) -> list[tuple[str, str]]:
    report = reader(Mode.EBPF).verify(graph_of(doc, table), cluster(), node_context(), selector)
    return [(f.kind, f.message) for f in report.findings]


# --- parse ---------------------------------------------------------------------------------


def test_parse_resolves_backends_names_and_the_reserved_entries() -> None:
    state = parse_document(document())
    web = state.family(False).find(WEB, 80, "tcp")
    assert web is not None and web.name == "ns1/web:http/TCP" and web.service_port == "ns1/web:http"
    assert {str(b) for b in web.backends} == WEB_ENDPOINTS and not web.missing_slots
    assert [b.flags for b in web.backends] == [maps.B_LOCAL, 0, 0]
    assert state.marker == maps.LAYOUT_MARKER and state.cgroup == CGROUP
    assert state.programs is not None and len(state.programs) == len(maps.PROGRAMS)
    assert not state.missing_programs()
    assert state.node_addresses() == (NODE_IP,)  # 127.0.0.1's node ports are not a node address
    sticky = state.family(False).find(STICKY, 80, "TCP")
    assert sticky is not None and sticky.affinity_seconds == 10800
    empty = state.family(False).find(EMPTY, 80, "TCP")
    assert empty is not None and empty.reject and empty.backends == ()
    assert not state.family(True).services


def test_bytes_as_ints_or_one_string_read_the_same() -> None:
    hexed = parse_document(document())
    as_ints = parse_document(document(spelling=list))
    as_text = parse_document(document(spelling=lambda raw: " ".join(f"0x{b:02x}" for b in raw)))
    assert hexed.families == as_ints.families == as_text.families


def test_maps_missing_from_the_input_read_as_empty_with_a_note() -> None:
    doc = document()
    del doc["maps"]["affinity4"], doc["maps"]["revnat6"]
    state = parse_document(doc)
    assert state.family(False).find(WEB, 80, "TCP") is not None
    assert "map affinity4 is not in the input: read as empty" in state.notes
    assert "map revnat6 is not in the input: read as empty" in state.notes


def test_a_slot_without_a_backend_is_kept_as_missing() -> None:
    doc = document()
    doc["maps"]["backends4"] = doc["maps"]["backends4"][1:]  # the first slot written
    state = parse_document(doc)
    first = next(r for r in state.family(False).services.values() if r.value.slot_base == 100 and r.value.count)
    assert first.missing_slots == (100,) and len(first.backends) == first.value.count - 1


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["maps"].__setitem__("services4", {"a": 1}), "map services4 is not a list"),
    (lambda d: d["maps"]["services4"][0].pop("value"), "map services4 entry 1: not a"),
    (lambda d: d["maps"]["services4"][0].__setitem__("key", ["0x0a"]), "key of 1 and value of 16 bytes"),
    (lambda d: d["maps"]["backends4"][0].__setitem__("value", ["zz"] * 8), "the value is not bytes"),
    (lambda d: d["programs"].__setitem__(0, {"attach_type": "x"}), '"programs" entry 1: "id" is None'),
    (lambda d: d.__setitem__("version", "one"), '"version" is \'one\''),
])
def test_malformed_documents_are_one_clear_error(mutate: Callable[[Doc], None], message: str) -> None:
    doc = document()
    mutate(doc)
    with pytest.raises(RulesetParseError) as err:
        parse_document(doc, "node1.json")
    assert str(err.value).startswith("node1.json: eBPF document: ") and message in str(err.value)


def test_a_malformed_document_through_the_cli_is_exit_2_without_a_traceback(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    doc = document()
    doc["maps"]["names"] = "oops"
    code, out, err = cli(capsys, "dump", "--rules-file", write(tmp_path, doc))
    assert code == 2 and not out
    assert "eBPF document: map names is not a list" in err and "Traceback" not in err


def test_the_graph_knows_the_mode_and_keeps_the_entry_table_apart() -> None:
    graph = graph_of(document())
    assert graph.mode == Mode.EBPF
    assert set(graph.modes_present()) == {Mode.EBPF}  # the proxyctl-ebpf table is not nftables mode's
    assert "11 eBPF service entries" in graph.modes_present()[Mode.EBPF]
    with pytest.raises(RulesetParseError, match="a second eBPF document"):
        load_texts([("a", json.dumps(document())), ("b", json.dumps(document()))])


# --- trace ---------------------------------------------------------------------------------


def test_a_pod_and_the_node_have_connect_rewritten_to_one_of_three() -> None:
    graph = graph_of(document())
    for src, origin in ((POD, "pod"), (NODE_IP, "node")):
        result = trace(graph, src, WEB, 80, origin)
        assert result.verdict == Verdict.DNAT and result.masquerade is False
        assert odds(result) == {ep: 0.3333 for ep in WEB_ENDPOINTS}
        reasons = {o.reason for o in result.outcomes}
        assert ("connect() to 172.30.0.41:80 is rewritten to 10.0.2.1:8080 (1 of 3, 33 %), no NAT: the socket "
                "was rewritten") in reasons
        assert {s.table for o in result.outcomes for s in o.steps} == {"bpf"}  # no netfilter rule on the way


def test_a_node_port_on_the_node_address_is_rewritten_in_the_socket_too() -> None:
    result = trace(graph_of(document()), POD, NODE_IP, 30080)
    assert result.verdict == Verdict.DNAT and set(odds(result)) == WEB_ENDPOINTS and result.masquerade is False


def test_client_ip_affinity_is_per_pod_network_namespace() -> None:
    result = trace(graph_of(document()), POD, STICKY, 80)
    assert result.affinity_seconds == 10800
    assert odds(result) == {"10.0.2.2:8080": 0.5, "10.0.3.2:8080": 0.5}
    assert any("ClientIP affinity per pod network namespace, 10800 s" in n for n in result.notes)


def test_no_endpoints_makes_connect_fail_at_once() -> None:
    graph = graph_of(document())
    for dst in (EMPTY, "1.2.3.4"):  # the cluster IP and the external IP
        result = trace(graph, POD, dst, 80)
        assert result.verdict == Verdict.REJECT
        assert [o.reason for o in result.outcomes] == [NO_ENDPOINTS]


def test_clients_outside_the_node_go_through_the_entry_point_table() -> None:
    graph = graph_of(document())
    node_port = trace(graph, EXTERNAL, NODE_IP, 30080, "external")
    assert node_port.verdict == Verdict.DNAT and node_port.masquerade is True  # externalTrafficPolicy Cluster
    assert odds(node_port) == {ep: 0.3333 for ep in WEB_ENDPOINTS}
    assert all(s.table == "ip proxyctl-ebpf" for o in node_port.outcomes for s in o.steps)
    assert any("no socket hook runs" in n for n in node_port.notes)
    local = trace(graph, EXTERNAL, "5.6.7.8", 80, "external")  # the LB IP, externalTrafficPolicy Local
    assert odds(local) == {"10.0.1.4:8080": 1.0} and local.masquerade is False
    cluster_ip = trace(graph, EXTERNAL, WEB, 80, "external")  # the table holds no cluster IP
    assert cluster_ip.verdict == Verdict.NONE


def test_without_the_entry_table_the_outside_path_says_so() -> None:
    result = trace(graph_of(document(), table=False), EXTERNAL, NODE_IP, 30080, "external")
    assert result.verdict == Verdict.NONE
    assert any("no nft table ip proxyctl-ebpf in the input" in n for n in result.notes)


def test_a_detached_connect_program_is_named_on_every_trace() -> None:
    rest = [p for p in maps.PROGRAMS if p.name != "pxc_connect4"]
    graph = graph_of(document(programs=rest))
    for dst, port in ((WEB, 80), (STICKY, 80), (EMPTY, 80), (NODE_IP, 30080)):
        result = trace(graph, POD, dst, port)
        assert any("the socket hook is missing: pxc_connect4 (cgroup_inet4_connect) is not attached to "
                   "/sys/fs/cgroup" in n for n in result.notes), result.summary()
        assert result.outcomes[0].steps[0].action == "missing"
    assert trace(graph, POD, WEB, 80).verdict == Verdict.NONE  # nothing rewrites it: it goes on unchanged
    problems = [p.message for p in reader(Mode.EBPF).layout_problems(graph)]
    assert any("the socket hook is missing: pxc_connect4" in m for m in problems)


def test_udp_needs_sendmsg_too() -> None:
    graph = graph_of(document(programs=[p for p in maps.PROGRAMS if p.name != "pxc_sendmsg4"]))
    result = trace(graph, POD, DNS, 53, protocol="udp")
    assert odds(result) == {"10.0.2.5:53": 1.0}
    assert any("pxc_sendmsg4 (cgroup_udp4_sendmsg) is not attached" in n for n in result.notes)


def test_an_address_without_an_entry_goes_on_unchanged_to_the_table() -> None:
    result = trace(graph_of(document()), POD, WEB, 81)
    assert result.verdict == Verdict.NONE
    assert result.outcomes[0].steps[0].rule == "services4 has no entry 172.30.0.41:81/TCP"


def test_a_slot_without_a_backend_is_not_guessed() -> None:
    doc = document()
    first = parse_document(doc).family(False).find(WEB, 80, "TCP")
    assert first is not None
    doc["maps"]["backends4"] = [e for e in doc["maps"]["backends4"]
                                if maps.unpack_slot(maps.entry_bytes(e["key"])) != first.slots[0]]
    result = trace(graph_of(doc), POD, WEB, 80)
    assert result.verdict == Verdict.UNKNOWN and len(odds(result)) == 2


def test_ipv6_entries_are_traced_in_the_ipv6_maps() -> None:
    v6 = key("fd00:30::41", 80)
    entries = desired()
    entries[v6] = replace(entries[key(WEB, 80)], key=v6, backends=(maps.Backend("fd00:10::1", 8080),
                                                                 maps.Backend("fd00:10::2", 8080)))
    graph = graph_of(document(entries))
    assert graph.ebpf is not None and list(graph.ebpf.family(True).services) == [v6]
    result = trace(graph, "fd00:10::99", "fd00:30::41", 80)
    assert odds(result) == {"[fd00:10::1]:8080": 0.5, "[fd00:10::2]:8080": 0.5}
    assert result.outcomes[0].steps[0].chain == "pxc_connect6"
    assert "connect() to [fd00:30::41]:80 is rewritten to [fd00:10::1]:8080 (1 of 2, 50 %)" in result.outcomes[0].reason


# --- verify --------------------------------------------------------------------------------


def test_in_sync() -> None:
    assert findings(document()) == []


def test_a_missing_entry() -> None:
    kinds = findings(document(without(key(WEB, 80))))
    assert kinds == [("missing-service", "ns1/web:http: no entry 172.30.0.41:80/TCP in services4 (ClusterIP): "
                                         "connect() to it is not rewritten")]


def test_a_stale_entry() -> None:
    entries = desired()
    stale = key("172.30.0.99", 80)
    entries[stale] = replace(entries[key(WEB, 80)], key=stale, name="ns9/gone:http/TCP")
    assert findings(document(entries)) == [
        ("stale-service", "services4 still has 172.30.0.99:80/TCP (ns9/gone:http/TCP), which the API does not have: "
                          "connect() to it is still rewritten")]


def test_wrong_backends_are_a_set_difference() -> None:
    web = desired()[key(WEB, 80)]
    moved = (web.backends[0], web.backends[1], maps.Backend("10.0.4.1", 8080))
    kinds = findings(document(changed(key(WEB, 80), backends=moved)))
    assert kinds == [("missing-endpoint", "ns1/web:http: 172.30.0.41:80/TCP does not send connections to endpoint "
                                          "10.0.3.1:8080"),
                     ("extra-endpoint", "ns1/web:http: 172.30.0.41:80/TCP still sends 33.3 % of new connections to "
                                        "10.0.4.1:8080, which is not a usable endpoint in the API")]
    reordered = findings(document(changed(key(WEB, 80), backends=tuple(reversed(web.backends)))))
    assert reordered == []  # slots are bookkeeping


def test_a_backend_twice_gets_twice_the_share() -> None:
    web = desired()[key(WEB, 80)]
    kinds = findings(document(changed(key(WEB, 80), backends=web.backends + web.backends[:1])))
    assert [k for k, _ in kinds] == ["wrong-odds"]


def test_wrong_flags_affinity_and_names() -> None:
    assert findings(document(changed(key(WEB, 80), flags=maps.F_LOCAL))) == [
        ("wrong-flags", "ns1/web:http: 172.30.0.41:80/TCP has flags local-only, the plan says none")]
    assert findings(document(changed(key(STICKY, 80), affinity_seconds=60))) == [
        ("wrong-affinity", "ns2/sticky:http: 172.30.0.42:80/TCP has ClientIP affinity of 60 s, the Service asks "
                           "for ClientIP affinity of 10800 s")]
    named = [k for k, _ in findings(document(changed(key(DNS, 53, "UDP"), name="ns5/dns:other/UDP")))]
    assert named == ["wrong-name"]


def test_detached_programs_and_the_layout_marker() -> None:
    kinds = findings(document(programs=[p for p in maps.PROGRAMS if p.family == 4]))
    assert [k for k, _ in kinds] == ["missing-program"] * 4
    assert kinds[0][1] == "pxc_connect6 (cgroup_inet6_connect) is not attached to /sys/fs/cgroup: no IPv6 connect() " \
                          "to a service is rewritten"
    assert findings(document(marker=None))[0][0] == "layout"
    assert "proxyctl-ebpf layout 0" in findings(document(marker="proxyctl-ebpf layout 0"))[0][1]
    doc = document()
    doc["version"] = 2
    assert [k for k, _ in findings(doc)] == ["layout"]


def test_a_missing_entry_table_is_drift() -> None:
    assert [k for k, _ in findings(document(), table=False)] == ["missing-table"]


def test_the_entry_table_is_checked_like_nftables_mode_checks_its_table() -> None:
    nft = json.loads(Path(ENTRY_TABLE).read_text())
    for obj in nft["nftables"]:
        if obj.get("map", {}).get("name") == "service-ips":
            obj["map"]["elem"] = [e for e in obj["map"]["elem"] if "5.6.7.8" not in json.dumps(e)]
    graph = load_texts([("doc", json.dumps(document())), ("nft", json.dumps(nft))])
    report = reader(Mode.EBPF).verify(graph, cluster(), node_context(), None)
    assert [(f.kind, f.chain) for f in report.findings] == [("missing-element", "service-ips")]
    assert report.findings[0].missing == (
        "add element ip proxyctl-ebpf service-ips { 5.6.7.8 . tcp . 80 : goto external-YXTOEDOO-ns4/lb/tcp/http }",)
    assert report.services_checked == 5 and report.config["ip proxyctl-ebpf"]["cluster_cidrs"] == [POD_CIDR]


def test_a_selector_checks_only_its_service() -> None:
    doc = document(without(key(WEB, 80)), programs=[])
    assert findings(doc, selector=ServiceSelector("ns2", "sticky")) == []
    assert [k for k, _ in findings(doc, selector=ServiceSelector("ns1", "web"))] == ["missing-service"]


def test_verify_through_the_cli(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    good = write(tmp_path, document())
    code, out, _ = cli(capsys, "verify", "--rules-file", good, "--rules-file", ENTRY_TABLE, "--from-file", OBJECTS,
                       *NODE)
    assert code == 0 and out == "In sync: 5 service port(s) on node test-node match the API (ebpf mode).\n"
    bad = write(tmp_path, document(without(key(LB, 80))))
    code, out, _ = cli(capsys, "verify", "--rules-file", bad, "--rules-file", ENTRY_TABLE, "--from-file", OBJECTS,
                       *NODE, "-o", "json")
    report = json.loads(out)
    assert code == 1 and report["backend"] == "ebpf" and not report["in_sync"]
    assert [f["kind"] for f in report["findings"]] == ["missing-service"]


# --- dump ----------------------------------------------------------------------------------


def test_dump_names_every_entry_its_flags_backends_and_the_programs(capsys: pytest.CaptureFixture[str],
                                                                    tmp_path: Path) -> None:
    code, out, _ = cli(capsys, "dump", "--rules-file", write(tmp_path, document()), "--rules-file", ENTRY_TABLE)
    assert code == 0
    lines = out.splitlines()
    assert lines[:3] == ["# --- ebpf ---", "cgroup /sys/fs/cgroup (8 of 8 programs attached)",
                         "  cgroup_inet4_connect pxc_connect4 id 40"]
    assert "  172.30.0.41:80/TCP flags none → 3 backends (slots 105..107)  # ns1/web:http" in lines
    assert "    slot 105: 10.0.1.1:8080 (local)  # ns1/web:http → 10.0.1.1:8080" in lines
    assert "  172.30.0.42:80/TCP flags none, affinity 10800 s → 2 backends (slots 108..109)  # ns2/sticky:http" in lines
    assert "  172.30.0.43:80/TCP flags reject → 0 backends  # ns3/empty:http" in lines
    assert "  192.168.0.2:30080/TCP flags external, node port → 3 backends (slots 115..117)  # ns1/web:http" in lines
    assert "table ip proxyctl-ebpf" in lines and "# --- nftables ---" in lines


def test_dump_records_and_raw(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = write(tmp_path, document())
    code, out, _ = cli(capsys, "dump", "svc/web", "-n", "ns1", "--rules-file", path, "-o", "json")
    records = json.loads(out)
    assert code == 0 and {r["service"] for r in records} == {"ns1/web:http"}
    assert {r["endpoint"] for r in records if r["chain"] == "backends4"} == WEB_ENDPOINTS
    code, out, _ = cli(capsys, "dump", "--rules-file", path, "-o", "json")
    programs = [r["rule"] for r in json.loads(out) if r["chain"] == "cgroup"]
    assert programs[0] == "cgroup_inet4_connect pxc_connect4 id 40" and len(programs) == 8
    code, out, _ = cli(capsys, "dump", "svc/web", "-n", "ns1", "--rules-file", path, "-o", "raw")
    updates = [ln for ln in out.splitlines() if ln.startswith("bpftool map update pinned /sys/fs/bpf/proxyctl/")]
    assert len(updates) == 3 + 9 + 1  # three entries, their nine backends, the name
    services = [ln for ln in updates if "/services4 " in ln]
    raw_keys = {maps.ServiceKey.unpack(bytes.fromhex(ln.split(" key hex ")[1].split(" value ")[0])) for ln in services}
    assert raw_keys == {key(WEB, 80), key(NODE_IP, 30080), key("127.0.0.1", 30080)}


def test_dump_without_names_uses_the_service_objects(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = write(tmp_path, document(named=False))
    code, out, _ = cli(capsys, "dump", "svc/sticky", "-n", "ns2", "--rules-file", path, "--from-file", OBJECTS,
                       "-o", "table", "--no-headers")
    assert code == 0 and len(out.splitlines()) == 3 and all("ns2/sticky:http" in ln for ln in out.splitlines())


# --- explain -------------------------------------------------------------------------------


def test_explain_text(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = write(tmp_path, document())
    code, out, _ = cli(capsys, "explain", "svc/web", "-n", "ns1", "--rules-file", path, "--rules-file", ENTRY_TABLE,
                       *NODE)
    assert code == 0
    assert ("  pod, node → cluster IP 172.30.0.41:80, node port 192.168.0.2:30080 → connect() is rewritten to 1 of 3 "
            "endpoints, 33.3 % each, no NAT: the socket was rewritten") in out
    assert "  external  → node port 192.168.0.2:30080 → 1 of 3 endpoints, 33.3 % each, SNAT to the node" in out
    code, out, _ = cli(capsys, "explain", "svc/empty", "-n", "ns3", "--rules-file", path, "--rules-file", ENTRY_TABLE,
                       *NODE, "--client", "pod")
    assert "pod → cluster IP 172.30.0.43:80, external IP 1.2.3.4:80 → connect() fails with ECONNREFUSED " \
           "(no endpoints)" in out
    code, out, _ = cli(capsys, "explain", "svc/sticky", "-n", "ns2", "--rules-file", path, *NODE, "--rules")
    assert "sticky per pod network namespace for 10800 s" in out
    assert "bpf pxc_connect4: backends4 slot 108: 10.0.2.2:8080" in out


def test_explain_json_keeps_the_report_shape(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = write(tmp_path, document())
    code, out, _ = cli(capsys, "explain", "svc/web", "-n", "ns1", "--rules-file", path, "--rules-file", ENTRY_TABLE,
                       *NODE, "-o", "json")
    doc = json.loads(out)
    assert code == 0 and doc["backend"] == "ebpf" and doc["type"] == "NodePort"
    cluster_ip = doc["ports"][0]["entries"][0]
    pod = next(p for p in cluster_ip["paths"] if p["client"] == "pod")
    assert pod["verdict"] == "DNAT" and pod["masquerade"] is False and pod["affinity_seconds"] is None
    assert {(e["ip"], e["port"], e["probability"]) for e in pod["endpoints"]} == {
        ("10.0.1.1", 8080, 0.333333), ("10.0.2.1", 8080, 0.333333), ("10.0.3.1", 8080, 0.333333)}
    assert pod["rules"][0] == "bpf pxc_connect4: services4 172.30.0.41:80/TCP → ns1/web:http/TCP: 3 backends"
    assert pod["sentence"].endswith("→ connect() is rewritten to 1 of 3 endpoints, 33.3 % each, no NAT: the socket "
                                    "was rewritten")
    outside = next(p for p in cluster_ip["paths"] if p["client"] == "external")
    assert outside["verdict"] == "NONE"


def test_explain_an_address_and_a_pod(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = write(tmp_path, document())
    code, out, _ = cli(capsys, "explain", "192.168.0.2:30044", "--rules-file", path, "--rules-file", ENTRY_TABLE)
    assert code == 0 and out.startswith("192.168.0.2:30044/TCP is ns4/lb port http (node port)\n")
    assert "external  → node port 192.168.0.2:30044 → endpoint 10.0.1.4:8080, no SNAT" in out
    objects = tmp_path / "objects.yaml"
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "client", "namespace": "ns1"},
           "spec": {"nodeName": NODE_NAME}, "status": {"podIP": "10.0.1.77", "podIPs": [{"ip": "10.0.1.77"}]}}
    items = load_objects(OBJECTS) + [pod]
    objects.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    code, out, _ = cli(capsys, "explain", "svc/web", "-n", "ns1", "--from", "pod/client", "--rules-file", path,
                       "--from-file", str(objects), *NODE, "-o", "json")
    doc = json.loads(out)
    sources = {(p["client"], p["source"]) for port in doc["ports"] for e in port["entries"] for p in e["paths"]}
    assert code == 0 and sources == {("pod", "10.0.1.77")}
    assert not any("hairpin" in p["message"] for p in doc["problems"])  # no NAT, so no hairpin either


def test_explain_with_detached_programs_names_the_missing_hook(capsys: pytest.CaptureFixture[str],
                                                                tmp_path: Path) -> None:
    path = write(tmp_path, document(programs=[]))
    code, out, _ = cli(capsys, "explain", "svc/web", "-n", "ns1", "--rules-file", path, "--rules-file", ENTRY_TABLE,
                       *NODE)
    assert code == 0
    assert "error: the socket hook is missing: pxc_connect4 (cgroup_inet4_connect) is not attached to " \
           "/sys/fs/cgroup: connect() to a service is not rewritten" in out
    line = next(ln for ln in out.splitlines() if "→ cluster IP 172.30.0.41:80" in ln)
    assert line.startswith("  pod, node, external → ") and line.endswith("→ no service rule matches: the packet goes "
                                                                          "on unchanged")


def test_explain_without_names_needs_the_objects(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = write(tmp_path, document(named=False))
    code, out, _ = cli(capsys, "explain", "svc/web", "-n", "ns1", "--rules-file", path)
    assert code == 1 and "the eBPF names map is empty or was not read" in out
    code, out, _ = cli(capsys, "explain", "svc/web", "-n", "ns1", "--rules-file", path, "--from-file", OBJECTS, *NODE)
    assert code == 0 and "connect() is rewritten to 1 of 3 endpoints" in out


# --- collecting ----------------------------------------------------------------------------


def ebpf_node(doc: Doc, *, pinned: bool = True, missing: tuple[str, ...] = ()) -> FakeExecutor:
    """A node whose only proxy state is eBPF mode's (`doc`'s maps and programs)."""
    ex = FakeExecutor(default=Result(1, "", "No such file or directory"), missing=set(missing))
    ex.script(["iptables", "-V"], Result(0, "iptables v1.8.9 (nf_tables)\n"))
    ex.script(["iptables-nft-save"], Result(0, ""))
    ex.script(["iptables-legacy-save"], Result(0, ""))
    ex.script(["ip", "-json", "address", "show"], Result(0, "[]"))
    ex.script(["test", "-d", maps.PIN_ROOT], Result(0 if pinned else 1))
    for name, entries in doc["maps"].items():
        ex.script(["bpftool", "-j", "map", "dump", "pinned", f"{maps.PIN_ROOT}/{name}"], Result(0, json.dumps(entries)))
    ex.script(["bpftool", "-j", "cgroup", "show", CGROUP], Result(0, json.dumps(doc["programs"])))
    ex.script(["nft", "-j", "list", "table", "ip", maps.NFT_TABLE], Result(0, Path(ENTRY_TABLE).read_text()))
    return ex


def test_the_collector_reads_every_map_the_cgroup_and_the_entry_table() -> None:
    doc = document()
    ex = ebpf_node(doc)
    found = collect(ex, pinned=(collection(),))
    dumps = [c.argv[-1] for c in ex.calls if c.argv[:4] == ("bpftool", "-j", "map", "dump")]
    assert dumps[0] == f"{maps.PIN_ROOT}/names" and len(dumps) == len(maps.MAPS)
    assert ("bpftool", "-j", "cgroup", "show", CGROUP) in ex.argvs()
    assert [s for s, _ in found.texts] == [f"bpftool -j map dump pinned {maps.PIN_ROOT}/…",
                                           f"nft -j list table ip {maps.NFT_TABLE}"]
    graph = load_texts(found.texts, found.notes)
    assert graph.mode == Mode.EBPF and graph.ebpf is not None
    assert graph.ebpf.families == parse_document(doc).families and not graph.ebpf.missing_programs()


def test_no_pin_directory_is_not_ebpf_mode_and_says_nothing() -> None:
    ex = ebpf_node(document(), pinned=False)
    found = collect(ex, pinned=(collection(),))
    assert found.texts == [] and found.notes == []
    assert not any(c.argv[0] == "bpftool" for c in ex.calls)


def test_without_bpftool_a_note_names_the_package() -> None:
    found = collect(ebpf_node(document(), missing=("bpftool",)), pinned=(collection(),))
    graph = load_texts(found.texts, found.notes)
    assert graph.ebpf is not None and graph.mode == Mode.EBPF
    assert graph.ebpf.notes[0] == (f"bpftool is not installed on the node: the maps under {maps.PIN_ROOT} were not "
                                   "read (install the bpftool package)")


def test_without_test_and_bpftool_nothing_is_said() -> None:
    found = collect(ebpf_node(document(), missing=("test", "bpftool")), pinned=(collection(),))
    assert found.texts == [] and found.notes == []
    doc = document()
    del doc["maps"]["names"]
    ex = ebpf_node(doc, missing=("test",))
    ex.script(["bpftool", "-j", "map", "dump", "pinned", f"{maps.PIN_ROOT}/names"],
              Result(255, '{"error":"bpf obj get (/sys/fs/bpf/proxyctl/names): No such file or directory"}'))
    assert collect(ex, pinned=(collection(),)).texts == []


def test_a_map_bpftool_cannot_read_is_a_note() -> None:
    doc = document()
    del doc["maps"]["revnat6"]
    ex = ebpf_node(doc)
    ex.script(["bpftool", "-j", "map", "dump", "pinned", f"{maps.PIN_ROOT}/revnat6"],
              Result(255, '{"error":"bpf obj get (/sys/fs/bpf/proxyctl): No such file or directory"}'))
    graph = load_texts(collect(ex, pinned=(collection(),)).texts)
    assert graph.ebpf is not None
    assert "map revnat6 was not read: bpf obj get (/sys/fs/bpf/proxyctl): No such file or directory" in graph.ebpf.notes
