"""SSH into the lab's nodes: keys, sshd configurations, known_hosts and an ssh config.

Every node runs OpenSSH's sshd in its network namespace, on its node IP port 22, so that
tools which inspect nodes over SSH (`ssh node1 iptables-save`, or paramiko with the same
config) work against the lab as against real machines. Everything lives in
`<state>/ssh/`:

* `id_ed25519`, `id_ed25519.pub`: the lab's client key, the only one `authorized_keys` holds;
* `host_<node>_ed25519`: each node's host key, listed in `known_hosts` under the node's name
  and IP, so clients can check host keys strictly;
* `sshd_config-<node>`: key authentication only, no PAM, `StrictModes no` (the state
  directory is not a home directory), no pid file (the daemon tracks the process);
* `config`: `Host node1 172.18.0.2` → `HostName 172.18.0.2`, `User root`, the identity and
  known_hosts above, `StrictHostKeyChecking yes`. `ssh -F <state>/ssh/config node1` works
  (and with the node's IP, which is how `probe` reaches the nodes it finds in the API), and
  `lab env` exports it as `PROXYCTL_SSH_CONFIG`.

Keys are generated once per lab (Ed25519, with `cryptography`: no ssh-keygen processes) and
kept across daemon restarts; the files are rewritten only when their content changes.
"""

from __future__ import annotations

import os
from pathlib import Path

from kubectl_proxyctl.lab.spec import LabSpec, NodeSpec

SSHD = "/usr/sbin/sshd"
PRIVSEP_DIR = "/run/sshd"
SSH_PORT = 22
CLIENT_KEY = "id_ed25519"
SSH_DIR = "ssh"  # in the lab's state directory


def ssh_dir(spec: LabSpec) -> Path:
    return spec.state_dir / SSH_DIR


def ssh_config_path(spec: LabSpec) -> Path:
    return ssh_dir(spec) / "config"


def sshd_config_path(spec: LabSpec, node: NodeSpec) -> Path:
    return ssh_dir(spec) / f"sshd_config-{node.name}"


def sshd_available() -> bool:
    return os.access(SSHD, os.X_OK)


def sshd_argv(spec: LabSpec, node: NodeSpec) -> list[str]:
    """sshd in the foreground, logging to stderr (sshd insists on an absolute path)."""
    return [SSHD, "-D", "-e", "-f", str(sshd_config_path(spec, node))]


def _write(path: Path, text: str | bytes, mode: int = 0o644) -> None:
    data = text.encode() if isinstance(text, str) else text
    try:
        if path.read_bytes() == data:
            return
    except FileNotFoundError:
        pass
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def _keypair(private: Path) -> str:
    """Ensure an Ed25519 key at `private` (OpenSSH format); returns the public key line."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    if private.exists():
        key = serialization.load_ssh_private_key(private.read_bytes(), password=None)
    else:
        key = ed25519.Ed25519PrivateKey.generate()
        _write(private, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                          serialization.NoEncryption()), 0o600)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return public.decode()


def prepare(spec: LabSpec) -> None:
    """Write (or keep) every key and configuration file of the lab's SSH set-up."""
    directory = ssh_dir(spec)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.makedirs(PRIVSEP_DIR, mode=0o755, exist_ok=True)
    client = _keypair(directory / CLIENT_KEY)
    _write(directory / f"{CLIENT_KEY}.pub", f"{client} proxyctl-lab-{spec.name}\n")
    _write(directory / "authorized_keys", f"{client} proxyctl-lab-{spec.name}\n", 0o600)
    known_hosts = []
    hosts = []
    for node in spec.nodes:
        host_key = directory / f"host_{node.name}_ed25519"
        public = _keypair(host_key)
        _write(host_key.with_name(host_key.name + ".pub"), public + "\n")
        known_hosts.append(f"{node.name},{node.ip} {public}")
        _write(sshd_config_path(spec, node), "\n".join([
            f"ListenAddress {node.ip}:{SSH_PORT}",
            f"HostKey {host_key}",
            f"AuthorizedKeysFile {directory / 'authorized_keys'}",
            "PidFile none",
            "UsePAM no",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PubkeyAuthentication yes",
            "PermitRootLogin prohibit-password",
            "StrictModes no",
            "UseDNS no",
            "PrintMotd no",
            "Subsystem sftp internal-sftp",
        ]) + "\n")
        hosts.append("\n".join([
            f"Host {node.name} {node.ip}",  # by name, and by address as `probe` connects by default
            f"  HostName {node.ip}",
            f"  Port {SSH_PORT}",
            "  User root",
            f"  IdentityFile {directory / CLIENT_KEY}",
            "  IdentitiesOnly yes",
            f"  UserKnownHostsFile {directory / 'known_hosts'}",
            "  StrictHostKeyChecking yes",
        ]))
    _write(directory / "known_hosts", "\n".join(known_hosts) + "\n")
    _write(ssh_config_path(spec), f"# SSH to the nodes of lab {spec.name}: ssh -F {ssh_config_path(spec)} "
                                  f"{spec.nodes[0].name if spec.nodes else 'node1'}\n\n"
                                  + "\n\n".join(hosts) + "\n")
