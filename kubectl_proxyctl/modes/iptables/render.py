"""NodePlan → the `iptables-restore` payload kube-proxy would write, byte for byte.

Theory of operation: `render(plan)` is pure. It walks the plan's service ports (already sorted)
and appends plain strings to four line buffers, exactly as kube-proxy's `syncProxyRules`
(`pkg/proxy/iptables/proxier.go`) fills `filterChains`, `filterRules`, `natChains` and
`natRules`; the payload is `*filter`, the filter chain lines, the filter rules, `COMMIT`,
`*nat`, the nat chain lines, the nat rules, `COMMIT`. A chain line (`:NAME - [0:0]`) both
creates and flushes its chain under `iptables-restore --noflush`, so the payload replaces
every chain it declares and touches nothing else.

Per service port the order is kube-proxy's: the KUBE-SERVICES rule for the cluster IP (or a
filter REJECT/DROP), the external-IP, load-balancer and node-port entry rules (with their
filter twins), the health-check ACCEPT, then the per-service chains: the cluster-IP
masquerade rule, KUBE-EXT-, KUBE-FW-, KUBE-SVC-, KUBE-SVL- and one KUBE-SEP- per reachable
endpoint. Then `-X` lines for stale chains and, last in KUBE-SERVICES, the jump to
KUBE-NODEPORTS. Only the order of different services differs from kube-proxy, which follows
Go map order; here it is the ServicePortName order of the plan.

Fixed structure is data: the chain lists, the jump rules an applier must ensure in the
built-in chains (`JUMP_RULES`, kube-proxy's `iptablesJumpChains` plus kubelet's
KUBE-FIREWALL jumps) and the nfacct counter names. The result (`RenderedRules`) carries the
payload plus what an applier needs: the jump rules, the chains declared, the service chains
that must exist after the sync (for stale-chain deletion) and rule counts for metrics.

Partial syncs: with `changed` (ServicePortNames, or `namespace/name` of whole Services, as
kube-proxy tracks changes per Service) only those per-service chains are written; the
top-level chains are always rewritten. With
`existing_nat_chains` (the nat chain names `iptables-save -t nat` shows) stale service chains
are declared and removed with `-X`. With `previous` (the RenderedRules of the sync before)
a service port whose plan is the very object planned then (the planner keeps unchanged
ports' objects) reuses that render's lines for the top-level chains, its chain names and
its rule count: a partial sync does no per-rule work for unchanged services, only copies
their top-level lines into the payload (which must hold them: declaring KUBE-SERVICES
flushes it).

Streaming: `RenderStream` is the same render handed out in chunks while it is produced, so
that iptables-restore reads and parses the first lines while the later ones are rendered
(`render()` takes it whole). Its `chunks(existing_nat_chains, extra)` adds `extra` lines at
the end of table blocks (and new blocks for other tables): how a writer puts missing jump
rules and canaries into the same restore.

Hot path: one f-string per rule, no per-rule objects; 10,000 services with 5 endpoints each
render in well under a second.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Collection, Iterator, Mapping, Sequence

from kubectl_proxyctl.model import Endpoint, IPFamily, Protocol, ServicePortName
from kubectl_proxyctl.modes.iptables.naming import (
    LARGE_CLUSTER_ENDPOINTS_THRESHOLD,
    ServiceChains,
    endpoint_chain_for,
    format_mark,
    is_service_chain,
    probability,
    service_chains,
)
from kubectl_proxyctl.plan.planner import (
    FilterAction,
    InternalMasquerade,
    LocalDetector,
    NodePlan,
    ServicePortPlan,
)

# --- fixed structure -------------------------------------------------------------------

KUBE_SERVICES = "KUBE-SERVICES"
KUBE_EXTERNAL_SERVICES = "KUBE-EXTERNAL-SERVICES"
KUBE_NODEPORTS = "KUBE-NODEPORTS"
KUBE_POSTROUTING = "KUBE-POSTROUTING"
KUBE_MARK_MASQ = "KUBE-MARK-MASQ"
KUBE_FORWARD = "KUBE-FORWARD"
KUBE_PROXY_FIREWALL = "KUBE-PROXY-FIREWALL"
KUBE_FIREWALL = "KUBE-FIREWALL"  # kubelet's chain; kube-proxy writes its own copy (IPv4)
KUBE_PROXY_CANARY = "KUBE-PROXY-CANARY"

# Chains every restore declares (and so flushes), in kube-proxy's order.
FILTER_CHAINS: tuple[str, ...] = (
    KUBE_SERVICES,
    KUBE_EXTERNAL_SERVICES,
    KUBE_FORWARD,
    KUBE_NODEPORTS,
    KUBE_PROXY_FIREWALL,
)
NAT_CHAINS: tuple[str, ...] = (KUBE_SERVICES, KUBE_NODEPORTS, KUBE_POSTROUTING, KUBE_MARK_MASQ)

# nfacct counters kube-proxy attaches to two rules when they exist on the node.
NFACCT_CT_INVALID = "ct_state_invalid_dropped_pkts"
NFACCT_LOCALHOST_NODEPORTS = "localhost_nps_accepted_pkts"

NODEPORTS_COMMENT = "kubernetes service nodeports; NOTE: this must be the last rule in this chain"

_PROTO: Mapping[Protocol, str] = {Protocol.TCP: "tcp", Protocol.UDP: "udp", Protocol.SCTP: "sctp"}


@dataclass(frozen=True)
class JumpRule:
    """A rule in a built-in chain that sends packets into one of our chains.

    An applier ensures each with `iptables -t TABLE -C CHAIN ARGS...` and, when missing,
    `-I CHAIN 1 ARGS...`, in table order; so on a clean host the final order in each built-in
    chain is the reverse of `JUMP_RULES`. Only full syncs do this.
    """

    table: str
    chain: str  # the built-in chain
    target: str  # our chain, which must exist before the jump is inserted
    comment: str = ""
    extra: tuple[str, ...] = ()

    def args(self) -> tuple[str, ...]:
        """The rule as argv, after `-t TABLE -C/-I CHAIN` (comments unquoted)."""
        comment = ("-m", "comment", "--comment", self.comment) if self.comment else ()
        return self.extra + comment + ("-j", self.target)

    def restore_line(self) -> str:
        """The rule as an `iptables-restore` line (`-A CHAIN ...`, comment quoted)."""
        parts = ["-A", self.chain, *self.extra]
        if self.comment:
            parts += ["-m", "comment", "--comment", _quote(self.comment)]
        parts += ["-j", self.target]
        return " ".join(parts)


_CT_NEW = ("-m", "conntrack", "--ctstate", "NEW")

JUMP_RULES: tuple[JumpRule, ...] = (
    JumpRule("filter", "INPUT", KUBE_EXTERNAL_SERVICES, "kubernetes externally-visible service portals", _CT_NEW),
    JumpRule("filter", "FORWARD", KUBE_EXTERNAL_SERVICES, "kubernetes externally-visible service portals", _CT_NEW),
    JumpRule("filter", "INPUT", KUBE_NODEPORTS, "kubernetes health check service ports"),
    JumpRule("filter", "FORWARD", KUBE_SERVICES, "kubernetes service portals", _CT_NEW),
    JumpRule("filter", "OUTPUT", KUBE_SERVICES, "kubernetes service portals", _CT_NEW),
    JumpRule("filter", "FORWARD", KUBE_FORWARD, "kubernetes forwarding rules"),
    JumpRule("filter", "INPUT", KUBE_PROXY_FIREWALL, "kubernetes load balancer firewall", _CT_NEW),
    JumpRule("filter", "OUTPUT", KUBE_PROXY_FIREWALL, "kubernetes load balancer firewall", _CT_NEW),
    JumpRule("filter", "FORWARD", KUBE_PROXY_FIREWALL, "kubernetes load balancer firewall", _CT_NEW),
    JumpRule("nat", "OUTPUT", KUBE_SERVICES, "kubernetes service portals"),
    JumpRule("nat", "PREROUTING", KUBE_SERVICES, "kubernetes service portals"),
    JumpRule("nat", "POSTROUTING", KUBE_POSTROUTING, "kubernetes postrouting rules"),
    # Duplicates of kubelet's jumps; created on start, never removed by clean-up.
    JumpRule("filter", "INPUT", KUBE_FIREWALL),
    JumpRule("filter", "OUTPUT", KUBE_FIREWALL),
)

# Empty chains kept in these tables to notice a flush of our rules (the canary).
CANARY_TABLES: tuple[str, ...] = ("mangle", "nat", "filter")


def _quote(text: str) -> str:
    return f'"{text}"' if " " in text else text


@dataclass(frozen=True)
class RenderedRules:
    """An `iptables-restore` payload and what an applier needs besides it."""

    text: str  # for `iptables-restore --noflush` (`ip6tables-restore` for IPv6)
    family: IPFamily
    jump_rules: tuple[JumpRule, ...]
    filter_chains: tuple[str, ...]  # declared in *filter (in order)
    nat_chains: tuple[str, ...]  # declared in *nat (in order), stale ones included
    service_chains: frozenset[str]  # every service chain that must exist after this sync
    written_chains: frozenset[str]  # service chains written by this payload
    deleted_chains: tuple[str, ...]  # stale service chains removed with -X
    chains_by_service: Mapping[ServicePortName, tuple[str, ...]]
    large_cluster: bool
    partial: bool
    filter_rules: int  # rules written in *filter
    nat_rules: int  # rules written in *nat (not counting -X lines)
    nat_rules_total: int  # nat rules that exist after the sync (skipped services included)
    skipped_services: tuple[ServicePortName, ...] = field(default=())
    # What `render(previous=...)` reuses: the render options, the plan, and per service port
    # plan object (by id; the entry keeps the object alive) the lines it wrote.
    reuse_key: tuple[object, ...] = field(default=(), compare=False, repr=False)
    plan: NodePlan | None = field(default=None, compare=False, repr=False)
    lines_by_plan: Mapping[int, "_ServiceLines"] = field(default_factory=dict, compare=False, repr=False)

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True, slots=True)
class _ServiceLines:
    """One service port's part of a render: its plan object, its lines in the top-level
    chains, its chains and how many rules they hold."""

    plan: ServicePortPlan
    filter_entry: tuple[str, ...]
    nat_entry: tuple[str, ...]
    chains: tuple[str, ...]
    chain_rules: int


# (is-local match, is-not-local match) per detector criterion, `{}` the detector's value.
_DETECTOR_SYNTAX = {
    "": ("", ""),
    "source": ("-s {}", "! -s {}"),
    "interface": ("-i {}", "! -i {}"),
    "interface-prefix": ("-i {}+", "! -i {}+"),
}


def _detector_args(detector: LocalDetector) -> tuple[str, str]:
    """(is-local match, is-not-local match) for the local-traffic detector."""
    local, not_local = _DETECTOR_SYNTAX[detector.criterion]
    return local.format(detector.value), not_local.format(detector.value)


def _is_loopback(ip: str) -> bool:
    return ip == "::1" or ip.startswith("127.")


@dataclass(frozen=True)
class _Ctx:
    """The node-wide facts every service's rules depend on."""

    v6: bool
    large: bool  # large-cluster mode: no comments on SVC/SVL endpoint rules and SEP rules
    mark: str
    localhost_np: bool
    if_local: str
    if_not_local: str
    masq_all: bool
    masq_not_local: bool
    nfacct_localhost: bool


