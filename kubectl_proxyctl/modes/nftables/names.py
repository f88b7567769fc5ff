"""nftables chain and set names back to services and endpoints.

kube-proxy's nftables names carry the service in clear (`service-ULMVA6XW-ns1/svc1/tcp/p80`,
`endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80`, IPv6 colons as dots); the 8-character
hash in front is recomputed from the rest, so `verified` says the name was not made up.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from kubectl_proxyctl.modes.nftables.parse import NftTable
from kubectl_proxyctl.modes.nftables.render import hash_and_truncate
from kubectl_proxyctl.modes.owners import Owner, ServiceSelector

NFT_ROLE_BY_PREFIX: Mapping[str, str] = {
    "service-": "cluster",
    "local-": "local",
    "external-": "external",
    "firewall-": "firewall",
    "endpoint-": "endpoint",
    "affinity-": "affinity",
}
_NFT_ENDPOINT = re.compile(r"^(?P<spn>[^/]+/[^/]+/[^/]+/[^/]*)__(?P<ip>[^/]+)/(?P<port>\d+)$")


def nft_chain_owner(name: str) -> Owner | None:
    """`service-ULMVA6XW-ns1/svc1/tcp/p80` → its owner (hash checked); None for fixed chains."""
    for prefix, role in NFT_ROLE_BY_PREFIX.items():
        if not name.startswith(prefix):
            continue
        rest = name[len(prefix):]
        digest, sep, base = rest.partition("-")
        if not sep or "/" not in base:
            return None
        endpoint = ""
        m = _NFT_ENDPOINT.match(base)
        if m is not None:
            spn_part = m.group("spn")
            ip = m.group("ip")
            ip = ip.replace(".", ":") if ip.count(".") != 3 else ip
            endpoint = f"[{ip}]:{m.group('port')}" if ":" in ip else f"{ip}:{m.group('port')}"
        else:
            spn_part = base
        parts = spn_part.split("/")
        if len(parts) != 4:
            return None
        ns, svc, proto, port = parts
        spn = f"{ns}/{svc}:{port}" if port else f"{ns}/{svc}"
        verified = hash_and_truncate(base)[:8] == digest
        return Owner(spn, proto, role, endpoint, "chain name", verified)
    return None


@dataclass
class NftNames:
    owners: dict[str, Owner] = field(default_factory=dict)  # chain or set name → owner

    def chains_of(self, selector: ServiceSelector) -> list[str]:
        return [c for c, o in self.owners.items() if selector.matches(o.service_port)]


def resolve_nft(tables: Iterable[NftTable]) -> NftNames:
    names = NftNames()
    for table in tables:
        for name in list(table.chains) + list(table.sets):
            owner = nft_chain_owner(name)
            if owner is not None:
                names.owners[name] = owner
    return names
