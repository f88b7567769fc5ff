"""Node identity: `verify`, `explain` and `dump` resolve the node the rules belong to and check
it against the cluster's Nodes (the API, or `--from-file` when it holds Nodes).

Before: the live node name defaulted to the hostname and was never checked, so inside a lab
node (hostname `vm`) verify judged an externalTrafficPolicy Local Service for a node that does
not exist and reported false drift, and `--node-name nosuchnode` said "In sync".
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
from clihelpers import cli
import yaml

from kubectl_proxyctl.errors import ConfigError
from kubectl_proxyctl.inspect.graph import load_files
from kubectl_proxyctl.inspect.nodeinfo import resolve_node
from kubectl_proxyctl.model import NodeInfo

RULES = Path(__file__).parent / "data" / "rules"
SIX_OBJECTS = str(Path(__file__).parent / "golden" / "upstream-six-services" / "objects.yaml")
NFT_SAVE = str(RULES / "six-services.nft-save.txt")
NODE_IP = "192.168.0.2"  # test-node's InternalIP in SIX_OBJECTS


def one_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# --- an explicit --node-name must name a Node ---------------------------------------------------


@pytest.mark.parametrize("command", [
    ["verify"], ["explain", "svc/svc1", "-n", "ns1"], ["dump"],
])
def test_an_unknown_node_name_is_an_error(capsys: pytest.CaptureFixture[str], command: list[str]) -> None:
    code, out, err = cli(capsys, *command, "--rules-file", NFT_SAVE, "--from-file", SIX_OBJECTS,
                         "--node-name", "nosuchnode")  # verify said "In sync"
    line = one_line(err)
    assert (code, out) == (2, "")
    assert "node 'nosuchnode' (--node-name) is not a Node of the cluster (nodes: test-node)" in line


def test_the_list_of_nodes_is_short(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    objects = list(yaml.safe_load_all(Path(SIX_OBJECTS).read_text()))
    objects += [{"apiVersion": "v1", "kind": "Node", "metadata": {"name": f"worker-{i:02d}"}} for i in range(11)]
    path = tmp_path / "objects.yaml"
    path.write_text(yaml.safe_dump_all(objects))
    code, _, err = cli(capsys, "verify", "--rules-file", NFT_SAVE, "--from-file", str(path), "--node-name", "wrker-03")
    line = one_line(err)
    assert code == 2
    assert "(nodes: test-node, worker-00, worker-01, worker-02, worker-03 and 7 more)" in line


def test_a_known_node_is_fine(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "verify", "--rules-file", NFT_SAVE, "--from-file", SIX_OBJECTS,
                       "--node-name", "Test-Node", "--node-ip", NODE_IP)
    assert code == 0 and out.startswith("In sync: ") and "node test-node" in out


# --- nothing to check against: say nothing, as before ---------------------------------------------


def test_rules_alone_check_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "explain", "svc/svc1", "-n", "ns1", "--rules-file", NFT_SAVE,
                         "--node-name", "nosuchnode", "-o", "json")
    assert code == 0 and json.loads(out)["node"] == "nosuchnode", err


def test_a_file_without_nodes_checks_nothing(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    objects = [o for o in yaml.safe_load_all(Path(SIX_OBJECTS).read_text()) if o["kind"] != "Node"]
    path = tmp_path / "no-nodes.yaml"
    path.write_text(yaml.safe_dump_all(objects))
    code, _, err = cli(capsys, "verify", "--rules-file", NFT_SAVE, "--from-file", str(path),
                       "--node-name", "test-node", "--node-ip", NODE_IP)
    assert code in (0, 1) and "is not a Node" not in err


# --- the live node: hostname, else the Node with this host's address ------------------------------


@pytest.fixture
def live_node(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """A live node whose hostname is `vm` (as inside a lab node) with test-node's address."""
    import kubectl_proxyctl.cli.inspect as inspect_cli

    host: dict[str, Any] = {"name": "vm", "addresses": [NODE_IP, "127.0.0.1"]}
    monkeypatch.setattr(inspect_cli, "default_node_name", lambda: host["name"])
    monkeypatch.setattr(inspect_cli, "read_rules", lambda node, *_args, **_kwargs: (load_files([NFT_SAVE]), list(host["addresses"])))
    yield host


