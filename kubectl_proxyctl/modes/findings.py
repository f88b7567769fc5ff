"""What `verify` reports, and the comparisons every mode's verifier shares.

A mode's verifier renders the plan the way its writer would, reads the node's state the way
its reader does, and compares the two by meaning. What is the same in every mode lives here:
the Finding and Report types, the multiset difference of two rule lists under a canonical key
(the order across services follows Go map order in kube-proxy and does not matter), and
endpoint odds summed from a mode's load-balancing branches.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence, TypeVar

from kubectl_proxyctl.modes.base import Mode

# Two shares of new connections closer than this are the same odds (1/3 is written 0.33333333349).
ODDS_TOLERANCE = 0.001

T = TypeVar("T")


@dataclass(frozen=True)
class Finding:
    # missing-service, missing-endpoint, extra-endpoint, stale-chain, wrong-odds, rules-differ, flushed,
    # missing-chain, missing-jump, ...; nftables adds missing-element and missing-set
    kind: str
    severity: str  # "error" | "warning"
    message: str
    service: str = ""  # ns/name ("" for node-wide findings)
    service_port: str = ""
    chain: str = ""
    missing: tuple[str, ...] = ()  # rules the node lacks
    extra: tuple[str, ...] = ()  # rules the node has and should not

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind, "severity": self.severity, "service": self.service or None,
                             "service_port": self.service_port or None, "message": self.message}
        if self.chain:
            d["chain"] = self.chain
        if self.missing:
            d["missing_rules"] = list(self.missing)
        if self.extra:
            d["extra_rules"] = list(self.extra)
        return d


@dataclass
class Report:
    node: str | None
    mode: Mode
    findings: list[Finding] = field(default_factory=list)
    services_checked: int = 0
    config: Mapping[str, Any] = field(default_factory=dict)  # the flags read back from the rules
    notes: list[str] = field(default_factory=list)  # information, not drift (e.g. an older layout)

    @property
    def in_sync(self) -> bool:
        return not self.findings

    def as_dict(self) -> dict[str, Any]:
        return {"node": self.node, "backend": self.mode.value, "in_sync": self.in_sync,
                "services_checked": self.services_checked, "config": dict(self.config),
                "findings": [f.as_dict() for f in self.findings], "notes": list(self.notes)}


def multiset_diff(expected: Sequence[T], actual: Sequence[T], key: Callable[[T], str],
                  shown: Callable[[T], str]) -> tuple[list[str], list[str]]:
    """(missing, extra) between two multisets of rules compared by `key`, each shown as
    `shown(rule)`, in the order they were given."""
    want_keys = [key(r) for r in expected]
    have_keys = [key(r) for r in actual]
    want, have = Counter(want_keys), Counter(have_keys)
    if want == have:
        return [], []
    missing_keys, extra_keys = want - have, have - want
    missing: list[str] = []
    for r, k in zip(expected, want_keys):
        if missing_keys[k] > 0:
            missing_keys[k] -= 1
            missing.append(shown(r))
    extra: list[str] = []
    for r, k in zip(actual, have_keys):
        if extra_keys[k] > 0:
            extra_keys[k] -= 1
            extra.append(shown(r))
    return missing, extra


def sum_odds(branches: Iterable[tuple[str, float]]) -> dict[str, float]:
    """Endpoint → its total share of new connections, from (endpoint, share) branches."""
    odds: dict[str, float] = {}
    for endpoint, share in branches:
        odds[endpoint] = odds.get(endpoint, 0.0) + share
    return odds


def odds_differ(want: Mapping[str, float], have: Mapping[str, float]) -> bool:
    """Do two endpoint → share maps differ by more than rounding?"""
    return set(want) != set(have) or any(abs(want[k] - have[k]) > ODDS_TOLERANCE for k in want)