def _context(plan: NodePlan, large_cluster: bool | None, nfacct: bool) -> _Ctx:
    v6 = plan.family == IPFamily.IPv6
    localhost_np = plan.localhost_nodeports and not v6
    if_local, if_not_local = _detector_args(plan.local_detector)
    return _Ctx(
        v6=v6,
        large=plan.total_endpoints > LARGE_CLUSTER_ENDPOINTS_THRESHOLD if large_cluster is None else large_cluster,
        mark=format_mark(plan.masquerade_mark),
        localhost_np=localhost_np,
        if_local=if_local,
        if_not_local=if_not_local,
        masq_all=plan.internal_masquerade == InternalMasquerade.ALL,
        masq_not_local=plan.internal_masquerade == InternalMasquerade.NOT_LOCAL and bool(if_not_local),
        nfacct_localhost=localhost_np and nfacct,
    )


def render(
    plan: NodePlan,
    *,
    random_fully: bool = True,
    nfacct: bool = False,
    tcp_be_liberal: bool = False,
    large_cluster: bool | None = None,
    changed: Collection[ServicePortName | str] | None = None,
    existing_nat_chains: Collection[str] | None = None,
    previous: RenderedRules | None = None,
) -> RenderedRules:
    """Render the full restore payload for `plan`.

    random_fully: append `--random-fully` to MASQUERADE (iptables supports it).
    nfacct: the nfacct counters exist; attach them as kube-proxy does.
    tcp_be_liberal: `nf_conntrack_tcp_be_liberal` is 1, so no INVALID drop rule.
    large_cluster: force large-cluster mode (no SVC/SEP comments); None = above 1000 endpoints.
    changed: write per-service chains only for these service ports, or for every port of
        these Services given as `namespace/name` (a partial sync).
    existing_nat_chains: nat chains present on the node; stale service chains get `-X`.
    previous: the render of the sync before, whose per-service lines a partial sync reuses
        (same output, less work; ignored when the options or node-wide facts differ).

    The payload: the fixed chains, then per service port its entry rules in the top-level
    chains (always written) and its own chains (skipped but counted in a partial sync of an
    unchanged service), then stale chains' deletion, the KUBE-NODEPORTS jump (which must be
    the last rule of KUBE-SERVICES) and KUBE-FORWARD.
    """
    stream = RenderStream(plan, random_fully=random_fully, nfacct=nfacct, tcp_be_liberal=tcp_be_liberal,
                          large_cluster=large_cluster, changed=changed, previous=previous)
    deque(stream.chunks(existing_nat_chains), maxlen=0)
    return stream.rendered


