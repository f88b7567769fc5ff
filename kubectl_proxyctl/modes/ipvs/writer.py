"""The engine's side of IPVS mode: virtual servers and ipsets over netlink, the service
addresses on the `kube-ipvs0` dummy interface, and one `iptables-restore --noflush` of the
constant-size companion rules (kube-proxy's IPVS layout, `render.py`).

* A **full sync** (the first, after a failure, when our state was tampered with, hourly)
  reads the kernel (virtual and real servers, set members, kube-ipvs0's addresses) and
  writes the difference: missing objects are added, wrong ones corrected, ours that are
  no longer wanted removed. What is ours: virtual servers on kube-ipvs0's addresses, the
  NodePort ones (a port in our NodePort sets, on a node address) and every one an earlier
  sync of this process wrote; a virtual server someone else made on another address is
  never touched, unlike kube-proxy, which deletes every virtual server it did not make.
  Virtual servers on an address in `--ipvs-exclude-cidrs` are never deleted, ours included
  (kube-proxy's cleanLegacyService skips them the same way), neither by a sync nor by
  `run --cleanup`.
* A **partial sync** renders only the changed Services and writes only what differs from
  the last sync (`render.Delta`): the virtual and real servers, set members and addresses of
  those Services. The iptables payload is restored only when it changed.
* **Graceful termination** (TCP): a real server that goes away is deleted at once when the
  kernel counts no active and no inactive connection on it (as kube-proxy's
  GracefulDeleteRS tries first); otherwise it gets weight 0, so new connections avoid it
  while open ones go on, and it is deleted once it has no connection left, checked at the
  start of every sync (at least every `--sync-period`;
  kube-proxy checks every minute). UDP and SCTP real servers are deleted at once: the kernel
  drops their flows on the next packet (`net/ipv4/vs/expire_nodest_conn=1`). An endpoint that
  comes back before it was deleted gets its weight 1 again.
* **Tamper detection** (`state_missing`, every sync period): kube-ipvs0, every virtual server
  we wrote (`ipvsadm -C` shows), every set, and the iptables jumps and chains; anything lost
  makes the next sync a full one, which repairs it.

Kernel writes are queued and sent many to a system call (`system/netlink.py`), before the
iptables restore and at the end of the sync. A refusal fails the sync with an ApplyError naming
the first refused object (requests sent with it may have been applied); the proxier then makes
the next sync a full one, which starts from what the kernel holds, so there is nothing to roll
back.
"""

from __future__ import annotations

import logging
import time
import ipaddress
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from kubectl_proxyctl.errors import ConfigError, ProxyctlError
from kubectl_proxyctl.model import IPFamily
from kubectl_proxyctl.modes.base import Mode, Written
from kubectl_proxyctl.modes.ipvs.render import (
    DRAINING_PROTOCOLS,
    DUMMY_DEVICE,
    FILTER_CHAINS,
    NAT_CHAINS,
    NODE_PORT_SCTP,
    NODE_PORT_TCP,
    NODE_PORT_UDP,
    SETS,
    Options,
    RenderedIpvs,
    VirtualServer,
    render,
    set_name,
    timeouts_line,
)
from kubectl_proxyctl.plan.planner import NodePlan, ProxyConfig

log = logging.getLogger(__name__)

FULL_SYNC_PERIOD = 3600.0

# How kube-proxy's IPVS mode configures a node by default.
DEFAULT_NODEPORT_ADDRESSES: tuple[str, ...] = ()  # NodePorts on every local address
LOCALHOST_NODEPORTS = False  # IPVS mode has no NodePorts on 127.0.0.1

RealKey = tuple[tuple[str, str, int], str, int]  # (virtual server, real address, real port)
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def networks(cidrs: Iterable[str]) -> tuple[Network, ...]:
    """`--ipvs-exclude-cidrs` as networks (host bits allowed, as Go's net.ParseCIDR allows them)."""
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


def excluded(address: str, exclude: Iterable[Network]) -> bool:
    """Whether a virtual server's address lies in one of the excluded ranges."""
    ip = ipaddress.ip_address(address)
    return any(ip in net for net in exclude if net.version == ip.version)


@dataclass(frozen=True)
class IpvsSystem:
    """The four kernel interfaces IPVS mode writes through (real ones or fakes)."""

    ipvs: Any  # system.ipvs.IpvsKernel
    ipset: Any  # system.ipset.IpsetKernel
    dummy: Any  # system.ipvs.DummyDevice
    iptables: Any  # system.iptables.IptablesSystem


