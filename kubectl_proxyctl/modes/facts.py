"""What the readers hand the inspector's views: the facts `explain` starts from, the lines
`dump` prints and the edges of the chain graph (`explain -o dot`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kubectl_proxyctl.model import Endpoint

KINDS = ("ClusterIP", "NodePort", "ExternalIP", "LoadBalancer")  # the entry points of a service port


@dataclass(frozen=True)
class Problem:
    severity: str  # "error" | "warning"
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"severity": self.severity, "message": self.message}


@dataclass
class EntryFacts:
    kind: str  # ClusterIP, NodePort, ExternalIP, LoadBalancer
    address: str | None  # None: a node port on any local address
    port: int
    source_ranges: tuple[str, ...] = ()


@dataclass
class PortFacts:
    service_port: str  # ServicePortName string
    name: str
    protocol: str  # TCP, UDP, SCTP
    port: int | None
    entries: list[EntryFacts] = field(default_factory=list)
    endpoints: tuple[Endpoint, ...] | None = None  # from the API; None when unknown
    source: str = "rules"  # "api" or "rules"


@dataclass(frozen=True)
class Edge:
    src: str
    dst: str
    label: str = ""
    dashed: bool = False


@dataclass(frozen=True)
class DumpLine:
    backend: str  # iptables (nft), iptables (legacy), nftables, ipvs, ipset
    table: str
    chain: str  # chain, set/map, or virtual service
    text: str  # the line in the tool's own syntax
    service: str = ""  # service port name
    endpoint: str = ""
    kind: str = "rule"  # table, chain, rule, commit, element, set, virtual-service, real-server, member
    raw: str = ""  # the line as a script command where the text is not one (nft: `add rule …`); lines
    # with one are printed by `dump -o raw` as one script per table, declarations first
    indent: int = 0  # spaces before the text in the annotated view (nested syntax, e.g. nft)

    def as_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "table": self.table, "chain": self.chain,
                "service": self.service or None, "endpoint": self.endpoint or None, "rule": self.text}