@dataclass(slots=True)
class _Job:
    """One service port on its way through a render: its filter entry rules (first pass), its
    own chains (second pass), and its lines once its nat rules are written or counted (third
    pass; from the start when the previous render's lines are reused)."""

    sp: ServicePortPlan
    filter_entry: tuple[str, ...]
    writing: bool
    lines: _ServiceLines | None = None
    chains: tuple[str, ...] = ()
    names: ServiceChains | None = None
    seps: dict[int, tuple[str, str]] = field(default_factory=dict)


def _text(lines: Sequence[str]) -> str:
    return "\n".join(lines) + "\n"


class RenderStream:
    """A render whose payload comes out in chunks while it is being produced, so that
    iptables-restore, reading them from a pipe, parses the first lines while Python renders
    the later ones (at 10,000 services it spends about a second on the chain declarations
    alone, time in which the rules are rendered).

    iptables-restore needs a chain declared before a rule jumps to it, and *filter comes
    before *nat, so the service ports are walked three times: the constructor renders their
    rules in the filter table (few: most service ports have none); `chunks()` then yields the
    filter block, the nat chain declarations as the chains are named, and the nat rules as
    they are rendered. `render()` is this stream taken whole: the chunks concatenated are its
    payload byte for byte, and `rendered` is its result, available once `chunks()` is exhausted.
    """

    BATCH_LINES = 2048  # lines per chunk: few pipe writes, yet the first chunk leaves early

    def __init__(self, plan: NodePlan, *, random_fully: bool = True, nfacct: bool = False,
                 tcp_be_liberal: bool = False, large_cluster: bool | None = None,
                 changed: Collection[ServicePortName | str] | None = None,
                 previous: RenderedRules | None = None) -> None:
        ctx = _context(plan, large_cluster, nfacct)
        self._plan, self._ctx = plan, ctx
        self._changed = None if changed is None else frozenset(changed)
        self._postrouting = _postrouting_rules(ctx.mark, random_fully)
        self._reuse_key: tuple[object, ...] = (ctx, random_fully, nfacct, tcp_be_liberal)
        filter_names = list(FILTER_CHAINS)
        self._filter_rules: list[str] = []
        if ctx.localhost_np:
            filter_names.append(KUBE_FIREWALL)
            self._filter_rules.append(
                f'-A {KUBE_FIREWALL} -m comment --comment "block incoming localnet connections" '
                "-d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP"
            )
        self.filter_chains = tuple(filter_names)
        self._active: set[str] = set()
        self._chains_by_service: dict[ServicePortName, tuple[str, ...]] = {}
        self._lines_by_plan: dict[int, _ServiceLines] = {}
        self._touched: set[int] | None = None  # ids of the plan objects of the changed service ports
        self._reusing = self._start_from(previous)
        self._skipped_services: list[ServicePortName] = []
        self._jobs = [self._entry_job(sp) for sp in plan.services]
        self._filter_rules += _forward_rules(ctx.mark, tcp_be_liberal, nfacct)
        self._rendered: RenderedRules | None = None

    @property
    def top_level_chains(self) -> dict[str, tuple[str, ...]]:
        """Table → the fixed chains the payload declares, known before any chunk: every
        target of a jump rule (`JUMP_RULES`) is among them, never a service chain."""
        return {"filter": self.filter_chains, "nat": NAT_CHAINS}

    @property
    def rendered(self) -> RenderedRules:
        if self._rendered is None:
            raise RuntimeError("the render is complete only once chunks() is exhausted")
        return self._rendered

    def _start_from(self, previous: RenderedRules | None) -> bool:
        """Start from the previous render's bookkeeping without the changed ports' entries
        (every other port whose plan object is the one rendered then reuses its lines);
        whether the previous render is reused."""
        changed = self._changed
        if previous is None or previous.plan is None or changed is None or previous.reuse_key != self._reuse_key:
            return False
        names = _changed_names(changed, self._plan, previous.plan)
        self._active = set(previous.service_chains)
        self._chains_by_service = dict(previous.chains_by_service)
        self._lines_by_plan = dict(previous.lines_by_plan)
        for name in names:
            self._active.difference_update(self._chains_by_service.pop(name, ()))
            old = previous.plan.service(name)
            if old is not None:
                self._lines_by_plan.pop(id(old), None)
        self._touched = {id(sp) for sp in map(self._plan.service, names) if sp is not None}
        return True

    def _entry_job(self, sp: ServicePortPlan) -> _Job:
        """First pass: a service port's filter entry rules, which join *filter now."""
        known = self._lines_by_plan.get(id(sp))
        if known is not None and known.plan is sp:  # only when reusing: unchanged, not rendered again
            self._filter_rules += known.filter_entry
            self._skipped_services.append(sp.name)
            return _Job(sp, known.filter_entry, False, known, known.chains)
        name = sp.name
        if self._touched is not None:
            writing = id(sp) in self._touched
        else:
            changed = self._changed
            writing = changed is None or name in changed or name.service in changed
        rules = self._filter_rules
        f0 = len(rules)
        _filter_entry_rules(sp, rules)
        if not writing:
            self._skipped_services.append(name)
        return _Job(sp, tuple(rules[f0:]) if len(rules) > f0 else (), writing)

    def chunks(self, existing_nat_chains: Collection[str] | None = None,
               extra: Mapping[str, Sequence[str]] | None = None) -> Iterator[str]:
        """The payload in chunks of whole lines (once per stream). `existing_nat_chains` as
        for `render()`; `extra[table]` lines go at the end of that table's block (before its
        COMMIT), in a block of their own after the others for a table the payload does not
        hold: how a writer adds missing jump rules and canaries to the same restore.
        `rendered.text` is the payload without them."""
        extra = extra or {}
        parts: list[str] = []  # the payload without `extra`
        head = _text(["*filter", *(f":{c} - [0:0]" for c in self.filter_chains), *self._filter_rules])
        parts.append(head)
        yield head
        if extra.get("filter"):
            yield _text(extra["filter"])
        parts.append("COMMIT\n")
        yield "COMMIT\n"
        nat_names = list(NAT_CHAINS)
        written: set[str] = set()
        buf = ["*nat", *(f":{c} - [0:0]" for c in NAT_CHAINS)]
        for job in self._jobs:
            self._name_chains(job, written, nat_names, buf)
            if len(buf) >= self.BATCH_LINES:
                parts.append(_text(buf))
                yield parts[-1]
                buf = []
        self._drop_departed()
        deleted = _stale_chains(existing_nat_chains, self._active)
        nat_names += deleted
        buf += [f":{c} - [0:0]" for c in deleted]
        buf += self._postrouting
        nat_rules, skipped_rules = len(self._postrouting), 0
        for job in self._jobs:
            written_rules, counted = self._write_rules(job, buf)
            nat_rules += written_rules
            skipped_rules += counted
            if len(buf) >= self.BATCH_LINES:
                parts.append(_text(buf))
                yield parts[-1]
                buf = []
        tail = _nodeports_jumps(self._plan, self._ctx)
        nat_rules += len(tail)
        buf += [f"-X {c}" for c in deleted]
        buf += tail
        parts.append(_text(buf))
        yield parts[-1]
        if extra.get("nat"):
            yield _text(extra["nat"])
        parts.append("COMMIT\n")
        yield "COMMIT\n"
        for table, lines in extra.items():
            if table not in ("filter", "nat") and lines:
                yield _text([f"*{table}", *lines, "COMMIT"])
        self._finish("".join(parts), tuple(nat_names), frozenset(written), tuple(deleted), nat_rules, skipped_rules)

    def _name_chains(self, job: _Job, written: set[str], nat_names: list[str], out: list[str]) -> None:
        """Second pass: a service port's own chains, declared in `out` when it is written."""
        if job.lines is not None:
            return
        job.names = service_chains(job.sp.name)
        job.chains, job.seps = _chain_names(job.sp, job.names)
        self._active.update(job.chains)
        self._chains_by_service[job.sp.name] = job.chains
        if job.writing:
            written.update(job.chains)
            nat_names += job.chains
            out += [f":{c} - [0:0]" for c in job.chains]

    def _drop_departed(self) -> None:
        """A port left the plan without being named in `changed`: recount from the plan."""
        if not self._reusing:
            return
        n = len(self._jobs)
        fresh = sum(1 for job in self._jobs if job.lines is None and id(job.sp) not in self._lines_by_plan)
        if len(self._chains_by_service) != n or len(self._lines_by_plan) + fresh != n:
            self._chains_by_service = {job.sp.name: job.chains for job in self._jobs}
            self._active = {c for job in self._jobs for c in job.chains}
            self._lines_by_plan = {}

    def _write_rules(self, job: _Job, out: list[str]) -> tuple[int, int]:
        """Third pass: a service port's nat entry rules and, when it is written, its chains'
        rules to `out`; (rules written, rules counted but not written)."""
        if job.lines is not None:
            out += job.lines.nat_entry
            self._lines_by_plan[id(job.sp)] = job.lines
            return len(job.lines.nat_entry), job.lines.chain_rules
        assert job.names is not None
        n0 = len(out)
        _nat_entry_rules(job.sp, self._ctx, job.names, out)
        nat_entry = tuple(out[n0:])
        rules = out if job.writing else []
        before = len(rules)
        _chain_rules(job.sp, self._ctx, job.names, job.seps, rules)
        count = len(rules) - before
        job.lines = _ServiceLines(job.sp, job.filter_entry, nat_entry, job.chains, count)
        self._lines_by_plan[id(job.sp)] = job.lines
        return (len(nat_entry) + count, 0) if job.writing else (len(nat_entry), count)

    def _finish(self, text: str, nat_names: tuple[str, ...], written: frozenset[str], deleted: tuple[str, ...],
                nat_rules: int, skipped_rules: int) -> None:
        self._rendered = RenderedRules(
            text=text,
            family=self._plan.family,
            jump_rules=JUMP_RULES,
            filter_chains=self.filter_chains,
            nat_chains=nat_names,
            service_chains=frozenset(self._active),
            written_chains=written,
            deleted_chains=deleted,
            chains_by_service=self._chains_by_service,
            large_cluster=self._ctx.large,
            partial=self._changed is not None,
            filter_rules=len(self._filter_rules),
            nat_rules=nat_rules,
            nat_rules_total=nat_rules + skipped_rules,
            skipped_services=tuple(self._skipped_services),
            reuse_key=self._reuse_key,
            plan=self._plan,
            lines_by_plan=self._lines_by_plan,
        )