class IpvsWriter:
    """Writes kube-proxy's IPVS layout through an `IpvsSystem`."""

    mode = Mode.IPVS

    def __init__(self, system: Any, *, family: IPFamily = IPFamily.IPv4,
                 options: Options = Options(), full_sync_period: float = FULL_SYNC_PERIOD,
                 monotonic: Callable[[], float] = time.monotonic, exclude_cidrs: Iterable[str] = ()) -> None:
        self.system = system
        self.family = family
        self.options = options
        self.exclude = networks(exclude_cidrs)  # virtual servers there are never deleted
        self.full_sync_period = full_sync_period
        self.monotonic = monotonic
        self.rendered: RenderedIpvs | None = None  # the state after the last successful sync
        self.iptables_text = ""  # the last restored payload
        self.owned: set[tuple[str, str, int]] = set()  # virtual servers this process wrote
        self.terminating: dict[RealKey, float] = {}  # real servers draining at weight 0, since
        self.ops = 0  # kernel writes of the current sync

    @property
    def ipvs(self) -> Any:
        return self.system.ipvs

    @property
    def ipset(self) -> Any:
        return self.system.ipset

    @property
    def dummy(self) -> Any:
        return self.system.dummy

    @property
    def iptables(self) -> Any:
        return self.system.iptables

    @property
    def _fam(self) -> str:
        return "inet6" if self.family == IPFamily.IPv6 else "inet"

    def _ours_family(self, address: str) -> bool:
        return (":" in address) == (self.family == IPFamily.IPv6)

    # --- sync ------------------------------------------------------------------------------

    def sync(self, plan: NodePlan, full: bool, changed: frozenset[str] | set[str]) -> Written:
        self.ops = 0
        local = self.dummy.other_addresses() if plan.nodeport_match_all else None
        if full or self.rendered is None:
            rendered = render(plan, self.options, local_addresses=local)
        else:
            rendered = render(plan, self.options, local_addresses=local, previous=self.rendered, changed=changed)
        self._defer(True)
        try:
            if rendered.delta is None:
                self._write_full(rendered)
            else:
                self._write_partial(rendered)
            self._flush()
        finally:
            self._defer(False)  # after a refusal, what was queued behind it is dropped
        self.rendered = rendered
        self.owned = set(rendered.state.vservers)
        return Written(rendered.delta is None, self.ops, rendered)

    def _write_full(self, rendered: RenderedIpvs) -> None:
        state = rendered.state
        for spec in SETS:
            if self.ipset.ensure(set_name(spec.name, self.family), spec.type, self._fam):
                self.ops += 1
        kernel = {s.key: s for s in self.ipvs.services() if self._ours_family(s.address)}
        bound_before = self.dummy.addresses()
        old_nodeports = self._nodeport_ports()
        for key, want in state.vservers.items():
            have = kernel.get(key)
            if have is None:
                self._add_vs(want)
                continue
            if (have.scheduler, have.persistent, have.sched_flags) != self._settings(want):
                self.ipvs.update_service(key, want.scheduler, want.persistent, self._sched_bits(want))
                self.ops += 1
            reals = {(r.address, r.port): r.weight for r in have.reals}
            self._sync_reals(want, reals)
        self.dummy.ensure()
        bind = sorted(set(state.bound) - bound_before)
        if bind:
            self.dummy.bind(bind)
            self.ops += len(bind)
        for spec in SETS:
            name = set_name(spec.name, self.family)
            have_members = self.ipset.members(name) or set()
            want_members = set(state.members[spec.name])
            add, delete = sorted(want_members - have_members), sorted(have_members - want_members)
            if add:
                self.ipset.add(name, spec.type, add, self._fam)
            if delete:
                self.ipset.delete(name, spec.type, delete, self._fam)
            self.ops += len(add) + len(delete)
        self._restore(rendered, force=True)
        unbind = sorted(a for a in bound_before - set(state.bound) if self._ours_family(a))
        if unbind:
            self.dummy.unbind(unbind)
            self.ops += len(unbind)
        node_addresses = set(rendered.nodeport_addresses)
        for key in sorted(set(kernel) - set(state.vservers)):
            protocol, address, port = key
            ours = (key in self.owned or address in bound_before
                    or (port in old_nodeports.get(protocol, ()) and address in node_addresses))
            if ours and not excluded(address, self.exclude):
                self._delete_vs(key)

    def _write_partial(self, rendered: RenderedIpvs) -> None:
        delta = rendered.delta
        assert delta is not None
        for key, (old, new) in sorted(delta.vservers.items()):
            if new is None:
                if not excluded(key[1], self.exclude):
                    self._delete_vs(key)
            elif old is None:
                self._add_vs(new)
            else:
                if self._settings(old) != self._settings(new):
                    self.ipvs.update_service(key, new.scheduler, new.persistent, self._sched_bits(new))
                    self.ops += 1
                reals = {(r.address, r.port): r.weight for r in old.reals}
                reals.update({(a, p): 0 for (k, a, p) in self.terminating if k == key})
                self._sync_reals(new, reals)
        if delta.bind:
            self.dummy.bind(sorted(delta.bind))
            self.ops += len(delta.bind)
        for spec in SETS:
            added, removed = delta.members.get(spec.name, (set(), set()))
            name = set_name(spec.name, self.family)
            if added:
                self.ipset.add(name, spec.type, sorted(added), self._fam)
            if removed:
                self.ipset.delete(name, spec.type, sorted(removed), self._fam)
            self.ops += len(added) + len(removed)
        self._restore(rendered, force=False)
        if delta.unbind:
            self.dummy.unbind(sorted(delta.unbind))
            self.ops += len(delta.unbind)

    def _defer(self, on: bool) -> None:
        for part in (self.ipvs, self.ipset, self.dummy):
            part.defer(on)

    def _flush(self) -> None:
        """Send the queued virtual servers, real servers, addresses and set members."""
        for part in (self.ipvs, self.ipset, self.dummy):
            part.flush()

    def _restore(self, rendered: RenderedIpvs, force: bool) -> None:
        self._flush()  # the iptables rules steer traffic to what must be there by then
        if force or rendered.iptables != self.iptables_text:
            self.iptables.restore(rendered.iptables)
            self.iptables_text = rendered.iptables
            self.ops += 1
        if force:
            from kubectl_proxyctl.system.iptables import Jump

            self.iptables.ensure_jumps([Jump(j.table, j.chain, j.args()) for j in rendered.jump_rules])

    def _settings(self, vs: VirtualServer) -> tuple[str, int, int]:
        return (vs.scheduler, vs.persistent, self._sched_bits(vs))

    @staticmethod
    def _sched_bits(vs: VirtualServer) -> int:
        from kubectl_proxyctl.system.ipvs import sched_flag_bits

        return sched_flag_bits(vs.flags)

    def _add_vs(self, vs: VirtualServer) -> None:
        self.ipvs.add_service(vs.key, vs.scheduler, vs.persistent, self._sched_bits(vs))
        self.ops += 1
        self._sync_reals(vs, {})

    def _delete_vs(self, key: tuple[str, str, int]) -> None:
        self.ipvs.delete_service(key)
        self.ops += 1
        for real in [r for r in self.terminating if r[0] == key]:
            del self.terminating[real]

    def _sync_reals(self, vs: VirtualServer, have: Mapping[tuple[str, int], int]) -> None:
        """Make `vs`'s real servers (`have`: address, port → weight in the kernel) what it wants."""
        key = vs.key
        want = {(r.address, r.port) for r in vs.reals}
        for address, port in sorted(want):
            weight = have.get((address, port))
            if weight is None:
                self.ipvs.add_real(key, address, port, 1)
                self.ops += 1
            elif weight != 1:
                self.ipvs.set_weight(key, address, port, 1)
                self.ops += 1
            self.terminating.pop((key, address, port), None)
        connections: dict[tuple[str, int], int] | None = None  # read once, when a TCP real server goes
        for (address, port), weight in sorted(have.items()):
            if (address, port) in want:
                continue
            real = (key, address, port)
            if real in self.terminating:
                continue  # draining already; drain() deletes it once idle
            if vs.protocol in DRAINING_PROTOCOLS:
                if connections is None:
                    connections = {(r.address, r.port): r.active + r.inactive for r in self.ipvs.reals(key)}
                if connections.get((address, port), 0):
                    # Open connections: drain at weight 0 (deleted by a later sync once idle).
                    if weight != 0:
                        self.ipvs.set_weight(key, address, port, 0)
                        self.ops += 1
                    self.terminating[real] = self.monotonic()
                    continue
            # UDP and SCTP, or no connection to wait for: gone at once, as kube-proxy does.
            self.ipvs.delete_real(key, address, port)
            self.ops += 1

    def _nodeport_ports(self) -> dict[str, set[int]]:
        """Protocol → the NodePorts in our sets before this sync (what makes a node address's
        virtual server ours)."""
        out: dict[str, set[int]] = {}
        for protocol, name in (("TCP", NODE_PORT_TCP), ("UDP", NODE_PORT_UDP), ("SCTP", NODE_PORT_SCTP)):
            members = self.ipset.members(set_name(name, self.family)) or set()
            out[protocol] = {int(m.rsplit(":", 1)[-1]) for m in members if m.rsplit(":", 1)[-1].isdecimal()}
        for protocol, _, port in self.owned:
            out.setdefault(protocol, set()).add(port)
        return out

    # --- housekeeping ----------------------------------------------------------------------

    def before_sync(self, pending_changes: bool, metrics: Any, family: str) -> None:
        """Delete the draining real servers that have no connection left."""
        try:
            deleted = self.drain()
        except ProxyctlError as exc:
            log.warning("cannot check the draining real servers (%s); will retry", exc)
            return
        if deleted:
            log.info("deleted %d drained real servers", deleted)

    def drain(self) -> int:
        """Delete every terminating real server without connections; how many were deleted."""
        deleted = 0
        for key in sorted({k for k, _, _ in self.terminating}):
            current = {(r.address, r.port): r for r in self.ipvs.reals(key)}
            for real in [r for r in self.terminating if r[0] == key]:
                found = current.get((real[1], real[2]))
                if found is None:
                    del self.terminating[real]
                elif found.active + found.inactive == 0:
                    self.ipvs.delete_real(key, real[1], real[2])
                    del self.terminating[real]
                    deleted += 1
        return deleted

    def after_failure(self, error: Exception) -> None:
        pass  # the next sync is a full one, which starts from what the kernel holds

    def state_missing(self) -> list[str]:
        """What of our state is gone (see the module docstring); [] when all is there."""
        if self.rendered is None:
            return []
        missing: list[str] = []
        try:
            if self.dummy.index() is None:
                missing.append(f"interface {DUMMY_DEVICE}")
            kernel = {s.key for s in self.ipvs.services(reals=False)}
            gone = sorted(k for k in self.rendered.state.vservers if k not in kernel)
            if gone:
                missing.append(f"{len(gone)} IPVS virtual servers (e.g. {gone[0][0]} {gone[0][1]}:{gone[0][2]})")
            sets = [set_name(s.name, self.family) for s in SETS]
            missing += [f"ipset {n}" for n in sets if not self.ipset.exists(n)]
            summary = self.iptables.summary(("nat", "filter"))
            missing += [f"the jump from {j.table} {j.chain} to {j.target}" for j in self.rendered.jump_rules
                        if j.target not in summary.builtin_targets.get((j.table, j.chain), ())]
            missing += [f"chain nat {c}" for c in NAT_CHAINS if ("nat", c) not in summary.rules]
            missing += [f"chain filter {c}" for c in FILTER_CHAINS if ("filter", c) not in summary.rules]
        except ProxyctlError as exc:
            log.warning("cannot check our IPVS state: %s", exc)
        return missing

    def delete_stale(self) -> int:
        return 0  # nothing waits but draining real servers, which must keep their connections

    def record_metrics(self, metrics: Any, family: str, written: Written) -> None:
        pass  # the shared sync metrics say it all

    def count_failure(self, metrics: Any, family: str, full: bool) -> None:
        counter = getattr(metrics, "sync_proxy_rules_iptables_restore_failures_total", None)
        if counter is not None:
            counter.labels(ip_family=family).inc()


