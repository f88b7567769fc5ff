"""A lab on the upstream API server: etcd and kube-apiserver in place of the lab's own.

With `lab up --apiserver external` the supervisor runs two more processes, in the root
namespace, with their logs in `<state>/logs`:

* **etcd**, on 127.0.0.1:12379 (peer port 12380, both loopback only), its data in
  `<state>/etcd`, so a restarted kube-apiserver finds every object and resourceVersion;
* **kube-apiserver**, on the lab's address (172.18.0.1:6443) like the lab's own server,
  with the lab's Service CIDR and NodePort range, so it allocates ClusterIPs and NodePorts
  itself (the lab's allocators do not run).

Credentials are made once, before either starts (`prepare`), in `<state>/api`, with the
names the lab's own server uses, so the `lab` commands (`LabAPI`), the kubeconfigs and the
engines do not know which server answers: the lab's CA and a serving certificate for the
lab's address (`certs.py`), the admin token (user `admin` in `system:masters`) and the
viewer token (user `lab-viewer`, allowed get, list and watch by a ClusterRole the external
controllers create), both in kube-apiserver's `--token-auth-file`, and a service-account
signing key pair, which kube-apiserver requires even though no token is ever issued.

Admission: every default plugin except ServiceAccount, which would reject pods until a
token controller had made each namespace's `default` ServiceAccount; the lab runs no
kube-controller-manager. Authorization is RBAC, so the viewer gets kube-apiserver's own
403s.

The binaries come from `$PROXYCTL_KUBE_APISERVER` and `$PROXYCTL_ETCD`, else from PATH;
`tests/reference/build-apiserver` builds both (Go needed; nothing of the product needs it).
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path
from typing import Any

from kubectl_proxyctl.errors import ConfigError
from kubectl_proxyctl.lab.controllers.external import VIEWER_USER
from kubectl_proxyctl.lab.spec import LabSpec

ETCD_CLIENT_URL = "http://127.0.0.1:12379"
ETCD_PEER_URL = "http://127.0.0.1:12380"
TOKEN_FILE = "token"  # the names the lab's own API server uses for its credentials
VIEWER_TOKEN_FILE = "viewer-token"
TOKEN_AUTH_FILE = "tokens.csv"
SA_KEY = "service-account.key"
SA_PUB = "service-account.pub"
ADMIN_USER = "admin"
CONTEXT_NAME = "proxyctl-lab"
VIEWER_CONTEXT_NAME = "proxyctl-lab-viewer"
BINARIES = (("kube-apiserver", "PROXYCTL_KUBE_APISERVER"), ("etcd", "PROXYCTL_ETCD"))
BUILD_SCRIPT = "tests/reference/build-apiserver"


def binaries() -> dict[str, str]:
    """The kube-apiserver and etcd to run (absolute paths), from their environment variables
    or PATH; a ConfigError naming what is missing and how to build it otherwise."""
    found: dict[str, str] = {}
    missing = []
    for name, variable in BINARIES:
        given = os.environ.get(variable)
        path = given if given and os.access(given, os.X_OK) else shutil.which(name)
        if path is None:
            missing.append(f"{name} (${variable} or PATH)")
        else:
            found[name] = os.path.abspath(path)
    if missing:
        raise ConfigError(f"--apiserver external needs {' and '.join(missing)}: build them with "
                          f"{BUILD_SCRIPT} (needs Go) and put them on PATH or set "
                          f"{' and '.join('$' + v for _, v in BINARIES)}")
    return found


def api_dir(spec: LabSpec) -> Path:
    from kubectl_proxyctl.lab.supervisor import API_DIR

    return spec.state_dir / API_DIR


def _token(directory: Path, name: str) -> str:
    """The token kept in `directory/name`, made once."""
    from kubectl_proxyctl.lab.supervisor import write_private

    path = directory / name
    if path.exists():
        return path.read_text().strip()
    token = secrets.token_urlsafe(32)
    write_private(path, token + "\n")
    return token


def _service_account_keys(directory: Path) -> None:
    """The key pair kube-apiserver signs (and checks) service-account tokens with."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from kubectl_proxyctl.lab.supervisor import write_private

    if (directory / SA_KEY).exists() and (directory / SA_PUB).exists():
        return
    key = ec.generate_private_key(ec.SECP256R1())
    write_private(directory / SA_KEY, key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode())
    write_private(directory / SA_PUB, key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode(), 0o644)