def _changed_names(changed: Collection[ServicePortName | str], plan: NodePlan,
                   previous: NodePlan) -> set[ServicePortName]:
    """The service ports `changed` names, in the plan or in the previous one."""
    out: set[ServicePortName] = set()
    for item in changed:
        if isinstance(item, ServicePortName):
            out.add(item)
        else:
            out.update(plan.ports_of(item))
            out.update(previous.ports_of(item))
    return out


def _postrouting_rules(mark: str, random_fully: bool) -> list[str]:
    """KUBE-POSTROUTING masquerades what KUBE-MARK-MASQ marked (and clears the mark)."""
    return [
        f"-A {KUBE_POSTROUTING} -m mark ! --mark {mark}/{mark} -j RETURN",
        f"-A {KUBE_POSTROUTING} -j MARK --xor-mark {mark}",
        f'-A {KUBE_POSTROUTING} -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE'
        + (" --random-fully" if random_fully else ""),
        f"-A {KUBE_MARK_MASQ} -j MARK --or-mark {mark}",
    ]


def _filter_entry_rules(sp: ServicePortPlan, out: list[str]) -> None:
    """A service port's rules in the filter table's top-level chains (KUBE-SERVICES,
    KUBE-EXTERNAL-SERVICES, KUBE-PROXY-FIREWALL, KUBE-NODEPORTS), written by every sync: what
    has no endpoints is rejected or dropped, the firewall drops what it did not accept, the
    health check node port is accepted. Most service ports have none of these."""
    proto = _PROTO[sp.protocol]
    pp = f"-m {proto} -p {proto}"
    cip = sp.cluster_ip
    port = sp.port
    has_external = sp.has_external_endpoints
    if not sp.has_internal_endpoints:
        action = sp.internal_filter or FilterAction.REJECT
        why = "has no endpoints" if action == FilterAction.REJECT else "has no local endpoints"
        out.append(
            f'-A {KUBE_SERVICES} -m comment --comment "{sp.name} {why}" {pp} -d {cip} --dport {port} -j {action.value}'
        )
    ext_action = ""
    ext_comment = ""
    if sp.external_filter is not None:
        ext_action = sp.external_filter.value
        ext_why = "has no endpoints" if sp.external_filter == FilterAction.REJECT else "has no local endpoints"
        ext_comment = f'-m comment --comment "{sp.name} {ext_why}"'
    if not has_external:
        for eip in sp.external_ips:
            out.append(f"-A {KUBE_EXTERNAL_SERVICES} {ext_comment} {pp} -d {eip} --dport {port} -j {ext_action}")
    if sp.uses_firewall:
        fw = service_chains(sp.name).fw
        for lbip in sp.load_balancer_ips:
            out.append(
                f'-A {KUBE_PROXY_FIREWALL} -m comment --comment "{sp.name} traffic not accepted by {fw}" {pp} -d {lbip} --dport {port} -j DROP'
            )
    if not has_external:
        for lbip in sp.load_balancer_ips:
            out.append(f"-A {KUBE_EXTERNAL_SERVICES} {ext_comment} {pp} -d {lbip} --dport {port} -j {ext_action}")
        if sp.node_port:
            out.append(
                f"-A {KUBE_EXTERNAL_SERVICES} {ext_comment} -m addrtype --dst-type LOCAL {pp} --dport {sp.node_port} -j {ext_action}"
            )
    if sp.health_check_node_port:
        out.append(
            f'-A {KUBE_NODEPORTS} -m comment --comment "{sp.name} health check node port" '
            f"-m tcp -p tcp --dport {sp.health_check_node_port} -j ACCEPT"
        )