def make_writer(config: ProxyConfig) -> IpvsWriter:
    """The writer for a real node; a ConfigError naming the missing kernel module when the
    kernel has no IPVS (before anything is written)."""
    from kubectl_proxyctl.system.ipset import IpsetKernel
    from kubectl_proxyctl.system.iptables import IptablesSystem
    from kubectl_proxyctl.system.ipvs import DummyDevice, IpvsKernel, ensure_module

    why = ensure_module("ip_vs")
    if why:
        raise ConfigError(f"--mode ipvs: {why}; use --mode iptables or --mode nftables")
    try:
        ipvs = IpvsKernel()
        ipset = IpsetKernel()
    except ProxyctlError as exc:
        raise ConfigError(f"--mode ipvs: {exc}") from None
    iptables = IptablesSystem(config.family)
    detection = iptables.detect()
    if detection.warning:
        log.warning("%s", detection.warning)
    probe_scheduler(ipvs, config.ipvs_scheduler)
    return IpvsWriter(IpvsSystem(ipvs, ipset, DummyDevice(DUMMY_DEVICE), iptables), family=config.family,
                      options=Options(scheduler=config.ipvs_scheduler,
                                      random_fully=iptables.supports_random_fully()),
                      exclude_cidrs=config.ipvs_exclude_cidrs)


