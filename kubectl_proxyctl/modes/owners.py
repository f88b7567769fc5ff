"""Who a chain, map element or virtual service belongs to: the vocabulary every mode's
reader uses to give rules back their Service names (each mode's `names.py` does the finding).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PROTOCOLS = ("tcp", "udp", "sctp")

# kube-proxy's rule comments, the same words in every mode that has comments.
_SPN = r"(?P<spn>[a-z0-9][-a-z0-9.]*/[a-z0-9][-a-z0-9.]*(?::[-a-z0-9]+)?)"
_COMMENTS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (kind, re.compile(pattern.replace("SPN", _SPN)))
    for kind, pattern in (
        ("cluster-ip", r"^SPN cluster IP$"),
        ("external-ip", r"^SPN external IP$"),
        ("loadbalancer-ip", r"^SPN loadbalancer IP$"),
        ("no-endpoints", r"^SPN has no endpoints$"),
        ("no-local-endpoints", r"^SPN has no local endpoints$"),
        ("health-check", r"^SPN health check node port$"),
        ("firewall-drop", r"^SPN traffic not accepted by (?P<extra>\S+)$"),
        ("endpoint", r"^SPN -> (?P<extra>\S+)$"),
        ("external-masquerade", r"^masquerade traffic for SPN external destinations$"),
        ("external-pod", r"^pod traffic for SPN external destinations$"),
        ("external-local-masquerade", r"^masquerade LOCAL traffic for SPN external destinations$"),
        ("external-local", r"^route LOCAL traffic for SPN external destinations$"),
        ("firewall-rest", r"^other traffic to SPN will be dropped by KUBE-PROXY-FIREWALL$"),
        ("service", r"^SPN$"),
    )
)


def parse_comment(comment: str | None) -> tuple[str, str, str] | None:
    """A kube-proxy rule comment → (service port name, kind, extra), or None."""
    if not comment:
        return None
    for kind, pattern in _COMMENTS:
        m = pattern.match(comment)
        if m is not None:
            extra = m.groupdict().get("extra") or ""
            return m.group("spn"), kind, extra
    return None


def service_of(spn: str) -> str:
    """`ns/name:port` → `ns/name`."""
    return spn.split(":", 1)[0]


@dataclass(frozen=True)
class Owner:
    """Who a chain (or map element, or virtual service) belongs to."""

    service_port: str  # the ServicePortName string: `ns/name:port`, or `ns/name` when unnamed
    protocol: str  # "tcp", "udp", "sctp"; "" when unknown
    role: str  # cluster, local, external, firewall, endpoint (affinity for nft sets)
    endpoint: str = ""  # `ip:port`, for endpoint chains
    source: str = ""  # how it was found: comment, graph, hash, chain name, address
    verified: bool = False  # the name was recomputed from the claims and matches

    @property
    def service(self) -> str:
        return service_of(self.service_port)


@dataclass(frozen=True)
class ServiceSelector:
    """All ports of one Service, or (None) every service."""

    namespace: str
    name: str

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def matches(self, spn: str) -> bool:
        return spn == self.key or spn.startswith(self.key + ":")


def selected(selector: ServiceSelector | None, service: str) -> bool:
    """Is `service` (a service port name) wanted: always without a selector, else when named
    and matched."""
    return selector is None or (bool(service) and selector.matches(service))
