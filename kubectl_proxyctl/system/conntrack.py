"""Stale UDP conntrack clean-up, over netlink (pyroute2) or with the `conntrack` tool.

Theory of operation: UDP has no teardown, so a conntrack entry that was DNATed to an
endpoint that is gone (or created while a Service had no endpoints, when packets were
rejected un-NATed) keeps steering every later packet of the same 5-tuple to the wrong
place. kube-proxy (v1.32+, `pkg/proxy/conntrack/cleanup.go`) reconciles instead of
reacting to events: dump the UDP entries, and delete every one whose

* original destination is a UDP service IP (cluster IP, external IP, load-balancer IP)
  and whose reply source is not one of that IP's serving endpoints, or
* original destination port is a UDP NodePort and whose reply source is not one of that
  port's serving endpoints.

`stale_udp_flows` is that rule as a pure function; `ConntrackSystem.reconcile_udp` dumps,
applies it and deletes, returning how many entries it deleted. `delete_udp_to` is the
single-target form (one service IP and/or one destination port, with the reply sources
to keep). The reply source of a DNATed entry is the endpoint that answered; an entry
never NATed has the service IP itself as reply source, so it is stale by definition.

Transport: netlink first. The socket is opened in the executor's network namespace by a
thread that entered it (`system.netns.call_in_netns`), then driven by pyroute2's
`AsyncConntrack` in that thread's own event loop: one dump, then one delete per stale
entry, keyed by its exact original tuple. When netlink is unusable (pyroute2 missing,
no nf_conntrack_netlink, no permission) the same work is done with `conntrack -L -p udp`
and one `conntrack -D` per entry through the executor, so it also runs in the namespace.
`method` records which transport the last call used. Entries that vanish between the
dump and the delete (they time out) are not counted and are not errors.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import re
import socket
from dataclasses import dataclass
from typing import Any, Callable, Collection, Iterable, Mapping

from kubectl_proxyctl.errors import ProxyctlError
from kubectl_proxyctl.model import IPFamily
from kubectl_proxyctl.system.executor import Executor, SubprocessExecutor
from kubectl_proxyctl.system.netns import call_in_netns

IPPROTO_UDP = 17
NETLINK = "netlink"
CLI = "cli"

_DELETED_RE = re.compile(r"(\d+) flow entries have been deleted")


@dataclass(frozen=True)
class Flow:
    """One conntrack entry: the original and the reply tuple (addresses normalised)."""

    orig_src: str
    orig_dst: str
    orig_sport: int
    orig_dport: int
    reply_src: str
    reply_dst: str
    reply_sport: int
    reply_dport: int


def normalize_ip(ip: str) -> str:
    return str(ipaddress.ip_address(ip))


def _ip_sets(by_key: Mapping[Any, Collection[str]]) -> dict[Any, frozenset[str]]:
    return {key: frozenset(normalize_ip(ip) for ip in ips) for key, ips in by_key.items()}


def stale_udp_flows(
    flows: Iterable[Flow],
    serving_by_ip: Mapping[str, Collection[str]],
    serving_by_nodeport: Mapping[int, Collection[str]],
) -> list[Flow]:
    """The UDP flows kube-proxy's reconciler deletes (see the module docstring)."""
    by_ip = _ip_sets({normalize_ip(ip): eps for ip, eps in serving_by_ip.items()})
    by_port = _ip_sets(serving_by_nodeport)
    stale: list[Flow] = []
    for flow in flows:
        serving = by_ip.get(flow.orig_dst)
        if serving is not None and flow.reply_src not in serving:
            stale.append(flow)
            continue
        serving = by_port.get(flow.orig_dport)
        if serving is not None and flow.reply_src not in serving:
            stale.append(flow)
    return stale


def parse_conntrack_list(text: str) -> list[Flow]:
    """UDP flows from `conntrack -L -p udp` output (first tuple original, second reply)."""
    flows: list[Flow] = []
    for line in text.splitlines():
        fields: dict[str, list[str]] = {}
        for token in line.split():
            key, sep, value = token.partition("=")
            if sep and key in ("src", "dst", "sport", "dport"):
                fields.setdefault(key, []).append(value)
        if any(len(fields.get(k, ())) < 2 for k in ("src", "dst", "sport", "dport")):
            continue
        flows.append(
            Flow(
                normalize_ip(fields["src"][0]),
                normalize_ip(fields["dst"][0]),
                int(fields["sport"][0]),
                int(fields["dport"][0]),
                normalize_ip(fields["src"][1]),
                normalize_ip(fields["dst"][1]),
                int(fields["sport"][1]),
                int(fields["dport"][1]),
            )
        )
    return flows


Selector = Callable[[list[Flow]], list[Flow]]


class NetlinkUnavailable(Exception):
    """Raised inside the netlink path before anything was deleted: fall back to the CLI."""