PROBE_KEY = ("TCP", "198.51.100.0", 20000)  # kube-proxy's TEST-NET-2 probe address


def probe_scheduler(ipvs: Any, scheduler: str) -> None:
    """kube-proxy's start-up check: the scheduler works if a virtual server with it can be made."""
    if any(s.scheduler == scheduler for s in ipvs.services(reals=False)):
        return
    try:
        ipvs.add_service(PROBE_KEY, scheduler, 0, 0)
    except ProxyctlError as exc:
        raise ConfigError(f"--ipvs-scheduler {scheduler}: the kernel refuses it (module ip_vs_{scheduler}): {exc}") \
            from None
    ipvs.delete_service(PROBE_KEY)


def dry_run(plan: NodePlan) -> tuple[str, str]:
    """(the state a full sync would write, as ipvsadm -Sn / ipset save / iptables-save text, a
    one-line summary) for `run --dry-run`."""
    rendered = render(plan, Options(scheduler=plan.config.ipvs_scheduler))
    services, reals, members = rendered.counts
    return rendered.save_text(timeouts(plan.config)), (f"dry run: {services} IPVS virtual servers with {reals} real servers, "
                                  f"{members} ipset members, {len(rendered.state.bound)} addresses on "
                                  f"{DUMMY_DEVICE}, and the iptables rules above")