def prepare(spec: LabSpec) -> None:
    """Make the credentials both servers and every client need, and the kubeconfigs
    (idempotent: what exists is kept, so a restart changes nothing a client holds)."""
    import yaml

    from kubectl_proxyctl.lab.apiserver.certs import issue_serving_certificate
    from kubectl_proxyctl.lab.supervisor import KUBECONFIG, KUBECONFIG_NODES, KUBECONFIG_VIEWER, write_private

    directory = api_dir(spec)
    directory.mkdir(parents=True, exist_ok=True)
    if not (directory / "apiserver.crt").exists():
        issue_serving_certificate(directory, [spec.host_ip])
    admin, viewer = _token(directory, TOKEN_FILE), _token(directory, VIEWER_TOKEN_FILE)
    write_private(directory / TOKEN_AUTH_FILE,
                  f'{admin},{ADMIN_USER},{ADMIN_USER},"system:masters"\n{viewer},{VIEWER_USER},{VIEWER_USER}\n')
    _service_account_keys(directory)
    for name, user, token in ((KUBECONFIG, CONTEXT_NAME, admin), (KUBECONFIG_NODES, CONTEXT_NAME, admin),
                              (KUBECONFIG_VIEWER, VIEWER_CONTEXT_NAME, viewer)):
        text = yaml.safe_dump(kubeconfig(spec, user, token), sort_keys=False)
        path = spec.state_dir / name
        if not path.exists() or path.read_text() != text:
            write_private(path, text)


def kubeconfig(spec: LabSpec, user: str, token: str) -> dict[str, Any]:
    """The same kubeconfig the lab's own API server writes (names, CA, token), for `user`."""
    import base64

    ca = (api_dir(spec) / "ca.crt").read_bytes()
    return {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": CONTEXT_NAME, "cluster": {
            "server": spec.api_url, "certificate-authority-data": base64.b64encode(ca).decode()}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": user, "context": {"cluster": CONTEXT_NAME, "user": user, "namespace": "default"}}],
        "current-context": user,
        "preferences": {},
    }


def etcd_argv(spec: LabSpec, etcd: str) -> list[str]:
    """A one-member etcd on loopback. No fsync: the lab's state is disposable, and an fsync
    per write would make every API write wait for the disk."""
    from kubectl_proxyctl.lab.supervisor import ETCD_DIR

    return [etcd, "--name", spec.name, "--data-dir", str(spec.state_dir / ETCD_DIR),
            "--listen-client-urls", ETCD_CLIENT_URL, "--advertise-client-urls", ETCD_CLIENT_URL,
            "--listen-peer-urls", ETCD_PEER_URL, "--initial-advertise-peer-urls", ETCD_PEER_URL,
            "--initial-cluster", f"{spec.name}={ETCD_PEER_URL}", "--unsafe-no-fsync", "--log-level", "warn"]


def apiserver_argv(spec: LabSpec, apiserver: str) -> list[str]:
    """kube-apiserver with the lab's address, ranges and credentials (module docstring)."""
    d = api_dir(spec)
    low, high = spec.nodeport_range
    return [apiserver, f"--etcd-servers={ETCD_CLIENT_URL}",
            f"--bind-address={spec.host_ip}", f"--advertise-address={spec.host_ip}",
            f"--secure-port={spec.api_port}",
            f"--tls-cert-file={d / 'apiserver.crt'}", f"--tls-private-key-file={d / 'apiserver.key'}",
            f"--token-auth-file={d / TOKEN_AUTH_FILE}", "--authorization-mode=RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={d / SA_PUB}", f"--service-account-signing-key-file={d / SA_KEY}",
            f"--service-cluster-ip-range={spec.service_cidr}", f"--service-node-port-range={low}-{high}",
            "--disable-admission-plugins=ServiceAccount", "--allow-privileged=true",
            f"--cert-dir={d / 'kube-apiserver'}", "--profiling=false"]
