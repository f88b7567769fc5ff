"""The SSH layer: OpenSSH config resolution and validation (pure), and commands, host keys,
deadlines, jump hosts, agents and proxy commands against real sshds in namespaces (lab)."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from kubectl_proxyctl.errors import ConfigError, RemoteError
from kubectl_proxyctl.remote.ssh import (
    CommandResult,
    CommandTimeout,
    HostKeyChangedError,
    HostKeyError,
    SSHClient,
    SSHOptions,
    resolve_host,
    validate_host,
    validate_jump,
)
from sshfixtures import HIDDEN_IP, SSHCluster, build_ssh_cluster, ssh_skip_reason
from waiting import wait_for

# --- validation and configuration (no network) -----------------------------------------------


@pytest.mark.parametrize("host", ["node1", "ip-10-0-1-2.ec2.internal", "10.0.0.1", "fd00::1", "n_1"])
def test_valid_hosts(host: str) -> None:
    assert validate_host(host) == host


@pytest.mark.parametrize("host", [
    "node1;rm -rf /", "$(id)", "`id`", "node1\nnode2", "-oProxyCommand=id", "a b", "", "node1|id",
    "user@node1", "node1&", "x" * 300,
])
def test_invalid_hosts(host: str) -> None:
    with pytest.raises(ConfigError, match="not a valid host name"):
        validate_host(host)


def test_jump_values() -> None:
    assert validate_jump("bastion") == "bastion"
    assert validate_jump("ops@bastion:2222, inner") == "ops@bastion:2222,inner"
    assert validate_jump("[fd00::1]:22") == "[fd00::1]:22"
    for bad in ("a;b", "a,,b", "-oProxyCommand=x", "u$(id)@h", "h:99999", "[fd00::1"):
        with pytest.raises(ConfigError):
            validate_jump(bad)


def test_options_are_validated(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a valid user"):
        SSHOptions(user="root;id")
    with pytest.raises(ConfigError, match="does not exist"):
        SSHOptions(identity_files=(str(tmp_path / "missing"),))
    with pytest.raises(ConfigError, match="does not exist"):
        SSHOptions(config_file=str(tmp_path))
    assert SSHOptions(config_file=os.devnull).config_file == os.devnull


@pytest.fixture
def config_files(tmp_path: Path) -> Path:
    (tmp_path / "inc.conf").write_text("Host included\n  HostName 10.0.0.3\n  User bob\n  Port 2200\n")
    key = tmp_path / "id_test"
    key.write_text("not really a key\n")
    (tmp_path / "config").write_text(f"""Include {tmp_path / 'inc.conf'}
Match host matched
  HostName 10.0.0.4
  HostKeyAlias matched-alias
Host jumped
  HostName 10.0.0.2
  ProxyJump ops@bastion:2222
Host viacmd
  HostName 10.0.0.5
  ProxyCommand nc %h %p
Host *
  IdentityFile {key}
  IdentitiesOnly yes
  IdentityAgent none
  UserKnownHostsFile {tmp_path / 'kh1'} {tmp_path / 'kh2'}
  GlobalKnownHostsFile /dev/null
  StrictHostKeyChecking accept-new
  ConnectTimeout 7
