"""`endpoints` driven through the CLI with --from-file: output, exit codes, problems."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from clihelpers import cli


DATA = Path(__file__).parent / "data"
SMALL = str(DATA / "small-cluster.yaml")


def test_table_for_one_service(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "endpoints", "svc/nginx", "--from-file", SMALL)
    assert code == 0
    assert out.splitlines() == [
        "SERVICE   PORT       ENDPOINT         READY   SERVING   TERMINATING   NODE    ZONE     POD",
        "nginx     http/TCP   10.244.1.5:80    true    true      false         node1   <none>   nginx-1",
        "nginx     http/TCP   10.244.2.10:80   false   true      true          node2   z2       nginx-2",
    ]
    assert "ConfigMap" in err  # the unknown kind in the file is reported, not fatal


def test_all_namespaces_wide_and_problems(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "endpoints", "-A", "-o", "wide", "--from-file", SMALL)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["NAMESPACE", "SERVICE", "PORT", "ENDPOINT", "READY", "SERVING", "TERMINATING",
                                "NODE", "ZONE", "POD", "HINTS", "SLICE"]
    assert lines[1].split()[:4] == ["default", "manual", "53/UDP", "<none>"]
    assert "zone=z2" in lines[3] and lines[3].endswith("nginx-abc")
    assert "warning: default/manual: has no selector and no EndpointSlices" in err  # problems: stderr
    assert "manual: has no selector" not in out


def test_json_records(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "endpoints", "nginx", "-o", "json", "--from-file", SMALL)
    assert code == 0
    records = json.loads(out)
    assert list(records[0]) == ["namespace", "service", "port_name", "protocol", "ip", "port", "ready",
                                "serving", "terminating", "node", "zone", "pod"]
    assert records[1] == {"namespace": "default", "service": "nginx", "port_name": "http", "protocol": "TCP",
                          "ip": "10.244.2.10", "port": 80, "ready": False, "serving": True, "terminating": True,
                          "node": "node2", "zone": "z2", "pod": "nginx-2"}


def test_yaml_output_parses(capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    code, out, _ = cli(capsys, "endpoints", "nginx", "-o", "yaml", "--from-file", SMALL)
    assert code == 0 and yaml.safe_load(out)[0]["pod"] == "nginx-1"


@pytest.mark.parametrize("args,code,message", [
    (["endpoints", "svc/nope", "--from-file", SMALL], 1, 'error: service "nope" not found in namespace "default"'),
    (["endpoints", "pod/x", "--from-file", SMALL], 2, "only services are supported"),
    (["endpoints", "svc/Bad_Name", "--from-file", SMALL], 2, "not a valid service name"),
    (["endpoints", "--from-file", "/nonexistent.yaml"], 2, "no such file"),
    (["endpoints", "-o", "xml", "--from-file", SMALL], 2, "Invalid value for '-o'"),
    (["endpoints", "nginx", "-A", "--from-file", SMALL], 2, "cannot be combined"),
    (["endpoints", "--request-timeout", "soon", "--from-file", SMALL], 2, "invalid duration"),
    (["endpoints", "--kubeconfig", "/nonexistent/kubeconfig"], 2, "kubeconfig"),
])
def test_bad_input(capsys: pytest.CaptureFixture[str], args: list[str], code: int, message: str) -> None:
    got, out, err = cli(capsys, *args)
    assert got == code
    assert message in err
    assert "Traceback" not in err + out


def test_malformed_yaml_from_stdin(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("kind: Service\n  metadata: [\n"))
    code, _, err = cli(capsys, "endpoints", "--from-file", "-")
    assert code == 2 and "stdin: invalid YAML at line" in err


def test_problems_detected(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("""
kind: List
items:
- kind: Service
  metadata: {name: nopods, namespace: default}
  spec: {clusterIP: 10.96.0.1, selector: {app: ghost}, ports: [{name: http, port: 80}]}
- kind: Service
  metadata: {name: named, namespace: default}
  spec: {clusterIP: 10.96.0.2, selector: {app: web}, ports: [{name: http, port: 80, targetPort: www}]}
- kind: Service
  metadata: {name: unready, namespace: default}
  spec: {clusterIP: 10.96.0.3, selector: {app: web}, ports: [{name: http, port: 80, targetPort: 8080}]}
- kind: EndpointSlice
  metadata: {name: unready-1, namespace: default, labels: {kubernetes.io/service-name: unready}}
  ports: [{name: http, port: 8080}]
  endpoints: [{addresses: [10.0.0.1], conditions: {ready: false}}]
- kind: Pod
  metadata: {name: web-1, namespace: default, labels: {app: web}}
  spec: {containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]}
  status: {podIP: 10.0.0.1, conditions: [{type: Ready, status: "False"}]}
""")
    code, out, err = cli(capsys, "endpoints", "--from-file", str(f))
    assert code == 0
    assert "warning: default/nopods: selector app=ghost matches no pod in namespace default" in err
    assert "targetPort 'www' is a port name, and none of the 1 selected pod(s) declares" in err
    assert "warning: default/unready: selector app=web matches 1 pod(s), none of them ready" in err
    assert "warning: default/unready: port http/TCP: 1 endpoint(s), none ready and none terminating-but-serving" in err
    assert out.splitlines()[0].startswith("SERVICE") and "selector" not in out


def test_no_services(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "endpoints", "-n", "empty", "--from-file", SMALL)
    assert code == 0 and out == "" and "No services found in namespace empty." in err
