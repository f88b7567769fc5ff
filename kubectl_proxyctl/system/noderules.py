"""Collecting a node's proxy rules: iptables (both backends), nft, IPVS and ipsets.

Theory of operation: one call gathers, through an Executor (this host, a network namespace,
or an SSH connection to a node), the raw text of everything a Service proxy may have left on
the node, exactly as the tools print it:

* `iptables-nft-save` and `iptables-legacy-save` (`ip6tables-*` for IPv6). Backend
  detection (`system.iptables.detect_backend`, kube-proxy's iptables-wrapper logic) runs on
  the same outputs: a recording executor keeps them, so each save runs once. The detection's
  choice says which backend is in use, and its warning (both backends hold KUBE- chains)
  travels with the result;
* `nft -j list table ip kube-proxy` (or `ip6`), when nft is installed and the table exists;
* `ipvsadm -Sn` when the kernel has IPVS, and `ipset save`;
* the node's own addresses (`ip -json address show`), and, when there are IPVS virtual
  servers, the addresses of `kube-ipvs0` (as that command prints them for that link).

A tool that is missing, or a table that does not exist, is simply absent from the result (the
log says which tools were missing, at -v); only a failure of the iptables-save of the
backend in use is an error.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Sequence

from kubectl_proxyctl.errors import ProxyctlError
from kubectl_proxyctl.model import IPFamily
from kubectl_proxyctl.system.executor import DEFAULT_TIMEOUT, Executor, Result, SubprocessExecutor
from kubectl_proxyctl.system.iptables import Backend, Binaries, detect_backend

_MISSING = 127
log = logging.getLogger(__name__)


@dataclass
class NodeRules:
    """Raw outputs, as (what produced it, text), plus what the detection said."""

    texts: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # warnings for the user (both backends in use)
    backend_in_use: str = ""
    addresses: list[str] = field(default_factory=list)


class _Recording:
    """An Executor that remembers every result, so a command the detection ran is reused."""

    def __init__(self, inner: Executor) -> None:
        self.inner = inner
        self.netns = inner.netns
        self.results: dict[tuple[str, ...], Result] = {}

    def run(self, argv: Sequence[str], stdin: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> Result:
        key = tuple(argv)
        if stdin is None and key in self.results:
            return self.results[key]
        try:
            result = self.inner.run(argv, stdin, timeout)
        except ProxyctlError as exc:
            if "not found" not in str(exc):
                raise
            result = Result(_MISSING, "", str(exc))
        self.results[key] = result
        return result


def collect(executor: Executor | None = None, family: IPFamily = IPFamily.IPv4) -> NodeRules:
    """Everything the node's proxy modes may have programmed."""
    ex = _Recording(executor if executor is not None else SubprocessExecutor())
    out = NodeRules()
    missing: list[str] = []

    detection = detect_backend(ex, family)
    out.backend_in_use = detection.backend.value
    if detection.warning:
        out.notes.append(detection.warning)
    for backend in Backend:
        save = Binaries.of(family, backend).save
        result = ex.run([save], timeout=60)
        if result.returncode == _MISSING:
            missing.append(save)
        elif not result.ok and backend == detection.backend:
            raise ProxyctlError(f"{save} failed: {result.stderr.strip() or result.returncode}")
        elif not result.ok:
            log.info("%s failed (%s); that backend is not in use", save, result.stderr.strip())
        elif "*" in result.stdout:
            out.texts.append((save, result.stdout))

    nft_family = "ip6" if family == IPFamily.IPv6 else "ip"
    result = ex.run(["nft", "-j", "list", "table", nft_family, "kube-proxy"], timeout=60)
    if result.returncode == _MISSING:
        missing.append("nft")
    elif result.ok and result.stdout.strip():
        out.texts.append((f"nft -j list table {nft_family} kube-proxy", result.stdout))

    result = ex.run(["ipvsadm", "-Sn"], timeout=60)
    if result.returncode == _MISSING:
        missing.append("ipvsadm")
    elif result.ok and result.stdout.strip():
        out.texts.append(("ipvsadm -Sn", result.stdout))

    result = ex.run(["ipset", "save"], timeout=60)
    if result.returncode == _MISSING:
        missing.append("ipset")
    elif result.ok and result.stdout.strip():
        out.texts.append(("ipset save", result.stdout))

    result = ex.run(["ip", "-json", "address", "show"], timeout=30)
    if result.ok:
        out.addresses = _addresses(result.stdout)
        if any(source == "ipvsadm -Sn" for source, _ in out.texts):
            # IPVS mode binds every service address to kube-ipvs0: verify checks them there
            out.texts.append((f"ip -json address show dev {IPVS_LINK}", _links_named(result.stdout, IPVS_LINK)))
    if missing:
        log.info("not installed on the node, so not inspected: %s", ", ".join(missing))
    return out


IPVS_LINK = "kube-ipvs0"


def _links_named(text: str, name: str) -> str:
    """`ip -json address show` output cut down to the link `name` (`[]` when it has none)."""
    try:
        links = json.loads(text or "[]")
    except ValueError:
        return "[]"
    return json.dumps([link for link in links if isinstance(link, dict) and link.get("ifname") == name])


def _addresses(text: str) -> list[str]:
    try:
        links = json.loads(text or "[]")
    except ValueError:
        return []
    found: list[str] = []
    for link in links:
        if link.get("ifname") == "kube-ipvs0":
            continue  # IPVS mode's VIPs, not the node's own addresses
        for info in link.get("addr_info") or []:
            local = info.get("local")
            if local and info.get("scope") == "global" and local not in found:
                found.append(str(local))
    return found