# The sysctls kube-proxy's IPVS mode sets (reference §4.1).
SYSCTLS: tuple[tuple[str, int], ...] = (
    ("net/ipv4/vs/conntrack", 1),
    ("net/ipv4/vs/expire_nodest_conn", 1),
    ("net/ipv4/vs/expire_quiescent_template", 1),
    ("net/ipv4/ip_forward", 1),
)
STRICT_ARP: tuple[tuple[str, int], ...] = (("net/ipv4/conf/all/arp_ignore", 1), ("net/ipv4/conf/all/arp_announce", 2))


def node_sysctls(kernel_release: str, strict_arp: bool) -> list[tuple[str, int]]:
    """What to set on this kernel: conn_reuse_mode=0 only on 4.1 to 5.8 (kube-proxy leaves it
    alone on 5.9+, where 0 would break graceful termination), ARP settings with strict ARP."""
    out = list(SYSCTLS)
    try:
        major, minor = (int(x) for x in kernel_release.split("-", 1)[0].split(".")[:2])
    except ValueError:
        major, minor = 0, 0
    if (4, 1) <= (major, minor) < (5, 9):
        out.append(("net/ipv4/vs/conn_reuse_mode", 0))
    if strict_arp:
        out += STRICT_ARP
    return out


def timeouts(config: ProxyConfig) -> tuple[int, int, int]:
    """(TCP, TCP FIN, UDP) connection timeouts in seconds, 0 for each one the kernel keeps."""
    return (config.ipvs_tcp_timeout, config.ipvs_tcpfin_timeout, config.ipvs_udp_timeout)


def apply_timeouts(ipvs: Any, config: ProxyConfig) -> bool:
    """Set the IPVS timeouts when any is given; like kube-proxy, a refusal is logged, not fatal
    (the timeouts tune connection expiry, the proxy works without them). Whether they were set."""
    wanted = timeouts(config)
    if not any(wanted):
        return False
    try:
        ipvs.set_timeouts(*wanted)
    except ProxyctlError as exc:
        log.warning("%s", exc)
        return False
    log.info("set the IPVS timeouts: ipvsadm %s", timeouts_line(*wanted))
    return True