def _nat_entry_rules(sp: ServicePortPlan, ctx: _Ctx, names: ServiceChains, out: list[str]) -> None:
    """A service port's rules in the nat table's top-level chains (KUBE-SERVICES,
    KUBE-NODEPORTS), written by every sync: the jumps into its own chains."""
    spn = str(sp.name)
    proto = _PROTO[sp.protocol]
    pp = f"-m {proto} -p {proto}"
    ext = names.ext
    port = sp.port
    if sp.has_internal_endpoints:
        internal_chain = names.svl if sp.internal_policy_local else names.svc
        out.append(
            f'-A {KUBE_SERVICES} -m comment --comment "{spn} cluster IP" {pp} -d {sp.cluster_ip} --dport {port} -j {internal_chain}'
        )
    if not sp.has_any_endpoints:
        return
    for eip in sp.external_ips:
        out.append(f'-A {KUBE_SERVICES} -m comment --comment "{spn} external IP" {pp} -d {eip} --dport {port} -j {ext}')
    lb_chain = names.fw if sp.uses_firewall else ext
    for lbip in sp.load_balancer_ips:
        out.append(
            f'-A {KUBE_SERVICES} -m comment --comment "{spn} loadbalancer IP" {pp} -d {lbip} --dport {port} -j {lb_chain}'
        )
    if sp.node_port:
        np = sp.node_port
        if ctx.nfacct_localhost:
            out.append(
                f"-A {KUBE_NODEPORTS} -m comment --comment {spn} {pp} -d 127.0.0.0/8 --dport {np} "
                f"-m nfacct --nfacct-name {NFACCT_LOCALHOST_NODEPORTS} -j {ext}"
            )
        out.append(f"-A {KUBE_NODEPORTS} -m comment --comment {spn} {pp} --dport {np} -j {ext}")


