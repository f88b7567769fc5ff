"""SSH to nodes: OpenSSH's configuration, known_hosts, deadlines; the only paramiko user.

Theory of operation: `SSHClient(options).run(host, argv, timeout)` runs one fixed program
on a node and returns `CommandResult(exit_code, stdout, stderr)`. Every element of `argv`
is quoted with `shlex.quote` before it reaches the node's login shell (which must be a
POSIX-style shell: sh, bash, dash, zsh), and `host` must look like a host name or an IP
address, so neither can smuggle shell syntax or ssh options anywhere.

* **Configuration** is what OpenSSH would use: `ssh -G HOST` (with `-F`, `-l`, `-p`, `-i`,
  `-J` from SSHOptions) resolves Host and Match blocks, Include, User, Port, IdentityFile,
  IdentitiesOnly, IdentityAgent, ProxyJump, ProxyCommand, UserKnownHostsFile,
  GlobalKnownHostsFile, HostKeyAlias, StrictHostKeyChecking and ConnectTimeout exactly as
  `ssh` does. Without an `ssh` binary, paramiko's SSHConfig (no Include) is the fallback.
* **Host keys**: the server's key must be in a known_hosts file. An unknown key is refused
  unless `accept_new_host_keys` (or `StrictHostKeyChecking accept-new`) is set; then it is
  appended to the first UserKnownHostsFile. A key that differs from a known one is always
  refused with HostKeyChangedError ("HOST KEY FOR node1 HAS CHANGED ...").
* **Authentication**: public keys only, as ssh tries them: agent keys (with IdentitiesOnly
  only those of a configured identity file), then the identity files that exist and are
  not encrypted. Jump hosts use their own configuration, not the destination's flags.
* **Proxies**: ProxyJump hops are chained over `direct-tcpip` channels; one connection per
  hop chain is shared by every node behind it. ProxyCommand runs through `/bin/sh -c`.
* **Deadlines** are wall-clock: connect (TCP + banner + key exchange + host key), then
  authentication, each within the connect timeout (ConnectTimeout, default 10 s); every
  command within its own `timeout`, after which its channel is closed and CommandTimeout
  raised.
* **Reuse**: one connection per host, opened on first use and shared by later commands
  (channels are multiplexed, so threads may run commands on one host concurrently);
  `close()` ends them all.

Every failure to reach, trust, authenticate or finish is a RemoteError (or a subclass)
naming the host; a host name or ssh configuration that is not usable is a ConfigError.
paramiko's and the socket layer's exceptions never leave this module.
"""

from __future__ import annotations

import getpass
import ipaddress
import logging
import os
import re
import select
import shlex
import socket
import threading
import time
from dataclasses import dataclass, field, replace
from typing import NamedTuple, Sequence

import paramiko
import paramiko.agent

from kubectl_proxyctl.errors import ConfigError, ProxyctlError, RemoteError
from kubectl_proxyctl.system.executor import SubprocessExecutor

log = logging.getLogger(__name__)
# paramiko's transport thread logs tracebacks (e.g. a banner timeout); they are reported
# as RemoteErrors instead, so they must not reach Python's last-resort stderr handler.
logging.getLogger("paramiko").addHandler(logging.NullHandler())

DEFAULT_CONNECT_TIMEOUT = 10.0
SSH_G_TIMEOUT = 10.0
ACCEPT_NEW_VALUES = ("accept-new", "no", "off", "false")

_HOST = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9._-]*[A-Za-z0-9_])?$")
_USER = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")


# --- errors ----------------------------------------------------------------------------------


class HostKeyError(RemoteError):
    """The server's host key is not in any known_hosts file."""


class HostKeyChangedError(HostKeyError):
    """The server's host key differs from the known one: refused, always."""


class CommandTimeout(RemoteError):
    """A command outlived its deadline; its channel was closed."""


# --- validation ------------------------------------------------------------------------------


