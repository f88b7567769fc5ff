"""`lab up --apiserver external` without a kernel: the spec, the binaries, the credentials
and the command lines of etcd and kube-apiserver (lab/external.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from kubectl_proxyctl.errors import ConfigError
from kubectl_proxyctl.lab import external
from kubectl_proxyctl.lab.spec import LabSpec
from kubectl_proxyctl.lab.supervisor import KUBECONFIG, KUBECONFIG_VIEWER, LabAPI, load_spec, save_spec


def spec_in(tmp_path: Path) -> LabSpec:
    return LabSpec.build("ext", nodes=2, apiserver="external", state_root=str(tmp_path))


def test_the_choice_of_api_server_is_kept_in_lab_json(tmp_path: Path) -> None:
    spec = spec_in(tmp_path)
    save_spec(spec)
    assert load_spec("ext", str(tmp_path)) == spec
    with pytest.raises(ConfigError, match="--apiserver 'other'"):
        LabSpec.build("ext", apiserver="other")


def test_missing_binaries_are_named_with_the_build_script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("PROXYCTL_KUBE_APISERVER", str(tmp_path / "missing"))
    monkeypatch.delenv("PROXYCTL_ETCD", raising=False)
    with pytest.raises(ConfigError) as failed:
        external.binaries()
    assert "kube-apiserver ($PROXYCTL_KUBE_APISERVER or PATH) and etcd" in str(failed.value)
    assert "tests/reference/build-apiserver" in str(failed.value)
    etcd = tmp_path / "etcd"
    etcd.write_text("#!/bin/sh\n")
    etcd.chmod(0o755)
    monkeypatch.setenv("PROXYCTL_KUBE_APISERVER", str(etcd))
    assert external.binaries() == {"kube-apiserver": str(etcd), "etcd": str(etcd)}


def test_credentials_are_made_once_and_the_kubeconfigs_use_them(tmp_path: Path) -> None:
    spec = spec_in(tmp_path)
    external.prepare(spec)
    api = external.api_dir(spec)
    token = (api / external.TOKEN_FILE).read_text().strip()
    certificate = (api / "apiserver.crt").read_bytes()
    external.prepare(spec)
    assert (api / external.TOKEN_FILE).read_text().strip() == token
    assert (api / "apiserver.crt").read_bytes() == certificate, "a restart must not change what clients hold"
    users = [line.split(",") for line in (api / external.TOKEN_AUTH_FILE).read_text().splitlines()]
    assert users[0][:3] == [token, "admin", "admin"] and users[0][3] == '"system:masters"'
    assert users[1][1] == external.VIEWER_USER
    admin = yaml.safe_load((spec.state_dir / KUBECONFIG).read_text())
    assert admin["clusters"][0]["cluster"]["server"] == "https://172.18.0.1:6443"
    assert admin["users"][0]["user"]["token"] == token
    viewer = yaml.safe_load((spec.state_dir / KUBECONFIG_VIEWER).read_text())
    assert viewer["users"][0]["user"]["token"] == users[1][0]
    assert os.stat(api / external.SA_KEY).st_mode & 0o077 == 0
    LabAPI(spec)  # the `lab` commands find the token and CA where the lab's own server keeps them


def test_kube_apiserver_gets_the_labs_address_ranges_and_etcd(tmp_path: Path) -> None:
    spec = spec_in(tmp_path)
    argv = external.apiserver_argv(spec, "/bin/kube-apiserver")
    for flag in ("--bind-address=172.18.0.1", "--secure-port=6443", "--service-cluster-ip-range=10.96.0.0/12",
                 "--service-node-port-range=30000-32767", f"--etcd-servers={external.ETCD_CLIENT_URL}",
                 "--disable-admission-plugins=ServiceAccount", "--authorization-mode=RBAC"):
        assert flag in argv
    etcd = external.etcd_argv(spec, "/bin/etcd")
    assert etcd[etcd.index("--data-dir") + 1] == str(spec.state_dir / "etcd")
    assert "127.0.0.1" in etcd[etcd.index("--listen-client-urls") + 1]
