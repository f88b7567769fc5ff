"""Big inputs are read as streams: the same objects, rules and errors as reading them whole.

* cluster snapshots (kube/snapshot.py): a kubectl List is parsed item by item (YAML) or
  member by member (JSON); `iter_parsed` must give what the whole-text path `_parse_objects`
  gives, and for malformed text the same ConfigError, line numbers included (compared with
  the whole-text path and the compose-based `_cut_line` it replaced);
* `state_from_file` converts objects as they are parsed but holds the conversion warnings
  back until the file is read in full;
* iptables-save text (modes/iptables/parse.py): the lazy parser's shared plans and Matches
  give rules equal to `parse_rule_args`, whatever the shape; inspect/graph.py parses one
  dump where it is in the file, so rule and error line numbers are the file's;
* nft JSON: one decode for telling the format and parsing it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubectl_proxyctl.errors import ConfigError, RulesetParseError
from kubectl_proxyctl.inspect.graph import load_files, load_texts
from kubectl_proxyctl.kube import snapshot
from kubectl_proxyctl.kube.snapshot import iter_parsed, parse_objects, state_from_file
from kubectl_proxyctl.modes.iptables.parse import _Shared, parse, parse_rule_args, split_line
from kubectl_proxyctl.modes.nftables.parse import parse_nft_doc, parse_nft_json

DATA = Path(__file__).parent / "data" / "rules"


# --- snapshots ------------------------------------------------------------------------------


def _objects(n: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node1"},
                                  "status": {"addresses": [{"type": "InternalIP", "address": "172.18.0.2"}]}}]
    for i in range(n):
        out.append({"apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": f"svc-{i}", "namespace": "ns", "annotations": {"note": "a: b\n- c\n"}},
                    "spec": {"clusterIP": f"10.96.0.{i + 1}", "ports": [{"name": "http", "port": 80}]}})
        out.append({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                    "metadata": {"name": f"svc-{i}-x", "namespace": "ns",
                                 "labels": {"kubernetes.io/service-name": f"svc-{i}"}},
                    "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}],
                    "endpoints": [{"addresses": [f"10.1.0.{i + 1}"], "conditions": {"ready": True}}]})
    return out


def kubectl_yaml(n: int = 3, kind: str = "List", items: list[Any] | None = None) -> str:
    """A List as `kubectl get -o yaml` prints it: keys sorted, sequences not indented."""
    doc = {"apiVersion": "v1", "items": _objects(n) if items is None else items, "kind": kind,
           "metadata": {"resourceVersion": ""}}
    return yaml.safe_dump(doc, default_flow_style=False, sort_keys=True)


def kubectl_json(n: int = 3, kind: str = "List", items: list[Any] | None = None) -> str:
    doc = {"apiVersion": "v1", "items": _objects(n) if items is None else items, "kind": kind,
           "metadata": {"resourceVersion": ""}}
    return json.dumps(doc, indent=4) + "\n"


def _old_cut_line(text: str) -> int:
    """The whole-text `_cut_line` that composed every node (the reference for the events one)."""
    last = max(1, text.count("\n") + (0 if text.endswith("\n") else 1))
    try:
        for node in yaml.compose_all(text, Loader=yaml.SafeLoader):
            if isinstance(node, yaml.MappingNode):
                keys = {k.value for k, _ in node.value if isinstance(k, yaml.ScalarNode)}
                kinds = [v.value for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == "kind"]
                if ("items" in keys and not (kinds and str(kinds[0]).endswith("List"))) or \
                        ("apiVersion" in keys and not kinds):
                    mark = node.end_mark
                    return min(last, mark.line + (1 if mark.column else 0)) or last
    except yaml.YAMLError:
        pass
    return last


def whole(text: str, source: str = "f.yaml") -> list[dict[str, Any]] | str:
    """The whole-text path (parse everything, then flatten): its objects, or its error."""
    try:
        return snapshot._parse_objects(text, source)
    except snapshot._CutShort as exc:
        return f"{source}:{_old_cut_line(text)}: the file looks cut short: {exc}; save it again"
    except snapshot._NotAnObject as exc:
        return f"{source}: {exc}"
    except RecursionError:
        return f"{source}: nested too deeply to be Kubernetes objects"
    except ConfigError as exc:
        return str(exc)


def streamed(text: str, source: str = "f.yaml") -> list[dict[str, Any]] | str:
    try:
        return list(iter_parsed(text, source))
    except ConfigError as exc:
        return str(exc)


GOOD = {
    "kubectl yaml": kubectl_yaml(),
    "kubectl json": kubectl_json(),
    "typed list yaml": kubectl_yaml(2, "ServiceList", [{"metadata": {"name": "a"}}, {"metadata": {"name": "b"}}]),
    "typed list json": kubectl_json(2, "ServiceList", [{"metadata": {"name": "a"}}, None, {"metadata": {"name": "b"}}]),
    "json: typed items after kinded ones": kubectl_json(
        1, "ServiceList", [{"kind": "Node", "metadata": {"name": "n"}}, {"metadata": {"name": "b"}}]),
    "nested lists": kubectl_yaml(1, "List", [{"apiVersion": "v1", "kind": "List",
                                             "items": [{"kind": "Node", "metadata": {"name": "n"}}]},
                                            {"kind": "EndpointSliceList", "items": [{"metadata": {"name": "s"}}]}]),
    "stream of documents": "---\n" + "---\n".join(yaml.safe_dump(o) for o in _objects(2)) + "---\n",
    "stream with a list": yaml.safe_dump(_objects(1)[0]) + "---\n" + kubectl_yaml(2) + "...\n",
    "indented items": yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": _objects(2)}, indent=4),
    "comments between items": kubectl_yaml(2).replace("\n- ", "\n# a comment\n\n- "),
    "json with extra members": json.dumps({"kind": "List", "apiVersion": "v1", "items": _objects(2),
                                           "metadata": {"x": [1, 2]}}),
    "empty list": "apiVersion: v1\nitems: []\nkind: List\n",
    "empty json list": '{"apiVersion": "v1", "items": [], "kind": "List"}',
    "one object": yaml.safe_dump(_objects(1)[1]),
    "top-level yaml list": yaml.safe_dump(_objects(2)),
    "top-level json list": json.dumps(_objects(2)),
    "json duplicate member": '{"kind": "Service", "metadata": {"name": "a"}, "kind": "Node"}',
    "crlf": kubectl_yaml(2).replace("\n", "\r\n"),
}


@pytest.mark.parametrize("name", sorted(GOOD))
def test_streaming_gives_the_objects_of_the_whole_text(name: str) -> None:
    text = GOOD[name]
    expected = whole(text)
    assert not isinstance(expected, str), expected
    assert streamed(text) == expected
    assert parse_objects(text, "f.yaml") == expected


def _cut_at(text: str, fraction: float) -> str:
    lines = text.splitlines(keepends=True)
    return "".join(lines[: max(1, int(len(lines) * fraction))])


BAD = {
    "cut between items": _cut_at(kubectl_yaml(4), 0.5),
    "cut in an item": _cut_at(kubectl_yaml(4), 0.63),
    "cut in a quoted value": kubectl_yaml(2)[: kubectl_yaml(2).index("a: b") + 2],
    "cut after the items": kubectl_yaml(2).split("kind: List")[0],
    "bad indent in an item": kubectl_yaml(3).replace("    name: svc-1\n", "    name: svc-1\n   bad: indent\n"),
    "a tab in an item": kubectl_yaml(3).replace("    name: svc-1\n", "\tname: svc-1\n"),
    "a scalar item": kubectl_yaml(1, "List", [{"kind": "Node", "metadata": {"name": "n"}}, 7]),
    "a scalar item, then bad yaml": kubectl_yaml(1, "List", [7, {"kind": "Node"}]) + "key: [unclosed\n",
    "apiVersion without kind": "apiVersion: v1\nmetadata:\n  name: x\n",
    "cut short, then bad yaml": _cut_at(kubectl_yaml(2), 0.5) + "---\nkey: [unclosed\n",
    "cut short document, then a good one": _cut_at(kubectl_yaml(2), 0.5) + "---\n" + kubectl_yaml(1),
    "duplicate key in an item": kubectl_yaml(2).replace("    name: svc-1\n", "    name: svc-1\n    name: again\n"),
    "anchor used in another item": kubectl_yaml(2).replace("  kind: Node\n", "  kind: &k Node\n", 1)
    .replace("  kind: Service\n", "  kind: *k\n", 1),
    "json cut short": kubectl_json(3)[:-400],
    "json trailing garbage": kubectl_json(1) + "x",
    "json missing comma": kubectl_json(2).replace('"kind": "Service",', '"kind": "Service"', 1),
    "json scalar item": kubectl_json(1, "List", [{"kind": "Node", "metadata": {"name": "n"}}, 7]),
    "json scalar item, then bad json": kubectl_json(1, "List", [7, {"kind": "Node"}])[:-3],
    "json list without kind": json.dumps({"apiVersion": "v1", "items": [{"kind": "Node"}]}),
    "json items not a list": '{"kind": "List", "items": {"a": 1}}',
    "json that is yaml": '{"kind": "List", "items": [{"kind": "Node", "metadata": {"name": "n"},},],}',
    "nested too deeply": "[" * 5000 + "]" * 5000,
    "nested too deeply in yaml": "items:\n- " + "[" * 5000 + "]" * 5000 + "\nkind: List\n",
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_streaming_gives_the_errors_of_the_whole_text(name: str) -> None:
    text = BAD[name]
    expected = whole(text)
    assert streamed(text) == expected
    if isinstance(expected, str):
        with pytest.raises(ConfigError) as err:
            parse_objects(text, "f.yaml")
        assert str(err.value) == expected


def test_the_cut_line_is_the_one_composing_found() -> None:
    for n in range(1, 40):
        text = _cut_at(kubectl_yaml(3), n / 40)
        assert snapshot._cut_line(text) == _old_cut_line(text), n
    for text in ("apiVersion: v1\nkind: &a List\nitems: []\n---\nitems: [1]\nkind: *a\n",
                 "items: []\nkind: {a: List}\n", "? [a]\n: 1\nitems: []\n", "items: *nope\n"):
        assert snapshot._cut_line(text) == _old_cut_line(text), text


def test_a_cut_list_names_the_line(tmp_path: Path) -> None:
    text = kubectl_yaml(4)
    lines = text.splitlines(keepends=True)
    path = tmp_path / "cluster.yaml"
    path.write_text("".join(lines[:30]))
    with pytest.raises(ConfigError, match=rf"^{path}:30: the file looks cut short"):
        list(snapshot.iter_objects(str(path)))


def test_state_from_file_warns_only_for_a_good_file(tmp_path: Path) -> None:
    items = _objects(2) + [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}]
    good = tmp_path / "good.yaml"
    good.write_text(kubectl_yaml(items=items))
    said: list[str] = []
    state = state_from_file(str(good), said.append)
    assert sorted(state.services) == ["ns/svc-0", "ns/svc-1"] and len(said) == 1 and "ConfigMap" in said[0]
    bad = tmp_path / "bad.yaml"
    bad.write_text(kubectl_yaml(items=items).split("kind: List")[0])  # cut after the items
    said.clear()
    with pytest.raises(ConfigError, match="cut short"):
        state_from_file(str(bad), said.append)
    assert said == []  # the ConfigMap's warning is not said for a file that is no good


def test_one_service_from_a_file_only_converts_its_objects(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(kubectl_json(5))
    state = state_from_file(str(path), lambda _m: None,
                            lambda o: o.get("kind") == "Node" or o["metadata"].get("name", "").startswith("svc-3"))
    assert list(state.services) == ["ns/svc-3"] and list(state.nodes) == ["node1"]


# --- iptables -----------------------------------------------------------------------------------

RULES = [
    "-s 10.1.0.1/32 -j KUBE-MARK-MASQ",
    "-p tcp -m tcp -j DNAT --to-destination 10.1.0.1:8080",
    "-p udp -m udp -j DNAT --to-destination 10.1.0.2:53",
    "-d 10.96.0.1/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-AAAA",
    "-d 10.96.0.2/32 -p udp -m udp --dport 80 -j KUBE-SVC-BBBB",
    "-d 10.96.0.3/32 -p sctp -m sctp --dport 80 -j KUBE-SVC-CCCC",
    "-d 10.96.0.3/32 -p TCP -m multiport --dport 80 -j KUBE-SVC-CCCC",
    "-d 10.96.0.3/32 -p tcp -m u32 --dport 80 -j KUBE-SVC-CCCC",
    "-p tcp -m comment --comment x -m tcp --dport 30000 -j KUBE-EXT-X",
    "-p tcp -m comment --comment x -m udp --dport 30000 -j KUBE-EXT-X",
    '-m comment --comment "ns/svc:http cluster IP" -m tcp -p tcp --dport 80 -j KUBE-SVC-X',
    '-m comment --comment "a \\"quoted\\" word" -j RETURN',
    "-m statistic --mode random --probability 0.20000000000 -j KUBE-SEP-X",
    "-m statistic --mode random --probability -0.5 -j KUBE-SEP-X",
    "-m recent --rcheck --seconds 10800 --reap --name KUBE-SEP-X --mask 255.255.255.255 --rsource -j KUBE-SEP-X",
    "! -s 10.244.0.0/16 -d 10.96.0.1/32 -j KUBE-MARK-MASQ",
    "-m mark ! --mark 0x4000/0x4000 -j RETURN",
    "-j MARK --set-xmark 0x4000/0x0",
    "-m addrtype --dst-type LOCAL -j KUBE-NODEPORTS",
    "-m conntrack --ctstate INVALID -j DROP",
    "-m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT",
    "-p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -j ACCEPT",
    "-j MASQUERADE --random-fully",
    "-f -j DROP",
    "-g KUBE-SEP-X",
    "",
]


def test_shared_plans_give_the_rules_parse_rule_args_gives() -> None:
    shared = _Shared()
    for _ in range(2):  # the second round uses the plans the first one made
        for n, rest in enumerate(RULES):
            got = shared.rule("nat", "C", rest, n)
            want = parse_rule_args("nat", "C", split_line(rest), rest, n)
            assert got == want, rest
            assert got.key() == want.key()


@pytest.mark.parametrize("rest,error", [("-p", "-p needs a value"), ("-s 1.2.3.4 oops", "unexpected word 'oops'"),
                                        ("-m", "-m needs a module name"), ('-m comment --comment "open',
                                                                           "unterminated quote")])
def test_shared_plans_raise_what_parse_rule_args_raises(rest: str, error: str) -> None:
    shared = _Shared()
    shared.rule("nat", "C", "-s 1.2.3.4 -j X", 1)
    with pytest.raises(ValueError, match=error):
        shared.rule("nat", "C", rest, 1)


def _dump(header: bool = True) -> str:
    lines = ["# Generated by iptables-save v1.8.9 on today"] if header else []
    lines += ["*filter", ":INPUT ACCEPT [0:0]", ":KUBE-FIREWALL - [0:0]", "-A INPUT -j KUBE-FIREWALL", "COMMIT",
              "# Completed", "*nat", ":PREROUTING ACCEPT [0:0]", ":KUBE-SERVICES - [0:0]", ":KUBE-SVC-A - [0:0]",
              ":KUBE-SEP-1 - [0:0]", "-A PREROUTING -j KUBE-SERVICES"]
    lines += [f"-A KUBE-SERVICES -d 10.96.0.{i}/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-A" for i in range(40)]
    lines += ["-A KUBE-SVC-A -j KUBE-SEP-1", "-A KUBE-SEP-1 -p tcp -m tcp -j DNAT --to-destination 10.1.0.1:80",
              "COMMIT"]
    return "\n".join(lines) + "\n"


def test_lazy_rules_equal_full_rules_with_the_file_line_numbers() -> None:
    text = _dump()
    graph = load_texts([("f.rules", text)])
    lazy, full = graph.ruleset, parse(text)
    assert lazy is not None
    lines = text.splitlines()
    for table in ("filter", "nat"):
        assert lazy.chains(table) == full.chains(table)
        for chain in lazy.chains(table):
            got, want = lazy.chain(table, chain), full.chain(table, chain)
            assert got is not None and want is not None
            assert got.rules == want.rules  # the whole Rule, its line number included
            for rule in got.rules:
                assert lines[rule.line - 1] == str(rule)
    # candidates and single rules read before the chain is read in full stay the same objects
    rs = load_texts([("f.rules", text)]).ruleset
    assert rs is not None
    found = rs.candidates("nat", "KUBE-SERVICES", "10.96.0.7")
    assert found is not None and [r.line for _, r in found] == [lines.index(str(found[0][1])) + 1]
    assert rs.chain("nat", "KUBE-SERVICES").rules[7] is found[0][1]  # type: ignore[union-attr]


def test_a_bad_rule_names_its_line_in_the_file(tmp_path: Path) -> None:
    for header in (True, False):
        text = _dump(header).replace("-A KUBE-SVC-A -j KUBE-SEP-1", '-A KUBE-SVC-A -m comment --comment "open')
        number = text.splitlines().index('-A KUBE-SVC-A -m comment --comment "open') + 1
        path = tmp_path / "f.rules"
        path.write_text(text)
        rs = load_files([str(path)]).ruleset
        assert rs is not None
        with pytest.raises(RulesetParseError, match=rf"^{path}:{number}: bad rule: unterminated quote"):
            rs.chain("nat", "KUBE-SVC-A")
        # restore input (the full parser) says the same line
        restore = text.replace(":KUBE-SEP-1 - [0:0]", ":KUBE-SEP-1 - [0:0]\n-X KUBE-OLD").replace("\n-X", "\n-N X\n-X", 1)
        path.write_text(restore)
        number = restore.splitlines().index('-A KUBE-SVC-A -m comment --comment "open') + 1
        with pytest.raises(RulesetParseError, match=rf"^{path}:{number}: unterminated quote"):
            _ = load_files([str(path)]).ruleset


def test_blocks_among_other_outputs_keep_their_lines(tmp_path: Path) -> None:
    text = _dump() + "create KUBE-CLUSTER-IP hash:ip,port family inet\nadd KUBE-CLUSTER-IP 10.96.0.1,tcp:80\n"
    text = "# iptables and ipset\n" + text + _dump().replace("iptables-save v1.8.9", "iptables-nft-save v1.8.9 (nf_tables)")
    path = tmp_path / "node.txt"
    path.write_bytes(text.replace("\n", "\r\n").encode())  # read like a text file: universal newlines
    graph = load_files([str(path)])
    lines = text.splitlines()
    assert [d.backend for d in graph.iptables] == ["legacy", "nft"] and graph.ipsets
    for dump in graph.iptables:
        for rule in dump.ruleset.chain("nat", "KUBE-SEP-1").rules:  # type: ignore[union-attr]
            assert lines[rule.line - 1] == str(rule)


# --- nft --------------------------------------------------------------------------------------


def test_nft_json_is_decoded_once_and_parsed_the_same() -> None:
    text = (DATA / "kube-proxy.nft.json").read_text()
    assert parse_nft_doc(json.loads(text), "f") == parse_nft_json(text, "f")
    graph = load_texts([("f", "\n\n" + text + "\n")])
    assert graph.nft == parse_nft_json(text, "f")
    with pytest.raises(RulesetParseError, match="^f: not nft JSON"):
        parse_nft_doc({"nftables": [{"rule": {"expr": 3}}]}, "f")