def _chain_names(sp: ServicePortPlan, names: ServiceChains) -> tuple[tuple[str, ...], dict[int, tuple[str, str]]]:
    """A service port's own chains (KUBE-EXT/FW/SVC/SVL/SEP) in the order they are declared,
    and per reachable endpoint (by id; dispatch lists hold the same objects) its `ip:port`
    and KUBE-SEP chain."""
    spn = str(sp.name)
    proto_value = sp.protocol.value
    reachable = sp.reachable_endpoints
    seps: dict[int, tuple[str, str]] = {}
    for ep in reachable:
        addr = ep.address
        seps[id(ep)] = (addr, endpoint_chain_for(spn, proto_value, addr))
    mine: list[str] = []
    if sp.uses_external_chain:
        mine.append(names.ext)
    if sp.uses_firewall:
        mine.append(names.fw)
    if sp.uses_cluster_chain:
        mine.append(names.svc)
    if sp.uses_local_chain:
        mine.append(names.svl)
    mine += [seps[id(ep)][1] for ep in reachable]
    return tuple(mine), seps


def _chain_rules(sp: ServicePortPlan, ctx: _Ctx, names: ServiceChains, seps: dict[int, tuple[str, str]],
                 rule_out: list[str]) -> None:
    """The rules of a service port's own chains (`_chain_names`), to `rule_out`."""
    spn = str(sp.name)
    proto = _PROTO[sp.protocol]
    pp = f"-m {proto} -p {proto}"
    svc, svl, ext, fw = names.svc, names.svl, names.ext, names.fw
    cip = sp.cluster_ip
    port = sp.port
    internal_chain = svl if sp.internal_policy_local else svc
    has_external = sp.has_external_endpoints

    if sp.has_internal_endpoints:
        if ctx.masq_all:
            rule_out.append(
                f'-A {internal_chain} -m comment --comment "{spn} cluster IP" {pp} -d {cip} --dport {port} -j {KUBE_MARK_MASQ}'
            )
        elif ctx.masq_not_local:
            rule_out.append(
                f'-A {internal_chain} -m comment --comment "{spn} cluster IP" {pp} -d {cip} --dport {port} {ctx.if_not_local} -j {KUBE_MARK_MASQ}'
            )

    if sp.uses_external_chain:
        if not sp.external_policy_local:
            rule_out.append(
                f'-A {ext} -m comment --comment "masquerade traffic for {spn} external destinations" -j {KUBE_MARK_MASQ}'
            )
            if has_external:
                rule_out.append(f"-A {ext} -j {svc}")
        else:
            if ctx.if_local:
                rule_out.append(
                    f'-A {ext} -m comment --comment "pod traffic for {spn} external destinations" {ctx.if_local} -j {svc}'
                )
            rule_out.append(
                f'-A {ext} -m comment --comment "masquerade LOCAL traffic for {spn} external destinations" '
                f"-m addrtype --src-type LOCAL -j {KUBE_MARK_MASQ}"
            )
            rule_out.append(
                f'-A {ext} -m comment --comment "route LOCAL traffic for {spn} external destinations" '
                f"-m addrtype --src-type LOCAL -j {svc}"
            )
            if has_external:
                rule_out.append(f"-A {ext} -j {svl}")

    if sp.uses_firewall:
        head = f'-A {fw} -m comment --comment "{spn} loadbalancer IP"'
        for cidr in sp.source_ranges:
            rule_out.append(f"{head} -s {cidr} -j {ext}")
        if sp.firewall_allows_node:
            for lbip in sp.load_balancer_ips:
                rule_out.append(f"{head} -s {lbip} -j {ext}")
        rule_out.append(
            f'-A {fw} -m comment --comment "other traffic to {spn} will be dropped by {KUBE_PROXY_FIREWALL}"'
        )

    affinity = sp.affinity_seconds
    proto_value = sp.protocol.value
    large = ctx.large
    if sp.uses_cluster_chain:
        _dispatch(rule_out, svc, spn, proto_value, sp.cluster_endpoints, seps, affinity, large)
    if sp.uses_local_chain:
        _dispatch(rule_out, svl, spn, proto_value, sp.local_endpoints, seps, affinity, large)

    comment = "" if large else f" -m comment --comment {spn}"
    recent_fmt = " -m recent --name {} --set" if affinity else ""
    for ep in sp.reachable_endpoints:
        addr, sep = seps[id(ep)]
        rule_out.append(f"-A {sep}{comment} -s {ep.ip} -j {KUBE_MARK_MASQ}")
        recent = recent_fmt.format(sep) if affinity else ""
        rule_out.append(f"-A {sep}{comment}{recent} {pp} -j DNAT --to-destination {addr}")


