"""The deploy/ manifests are consistent with each other and with the `run` command's flags."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import yaml
from apiserver_fixtures import apiserver  # noqa: F401 (a fixture)
from click.testing import CliRunner

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def docs() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for f in sorted(DEPLOY.glob("*.yaml")):
        out.extend(d for d in yaml.safe_load_all(f.read_text()) if d)
    return out


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in docs() if d["kind"] == kind]


def _root() -> click.Context:
    """The root context, so `run` gets the CLI's settings (e.g. -h): click caches a command's
    help option from the first context it sees, and man pages are generated from it later."""
    from kubectl_proxyctl.cli.main import CONTEXT_SETTINGS, cli

    return click.Context(cli, info_name="kubectl proxyctl", **CONTEXT_SETTINGS)  # type: ignore[arg-type]


def test_every_object_is_well_formed() -> None:
    for d in docs():
        assert d.get("apiVersion") and d.get("kind") and d["metadata"].get("name"), d


def test_rbac_grants_what_the_engine_watches() -> None:
    (role,) = by_kind("ClusterRole")
    granted = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
               for v in rule["verbs"]}
    for group, resource in (("", "services"), ("", "nodes"), ("discovery.k8s.io", "endpointslices")):
        for verb in ("list", "watch"):
            assert (group, resource, verb) in granted
    assert ("", "events", "create") in granted
    (binding,) = by_kind("ClusterRoleBinding")
    (sa,) = by_kind("ServiceAccount")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"][0]["name"] == sa["metadata"]["name"]
    assert binding["subjects"][0]["namespace"] == sa["metadata"]["namespace"]


def container() -> dict[str, Any]:
    (ds,) = by_kind("DaemonSet")
    (c,) = ds["spec"]["template"]["spec"]["containers"]
    return c  # type: ignore[no-any-return]


def config_map() -> dict[str, str]:
    (cm,) = [d for d in by_kind("ConfigMap") if d["metadata"]["name"] == "kube-proxy"]
    assert cm["metadata"]["namespace"] == "kube-system"
    return cm["data"]  # type: ignore[no-any-return]


def engine_argv(config_file: Path, node: str = "node1") -> list[str]:
    """The DaemonSet's command line, with $(NODE_NAME) expanded and the config file at `config_file`."""
    c = container()
    config_flag = "--config=" + CONFIG_PATH
    assert config_flag in c["args"]
    return [a.replace("$(NODE_NAME)", node).replace(config_flag, f"--config={config_file}") for a in c["args"]]


CONFIG_PATH = "/var/lib/kube-proxy/config.conf"


