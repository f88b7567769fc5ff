"""kubectl's conventions, checked against the lab API server: where the configuration comes
from (a merged $KUBECONFIG list, the global client flags before or after the command), the
list outputs (-o name, jsonpath, custom-columns, --no-headers, --sort-by, -l, -w), one
`error:`/`warning:` prefix for every message, and stdout holding nothing but the output."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from apiserver_fixtures import apiserver, endpoint_slice, nginx_service, service  # noqa: F401
from clihelpers import cli

from kubectl_proxyctl.lab.apiserver.apiserver import APIServer

DATA = Path(__file__).parent / "data"
SMALL = str(DATA / "small-cluster.yaml")
NFT_SAVE = str(DATA / "rules" / "six-services.nft-save.txt")


@pytest.fixture
def cluster(apiserver: APIServer) -> APIServer:  # noqa: F811
    apiserver.create(nginx_service())
    apiserver.create(endpoint_slice("nginx-abc", "nginx", ["10.244.2.2", "10.244.1.2"]))
    apiserver.create(service("web", labels={"app": "web"}, clusterIP="10.96.0.20", selector={"app": "web"}))
    apiserver.create(endpoint_slice("web-1", "web", ["10.244.3.3"]))
    return apiserver


@pytest.fixture
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No kubeconfig anywhere unless a test writes one: HOME is empty, KUBECONFIG unset."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    return home


def kubeconfig(server: APIServer, **changes: Any) -> dict[str, Any]:
    cfg = server.kubeconfig()
    for path, value in changes.items():
        section, field = path.split("__")
        cfg[section][0][section[:-1]][field.replace("_", "-")] = value
    return cfg


def write(path: Path, doc: Any) -> str:
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def ips(out: str) -> list[str]:
    return [line.split()[2] for line in out.splitlines()[1:]]


# --- where the configuration comes from ----------------------------------------------------------

def test_a_kubeconfig_list_is_merged_like_kubectl(capsys: pytest.CaptureFixture[str], cluster: APIServer,
                                                  isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The context and cluster in one file, the user in the other: kubectl merges them."""
    full = cluster.kubeconfig()
    contexts = write(isolated / "contexts.yaml", {**full, "users": []})
    users = write(isolated / "users.yaml", {"apiVersion": "v1", "kind": "Config", "users": full["users"]})
    monkeypatch.setenv("KUBECONFIG", f"{contexts}:{users}")
    code, out, err = cli(capsys, "endpoints", "svc/nginx")
    assert code == 0, err
    assert ips(out) == ["10.244.1.2:80", "10.244.2.2:80"]


