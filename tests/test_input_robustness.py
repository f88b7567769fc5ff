"""No internal errors from input: every input path ends in exit 1, 2 or 3 with one line on stderr.

One regression test per finding: kubeconfigs (malformed YAML, a bare string, exec plugins that
are missing or fail, a wrong token, an expired server certificate), `--from-file` (binary data
on stdin, a `kubectl get -o yaml` List cut short), `run` flags, nft JSON whose rule `expr` is a
string, a Service without a clusterIP field, and `endpoints -o json` over thousands of
Services with problems. The property test over all of these is tests/test_input_fuzz.py.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest
from clihelpers import cli
import yaml

from kubectl_proxyctl.kube.convert import state_from_objects

DATA = Path(__file__).parent / "data"
SMALL = str(DATA / "small-cluster.yaml")


def proxyctl(*args: str, stdin: bytes | None = None, env: dict[str, str] | None = None,
             timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    """The real process: logging unconfigured, stdin a real byte stream (as users run it)."""
    return subprocess.run([sys.executable, "-m", "kubectl_proxyctl", *args], input=stdin, capture_output=True,
                          timeout=timeout, env=env)


def one_error_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, f"want one line on stderr, got {len(lines)}: {err!r}"
    assert lines[0].startswith("error: ") and "Traceback" not in err and "internal error" not in err, err
    return lines[0]


def kubeconfig(server: str = "https://127.0.0.1:1", user: dict[str, Any] | None = None,
               context: str = "prod-eu", ca: bytes | None = None) -> dict[str, Any]:
    cluster: dict[str, Any] = {"server": server}
    if ca is not None:
        cluster["certificate-authority-data"] = base64.b64encode(ca).decode()
    return {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": "u", "user": user if user is not None else {"token": "t"}}],
        "contexts": [{"name": context, "context": {"cluster": "c", "user": "u"}}],
        "current-context": context,
    }


def write(tmp_path: Path, name: str, content: Any) -> str:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content)
    else:
        path.write_text(yaml.safe_dump(content))
    return str(path)


# --- kubeconfig ---------------------------------------------------------------------------------


def test_malformed_kubeconfig_yaml_is_a_config_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = write(tmp_path, "config", "apiVersion: v1\nclusters: [\n  - foo: {\n")  # was: exit 70, ParserError
    code, _, err = cli(capsys, "endpoints", "--kubeconfig", path)
    line = one_error_line(err)
    assert code == 2
    assert f"kubeconfig {path}: invalid YAML at line 3" in line


@pytest.mark.parametrize("content,words", [
    ('"just a string"\n', "holds a string"),  # was: 'str' object does not support item assignment
    ("- a\n- b\n", "holds a list"),
    (b"\xff\xfe\x00binary", "not UTF-8"),
    ({"apiVersion": "v1", "clusters": "c"}, "clusters is a string, not a list"),
    ({**kubeconfig(), "current-context": 5}, "current-context is a number"),
])
def test_kubeconfig_of_the_wrong_shape_is_a_config_error(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                          content: Any, words: str) -> None:
    code, _, err = cli(capsys, "endpoints", "--kubeconfig", write(tmp_path, "config", content))
    assert code == 2
    assert words in one_error_line(err)


def test_wrong_field_types_in_a_kubeconfig_name_the_field(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cfg = kubeconfig()
    cfg["users"][0]["user"]["token"] = ["not", "a", "string"]
    code, _, err = cli(capsys, "endpoints", "--kubeconfig", write(tmp_path, "config", cfg))
    assert code == 2 and "users[0] (u).user.token is a list, not a string" in one_error_line(err)


def test_a_missing_exec_plugin_is_a_config_error_naming_it(tmp_path: Path) -> None:
    cfg = kubeconfig(user={"exec": {"apiVersion": "client.authentication.k8s.io/v1beta1",
                                    "command": "no-such-credential-plugin", "args": ["token"]}})
    done = proxyctl("endpoints", "-A", "--kubeconfig", write(tmp_path, "config", cfg))
    err = done.stderr.decode()
    assert "ERROR:root" not in err  # the kubernetes client's own log line
    line = one_error_line(err)
    assert done.returncode == 2
    assert "exec credential plugin 'no-such-credential-plugin'" in line and "not found on PATH" in line
    assert "context 'prod-eu'" in line


def test_a_failing_exec_plugin_is_a_config_error_with_its_message(tmp_path: Path) -> None:
    plugin = tmp_path / "get-token"
    plugin.write_text("#!/bin/sh\necho 'token expired, run login' >&2\nexit 3\n")
    plugin.chmod(0o755)
    cfg = kubeconfig(user={"exec": {"apiVersion": "client.authentication.k8s.io/v1beta1", "command": "./get-token"}})
    done = proxyctl("endpoints", "-A", "--kubeconfig", write(tmp_path, "config", cfg))
    line = one_error_line(done.stderr.decode())
    assert done.returncode == 2
    assert "exec credential plugin './get-token'" in line and "token expired, run login" in line
    verbose = proxyctl("-v", "endpoints", "-A", "--kubeconfig", write(tmp_path, "config", cfg))
    assert "exec: process returned 3" in verbose.stderr.decode()  # -v shows the library's own words


@pytest.fixture(scope="module")
def apiserver() -> Iterator[Any]:
    from kubectl_proxyctl.lab.apiserver.apiserver import APIServer

    srv = APIServer().start()
    try:
        yield srv
    finally:
        srv.stop()


def test_a_wrong_token_names_the_real_context(apiserver: Any, tmp_path: Path) -> None:
    cfg = yaml.safe_load(apiserver.kubeconfig_path.read_text())
    cfg["users"][0]["user"]["token"] = "not-the-token"
    name = cfg["current-context"]
    done = proxyctl("endpoints", "-A", "--kubeconfig", write(tmp_path, "config", cfg))
    line = one_error_line(done.stderr.decode())
    assert done.returncode == 3
    assert f"of context {name} (" in line and "current-context" not in line


def _expired_tls_server() -> tuple[str, bytes, socket.socket]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "expired-apiserver")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=30)).not_valid_after(now - datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    pem = cert.public_bytes(serialization.Encoding.PEM)
    return pem.decode(), key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()), socket.socket()


def test_an_expired_server_certificate_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    pem, key, sock = _expired_tls_server()
    (tmp_path / "cert.pem").write_text(pem)
    (tmp_path / "key.pem").write_bytes(key)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    sock.settimeout(10)
    server = f"https://127.0.0.1:{sock.getsockname()[1]}"

    def serve() -> None:
        try:
            conn, _ = sock.accept()
            try:
                context.wrap_socket(conn, server_side=True).close()
            except (ssl.SSLError, OSError):
                pass  # the client refuses the certificate: that is the point
            conn.close()
        except OSError:
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        path = write(tmp_path, "config", kubeconfig(server=server, ca=pem.encode()))
        code, _, err = cli(capsys, "endpoints", "--kubeconfig", path, "--request-timeout", "5s")
    finally:
        sock.close()
        thread.join(10)
    line = one_error_line(err)  # was two lines: "...: SSLError" and "[SSL: CERTIFICATE_VERIFY_FAILED] ..."
    assert code == 3
    assert server in line and "certificate has expired" in line and "verification failed" in line


# --- --from-file ------------------------------------------------------------------------------


SOUP = bytes(range(0x80, 0x100)) + b"\x00kind: Service\n"


def test_binary_data_on_stdin_is_a_config_error() -> None:
    done = proxyctl("endpoints", "--from-file", "-", stdin=SOUP)  # was: exit 70, UnicodeEncodeError
    line = one_error_line(done.stderr.decode())
    assert done.returncode == 2 and line.startswith("error: stdin: not UTF-8 text")


def test_binary_data_in_a_named_file_says_the_same(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = write(tmp_path, "soup.bin", SOUP)
    code, _, err = cli(capsys, "endpoints", "--from-file", path)
    assert code == 2 and one_error_line(err).startswith(f"error: {path}: not UTF-8 text (byte 0x80 at offset 0)")


def _kubectl_list_yaml() -> str:
    """What `kubectl get svc,endpointslices -A -o yaml` writes: keys sorted, `kind: List` last."""
    doc = yaml.safe_load(Path(SMALL).read_text())
    doc["items"] = [i for i in doc["items"] if i["kind"] != "ConfigMap"]
    doc["metadata"] = {"resourceVersion": ""}
    return yaml.safe_dump(doc)


def test_a_list_cut_short_is_an_error_naming_file_and_line(capsys: pytest.CaptureFixture[str],
                                                           tmp_path: Path) -> None:
    text = _kubectl_list_yaml()
    assert text.rstrip().endswith("kind: List\nmetadata:\n  resourceVersion: ''")
    lines = text.splitlines(keepends=True)
    path = write(tmp_path, "cluster.yaml", "".join(lines[:25]))  # cut in the middle of the second item
    code, out, err = cli(capsys, "endpoints", "-A", "--from-file", path)  # was: "No services found", exit 0
    line = one_error_line(err)
    assert (code, out) == (2, "")
    assert line.startswith(f"error: {path}:25: ") and "cut short" in line
    full = write(tmp_path, "full.yaml", text)
    assert cli(capsys, "endpoints", "-A", "--from-file", full)[0] == 0


def test_a_list_cut_short_on_stdin_too() -> None:
    text = _kubectl_list_yaml()
    done = proxyctl("endpoints", "-A", "--from-file", "-", stdin=text[: len(text) // 2].encode())
    line = one_error_line(done.stderr.decode())
    assert done.returncode == 2 and line.startswith("error: stdin:") and "cut short" in line


# --- objects ------------------------------------------------------------------------------------


def test_a_service_without_cluster_ip_is_not_headless(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
           "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80}]}}
    service = state_from_objects([svc]).services["default/web"]
    assert not service.proxied
    assert "headless" not in service.skip_reason
    assert "no cluster IP allocated yet" in service.skip_reason and "kube-proxy skips it" in service.skip_reason
    headless = dict(svc, spec={**svc["spec"], "clusterIP": "None"})
    assert state_from_objects([headless]).services["default/web"].skip_reason.startswith("headless")
    code, out, err = cli(capsys, "endpoints", "--from-file", write(tmp_path, "svc.yaml", svc))
    assert code == 0 and "warning: default/web: not proxied by kube-proxy: no cluster IP allocated yet" in err


# --- rules files --------------------------------------------------------------------------------


@pytest.mark.parametrize("rule,words", [
    ({"expr": "abc"}, '"expr" is not a list of statements'),  # was: printed as "a" "b" "c"
    ({"expr": ["match"]}, "statement 0 of \"expr\": not a one-key object"),
    ({"expr": [], "chain": 7}, '"chain" is not a string'),
])
def test_nft_json_with_malformed_rules_is_rejected(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                  rule: dict[str, Any], words: str) -> None:
    doc = {"nftables": [{"table": {"family": "ip", "name": "kube-proxy"}},
                        {"chain": {"family": "ip", "table": "kube-proxy", "name": "services"}},
                        {"rule": {"family": "ip", "table": "kube-proxy", "chain": "services", **rule}}]}
    path = write(tmp_path, "rules.json", json.dumps(doc))
    for command in (["dump"], ["explain", "svc/web"], ["verify", "--node-name", "n1", "--from-file", SMALL]):
        code, out, err = cli(capsys, *command, "--rules-file", path)
        assert code == 2, (command, out, err)
        line = one_error_line(err)
        assert line.startswith(f"error: {path}: not nft JSON: item 2 (rule") and words in line


def test_a_chain_without_a_name_is_rejected(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    doc = {"nftables": [{"chain": {"family": "ip", "table": "kube-proxy"}}]}  # was: KeyError, exit 70
    code, _, err = cli(capsys, "dump", "--rules-file", write(tmp_path, "rules.json", json.dumps(doc)))
    assert code == 2 and 'no "name"' in one_error_line(err)


# --- run flags ----------------------------------------------------------------------------------


@pytest.mark.parametrize("flags,words", [
    (["--node-name", "node1;x"], "--node-name 'node1;x' is not a valid node name"),
    (["--node-name", "node_1"], "is not a valid node name"),
    (["--node-name", "a" * 254], "is not a valid node name"),
    (["--node-name", "node1", "--healthz-bind-address", "1.2.3.4:99999"],
     "--healthz-bind-address: invalid bind address '1.2.3.4:99999': port 99999 out of range"),
    (["--node-name", "node1", "--metrics-bind-address", "127.0.0.1:65536"], "--metrics-bind-address"),
    (["--node-name", "node1", "--metrics-bind-address", "localhost:10249"], "is not an IP address"),
    (["--node-name", "node1", "--healthz-bind-address", "10256"], "want IP:port"),
    (["--node-name", "node1", "--healthz-bind-address", "0.0.0.0:²"], "want IP:port"),
])
def test_run_validates_node_name_and_bind_addresses(capsys: pytest.CaptureFixture[str], flags: list[str],
                                                    words: str) -> None:
    code, out, err = cli(capsys, "run", "--dry-run", "--from-file", SMALL, *flags)
    assert (code, out) == (2, "")
    assert words in one_error_line(err)


def test_run_accepts_valid_node_names_and_addresses(capsys: pytest.CaptureFixture[str]) -> None:
    for flags in (["--node-name", "Node1.Example.COM"], ["--node-name", "n1", "--healthz-bind-address", "[::]:0",
                                                         "--metrics-bind-address", ""]):
        code, out, err = cli(capsys, "run", "--dry-run", "--from-file", SMALL, *flags)
        assert code == 0 and out.startswith("*"), err


def test_explain_rejects_a_node_name_that_is_no_dns_subdomain(capsys: pytest.CaptureFixture[str]) -> None:
    rules = str(DATA / "rules" / "six-services.nft-save.txt")
    code, _, err = cli(capsys, "explain", "svc/svc1", "-n", "ns1", "--rules-file", rules, "--node-name", "a;b")
    assert code == 2 and "--node-name: 'a;b' is not a valid node name" in one_error_line(err)


# --- machine output -----------------------------------------------------------------------------


def test_endpoints_json_keeps_problems_in_the_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    items = [{"apiVersion": "v1", "kind": "Service", "metadata": {"name": f"svc-{i}", "namespace": "default"},
              "spec": {"clusterIP": str(ipaddress.ip_address("10.96.0.0") + i + 1), "selector": {"app": f"a{i}"},
                       "ports": [{"name": "http", "port": 80}]}} for i in range(3000)]
    path = write(tmp_path, "svcs.json", json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    code, out, err = cli(capsys, "endpoints", "-o", "json", "--from-file", path)  # was: 3,000 "error:" lines
    assert code == 0
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: 3000 problem(s) in 3000 service(s) (3000 errors)")
    records = json.loads(out)
    assert len(records) == 3000
    assert all(r["problems"][0]["severity"] == "error" and "no EndpointSlices" in r["problems"][0]["message"]
               for r in records)
    code, out, err = cli(capsys, "endpoints", "-o", "yaml", "--from-file", path)
    assert code == 0 and len(err.splitlines()) == 1 and len(yaml.safe_load(out)) == 3000


def test_endpoints_json_of_a_portless_service_still_carries_its_problems(capsys: pytest.CaptureFixture[str],
                                                                        tmp_path: Path) -> None:
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
           "spec": {"clusterIP": "None"}}
    code, out, err = cli(capsys, "endpoints", "-o", "json", "--from-file", write(tmp_path, "s.yaml", svc))
    (record,) = json.loads(out)
    assert code == 0 and record["port_name"] is None
    assert [p["severity"] for p in record["problems"]] == ["info", "error"]
    assert len(err.splitlines()) == 1


def test_conversion_warnings_are_capped(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    items = [{"kind": "Service", "metadata": {"name": f"svc-{i}"}, "spec": {"clusterIP": "10.96.0.300"}}
             for i in range(500)]
    path = write(tmp_path, "svcs.json", json.dumps({"kind": "List", "items": items}))
    code, _, err = cli(capsys, "endpoints", "-A", "-o", "json", "--from-file", path)
    lines = err.splitlines()
    assert code == 0 and len(lines) == 21 and lines[-1] == "warning: ... and 480 more warnings like these"


def test_objects_of_unused_kinds_are_one_warning(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    items = [{"kind": "ConfigMap", "metadata": {"name": f"cm-{i}"}} for i in range(500)]
    path = write(tmp_path, "cms.json", json.dumps({"kind": "List", "items": items}))
    code, _, err = cli(capsys, "endpoints", "-A", "-o", "json", "--from-file", path)
    assert code == 0 and err == ("warning: skipping 500 objects of kind ConfigMap (ConfigMap cm-0, ConfigMap cm-1, "
                                 "ConfigMap cm-2, …): only Service, EndpointSlice, Node, Pod, ServiceCIDR are used\n")


def test_library_loggers_stay_quiet_without_v(tmp_path: Path) -> None:
    """Our own warnings still print (as before), the libraries' records do not."""
    code = ("import logging, sys\n"
            "from kubectl_proxyctl.cli.main import run\n"
            "class Noisy:\n"
            "    def __init__(self): logging.error('library noise'); logging.getLogger('urllib3').warning('pool')\n"
            "import kubectl_proxyctl.cli.main as m\n"
            "orig = m.cli.main\n"
            "def main(*a, **k):\n"
            "    Noisy(); logging.getLogger('kubectl_proxyctl.x').warning('ours')\n"
            "    return orig(*a, **k)\n"
            "m.cli.main = main\n"
            "sys.exit(run(['--version']))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
    assert done.returncode == 0 and done.stderr == "warning: ours\n"


@pytest.mark.parametrize("args,words", [
    (["-n", "a\nb"], "-n/--namespace: 'a\\nb' is not a valid namespace name"),  # was two lines of "No services"
    (["-n", "Prod"], "'Prod' is not a valid namespace name"),
])
def test_a_namespace_must_be_a_dns_label(capsys: pytest.CaptureFixture[str], args: list[str], words: str) -> None:
    code, _, err = cli(capsys, "endpoints", *args, "--from-file", SMALL)
    assert code == 2 and words in one_error_line(err)


def test_control_characters_from_input_stay_on_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    doc = {"nftables": [{"ru\x0ble\nx": []}]}
    code, _, err = cli(capsys, "dump", "--rules-file", write(tmp_path, "rules.json", json.dumps(doc)))
    assert code == 2 and "not nft JSON: 'ru\\x0ble\\nx' is not an object" in one_error_line(err)
    svc = {"kind": "Service", "metadata": {"name": "web", "namespace": "x\ny"}, "spec": {"clusterIP": "10.0.0.1"}}
    code, _, err = cli(capsys, "endpoints", "-A", "-o", "json", "--from-file", write(tmp_path, "s.yaml", svc))
    assert code == 0 and err == ("warning: skipping invalid Service x\\ny/web: metadata.namespace 'x\\ny' is not "
                                 "a DNS label (a-z, 0-9 and '-', at most 63 characters)\n")
