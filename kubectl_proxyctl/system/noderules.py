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
* the node's routes (`ip -4 -json route show`, or `-6`): which interface a packet arrives on
  and leaves by, for the rules that match interfaces;
* the node's own addresses (`ip -json address show`), and, when there are IPVS virtual
  servers, the addresses of `kube-ipvs0` (as that command prints them for that link);
* for a mode that keeps its state in pinned BPF maps (eBPF mode, which describes what to read
  in a `PinnedMaps`: this layer knows no map layout): when its pin directory exists, every
  map with `bpftool -j map dump pinned DIR/NAME`, the programs of the cgroup the maps name
  with `bpftool -j cgroup show CGROUP`, and its nft table of both families; all of it as one
  JSON document the mode builds. No pin directory: the mode is not on the node, silently; no
  bpftool: a note naming the package, and the document says nothing was read.

A tool that is missing, or a table that does not exist, is simply absent from the result (the
log says which tools were missing, at -v); only a failure of the iptables-save of the
backend in use is an error.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

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


@dataclass(frozen=True)
class PinnedMaps:
    """What to read of a mode that keeps its state in pinned BPF maps (the mode says; see
    `modes.ebpf.parse.collection`)."""

    root: str  # the pin directory: absent means the mode is not on the node
    maps: tuple[str, ...]  # the maps under it, in reading order (the one that names the cgroup first)
    # the cgroup the mode's programs are attached to, from the maps read so far ("" when unknown)
    cgroup_of: Callable[[Mapping[str, list[Any]]], str]
    # (pin dir, cgroup, map → entries, programs or None, notes) → the JSON document to keep
    document: Callable[[str, str, Mapping[str, list[Any]], list[Any] | None, list[str]], dict[str, Any]]
    nft_table: str = ""  # the mode's nft table, read in both families ("" for none)
    package: str = "bpftool"  # the package that installs bpftool, for the note when it is missing


def collect(executor: Executor | None = None, family: IPFamily = IPFamily.IPv4,
            pinned: Sequence[PinnedMaps] = ()) -> NodeRules:
    """Everything the node's proxy modes may have programmed (`pinned`: the modes that keep
    their state in pinned BPF maps)."""
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

    # The routes say which interface a packet arrives on and leaves by (other software's
    # rules match on interfaces: Docker's docker0, Calico's cali+).
    family_flag = ["-6"] if family == IPFamily.IPv6 else ["-4"]
    result = ex.run(["ip", *family_flag, "-json", "route", "show"], timeout=30)
    if result.ok and result.stdout.strip().startswith("["):
        out.texts.append((f"ip {family_flag[0]} -json route show", result.stdout))
    result = ex.run(["ip", "-json", "address", "show"], timeout=30)
    if result.ok:
        out.addresses = _addresses(result.stdout)
        if any(source == "ipvsadm -Sn" for source, _ in out.texts):
            # IPVS mode binds every service address to kube-ipvs0: verify checks them there
            out.texts.append((f"ip -json address show dev {IPVS_LINK}", _links_named(result.stdout, IPVS_LINK)))
    for spec in pinned:
        _collect_pinned(ex, spec, out, missing)
    if missing:
        log.info("not installed on the node, so not inspected: %s", ", ".join(missing))
    return out


def _collect_pinned(ex: Executor, spec: PinnedMaps, out: NodeRules, missing: list[str]) -> None:
    """One pinned-map mode's maps, programs and nft table (see the module docstring)."""
    there = ex.run(["test", "-d", spec.root], timeout=10)
    if there.returncode != _MISSING and not there.ok:
        return  # nothing pinned: the mode is not on this node
    known = there.ok  # False: no `test` on the node, so only bpftool can tell
    notes: list[str] = []
    read: dict[str, list[Any]] = {}
    programs: list[Any] | None = None
    cgroup = ""
    for name in spec.maps:
        path = f"{spec.root}/{name}"
        result = ex.run(["bpftool", "-j", "map", "dump", "pinned", path], timeout=60)
        if result.returncode == _MISSING:
            missing.append("bpftool")
            if not known:
                return  # neither can tell whether the mode is there: say nothing
            notes.append(f"bpftool is not installed on the node: the maps under {spec.root} were not read (install "
                         f"the {spec.package} package)")
            break
        entries = _bpftool_json(result)
        if not known and not read and not isinstance(entries, list):
            return  # the first map is not pinned either: the mode is not on this node
        known = True
        if isinstance(entries, list):
            read[name] = entries
        else:
            notes.append(f"map {name} was not read: {entries}")
        if name == spec.maps[0]:
            cgroup = spec.cgroup_of(read)
    if read:
        if not cgroup:
            notes.append("the maps do not name the cgroup the programs are attached to: the programs were not read")
        else:
            result = ex.run(["bpftool", "-j", "cgroup", "show", cgroup], timeout=60)
            listed = _bpftool_json(result)
            if isinstance(listed, list):
                programs = listed
            else:
                notes.append(f"the programs of cgroup {cgroup} were not read: {listed}")
    document = spec.document(spec.root, cgroup, read, programs, notes)
    out.texts.append((f"bpftool -j map dump pinned {spec.root}/…", json.dumps(document)))
    for nft_family in ("ip", "ip6") if spec.nft_table else ():
        result = ex.run(["nft", "-j", "list", "table", nft_family, spec.nft_table], timeout=60)
        if result.ok and result.stdout.strip():
            out.texts.append((f"nft -j list table {nft_family} {spec.nft_table}", result.stdout))


def _bpftool_json(result: Result) -> list[Any] | str:
    """bpftool -j's list, or why there is none (its `{"error": …}`, stderr, or the exit status)."""
    try:
        doc = json.loads(result.stdout) if result.stdout.strip() else None
    except ValueError:
        doc = None
    if result.ok and isinstance(doc, list):
        return doc
    if result.ok and doc is None and not result.stdout.strip():
        return []
    if isinstance(doc, dict) and doc.get("error"):
        return str(doc["error"])
    return result.stderr.strip().splitlines()[-1] if result.stderr.strip() else f"exit status {result.returncode}"


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