def test_the_live_node_is_found_by_its_address(capsys: pytest.CaptureFixture[str], live_node: dict[str, Any]) -> None:
    code, out, err = cli(capsys, "verify", "--from-file", SIX_OBJECTS)
    # before: verify judged the rules for a node "vm" that does not exist (in a lab node, false
    # drift for ETP Local Services with local endpoints)
    assert code == 0, out + err
    assert out.startswith("In sync: ") and "on node test-node" in out
    code, out, _ = cli(capsys, "explain", "svc/svc2", "-n", "ns2", "--from-file", SIX_OBJECTS, "-o", "json")
    assert code == 0 and json.loads(out)["node"] == "test-node"


def test_an_unknown_live_node_is_an_error(capsys: pytest.CaptureFixture[str], live_node: dict[str, Any]) -> None:
    live_node["addresses"] = ["10.1.2.3"]
    for command in (["verify"], ["explain", "svc/svc1", "-n", "ns1"], ["dump"]):
        code, out, err = cli(capsys, *command, "--from-file", SIX_OBJECTS)
        line = one_line(err)
        assert (code, out) == (2, ""), command
        assert "node 'vm' (this host's name ($NODE_NAME or the hostname)) is not a Node of the cluster" in line
        assert "(nodes: test-node); pass --node-name with one of them" in line


def test_resolve_node_rules() -> None:
    nodes = {n.name: n for n in (
        NodeInfo("node1", (("InternalIP", "172.18.0.2"), ("Hostname", "node1.lab"))),
        NodeInfo("node2", (("InternalIP", "172.18.0.3"),)),
    )}
    assert resolve_node(nodes, "node2", "--node-name") == "node2"
    assert resolve_node(nodes, "vm", "hostname", ["127.0.0.1", "172.18.0.3"]) == "node2"
    assert resolve_node(nodes, "node1.lab", "--node") == "node1"  # an SSH host naming the Node's Hostname
    assert resolve_node(nodes, "172.18.0.2", "--node") == "node1"  # ... or its address
    with pytest.raises(ConfigError, match=r"'vm' \(--node-name\) is not a Node .*nodes: node1, node2"):
        resolve_node(nodes, "vm", "--node-name", ["172.18.0.3"])  # an explicit name is never guessed
    with pytest.raises(ConfigError, match="the cluster has no Nodes"):
        resolve_node({}, "vm", "hostname")
    with pytest.raises(ConfigError):  # ambiguous: two Nodes share the address
        resolve_node({**nodes, "node3": NodeInfo("node3", (("InternalIP", "172.18.0.3"),))}, "vm", "hostname",
                     ["172.18.0.3"])


# --- against the API ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def apiserver() -> Iterator[Any]:
    from kubectl_proxyctl.lab.apiserver.apiserver import APIServer

    srv = APIServer().start()
    try:
        for obj in yaml.safe_load_all(Path(SIX_OBJECTS).read_text()):
            if obj["kind"] == "Node":
                srv.create(obj)
        yield srv
    finally:
        srv.stop()


def test_an_unknown_node_is_checked_against_the_api(apiserver: Any) -> None:
    done = subprocess.run([sys.executable, "-m", "kubectl_proxyctl", "verify", "--rules-file", NFT_SAVE,
                           "--node-name", "nosuchnode", "--kubeconfig", str(apiserver.kubeconfig_path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "node 'nosuchnode' (--node-name) is not a Node of the cluster (nodes: test-node)" in one_line(done.stderr)