def prepare_node(config: ProxyConfig) -> None:
    """Set kube-proxy's IPVS sysctls (warn, not fail, where one cannot be set) and the
    timeouts of `--ipvs-tcp-timeout` and its kin."""
    import os

    from kubectl_proxyctl.system.ipvs import IpvsKernel
    from kubectl_proxyctl.system.sysctl import Sysctl

    if any(timeouts(config)):
        ipvs = IpvsKernel()
        try:
            apply_timeouts(ipvs, config)
        finally:
            ipvs.close()
    sysctl = Sysctl()
    for key, value in node_sysctls(os.uname().release, config.ipvs_strict_arp):
        try:
            if sysctl.ensure(key, value):
                log.info("set %s=%d", key, value)
        except ProxyctlError as exc:
            log.warning("cannot set %s=%d: %s", key, value, exc)


# Chains of IPVS mode's companion rules (kube-proxy's iptablesCleanupChains).
OWNED_CHAINS = tuple(dict.fromkeys(NAT_CHAINS + FILTER_CHAINS))


def cleanup(family: IPFamily, config: ProxyConfig | None = None) -> tuple[bool, str]:
    """Remove IPVS mode's state of one family: our virtual servers, kube-ipvs0 (once empty),
    the companion iptables rules and the ipsets. Only when there are signs of IPVS mode
    (kube-ipvs0 or one of our sets), so starting another mode costs two netlink queries."""
    done: list[str] = []
    try:
        from kubectl_proxyctl.system.ipset import IpsetKernel
        from kubectl_proxyctl.system.ipvs import DummyDevice

        ipset = IpsetKernel()
        dummy = DummyDevice(DUMMY_DEVICE)
    except Exception as exc:  # noqa: BLE001 - no netlink at all
        log.info("%s ipvs: nothing to clean (%s)", family, exc)
        return False, "removed nothing"
    v6 = family == IPFamily.IPv6
    names = [set_name(s.name, family) for s in SETS]
    present = [n for n in names if ipset.exists(n)]
    if dummy.index() is None and not present:
        return False, "removed nothing"
    bound = {a for a in dummy.addresses() if (":" in a) == v6}
    exclude = networks(config.ipvs_exclude_cidrs if config is not None else ())
    nodeports: dict[str, set[int]] = {}
    for protocol, name in (("TCP", NODE_PORT_TCP), ("UDP", NODE_PORT_UDP), ("SCTP", NODE_PORT_SCTP)):
        members = ipset.members(set_name(name, family)) or set()
        nodeports[protocol] = {int(m.rsplit(":", 1)[-1]) for m in members if m.rsplit(":", 1)[-1].isdecimal()}
    try:
        from kubectl_proxyctl.system.ipvs import IpvsKernel

        ipvs = IpvsKernel()
        local = set(dummy.other_addresses())
        gone = 0
        for s in ipvs.services(reals=False):
            if (":" in s.address) != v6 or excluded(s.address, exclude):
                continue
            if s.address in bound or (s.port in nodeports.get(s.protocol, ()) and s.address in local):
                ipvs.delete_service(s.key)
                gone += 1
        if gone:
            done.append(f"{gone} virtual servers")
    except ProxyctlError as exc:
        log.info("%s ipvs: no virtual servers to clean (%s)", family, exc)
    if bound:
        dummy.unbind(sorted(bound))
    if not dummy.addresses() and dummy.delete():
        done.append(f"interface {DUMMY_DEVICE}")
    try:
        from kubectl_proxyctl.system.iptables import IptablesSystem

        result = IptablesSystem(family).cleanup(prefixes=OWNED_CHAINS)
        if result.chains or result.rules:
            done.append(f"{len(result.chains)} chains and {len(result.rules)} jump rules")
    except Exception as exc:  # noqa: BLE001 - no ip6tables on an IPv4-only host
        log.info("%s ipvs: no iptables rules to clean (%s)", family, exc)
    destroyed = sum(1 for n in present if _destroy(ipset, n))
    if destroyed:
        done.append(f"{destroyed} ipsets")
    return bool(done), ("removed " + ", ".join(done)) if done else "removed nothing"


def _destroy(ipset: Any, name: str) -> bool:
    try:
        return bool(ipset.destroy(name))
    except ProxyctlError as exc:
        log.warning("cannot destroy ipset %s: %s", name, exc)
        return False