def _stale_chains(existing: Collection[str] | None, active: set[str]) -> list[str]:
    """Stale service chains: the payload declares them (flushing them), then deletes them with `-X`."""
    if existing is None:
        return []
    present = existing if isinstance(existing, (set, frozenset)) else set(existing)
    return [chain for chain in sorted(present - active) if is_service_chain(chain)]


def _nodeports_jumps(plan: NodePlan, ctx: _Ctx) -> list[str]:
    """The jump to KUBE-NODEPORTS: it must be the last rule of KUBE-SERVICES, after every
    ClusterIP, external IP and LB IP rule (an external IP may be a node address)."""
    if plan.nodeport_match_all:
        dest = "-m addrtype --dst-type LOCAL"
        if ctx.v6:
            dest += " ! -d ::1/128"
        elif not ctx.localhost_np:
            dest += " ! -d 127.0.0.0/8"
        return [f'-A {KUBE_SERVICES} -m comment --comment "{NODEPORTS_COMMENT}" {dest} -j {KUBE_NODEPORTS}']
    return [f'-A {KUBE_SERVICES} -m comment --comment "{NODEPORTS_COMMENT}" -d {ip} -j {KUBE_NODEPORTS}'
            for ip in plan.nodeport_ips if not (_is_loopback(ip) and (ctx.v6 or not ctx.localhost_np))]


