"""The deploy/ manifests are consistent with each other and with the `run` command's flags."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import yaml

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


def test_daemonset_runs_the_engine_with_valid_flags() -> None:
    (ds,) = by_kind("DaemonSet")
    spec = ds["spec"]["template"]["spec"]
    assert ds["spec"]["selector"]["matchLabels"].items() <= ds["spec"]["template"]["metadata"]["labels"].items()
    assert spec["hostNetwork"] is True
    assert spec["serviceAccountName"] == by_kind("ServiceAccount")[0]["metadata"]["name"]
    (container,) = spec["containers"]
    caps = container["securityContext"].get("capabilities", {}).get("add", [])
    assert container["securityContext"].get("privileged") or "NET_ADMIN" in caps
    env = {e["name"]: e for e in container["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert container["command"] == ["kubectl-proxyctl"]
    args = [a.replace("$(NODE_NAME)", "node1") for a in container["args"]]
    assert args[0] == "run"
    from kubectl_proxyctl.cli.commands.run import run

    ctx = run.make_context("run", args[1:], parent=_root())  # raises click.UsageError on a bad flag
    assert ctx.params["node_name"] == "node1"
    ports = {p["httpGet"]["port"] for p in (container["livenessProbe"], container["readinessProbe"])}
    assert ports == {int(ctx.params["healthz_bind_address"].rsplit(":", 1)[1])}
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"


def test_dockerfile_ships_the_kernel_tools_and_the_package() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    for tool in ("iptables", "nftables", "conntrack"):
        assert tool in text
    assert "pip install" in text and 'ENTRYPOINT ["kubectl-proxyctl"]' in text


def test_bad_flag_would_be_caught() -> None:
    from kubectl_proxyctl.cli.commands.run import run

    try:
        run.make_context("run", ["--no-such-flag"], parent=_root())
    except click.UsageError:
        return
    raise AssertionError("an unknown flag must be rejected")