def test_daemonset_runs_the_engine_with_valid_flags(tmp_path: Path) -> None:
    (ds,) = by_kind("DaemonSet")
    spec = ds["spec"]["template"]["spec"]
    assert ds["spec"]["selector"]["matchLabels"].items() <= ds["spec"]["template"]["metadata"]["labels"].items()
    assert spec["hostNetwork"] is True
    assert spec["serviceAccountName"] == by_kind("ServiceAccount")[0]["metadata"]["name"]
    c = container()
    caps = c["securityContext"].get("capabilities", {}).get("add", [])
    assert c["securityContext"].get("privileged") or "NET_ADMIN" in caps
    env = {e["name"]: e for e in c["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert c["command"] == ["kubectl-proxyctl"]
    config = tmp_path / "config.conf"
    config.write_text(config_map()["config.conf"])
    args = engine_argv(config)
    assert args[0] == "run"
    from kubectl_proxyctl.cli.commands.run import run

    ctx = run.make_context("run", args[1:], parent=_root())  # raises click.UsageError on a bad flag
    assert ctx.params["node_name"] == "node1"
    effective = CliRunner().invoke(_root().command, [*args, "--write-config-to", "-"], prog_name="kubectl proxyctl")
    assert effective.exit_code == 0, effective.output
    doc = yaml.safe_load(effective.stdout)
    assert doc["hostnameOverride"] == "node1" and doc["clusterCIDR"]
    ports = {p["httpGet"]["port"] for p in (c["livenessProbe"], c["readinessProbe"])}
    assert ports == {int(doc["healthzBindAddress"].rsplit(":", 1)[1])}
    assert c["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert c["readinessProbe"]["httpGet"]["path"] == "/healthz"


def test_daemonset_uses_kube_proxys_configmap_layout() -> None:
    data = config_map()
    assert set(data) == {"config.conf", "kubeconfig.conf"}
    (ds,) = by_kind("DaemonSet")
    spec = ds["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container()["volumeMounts"]}
    mount_dir = str(Path(CONFIG_PATH).parent)
    assert volumes[mounts[mount_dir]]["configMap"]["name"] == "kube-proxy"
    config = yaml.safe_load(data["config.conf"])
    assert (config["apiVersion"], config["kind"]) == ("kubeproxy.config.k8s.io/v1alpha1", "KubeProxyConfiguration")
    assert config["clientConnection"]["kubeconfig"] == f"{mount_dir}/kubeconfig.conf"


def test_a_fresh_node_reaches_the_api_server_without_a_proxy() -> None:
    """Neither the `kubernetes` Service's cluster IP nor cluster DNS works before a proxy runs."""
    (ds,) = by_kind("DaemonSet")
    spec = ds["spec"]["template"]["spec"]
    assert spec["dnsPolicy"] == "Default"  # ClusterFirst* would point at cluster DNS, behind a cluster IP
    assert spec["nodeSelector"] == {"kubernetes.io/os": "linux"}
    kubeconfig = yaml.safe_load(config_map()["kubeconfig.conf"])
    (cluster,) = kubeconfig["clusters"]
    server = cluster["cluster"]["server"]
    assert server == "https://<control-plane>:6443"  # the operator's real endpoint, as kubeadm writes it
    assert cluster["cluster"]["certificate-authority"] == "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
    (user,) = kubeconfig["users"]
    assert user["user"] == {"tokenFile": "/var/run/secrets/kubernetes.io/serviceaccount/token"}
    env = {e["name"] for e in container()["env"]}
    assert not env & {"KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"}


def test_image_tag_is_the_package_version() -> None:
    from kubectl_proxyctl import __version__

    assert container()["image"].rsplit(":", 1)[1] == __version__


def test_daemonset_command_line_programs_what_the_same_flags_do(apiserver: Any, tmp_path: Path) -> None:
    """The DaemonSet's exact command line, its ConfigMap's files pointed at a live API server,
    prints the same `--dry-run` payload as the equivalent flags."""
    from apiserver_fixtures import endpoint_slice, nginx_service, node

    apiserver.create(nginx_service())
    apiserver.create(endpoint_slice("nginx-abc", "nginx", ["10.244.1.2", "10.244.2.2"]))
    apiserver.create(node("node1", "172.18.0.2"))
    token = tmp_path / "token"
    token.write_text(apiserver.token)
    kubeconfig = tmp_path / "kubeconfig.conf"
    kubeconfig.write_text(config_map()["kubeconfig.conf"]
                          .replace("https://<control-plane>:6443", apiserver.url)
                          .replace("/var/run/secrets/kubernetes.io/serviceaccount/ca.crt", str(apiserver.ca_path))
                          .replace("/var/run/secrets/kubernetes.io/serviceaccount/token", str(token)))
    config = tmp_path / "config.conf"
    config.write_text(config_map()["config.conf"].replace(f"{Path(CONFIG_PATH).parent}/kubeconfig.conf",
                                                          str(kubeconfig)))
    doc = yaml.safe_load(config.read_text())
    from_daemonset = proxyctl(*engine_argv(config), "--dry-run")
    from_flags = proxyctl("run", "--dry-run", "--node-name", "node1", "--mode", doc["mode"],
                          "--cluster-cidr", doc["clusterCIDR"], "--kubeconfig", str(apiserver.kubeconfig_path))
    assert from_daemonset.returncode == 0, from_daemonset.stderr
    assert from_flags.returncode == 0, from_flags.stderr
    assert "default/nginx:http" in from_daemonset.stdout
    assert from_daemonset.stdout == from_flags.stdout


def proxyctl(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG" and not k.startswith("PROXYCTL_")}
    return subprocess.run([sys.executable, "-m", "kubectl_proxyctl", *args], capture_output=True, text=True,
                          timeout=60, env=env)


def test_dockerfile_ships_the_kernel_tools_and_the_package() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    for tool in ("iptables", "nftables", "conntrack"):
        assert tool in text
    assert "pip install" in text and 'ENTRYPOINT ["kubectl-proxyctl"]' in text
    assert "pyproject.toml" in text and "COPY man " in text and "COPY completions " in text


def test_bad_flag_would_be_caught() -> None:
    from kubectl_proxyctl.cli.commands.run import run

    try:
        run.make_context("run", ["--no-such-flag"], parent=_root())
    except click.UsageError:
        return
    raise AssertionError("an unknown flag must be rejected")