def validate_host(text: str, what: str = "host") -> str:
    """A host name, alias or IP address; ConfigError for anything else (shell
    metacharacters, whitespace, a leading '-' that ssh would read as an option, ...)."""
    if isinstance(text, str) and _HOST.match(text):
        return text
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    raise ConfigError(
        f"{what} {text!r} is not a valid host name or IP address "
        "(letters, digits, '.', '-' and '_' only)"
    )


def _split_hop(text: str) -> tuple[str | None, str, int | None]:
    """`[user@]host[:port]` (IPv6 as `[addr]:port`) → (user, host, port), validated."""
    user: str | None = None
    if "@" in text:
        user, _, text = text.rpartition("@")
        if not _USER.match(user):
            raise ConfigError(f"jump host user {user!r} is not a valid user name")
    port: int | None = None
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ConfigError(f"jump host {text!r} is not [address]:port")
        port_text = rest[1:] if rest else ""
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    if port_text:
        if not port_text.isdecimal() or not 0 < int(port_text) <= 65535:
            raise ConfigError(f"jump host port {port_text!r} is not a port number")
        port = int(port_text)
    return user, validate_host(host, "jump host"), port


def validate_jump(text: str) -> str:
    """A ProxyJump value: `[user@]host[:port]`, comma-separated for several hops."""
    hops = [h.strip() for h in text.split(",")]
    if not hops or not all(hops):
        raise ConfigError(f"--jump {text!r}: expected [user@]host[:port][,...]")
    for hop in hops:
        _split_hop(hop)
    return ",".join(hops)


# --- configuration ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SSHOptions:
    """What the user asked for on the command line; the ssh config fills in the rest."""

    config_file: str | None = None  # like `ssh -F`; None: ~/.ssh/config and /etc/ssh/ssh_config
    user: str | None = None
    port: int | None = None
    identity_files: tuple[str, ...] = ()
    jump: str | None = None
    accept_new_host_keys: bool = False
    connect_timeout: float | None = None  # None: ConnectTimeout from the config, else 10 s
    use_ssh_binary: bool = True  # resolve with `ssh -G` when the OpenSSH client exists

    def __post_init__(self) -> None:
        if self.user is not None and not _USER.match(self.user):
            raise ConfigError(f"--ssh-user {self.user!r} is not a valid user name")
        if self.port is not None and not 0 < self.port <= 65535:
            raise ConfigError(f"--ssh-port {self.port} is not a port number")
        if self.jump is not None:
            validate_jump(self.jump)
        if self.config_file is not None and (not os.path.exists(self.config_file) or os.path.isdir(self.config_file)):
            raise ConfigError(f"ssh config file {self.config_file} does not exist")
        for path in self.identity_files:
            if not os.path.isfile(os.path.expanduser(path)):
                raise ConfigError(f"ssh key {path} does not exist")


@dataclass(frozen=True)
class HostConfig:
    """How to reach one host, fully resolved."""

    alias: str
    hostname: str
    port: int = 22
    user: str = ""
    identity_files: tuple[str, ...] = ()
    identities_only: bool = False
    identity_agent: str = ""  # "": $SSH_AUTH_SOCK; "none"; or a socket path
    proxy_jump: tuple[str, ...] = ()  # hops, outermost first
    proxy_command: str = ""
    user_known_hosts_files: tuple[str, ...] = ()
    global_known_hosts_files: tuple[str, ...] = ()
    host_key_alias: str = ""
    strict_host_key_checking: str = "ask"
    connect_timeout: float | None = None

    @property
    def host_key_name(self) -> str:
        """The name known_hosts files list this host under."""
        name = self.host_key_alias or self.hostname
        return name if self.port == 22 else f"[{name}]:{self.port}"

    @property
    def known_hosts_files(self) -> tuple[str, ...]:
        return self.user_known_hosts_files + self.global_known_hosts_files


def _expand(text: str, alias: str, hostname: str, port: int, user: str) -> str:
    """OpenSSH's `%` tokens and a leading `~`."""
    tokens = {"%": "%", "h": hostname, "p": str(port), "r": user, "n": alias,
              "d": os.path.expanduser("~"), "u": getpass.getuser()}
    out = re.sub(r"%(.)", lambda m: tokens.get(m.group(1), m.group(0)), text)
    return os.path.expanduser(out)