def test_the_first_file_wins_on_a_duplicate(capsys: pytest.CaptureFixture[str], cluster: APIServer,
                                            isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good = write(isolated / "good.yaml", cluster.kubeconfig())
    bad_doc = kubeconfig(cluster, users__token="not-the-token")
    bad_doc["current-context"] = "elsewhere"  # the client library's own merger lets the last one win
    bad_doc["contexts"].append({"name": "elsewhere", "context": {"cluster": "nowhere", "user": "nobody"}})
    bad = write(isolated / "bad.yaml", bad_doc)
    monkeypatch.setenv("KUBECONFIG", f"{good}:{bad}")
    code, _, err = cli(capsys, "endpoints", "svc/nginx")
    assert code == 0, err
    monkeypatch.setenv("KUBECONFIG", f"{bad}:{good}")
    code, _, err = cli(capsys, "endpoints", "svc/nginx", "--context", "proxyctl-lab")
    assert code == 3 and "401 Unauthorized" in one_line(err)


def test_missing_files_in_the_list_are_skipped(capsys: pytest.CaptureFixture[str], cluster: APIServer,
                                               isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good = write(isolated / "good.yaml", cluster.kubeconfig())
    monkeypatch.setenv("KUBECONFIG", f"{isolated / 'nope.yaml'}:{good}")
    assert cli(capsys, "endpoints")[0] == 0


def test_flags_alone_need_no_kubeconfig(capsys: pytest.CaptureFixture[str], cluster: APIServer,
                                        isolated: Path) -> None:
    code, out, err = cli(capsys, "endpoints", "svc/nginx", "-s", cluster.url, "--token", cluster.token,
                         "--certificate-authority", str(cluster.ca_path))
    assert code == 0, err
    code, _, err = cli(capsys, "endpoints", "-s", cluster.url, "--token", cluster.token)
    assert code == 3 and "certificate verification failed" in one_line(err)  # no CA: the system's roots
    code, out, err = cli(capsys, "endpoints", "-s", cluster.url, "--token", cluster.token,
                         "--insecure-skip-tls-verify")
    assert code == 0 and err.count("warning:") == len(err.splitlines()) and "Insecure" not in err


def test_without_any_configuration_the_error_says_what_to_pass(capsys: pytest.CaptureFixture[str],
                                                                isolated: Path) -> None:
    code, _, err = cli(capsys, "endpoints")
    assert code == 2 and "pass --kubeconfig, set KUBECONFIG, pass --server" in one_line(err)


def test_a_wrong_token_flag_is_one_line_exit_3(capsys: pytest.CaptureFixture[str], cluster: APIServer) -> None:
    code, out, err = cli(capsys, "endpoints", "--kubeconfig", str(cluster.kubeconfig_path), "--token", "nope")
    assert (code, out) == (3, "")
    assert one_line(err).startswith("error: ") and "401 Unauthorized" in err and "--token" in err


def test_token_before_or_after_the_command_and_after_wins(capsys: pytest.CaptureFixture[str],
                                                          cluster: APIServer) -> None:
    k = str(cluster.kubeconfig_path)
    assert cli(capsys, "--token", "nope", "endpoints", "--kubeconfig", k)[0] == 3
    assert cli(capsys, "--token", cluster.viewer_token, "endpoints", "--kubeconfig", k)[0] == 0
    assert cli(capsys, "--token", "nope", "endpoints", "--kubeconfig", k, "--token", cluster.token)[0] == 0
    assert cli(capsys, "--kubeconfig", k, "--token", "nope", "endpoints")[0] == 3


def test_server_overrides_the_kubeconfig(capsys: pytest.CaptureFixture[str], cluster: APIServer,
                                         tmp_path: Path) -> None:
    k = write(tmp_path / "config", kubeconfig(cluster, clusters__server="https://127.0.0.1:1"))
    assert cli(capsys, "endpoints", "--kubeconfig", k, "--request-timeout", "2s")[0] == 3
    code, out, err = cli(capsys, "-s", cluster.url, "endpoints", "svc/nginx", "--kubeconfig", k)
    assert code == 0, err
    assert ips(out) == ["10.244.1.2:80", "10.244.2.2:80"]


def test_cluster_user_and_context_flags(capsys: pytest.CaptureFixture[str], cluster: APIServer,
                                        tmp_path: Path) -> None:
    cfg = cluster.kubeconfig()
    cfg["clusters"].append({"name": "broken", "cluster": {"server": "https://127.0.0.1:1",
                                                         "certificate-authority": str(cluster.ca_path)}})
    cfg["users"].append({"name": "stranger", "user": {"token": "nope"}})
    cfg["contexts"].append({"name": "mixed", "context": {"cluster": "broken", "user": "stranger",
                                                         "namespace": "kube-system"}})
    cfg["current-context"] = "mixed"
    k = write(tmp_path / "config", cfg)
    fast = ("--kubeconfig", k, "--request-timeout", "2s")
    assert cli(capsys, "endpoints", *fast)[0] == 3
    assert cli(capsys, "endpoints", *fast, "--cluster", "proxyctl-lab")[0] == 3  # still the stranger
    code, out, err = cli(capsys, "endpoints", *fast, "--cluster", "proxyctl-lab", "--user", "proxyctl-lab",
                         "-n", "default")
    assert code == 0 and "nginx" in out, err
    code, _, err = cli(capsys, "endpoints", *fast, "--context", "proxyctl-lab")
    assert code == 0, err
    code, _, err = cli(capsys, "endpoints", *fast, "--cluster", "nope")
    assert code == 2 and "cluster 'nope' (--cluster) not found" in one_line(err)
    code, _, err = cli(capsys, "endpoints", *fast, "--user", "nope")
    assert code == 2 and "user 'nope' (--user) not found" in one_line(err)


def test_the_contexts_namespace_follows_the_context_flag(capsys: pytest.CaptureFixture[str], cluster: APIServer,
                                                         tmp_path: Path) -> None:
    cfg = cluster.kubeconfig()
    cfg["contexts"].append({"name": "system", "context": {"cluster": "proxyctl-lab", "user": "proxyctl-lab",
                                                          "namespace": "kube-system"}})
    k = write(tmp_path / "config", cfg)
    code, _, err = cli(capsys, "--context", "system", "endpoints", "svc/nginx", "--kubeconfig", k)
    assert code == 1 and 'namespace "kube-system"' in err


def test_namespace_and_context_before_the_command_parse(capsys: pytest.CaptureFixture[str]) -> None:
    """kubectl takes -n anywhere: `kubectl proxyctl -n x explain svc/y` is a namespace, not an error."""
    code, out, err = cli(capsys, "-n", "ns4", "explain", "svc/svc4", "--rules-file", NFT_SAVE, "-o", "json")
    assert code == 0, err
    assert json.loads(out)["service"] == "ns4/svc4"
    code, _, err = cli(capsys, "-n", "x", "--context", "c", "--kubeconfig", "/nonexistent", "explain", "svc/y",
                       "--rules-file", NFT_SAVE)
    assert "No such option" not in err and code in (1, 2)


def test_impersonation_reaches_the_server(capsys: pytest.CaptureFixture[str], cluster: APIServer) -> None:
    seen: list[list[tuple[str, str]]] = []
    dispatcher = cluster._dispatcher
    assert dispatcher is not None
    handle = dispatcher.handle

    def recording(req: Any) -> Any:
        seen.append(list(req.headers.items()))
        return handle(req)

    dispatcher.handle = recording  # type: ignore[method-assign]
    code, _, err = cli(capsys, "--as", "alice", "endpoints", "--kubeconfig", str(cluster.kubeconfig_path),
                       "--as-group", "devs", "--as-uid", "42")
    assert code == 0, err
    assert seen and all(("impersonate-user", "alice") in h for h in seen)
    assert all(("impersonate-uid", "42") in h for h in seen)
    assert all(("impersonate-group", "devs") in h for h in seen)


def test_repeated_groups_are_repeated_headers() -> None:
    """One Impersonate-Group header per group (the API server does not split on commas),
    also for the websocket exec, which sends `auth_headers().items()`."""
    from kubernetes.client import Configuration

    from kubectl_proxyctl.kube.client import KubeAPI

    cfg = Configuration()
    cfg.host = "https://127.0.0.1:6443"
    cfg.api_key = {"BearerToken": "Bearer t"}
    api = KubeAPI(cfg, 5.0, "test", {"Impersonate-User": ("alice",), "Impersonate-Group": ("a", "b")})
    lines = [f"{k}: {v}" for k, v in api.auth_headers().items()]  # as remote/podexec.py sends them
    assert lines == ["User-Agent: kubectl-proxyctl", "authorization: Bearer t", "Impersonate-User: alice",
                     "Impersonate-Group: a", "Impersonate-Group: b"]


def test_kubeconfig_impersonation_fields_are_honoured(cluster: APIServer) -> None:
    from kubectl_proxyctl.kube.kubeconfig import ClientOverrides, impersonation

    user = {"as": "bob", "as-groups": ["g1", "g2"], "as-user-extra": {"scopes": ["view"]}}
    assert impersonation(user, ClientOverrides()) == {
        "Impersonate-User": ("bob",), "Impersonate-Group": ("g1", "g2"), "Impersonate-Extra-scopes": ("view",)}
    assert impersonation(user, ClientOverrides(impersonate="carol"))["Impersonate-User"] == ("carol",)


def test_relative_paths_stay_relative_to_their_own_file(capsys: pytest.CaptureFixture[str], cluster: APIServer,
                                                        isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cluster from one directory, the user from another: each relative path is read from
    its own file's directory (client-go's ResolveLocalPaths)."""
    a, b = isolated / "a", isolated / "b"
    a.mkdir()
    b.mkdir()
    (a / "ca.crt").write_bytes(cluster.ca_path.read_bytes())
    (b / "token").write_text(cluster.token)
    cfg = cluster.kubeconfig()
    cfg["clusters"][0]["cluster"] = {"server": cluster.url, "certificate-authority": "ca.crt"}
    first = write(a / "config", {**cfg, "users": []})
    second = write(b / "config", {"users": [{"name": "proxyctl-lab", "user": {"tokenFile": "token"}}]})
    monkeypatch.setenv("KUBECONFIG", f"{first}:{second}")
    monkeypatch.chdir(isolated)
    code, _, err = cli(capsys, "endpoints")
    assert code == 0, err


# --- outputs ---------------------------------------------------------------------------------------

def k(server: APIServer) -> tuple[str, str]:
    return ("--kubeconfig", str(server.kubeconfig_path))


def test_output_name(capsys: pytest.CaptureFixture[str], cluster: APIServer) -> None:
    code, out, _ = cli(capsys, "endpoints", *k(cluster), "-o", "name")
    assert (code, out) == (0, "service/nginx\nservice/web\n")


def test_output_jsonpath(capsys: pytest.CaptureFixture[str], cluster: APIServer) -> None:
    code, out, _ = cli(capsys, "endpoints", *k(cluster), "-o", "jsonpath={.items[*].ip}")
    assert (code, out) == (0, "10.244.1.2 10.244.2.2 10.244.3.3\n")
    template = '{range .items[?(@.service=="nginx")]}{.ip}{"\\t"}{.node}{"\\n"}{end}'
    code, out, _ = cli(capsys, "endpoints", *k(cluster), "-o", f"jsonpath={template}")
    assert out == "10.244.1.2\tnode2\n10.244.2.2\tnode1\n"
    code, out, _ = cli(capsys, "endpoints", "svc/web", *k(cluster), "-o", "jsonpath-as-json={.items[*].port}")
    assert json.loads(out) == [80]


def test_a_bad_template_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "endpoints", "--from-file", SMALL, "-o", "jsonpath={.items[")
    assert (code, out) == (2, "") and err.startswith("error: Invalid value for '-o'")
    code, _, err = cli(capsys, "endpoints", "--from-file", SMALL, "-o", "custom-columns=IP")
    assert code == 2 and "HEADER:JSONPATH" in err


def test_custom_columns_no_headers_and_sort_by(capsys: pytest.CaptureFixture[str], cluster: APIServer) -> None:
    code, out, _ = cli(capsys, "endpoints", *k(cluster), "-o", "custom-columns=SVC:.service,IP:.ip,NODE:node",
                       "--sort-by", "NODE")
    assert out.splitlines() == [
        "SVC     IP           NODE",
        "nginx   10.244.2.2   node1",
        "web     10.244.3.3   node1",
        "nginx   10.244.1.2   node2",
    ]
    code, out, _ = cli(capsys, "endpoints", *k(cluster), "--no-headers", "--sort-by", "{.ip}")
    assert [line.split()[2] for line in out.splitlines()] == ["10.244.1.2:80", "10.244.2.2:80", "10.244.3.3:80"]
    code, out, _ = cli(capsys, "endpoints", *k(cluster), "--sort-by", ".node", "-o", "json")
    assert [r["node"] for r in json.loads(out)] == ["node1", "node1", "node2"]
    code, _, err = cli(capsys, "endpoints", *k(cluster), "--sort-by", "COLOUR")
    assert code == 2 and "no such column" in one_line(err)


def test_label_selector(capsys: pytest.CaptureFixture[str], cluster: APIServer) -> None:
    code, out, _ = cli(capsys, "endpoints", *k(cluster), "-l", "app=web", "-o", "name")
    assert (code, out) == (0, "service/web\n")
    code, out, err = cli(capsys, "endpoints", *k(cluster), "-l", "app=nothing")
    assert (code, out) == (0, "") and "No services found in namespace default matching 'app=nothing'" in err
    code, _, err = cli(capsys, "endpoints", *k(cluster), "-l", "app in (")
    assert code == 2 and one_line(err).startswith("error: -l 'app in ('")
    assert cli(capsys, "endpoints", "svc/web", "-l", "app=web", *k(cluster))[0] == 2


def test_label_selector_on_a_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    objects = [service("a", labels={"tier": "front"}, clusterIP="10.96.0.1"),
               service("b", labels={"tier": "back"}, clusterIP="10.96.0.2")]
    path = write(tmp_path / "objects.yaml", {"kind": "List", "items": objects})
    code, out, _ = cli(capsys, "endpoints", "--from-file", path, "-l", "tier!=back", "-o", "name")
    assert (code, out) == (0, "service/a\n")


def _lines(stream: Any) -> "queue.Queue[str]":
    lines: "queue.Queue[str]" = queue.Queue()

    def pump() -> None:
        for line in stream:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _next(lines: "queue.Queue[str]", timeout: float = 15.0) -> str:
    try:
        return lines.get(timeout=timeout)
    except queue.Empty:
        raise AssertionError("no line from the watch") from None


@pytest.fixture
def watching(cluster: APIServer) -> Iterator[tuple[subprocess.Popen[str], "queue.Queue[str]"]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "kubectl_proxyctl", "endpoints", "-w", "--output-watch-events", *k(cluster)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        yield proc, _lines(proc.stdout)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_watch_prints_a_line_per_change_and_ctrl_c_exits_0(cluster: APIServer, watching: Any) -> None:
    proc, lines = watching
    assert _next(lines).split()[:3] == ["EVENT", "SERVICE", "PORT"]
    first = [_next(lines).split() for _ in range(3)]
    assert [(w[0], w[3]) for w in first] == [("ADDED", "10.244.1.2:80"), ("ADDED", "10.244.2.2:80"),
                                             ("ADDED", "10.244.3.3:80")]
    cluster.create(endpoint_slice("web-2", "web", ["10.244.4.4"]))
    added = _next(lines).split()
    assert added[:4] == ["ADDED", "web", "http/TCP", "10.244.4.4:80"]
    cluster.delete("endpointslices", "web-2")
    assert _next(lines).split()[:4] == ["DELETED", "web", "http/TCP", "10.244.4.4:80"]
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=10) == 0
    assert proc.stderr is not None and proc.stderr.read() == ""


def test_watch_json_events(cluster: APIServer) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "kubectl_proxyctl", "endpoints", "svc/web", "--watch-only", "-o", "json",
         "--output-watch-events", *k(cluster)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        lines = _lines(proc.stdout)
        time.sleep(1.5)  # --watch-only: nothing until a change
        assert lines.empty()
        cluster.create(endpoint_slice("web-2", "web", ["10.244.4.4"]))
        text = ""
        while not text.rstrip().endswith("}") or text.count("{") != text.count("}"):
            text += _next(lines)
        event = json.loads(text)
        assert event["type"] == "ADDED" and event["object"]["ip"] == "10.244.4.4"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_watch_of_an_unreachable_server_fails_in_one_line(capsys: pytest.CaptureFixture[str], cluster: APIServer,
                                                          tmp_path: Path) -> None:
    bad = write(tmp_path / "config", kubeconfig(cluster, users__token="nope"))
    code, out, err = cli(capsys, "endpoints", "-w", "--kubeconfig", bad)
    assert (code, out) == (3, "") and "401" in one_line(err)
    assert cli(capsys, "endpoints", "-w", "--from-file", SMALL)[0] == 2


# --- messages and stdout ---------------------------------------------------------------------------

@pytest.fixture
def noisy_file(tmp_path: Path) -> str:
    """Services with problems, and 30 Deployments nothing here uses."""
    objects = yaml.safe_load((DATA / "small-cluster.yaml").read_text())
    items = objects["items"] if isinstance(objects, dict) and "items" in objects else list(
        yaml.safe_load_all((DATA / "small-cluster.yaml").read_text()))
    items = [i for i in items if isinstance(i, dict)]
    items += [{"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": f"d{i}", "namespace": "default"}}
              for i in range(30)]
    return write(tmp_path / "noisy.yaml", {"kind": "List", "items": items})


def test_thirty_skipped_objects_are_one_warning(capsys: pytest.CaptureFixture[str], noisy_file: str) -> None:
    code, _, err = cli(capsys, "endpoints", "-A", "-o", "json", "--from-file", noisy_file)
    skipping = [ln for ln in err.splitlines() if ln.startswith("warning: skipping")]
    assert code == 0 and len(skipping) == 1, err
    assert "skipping 31 objects of kinds Deployment (30), ConfigMap (1)" in skipping[0]


MACHINE_COMMANDS = [
    ["endpoints", "-A"],
    ["dump", "--rules-file", NFT_SAVE],
    ["verify", "--rules-file", NFT_SAVE, "--node-name", "test-node"],
    ["explain", "svc/svc2", "-n", "ns2", "--rules-file", NFT_SAVE, "--node-name", "test-node"],
]


@pytest.mark.parametrize("fmt", ["json", "yaml", "jsonpath-as-json={..kind}"])
@pytest.mark.parametrize("command", MACHINE_COMMANDS, ids=lambda c: c[0])
def test_stdout_holds_the_output_alone(capsys: pytest.CaptureFixture[str], noisy_file: str, command: list[str],
                                       fmt: str) -> None:
    code, out, err = cli(capsys, *command, "--from-file", noisy_file, "-o", fmt)
    assert code in (0, 1), err
    if fmt == "json" or fmt.startswith("jsonpath-as-json"):
        json.loads(out)
    else:
        yaml.safe_load(out)
    assert all(line.startswith(("warning: ", "error: ")) for line in err.splitlines()), err


def test_the_table_and_its_problems_go_apart(capsys: pytest.CaptureFixture[str], noisy_file: str) -> None:
    code, out, err = cli(capsys, "endpoints", "-A", "--from-file", noisy_file)
    assert code == 0
    assert out.splitlines()[0].split()[0] == "NAMESPACE" and len({len(ln.split()) for ln in out.splitlines()}) <= 2
    assert err and all(line.startswith("warning: ") for line in err.splitlines()), err


def test_usage_errors_use_kubectls_prefix(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "endpoints", "--no-such-flag")
    assert (code, out) == (2, "")
    assert err.splitlines()[0].startswith("error: No such option")
    assert err.splitlines()[1] == "See 'kubectl proxyctl endpoints --help' for usage."


def test_all_namespaces_is_offered_where_it_applies_only(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("explain", "probe"):  # about one Service, or not about namespaces at all
        code, out, _ = cli(capsys, command, "--help")
        assert code == 0 and "--all-namespaces" not in out, command
    for command in ("endpoints", "dump", "verify"):  # every namespace unless a Service is named
        code, out, _ = cli(capsys, command, "--help")
        assert "--all-namespaces" in out, command
    code, _, err = cli(capsys, "verify", "svc/web", "-A", "--rules-file", "/dev/null")
    assert code == 2 and "a service name cannot be combined with -A/--all-namespaces" in err


def test_root_help_names_the_node_engine(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "--help")
    assert code == 0 and "(iptables mode)" not in out and "the node engine" in out
    for flag in ("--as ", "--as-group", "--token", "--server", "--certificate-authority", "--cluster", "--user",
                 "--insecure-skip-tls-verify", "--namespace"):
        assert flag in out, flag


@pytest.fixture
def in_a_pod(cluster: APIServer, isolated: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The service account files and variables a pod has, for the lab API server."""
    from kubernetes.config import incluster_config

    from kubectl_proxyctl.kube import kubeconfig as kc

    account = isolated / "serviceaccount"
    account.mkdir()
    (account / "token").write_text(cluster.token)
    (account / "ca.crt").write_bytes(cluster.ca_path.read_bytes())
    (account / "namespace").write_text("kube-system")
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(account / "token"))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(account / "ca.crt"))
    monkeypatch.setattr(kc, "SERVICE_ACCOUNT_DIR", str(account))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(cluster.port))
    return isolated