""")
    return tmp_path


@pytest.mark.skipif(shutil.which("ssh") is None, reason="needs the OpenSSH client")
def test_resolve_with_ssh_g(config_files: Path) -> None:
    options = SSHOptions(config_file=str(config_files / "config"))
    included = resolve_host("included", options)
    assert (included.hostname, included.user, included.port) == ("10.0.0.3", "bob", 2200)
    assert included.host_key_name == "[10.0.0.3]:2200"
    assert included.identity_files == (str(config_files / "id_test"),)
    assert included.identities_only and included.identity_agent == "none"
    assert included.user_known_hosts_files == (str(config_files / "kh1"), str(config_files / "kh2"))
    assert included.strict_host_key_checking == "accept-new" and included.connect_timeout == 7.0
    matched = resolve_host("matched", options)
    assert (matched.hostname, matched.host_key_name) == ("10.0.0.4", "matched-alias")
    assert resolve_host("jumped", options).proxy_jump == ("ops@bastion:2222",)
    assert resolve_host("viacmd", options).proxy_command == "nc 10.0.0.5 22"
    # command-line flags win over the config, as with ssh -l/-p/-i/-J
    key = config_files / "id_flag"
    key.write_text("x\n")
    flags = SSHOptions(config_file=str(config_files / "config"), user="alice", port=2022,
                       identity_files=(str(key),), jump="j1,j2")
    over = resolve_host("included", flags)
    assert (over.user, over.port, over.proxy_jump) == ("alice", 2022, ("j1", "j2"))
    assert over.identity_files[0] == str(key)
    # jump hosts are resolved without the destination's flags
    assert resolve_host("included", flags, overrides=False).user == "bob"


def test_resolve_with_paramiko_fallback(config_files: Path) -> None:
    options = SSHOptions(config_file=str(config_files / "config"), use_ssh_binary=False, user="carol")
    jumped = resolve_host("jumped", options)
    assert (jumped.hostname, jumped.user, jumped.proxy_jump) == ("10.0.0.2", "carol", ("ops@bastion:2222",))
    assert resolve_host("viacmd", options).proxy_command == "nc 10.0.0.5 22"
    assert resolve_host("plain", options).hostname == "plain"


def test_resolve_rejects_crafted_hosts() -> None:
    with pytest.raises(ConfigError):
        resolve_host("node1;id", SSHOptions(config_file=os.devnull))


# --- against real sshds ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[SSHCluster]:
    reason = ssh_skip_reason("socat", "ssh-agent", "ssh-add")
    if reason:
        pytest.skip(reason)
    built = build_ssh_cluster(nodes=2, bastion=True)
    try:
        yield built
    finally:
        built.close()


def client(cluster: SSHCluster, config: str | None = None, **kwargs: object) -> SSHClient:
    return SSHClient(SSHOptions(config_file=config or cluster.ssh_config, **kwargs))  # type: ignore[arg-type]


def run_in(cluster: SSHCluster, ssh: SSHClient, host: str, argv: list[str], timeout: float = 10.0) -> CommandResult:
    return cluster.in_client(lambda: ssh.run(host, argv, timeout))


@pytest.mark.lab
def test_run_returns_exit_code_and_both_streams(cluster: SSHCluster) -> None:
    with client(cluster) as ssh:
        got = run_in(cluster, ssh, "node1", ["sh", "-c", "echo out; echo err >&2; exit 3"])
        assert got == CommandResult(3, "out\n", "err\n")
        assert got.exit_code == 3


@pytest.mark.lab
def test_arguments_reach_the_node_verbatim(cluster: SSHCluster, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    words = ["a b", "$(touch " + str(marker) + ")", "`touch " + str(marker) + "`", "x;touch " + str(marker),
             "'q'", "\"dq\"", "line\nbreak", "$HOME"]
    with client(cluster) as ssh:
        got = run_in(cluster, ssh, "node1", ["printf", "%s|", *words])
    assert got.stdout == "|".join(words) + "|"
    assert not marker.exists()


@pytest.mark.lab
def test_one_connection_per_host_shared_by_threads(cluster: SSHCluster) -> None:
    with client(cluster) as ssh:
        first = run_in(cluster, ssh, "node1", ["sh", "-c", "echo $SSH_CONNECTION"]).stdout.split()
        results: list[str] = []

        def worker() -> None:
            results.append(ssh.run("node1", ["sh", "-c", "echo $SSH_CONNECTION"], 10).stdout.split()[1])

        def fan_out() -> None:
            threads = [threading.Thread(target=worker) for _ in range(6)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()

        cluster.in_client(fan_out)
    assert first[0] == "172.18.0.100" and first[2:] == ["172.18.0.2", "22"]
    assert results == [first[1]] * 6  # the same client port: one connection


@pytest.mark.lab
def test_command_deadline_is_wall_clock(cluster: SSHCluster) -> None:
    with client(cluster) as ssh:
        start = time.monotonic()
        with pytest.raises(CommandTimeout, match="node1: command did not finish within 0.5 s"):
            run_in(cluster, ssh, "node1", ["sleep", "60"], timeout=0.5)
        # The deadline ended the wait, not the end of the command (a minute away).
        assert time.monotonic() - start < 60
        assert run_in(cluster, ssh, "node1", ["true"]).exit_code == 0  # the connection survives


@pytest.mark.lab
def test_unknown_host_key_refused_unless_accepted(cluster: SSHCluster, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text("")
    config = tmp_path / "config"
    config.write_text(f"Host *\n  UserKnownHostsFile {known}\nInclude {cluster.ssh_config}\n")
    with client(cluster, str(config)) as ssh:
        with pytest.raises(HostKeyError, match="--accept-new-host-keys") as info:
            run_in(cluster, ssh, "node1", ["true"])
        assert not isinstance(info.value, HostKeyChangedError)
    with client(cluster, str(config), accept_new_host_keys=True) as ssh:
        assert run_in(cluster, ssh, "node1", ["true"]).exit_code == 0
    host_key = Path(cluster.node("node1").host_key + ".pub").read_text().split()[:2]
    assert known.read_text() == f"172.18.0.2 {host_key[0]} {host_key[1]}\n"
    with client(cluster, str(config)) as ssh:  # now known: no flag needed
        assert run_in(cluster, ssh, "node1", ["true"]).exit_code == 0


@pytest.mark.lab
def test_changed_host_key_always_refused(cluster: SSHCluster, tmp_path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "old")], check=True)
    kind, blob = (tmp_path / "old.pub").read_text().split()[:2]
    known = tmp_path / "known_hosts"
    known.write_text(f"172.18.0.2 {kind} {blob}\n")
    config = tmp_path / "config"
    config.write_text(f"Host *\n  UserKnownHostsFile {known}\nInclude {cluster.ssh_config}\n")
    with client(cluster, str(config), accept_new_host_keys=True) as ssh:
        with pytest.raises(HostKeyChangedError) as info:
            cluster.in_client(lambda: ssh.run("node1", ["true"], 10, name="node1"))
    message = str(info.value)
    assert message.startswith("HOST KEY FOR node1 HAS CHANGED: 172.18.0.2:22 offered ssh-ed25519 SHA256:")
    assert f"but {known} lists ssh-ed25519 SHA256:" in message and "ssh-keygen -R '172.18.0.2'" in message
    assert known.read_text() == f"172.18.0.2 {kind} {blob}\n"  # never rewritten


@pytest.mark.lab
def test_proxy_jump_from_config_and_flag(cluster: SSHCluster) -> None:
    with client(cluster) as ssh:
        via = run_in(cluster, ssh, "hidden", ["sh", "-c", "echo $SSH_CONNECTION"]).stdout.split()
    assert via[0] == "10.99.0.1" and via[2] == HIDDEN_IP  # it came from the bastion
    with client(cluster, jump="bastion") as ssh:
        assert run_in(cluster, ssh, HIDDEN_IP, ["true"]).exit_code == 0
    with client(cluster) as ssh:  # without the jump the hidden network is unreachable
        with pytest.raises(RemoteError, match="cannot connect to 10.99.0.2:22"):
            run_in(cluster, ssh, HIDDEN_IP, ["true"])


@pytest.mark.lab
def test_proxy_command(cluster: SSHCluster, tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text(f"Host viacmd\n  HostName 172.18.0.3\n  ProxyCommand socat - TCP:%h:%p\n"
                      f"Include {cluster.ssh_config}\n")
    with client(cluster, str(config)) as ssh:
        got = run_in(cluster, ssh, "viacmd", ["sh", "-c", "echo $SSH_CONNECTION"]).stdout.split()
    assert got[2] == "172.18.0.3"


@pytest.mark.lab
def test_agent_keys(cluster: SSHCluster, tmp_path: Path) -> None:
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    try:
        wait_for(sock.exists, what="the agent's socket")
        subprocess.run(["ssh-add", "-q", cluster.client_key], env={"SSH_AUTH_SOCK": str(sock)}, check=True)
        config = tmp_path / "config"
        config.write_text(f"Host *\n  IdentityFile none\n  IdentitiesOnly no\n  IdentityAgent {sock}\n"
                          f"Include {cluster.ssh_config}\n")
        with client(cluster, str(config)) as ssh:
            assert run_in(cluster, ssh, "node2", ["true"]).exit_code == 0
    finally:
        agent.terminate()
        agent.wait()


@pytest.mark.lab
def test_failures_name_the_host(cluster: SSHCluster) -> None:
    with client(cluster, user="nosuchuser") as ssh:
        with pytest.raises(RemoteError, match=r"node1: permission denied \(publickey\) for nosuchuser@172.18.0.2"):
            run_in(cluster, ssh, "node1", ["true"])
    node2 = cluster.node("node2")
    cluster.stop_sshd(node2)
    try:
        with client(cluster) as ssh:
            with pytest.raises(RemoteError, match="node2: cannot connect to 172.18.0.3:22: Connection refused"):
                run_in(cluster, ssh, "node2", ["true"])
    finally:
        cluster.start_sshd(node2)
    with client(cluster, connect_timeout=0.5) as ssh:
        # Nobody has that address: the connect timeout ends the attempt (not the ARP failure
        # seconds later, nor the default 10 s).
        with pytest.raises(RemoteError, match="connecting to 172.18.0.99:22 timed out after 0.5 s"):
            run_in(cluster, ssh, "172.18.0.99", ["true"])