def _timeout_value(text: str | None) -> float | None:
    if not text or text == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value > 0 else None


def _host_config(alias: str, values: dict[str, list[str]]) -> HostConfig:
    """Build a HostConfig from `ssh -G`-style lower-case keys → values."""

    def one(key: str, default: str = "") -> str:
        got = values.get(key)
        return got[0] if got else default

    hostname = one("hostname", alias)
    port = int(one("port", "22")) if one("port", "22").isdecimal() else 22
    user = one("user") or getpass.getuser()

    def files(key: str) -> tuple[str, ...]:
        out: list[str] = []
        for value in values.get(key, []):
            for part in shlex.split(value):
                if part != "none":
                    out.append(_expand(part, alias, hostname, port, user))
        return tuple(out)

    jump = one("proxyjump")
    command = one("proxycommand")
    agent = one("identityagent")
    if agent == "SSH_AUTH_SOCK":
        agent = ""
    elif agent and agent != "none":
        agent = _expand(agent, alias, hostname, port, user)
    return HostConfig(
        alias=alias,
        hostname=hostname,
        port=port,
        user=user,
        identity_files=files("identityfile"),
        identities_only=one("identitiesonly").lower() == "yes",
        identity_agent=agent,
        proxy_jump=tuple(h.strip() for h in jump.split(",") if h.strip()) if jump and jump != "none" else (),
        proxy_command=_expand(command, alias, hostname, port, user) if command and command != "none" else "",
        user_known_hosts_files=files("userknownhostsfile"),
        global_known_hosts_files=files("globalknownhostsfile"),
        host_key_alias=one("hostkeyalias"),
        strict_host_key_checking=one("stricthostkeychecking", "ask").lower(),
        connect_timeout=_timeout_value(one("connecttimeout")),
    )


def _resolve_with_ssh(alias: str, options: SSHOptions, overrides: bool) -> HostConfig:
    argv = ["ssh", "-G"]
    if options.config_file:
        argv += ["-F", options.config_file]
    if overrides:
        if options.user:
            argv += ["-l", options.user]
        if options.port:
            argv += ["-p", str(options.port)]
        for path in options.identity_files:
            argv += ["-i", os.path.expanduser(path)]
        if options.jump:
            argv += ["-J", options.jump]
    argv += ["--", alias]
    result = SubprocessExecutor().run(argv, timeout=SSH_G_TIMEOUT)
    if result.returncode != 0:
        lines = [ln for ln in result.stderr.splitlines() if "Pseudo-terminal" not in ln]
        raise ConfigError(f"ssh configuration for {alias}: {lines[0] if lines else 'ssh -G failed'}")
    values: dict[str, list[str]] = {}
    for line in result.stdout.splitlines():
        key, _, value = line.partition(" ")
        values.setdefault(key.lower(), []).append(value.strip())
    return _host_config(alias, values)


def _resolve_with_paramiko(alias: str, options: SSHOptions, overrides: bool) -> HostConfig:
    path = options.config_file or os.path.expanduser("~/.ssh/config")
    config = paramiko.SSHConfig.from_path(path) if os.path.isfile(path) else paramiko.SSHConfig()
    found = config.lookup(alias)
    values: dict[str, list[str]] = {}
    for key, value in found.items():
        values[key] = [str(v) for v in value] if isinstance(value, list) else [str(value)]
    home = "~/.ssh/"
    values.setdefault("identityfile", [home + n for n in ("id_rsa", "id_ecdsa", "id_ed25519")])
    values.setdefault("userknownhostsfile", [home + "known_hosts " + home + "known_hosts2"])
    values.setdefault("globalknownhostsfile", ["/etc/ssh/ssh_known_hosts /etc/ssh/ssh_known_hosts2"])
    if overrides:
        if options.user:
            values["user"] = [options.user]
        if options.port:
            values["port"] = [str(options.port)]
        if options.identity_files:
            values["identityfile"] = [os.path.expanduser(p) for p in options.identity_files] + values["identityfile"]
        if options.jump:
            values["proxyjump"] = [options.jump]
            values.pop("proxycommand", None)
    if "proxyjump" in values and "proxycommand" in values:
        values.pop("proxycommand")  # ssh: a ProxyJump is a ProxyCommand; one of them is set
    return _host_config(alias, values)