def _forward_rules(mark: str, tcp_be_liberal: bool, nfacct: bool) -> list[str]:
    """KUBE-FORWARD: drop INVALID (unless conntrack is liberal), accept marked and tracked flows."""
    out = []
    if not tcp_be_liberal:
        counter = f" -m nfacct --nfacct-name {NFACCT_CT_INVALID}" if nfacct else ""
        out.append(f"-A {KUBE_FORWARD} -m conntrack --ctstate INVALID{counter} -j DROP")
    out.append(
        f'-A {KUBE_FORWARD} -m comment --comment "kubernetes forwarding rules" -m mark --mark {mark}/{mark} -j ACCEPT'
    )
    out.append(
        f'-A {KUBE_FORWARD} -m comment --comment "kubernetes forwarding conntrack rule" '
        "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
    )
    return out


def _dispatch(
    out: list[str],
    chain: str,
    spn: str,
    protocol: str,
    endpoints: tuple[Endpoint, ...],
    seps: dict[int, tuple[str, str]],
    affinity: int,
    large: bool,
) -> None:
    """KUBE-SVC/KUBE-SVL rules: affinity checks first, then the probability cascade."""
    pairs = []
    for ep in endpoints:
        known = seps.get(id(ep))
        if known is None:  # every dispatched endpoint is reachable; keep going regardless
            addr = ep.address
            known = (addr, endpoint_chain_for(spn, protocol, addr))
        pairs.append(known)
    if affinity:
        for addr, sep in pairs:
            comment = "" if large else f' -m comment --comment "{spn} -> {addr}"'
            out.append(f"-A {chain}{comment} -m recent --name {sep} --rcheck --seconds {affinity} --reap -j {sep}")
    n = len(pairs)
    last = n - 1
    for i, (addr, sep) in enumerate(pairs):
        comment = "" if large else f' -m comment --comment "{spn} -> {addr}"'
        if i < last:
            out.append(f"-A {chain}{comment} -m statistic --mode random --probability {probability(n - i)} -j {sep}")
        else:
            out.append(f"-A {chain}{comment} -j {sep}")


def jump_rules_text(rules: tuple[JumpRule, ...] = JUMP_RULES) -> dict[tuple[str, str], list[str]]:
    """(table, built-in chain) → restore lines in the final order an applier leaves them
    (each rule is inserted at position 1, so the table order is reversed)."""
    out: dict[tuple[str, str], list[str]] = {}
    for rule in rules:
        out.setdefault((rule.table, rule.chain), []).insert(0, rule.restore_line())
    return out


def with_jump_rules(payload: str, rules: tuple[JumpRule, ...] = JUMP_RULES) -> str:
    """A restore payload plus the jump rules (and the empty chains they need), table by
    table: what a node running this payload shows in iptables-save, and loads whole with
    `iptables-restore` into an empty namespace."""
    jumps = jump_rules_text(rules)
    out = []
    for block in payload.split("COMMIT\n"):
        if not block.strip():
            continue
        table = block.split("\n", 1)[0][1:]
        declared = {line[1:].split(" ", 1)[0] for line in block.splitlines() if line.startswith(":")}
        extra = [f":{j.target} - [0:0]" for j in rules if j.table == table and j.target not in declared]
        lines = [line for (t, _), chain_rules in jumps.items() if t == table for line in chain_rules]
        out.append(block + "".join(f"{x}\n" for x in dict.fromkeys(extra)) + "".join(f"{x}\n" for x in lines)
                   + "COMMIT\n")
    return "".join(out)