def test_in_cluster_comes_last(capsys: pytest.CaptureFixture[str], cluster: APIServer, in_a_pod: Path) -> None:
    code, out, err = cli(capsys, "endpoints", "-n", "default", "-o", "name")
    assert (code, out) == (0, "service/nginx\nservice/web\n"), err
    code, _, err = cli(capsys, "endpoints", "svc/nginx")  # the service account's namespace
    assert code == 1 and 'namespace "kube-system"' in err
    assert cli(capsys, "endpoints", "-n", "default", "--token", "nope")[0] == 3  # flags apply in a pod too
    kube = in_a_pod / ".kube"
    kube.mkdir()
    write(kube / "config", kubeconfig(cluster, users__token="nope"))  # ~/.kube/config comes first
    code, _, err = cli(capsys, "endpoints", "-n", "default")
    assert code == 3 and "401" in one_line(err)


def test_the_all_nodes_table_takes_the_list_outputs() -> None:
    from kubectl_proxyctl.cli.allnodes import NodeVerdict, listing
    from kubectl_proxyctl.modes.base import Mode
    from kubectl_proxyctl.modes.findings import Report
    from kubectl_proxyctl.output import render_listing

    verdicts = [NodeVerdict("node10", "in-sync", 0.1, "pod kube-system/kp-a", Report("node10", Mode.IPTABLES)),
                NodeVerdict("node2", "error", 0.2, error="ssh: connection refused"),
                NodeVerdict("node1", "in-sync", 0.1, "ssh node1", Report("node1", Mode.NFTABLES))]
    counts = {"in-sync": 2, "drift": 0, "error": 1}
    table = render_listing(listing(verdicts, counts, 1.0, footer=False), "table", no_headers=True, sort_by="NODE")
    assert [line.split()[0] for line in table.splitlines()] == ["node1", "node2", "node10"]
    by_mode = render_listing(listing(verdicts, counts, 1.0), "custom-columns=N:.node,M:.report.backend",
                             sort_by="MODE")
    assert by_mode.splitlines() == ["N        M", "node2    <none>", "node10   iptables", "node1    nftables"]
    assert render_listing(listing(verdicts, counts, 1.0), "name") == "node/node10\nnode/node2\nnode/node1\n"
    doc = json.loads(render_listing(listing(verdicts, counts, 1.0), "json", sort_by=".status"))
    assert [n["node"] for n in doc["nodes"]] == ["node2", "node10", "node1"] and doc["summary"]["error"] == 1
    assert render_listing(listing(verdicts, counts, 1.0), "jsonpath={.summary.in_sync}") == "2\n"