def resolve_host(alias: str, options: SSHOptions, overrides: bool = True) -> HostConfig:
    """How ssh would reach `alias`. `overrides=False` (for jump hosts) ignores the
    command-line user, port, keys and jump, as `ssh -J` does for the hops."""
    validate_host(alias)
    if options.use_ssh_binary:
        try:
            return _resolve_with_ssh(alias, options, overrides)
        except ConfigError:
            raise
        except ProxyctlError as exc:  # no ssh binary: fall back to paramiko's parser
            log.info("cannot run ssh -G (%s); reading the ssh config with paramiko", exc)
    try:
        return _resolve_with_paramiko(alias, options, overrides)
    except (paramiko.ConfigParseError, OSError) as exc:
        raise ConfigError(f"ssh configuration: {exc}") from exc


# --- results ---------------------------------------------------------------------------------


class CommandResult(NamedTuple):
    exit_code: int
    stdout: str
    stderr: str


# --- known hosts -----------------------------------------------------------------------------


def fingerprint(key: paramiko.PKey) -> str:
    """`ssh-ed25519 SHA256:...`, as ssh prints it."""
    return f"{key.get_name()} {key.fingerprint}"


@dataclass
class _KnownHosts:
    """Parsed known_hosts files, shared by every connection, with appends under a lock."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    files: dict[str, paramiko.HostKeys] = field(default_factory=dict)

    def _load(self, path: str) -> paramiko.HostKeys:
        keys = self.files.get(path)
        if keys is None:
            keys = paramiko.HostKeys()
            if os.path.isfile(path):
                try:
                    keys.load(path)
                except (OSError, paramiko.SSHException, ValueError) as exc:
                    log.warning("cannot read known_hosts file %s: %s", path, exc)
            self.files[path] = keys
        return keys

    def check(self, cfg: HostConfig, key: paramiko.PKey, accept_new: bool, label: str) -> None:
        """Return when `key` is known for `cfg`; add it when new and `accept_new`; raise
        HostKeyChangedError / HostKeyError otherwise."""
        with self.lock:
            mismatch: tuple[str, paramiko.PKey] | None = None
            for path in cfg.known_hosts_files:
                entry = self._load(path).lookup(cfg.host_key_name)
                if entry is None:
                    continue
                known = entry.get(key.get_name())
                if known is not None and known == key:
                    return
                if mismatch is None:
                    mismatch = (path, known if known is not None else next(iter(entry.values())))
            if mismatch is not None:
                path, known = mismatch
                raise HostKeyChangedError(
                    f"HOST KEY FOR {label} HAS CHANGED: {cfg.hostname}:{cfg.port} offered "
                    f"{fingerprint(key)}, but {path} lists {fingerprint(known)} for "
                    f"{cfg.host_key_name}. Someone may be intercepting the connection, or the "
                    f"node was reinstalled. Not connecting. If the change is expected, remove the "
                    f"old key with: ssh-keygen -R '{cfg.host_key_name}' -f {path}",
                    host=label,
                )
            if not (accept_new or cfg.strict_host_key_checking in ACCEPT_NEW_VALUES):
                where = cfg.user_known_hosts_files[0] if cfg.user_known_hosts_files else "known_hosts"
                raise HostKeyError(
                    f"{label}: host key {fingerprint(key)} of {cfg.host_key_name} is not in "
                    f"{where} (or any other known_hosts file); verify it and add it, or pass "
                    "--accept-new-host-keys to trust keys seen for the first time",
                    host=label,
                )
            if not cfg.user_known_hosts_files:
                raise HostKeyError(f"{label}: no UserKnownHostsFile to record a new host key in", host=label)
            path = cfg.user_known_hosts_files[0]
            try:
                os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
                with open(path, "a", encoding="ascii") as fh:
                    fh.write(f"{cfg.host_key_name} {key.get_name()} {key.get_base64()}\n")
            except OSError as exc:
                raise HostKeyError(f"{label}: cannot record the new host key in {path}: {exc}", host=label) from exc
            self._load(path).add(cfg.host_key_name, key.get_name(), key)
            log.warning("%s: added new host key %s to %s", label, fingerprint(key), path)


def _prefer_known_types(transport: paramiko.Transport, cfg: HostConfig, known: _KnownHosts) -> None:
    """Offer the key types known_hosts already has for the host first, as ssh does."""
    wanted: list[str] = []
    with known.lock:
        for path in cfg.known_hosts_files:
            entry = known._load(path).lookup(cfg.host_key_name)
            if entry is not None:
                for kind in entry.keys():
                    wanted += ["rsa-sha2-512", "rsa-sha2-256", kind] if kind == "ssh-rsa" else [kind]
    if not wanted:
        return
    options = transport.get_security_options()
    available = list(options.key_types)
    first = [k for k in dict.fromkeys(wanted) if k in available]
    options.key_types = first + [k for k in available if k not in first]


# --- the client ------------------------------------------------------------------------------


class _SocketAgent(paramiko.agent.AgentSSH):  # type: ignore[misc]
    """The ssh agent listening on `path` (paramiko's Agent only reads $SSH_AUTH_SOCK)."""

    def __init__(self, path: str) -> None:
        super().__init__()
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.connect(path)
            self._connect(conn)
        except BaseException:
            conn.close()
            raise

    def close(self) -> None:
        self._close()


def _remaining(deadline: float) -> float:
    return max(0.05, deadline - time.monotonic())


class SSHClient:
    """Runs commands on hosts over SSH, one reused connection per host. Thread-safe."""

    def __init__(self, options: SSHOptions | None = None) -> None:
        self.options = options or SSHOptions()
        self._lock = threading.Lock()
        self._host_locks: dict[str, threading.Lock] = {}
        self._configs: dict[tuple[str, bool], HostConfig] = {}
        self._transports: dict[str, paramiko.Transport] = {}
        self._known = _KnownHosts()

    def __enter__(self) -> "SSHClient":
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # configuration ------------------------------------------------------------------------

    def resolve(self, host: str, overrides: bool = True) -> HostConfig:
        """The resolved configuration for `host` (cached)."""
        key = (host, overrides)
        with self._lock:
            cfg = self._configs.get(key)
        if cfg is None:
            cfg = resolve_host(host, self.options, overrides)
            with self._lock:
                self._configs[key] = cfg
        return cfg

    def _timeout(self, cfg: HostConfig) -> float:
        return self.options.connect_timeout or cfg.connect_timeout or DEFAULT_CONNECT_TIMEOUT

    # commands -----------------------------------------------------------------------------

    def run(self, host: str, argv: Sequence[str], timeout: float, name: str | None = None) -> CommandResult:
        """Run `argv` on `host` within `timeout` seconds; `name` is how messages call the
        host (default: `host`). Raises RemoteError when the host cannot be reached or
        authenticated, CommandTimeout when the command outlives `timeout`."""
        validate_host(host)
        if not argv:
            raise ValueError("empty command")
        label = name or host
        transport = self._transport(host, label)
        return self._exec(transport, shlex.join(argv), timeout, label)

    def _exec(self, transport: paramiko.Transport, command: str, timeout: float, label: str) -> CommandResult:
        deadline = time.monotonic() + timeout
        try:
            chan = transport.open_session(timeout=_remaining(deadline))
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise RemoteError(f"{label}: cannot open an SSH session: {exc or type(exc).__name__}", host=label) from exc
        out: list[bytes] = []
        err: list[bytes] = []
        try:
            chan.exec_command(command)
            chan.shutdown_write()
            while True:
                while chan.recv_ready():
                    out.append(chan.recv(65536))
                while chan.recv_stderr_ready():
                    err.append(chan.recv_stderr(65536))
                if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
                    if chan.eof_received or chan.closed:
                        break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CommandTimeout(f"{label}: command did not finish within {timeout:g} s", host=label)
                select.select([chan], [], [], min(left, 0.5))
            code = chan.recv_exit_status()
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise RemoteError(f"{label}: SSH session failed: {exc or type(exc).__name__}", host=label) from exc
        finally:
            chan.close()
        return CommandResult(code, b"".join(out).decode("utf-8", "replace"), b"".join(err).decode("utf-8", "replace"))

    # connections --------------------------------------------------------------------------

    def _host_lock(self, key: str) -> threading.Lock:
        with self._lock:
            return self._host_locks.setdefault(key, threading.Lock())

    def _transport(self, host: str, label: str) -> paramiko.Transport:
        with self._host_lock(host):
            current = self._transports.get(host)
            if current is not None and current.is_active():
                return current
            cfg = self.resolve(host)
            transport = self._connect(cfg, label, self._socket(cfg, label))
            self._transports[host] = transport
            return transport

    def _hop(self, hops: tuple[str, ...], label: str) -> paramiko.Transport:
        """The shared connection to the last of `hops`, through the ones before it."""
        key = "jump:" + ",".join(hops)
        with self._host_lock(key):
            current = self._transports.get(key)
            if current is not None and current.is_active():
                return current
            user, host, port = _split_hop(hops[-1])
            cfg = self.resolve(host, overrides=False)
            cfg = replace(cfg, user=user or cfg.user, port=port or cfg.port, proxy_jump=hops[:-1], proxy_command="")
            hop_label = f"jump host {hops[-1]} (for {label})"
            transport = self._connect(cfg, hop_label, self._socket(cfg, hop_label))
            self._transports[key] = transport
            return transport

    def _socket(self, cfg: HostConfig, label: str) -> socket.socket | paramiko.Channel | paramiko.ProxyCommand:
        """A byte stream to the host's sshd: a TCP socket, a channel through the jump
        hosts, or the stdio of the ProxyCommand."""
        deadline = time.monotonic() + self._timeout(cfg)
        where = f"{cfg.hostname}:{cfg.port}"
        if cfg.proxy_jump:
            hop = self._hop(cfg.proxy_jump, label)
            try:
                return hop.open_channel(
                    "direct-tcpip", (cfg.hostname, cfg.port), ("127.0.0.1", 0), timeout=_remaining(deadline)
                )
            except (paramiko.SSHException, EOFError, OSError) as exc:
                raise RemoteError(
                    f"{label}: jump host {cfg.proxy_jump[-1]} cannot reach {where}: {exc or type(exc).__name__}",
                    host=label,
                ) from exc
        if cfg.proxy_command:
            try:
                return paramiko.ProxyCommand(shlex.join(["/bin/sh", "-c", "exec " + cfg.proxy_command]))
            except (paramiko.SSHException, OSError) as exc:
                raise RemoteError(f"{label}: ProxyCommand failed: {exc}", host=label) from exc
        try:
            return socket.create_connection((cfg.hostname, cfg.port), timeout=_remaining(deadline))
        except socket.timeout as exc:
            raise RemoteError(f"{label}: connecting to {where} timed out after {self._timeout(cfg):g} s",
                              host=label) from exc
        except OSError as exc:
            raise RemoteError(f"{label}: cannot connect to {where}: {exc.strerror or exc}", host=label) from exc

    def _connect(
        self, cfg: HostConfig, label: str, sock: socket.socket | paramiko.Channel | paramiko.ProxyCommand
    ) -> paramiko.Transport:
        timeout = self._timeout(cfg)
        deadline = time.monotonic() + timeout
        transport = paramiko.Transport(sock)
        try:
            transport.banner_timeout = _remaining(deadline)
            transport.handshake_timeout = _remaining(deadline)
            _prefer_known_types(transport, cfg, self._known)
            try:
                transport.start_client(timeout=_remaining(deadline))
            except (paramiko.SSHException, EOFError, OSError) as exc:
                why = "timed out" if time.monotonic() >= deadline else str(exc) or type(exc).__name__
                raise RemoteError(
                    f"{label}: SSH handshake with {cfg.hostname}:{cfg.port} failed: {why}", host=label
                ) from exc
            self._known.check(cfg, transport.get_remote_server_key(), self.options.accept_new_host_keys, label)
            self._authenticate(transport, cfg, label, time.monotonic() + timeout)
        except BaseException:
            transport.close()
            raise
        return transport

    def _authenticate(self, transport: paramiko.Transport, cfg: HostConfig, label: str, deadline: float) -> None:
        agent = self._agent(cfg)
        tried: list[str] = []
        try:
            for description, key in self._keys(cfg, agent):
                tried.append(description)
                transport.auth_timeout = _remaining(deadline)
                try:
                    transport.auth_publickey(cfg.user, key)
                except paramiko.AuthenticationException:
                    continue
                except (paramiko.SSHException, EOFError, OSError) as exc:
                    why = "timed out" if time.monotonic() >= deadline else str(exc) or type(exc).__name__
                    raise RemoteError(f"{label}: authentication as {cfg.user} failed: {why}", host=label) from exc
                if transport.is_authenticated():
                    return
        finally:
            if agent is not None:
                agent.close()
        what = ", ".join(tried) if tried else "no keys (no agent, no readable identity file)"
        raise RemoteError(f"{label}: permission denied (publickey) for {cfg.user}@{cfg.hostname}; tried {what}",
                          host=label)

    @staticmethod
    def _keys(cfg: HostConfig, agent: paramiko.Agent | _SocketAgent | None) -> list[tuple[str, paramiko.PKey]]:
        """Keys to offer, in ssh's order: agent keys (with IdentitiesOnly only those of an
        identity file), then the identity files that exist and need no passphrase."""
        loaded: list[tuple[str, paramiko.PKey]] = []
        wanted: set[bytes] = set()  # public blobs of the identity files
        for path in cfg.identity_files:
            if not os.path.isfile(path):
                continue
            try:
                key = paramiko.PKey.from_path(path)
                loaded.append((path, key))
                wanted.add(key.asbytes())
            except paramiko.PasswordRequiredException:
                pass  # encrypted: usable only through the agent
            except (paramiko.SSHException, OSError, ValueError) as exc:
                log.info("skipping identity file %s: %s", path, exc)
                continue
            try:
                wanted.add(paramiko.PublicBlob.from_file(path + ".pub").key_blob)
            except (OSError, ValueError, paramiko.SSHException):
                pass
        keys: list[tuple[str, paramiko.PKey]] = []
        seen: set[bytes] = set()
        for key in agent.get_keys() if agent is not None else ():
            blob = key.asbytes()
            if blob in seen or (cfg.identities_only and blob not in wanted):
                continue
            seen.add(blob)
            keys.append((f"agent key {fingerprint(key)}", key))
        for path, key in loaded:
            if key.asbytes() not in seen:
                seen.add(key.asbytes())
                keys.append((path, key))
        return keys

    @staticmethod
    def _agent(cfg: HostConfig) -> paramiko.Agent | _SocketAgent | None:
        """The ssh agent of IdentityAgent ($SSH_AUTH_SOCK by default), or None."""
        if cfg.identity_agent == "none":
            return None
        try:
            return _SocketAgent(cfg.identity_agent) if cfg.identity_agent else paramiko.Agent()
        except (OSError, paramiko.SSHException) as exc:
            log.info("cannot use the ssh agent %s: %s", cfg.identity_agent or "$SSH_AUTH_SOCK", exc)
            return None

    def close(self) -> None:
        """Close every connection (nodes first, then the jump hosts they went through)."""
        with self._lock:
            transports = sorted(self._transports.items(), key=lambda kv: kv[0].startswith("jump:"))
            self._transports.clear()
        for _key, transport in transports:
            transport.close()