class ConntrackSystem:
    """UDP conntrack entries of one family, in the executor's network namespace."""

    def __init__(
        self,
        executor: Executor | None = None,
        family: IPFamily = IPFamily.IPv4,
        netlink: bool = True,
    ) -> None:
        self.executor: Executor = executor if executor is not None else SubprocessExecutor()
        self.family = family
        self.netlink = netlink
        self.method: str | None = None

    def __repr__(self) -> str:
        return f"ConntrackSystem({self.family}, netns={self.executor.netns!r}, netlink={self.netlink})"

    @property
    def _af(self) -> int:
        return socket.AF_INET6 if self.family == IPFamily.IPv6 else socket.AF_INET

    # public API --------------------------------------------------------------------

    def udp_flows(self) -> list[Flow]:
        """Every UDP entry of this family."""
        seen: list[Flow] = []

        def keep(flows: list[Flow]) -> list[Flow]:
            seen.extend(flows)
            return []

        self._run(keep)
        return seen

    def reconcile_udp(
        self,
        serving_by_ip: Mapping[str, Collection[str]],
        serving_by_nodeport: Mapping[int, Collection[str]],
    ) -> int:
        """Delete the stale UDP entries; returns how many were deleted."""
        return self._run(lambda flows: stale_udp_flows(flows, serving_by_ip, serving_by_nodeport))

    def delete_udp_to(
        self,
        service_ip: str | None = None,
        dport: int | None = None,
        except_reply_sources: Collection[str] = frozenset(),
    ) -> int:
        """Delete UDP entries to `service_ip` (and/or original destination port `dport`)
        whose reply source is not in `except_reply_sources`; returns how many."""
        if service_ip is None and dport is None:
            raise ValueError("delete_udp_to needs a service IP or a destination port")
        dst = normalize_ip(service_ip) if service_ip is not None else None
        keep = frozenset(normalize_ip(ip) for ip in except_reply_sources)

        def select(flows: list[Flow]) -> list[Flow]:
            return [
                f
                for f in flows
                if (dst is None or f.orig_dst == dst)
                and (dport is None or f.orig_dport == dport)
                and f.reply_src not in keep
            ]

        return self._run(select)

    # transports --------------------------------------------------------------------

    def _run(self, select: Selector) -> int:
        if self.netlink:
            try:
                deleted = call_in_netns(self.executor.netns, lambda: self._netlink(select))
            except NetlinkUnavailable:
                pass
            else:
                self.method = NETLINK
                return deleted
        self.method = CLI
        return self._cli(select)

    def _netlink(self, select: Selector) -> int:
        """Runs in a fresh thread inside the namespace, so it may own an event loop."""
        try:
            from pyroute2.netlink import NETLINK_NETFILTER  # type: ignore[import-untyped]

            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_NETFILTER)
        except (ImportError, OSError) as exc:
            raise NetlinkUnavailable(str(exc)) from exc
        return asyncio.run(self._netlink_session(sock, select))

    async def _netlink_session(self, sock: socket.socket, select: Selector) -> int:
        from pyroute2.conntrack import AsyncConntrack  # type: ignore[import-untyped]
        from pyroute2.netlink.exceptions import NetlinkError  # type: ignore[import-untyped]
        from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple  # type: ignore[import-untyped]

        try:
            ct = AsyncConntrack(nfgen_family=self._af, use_socket=sock)
        except BaseException:
            sock.close()
            raise
        try:
            try:
                wanted = NFCTAttrTuple(family=self._af, proto=IPPROTO_UDP)
                entries = [e async for e in await ct.dump_entries(tuple_orig=wanted)]
            except (NetlinkError, OSError) as exc:
                raise NetlinkUnavailable(str(exc)) from exc
            flows = {self._flow_of(e): e for e in entries}
            deleted = 0
            for flow in select(list(flows)):
                orig = flows[flow].tuple_orig
                key = NFCTAttrTuple(
                    family=self._af,
                    saddr=orig.saddr,
                    daddr=orig.daddr,
                    proto=IPPROTO_UDP,
                    sport=orig.sport,
                    dport=orig.dport,
                )
                try:
                    await ct.entry("del", tuple_orig=key)
                except NetlinkError as exc:
                    if exc.code == errno.ENOENT:
                        continue
                    raise ProxyctlError(f"deleting conntrack entry {flow} failed: {exc}") from exc
                deleted += 1
            return deleted
        finally:
            ct.close()

    @staticmethod
    def _flow_of(entry: Any) -> Flow:
        o, r = entry.tuple_orig, entry.tuple_reply
        return Flow(
            normalize_ip(o.saddr),
            normalize_ip(o.daddr),
            int(o.sport),
            int(o.dport),
            normalize_ip(r.saddr),
            normalize_ip(r.daddr),
            int(r.sport),
            int(r.dport),
        )

    def _cli_family(self) -> list[str]:
        return ["-f", "ipv6" if self.family == IPFamily.IPv6 else "ipv4"]

    def _cli(self, select: Selector) -> int:
        listed = self.executor.run(["conntrack", "-L", "-p", "udp", *self._cli_family()], timeout=30)
        if not listed.ok:
            raise ProxyctlError(f"conntrack -L failed: {listed.stderr.strip() or listed.returncode}")
        deleted = 0
        for flow in select(parse_conntrack_list(listed.stdout)):
            result = self.executor.run(
                [
                    "conntrack", "-D", "-p", "udp", *self._cli_family(),
                    "--orig-src", flow.orig_src, "--orig-dst", flow.orig_dst,
                    "--sport", str(flow.orig_sport), "--dport", str(flow.orig_dport),
                ],
                timeout=30,
            )
            match = _DELETED_RE.search(result.stderr + result.stdout)
            if match is None and not result.ok:
                raise ProxyctlError(f"conntrack -D failed: {result.stderr.strip() or result.returncode}")
            deleted += int(match.group(1)) if match else 0
        return deleted