def test_the_dump_table_takes_the_list_outputs(capsys: pytest.CaptureFixture[str]) -> None:
    code, table, _ = cli(capsys, "dump", "--rules-file", NFT_SAVE, "-o", "table")
    assert code == 0 and table.splitlines()[0].split() == ["TABLE", "CHAIN", "SERVICE", "ENDPOINT", "RULE"]
    code, bare, _ = cli(capsys, "dump", "--rules-file", NFT_SAVE, "-o", "table", "--no-headers", "--sort-by", "SERVICE")
    assert code == 0 and len(bare.splitlines()) == len(table.splitlines()) - 1
    services = [r["service"] for r in json.loads(cli(capsys, "dump", "--rules-file", NFT_SAVE, "-o", "json",
                                                      "--sort-by", ".service")[1])]
    assert services == sorted(services, key=lambda s: (s is not None, s or ""))
    code, out, _ = cli(capsys, "dump", "svc/svc2", "-n", "ns2", "--rules-file", NFT_SAVE,
                       "-o", "custom-columns=CHAIN:.chain", "--no-headers")
    assert code == 0 and out and all(line.startswith("KUBE-") for line in out.splitlines())
    assert cli(capsys, "dump", "--rules-file", NFT_SAVE, "--sort-by", ".chain")[0] == 2  # -o text is no list
