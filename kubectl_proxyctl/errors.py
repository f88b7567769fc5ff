"""The one error hierarchy of kubectl proxyctl, and the exit codes it maps to.

Every failure a user can cause or meet is a ProxyctlError subclass. Adapters (kube/, system/,
remote/) translate their libraries' exceptions into these at their boundary (always
`raise ... from exc`), so nothing above them ever sees a urllib3, paramiko or subprocess error.
Only `cli/main.py` turns them into exit codes.
"""

from __future__ import annotations

import enum


class ExitStatus(enum.IntEnum):
    """Documented exit codes (README, man pages)."""

    OK = 0
    FAILED = 1  # not found, failed check, drift, unexpected probe result
    USAGE = 2  # bad flags, bad input file, bad kubeconfig
    UNREACHABLE = 3  # the API server could not be reached or refused us


class ProxyctlError(Exception):
    """Base class. `str(err)` is the one line the user sees."""

    exit_status = ExitStatus.FAILED


class ConfigError(ProxyctlError):
    """The user's input is wrong: flags, files, kubeconfig."""

    exit_status = ExitStatus.USAGE


class RulesetParseError(ConfigError):
    """Rules text (iptables-save, nft -j, ipvsadm, ipset save) that a reader cannot parse."""

    def __init__(self, message: str, line: int | None = None, source: str = "<input>") -> None:
        where = f"{source}:{line}: " if line is not None else f"{source}: "
        super().__init__(where + message)
        self.line = line


class NotFoundError(ProxyctlError):
    """A named object (service, node, context) does not exist."""

    exit_status = ExitStatus.FAILED


class ClusterError(ProxyctlError):
    """The API server could not be reached, or answered with an error."""

    exit_status = ExitStatus.UNREACHABLE

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ApplyError(ProxyctlError):
    """Programming the kernel failed; the previous rules are still in place."""

    exit_status = ExitStatus.FAILED

    def __init__(self, message: str, script: str = "", line: int | None = None) -> None:
        super().__init__(message)
        self.script = script
        self.line = line


class RemoteError(ProxyctlError):
    """An SSH operation against a node failed."""

    exit_status = ExitStatus.FAILED

    def __init__(self, message: str, host: str = "") -> None:
        super().__init__(message)
        self.host = host
