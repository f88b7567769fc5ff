"""kube-proxy's names and number formats, reproduced byte for byte.

Theory of operation: every per-service chain kube-proxy writes is named by a hash, so that a
ServicePort always maps to the same chain across restarts and nodes, and a name fits the
28-character iptables limit. The recipe (`pkg/proxy/iptables/proxier.go`, `portProtoHash`,
`servicePortEndpointChainName`):

* service chains: SHA-256 of `<ServicePortName string><lower-case protocol>`, no separator
  (`ns1/svc1:p80tcp`), RFC 4648 base32 (A-Z, 2-7), the first 16 characters, prefixed with
  `KUBE-SVC-`, `KUBE-SVL-`, `KUBE-EXT-` or `KUBE-FW-` (all four share one hash);
* endpoint chains: the same with the endpoint's `ip:port` appended (`[ip]:port` for IPv6),
  prefixed with `KUBE-SEP-`.

Probabilities are Go's `%0.10f` of 1/n, and the masquerade mark is Go's `%#08x`, which pads to
eight hex digits after the `0x` (`0x00004000`); Python's `"0x%08x"` is that same string.

The hash functions are cached: a sync computes the same few thousand names every time, and the
hash is the most expensive part of rendering a rule.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

from kubectl_proxyctl.model import ServicePortName
from kubectl_proxyctl.plan.marks import format_mark, masquerade_mark  # noqa: F401 (the iptables vocabulary)

SVC_PREFIX = "KUBE-SVC-"
SVL_PREFIX = "KUBE-SVL-"
EXT_PREFIX = "KUBE-EXT-"
FW_PREFIX = "KUBE-FW-"
SEP_PREFIX = "KUBE-SEP-"

# Chains with these prefixes are "service chains": created per service or endpoint, and
# deleted by a sync that no longer writes them.
SERVICE_CHAIN_PREFIXES: tuple[str, ...] = (SVC_PREFIX, SVL_PREFIX, SEP_PREFIX, FW_PREFIX, EXT_PREFIX)

# kube-proxy drops the comments of SVC/SVL endpoint rules and SEP rules above this many
# endpoints (`largeClusterEndpointsThreshold`).
LARGE_CLUSTER_ENDPOINTS_THRESHOLD = 1000

_CACHE_SIZE = 1 << 18


_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
# Two base32 characters (10 bits) at a time: 16 characters are the first 80 bits (10 bytes).
_PAIRS = tuple(_ALPHABET[i >> 5] + _ALPHABET[i & 31] for i in range(1024))


@functools.lru_cache(maxsize=_CACHE_SIZE)
def hash16(text: str) -> str:
    """The first 16 characters of base32(sha256(text)): the hashed part of a chain name.

    Same as `base64.b32encode(sha256(text).digest())[:16]`, computed from the first ten
    digest bytes only (base32 turns each 5 bytes into 8 characters), which is several times
    faster than encoding the whole digest.
    """
    n = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:10], "big")
    p = _PAIRS
    return "".join(
        (
            p[n >> 70],
            p[(n >> 60) & 1023],
            p[(n >> 50) & 1023],
            p[(n >> 40) & 1023],
            p[(n >> 30) & 1023],
            p[(n >> 20) & 1023],
            p[(n >> 10) & 1023],
            p[n & 1023],
        )
    )


def port_proto_hash(service_port_name: str, protocol: str) -> str:
    """kube-proxy's portProtoHash: `hash16(name + lower(protocol))`."""
    return hash16(service_port_name + protocol.lower())


@dataclass(frozen=True)
class ServiceChains:
    """The four chain names of one service port; they share one hash."""

    svc: str  # Cluster-policy endpoint dispatch
    svl: str  # Local-policy endpoint dispatch
    ext: str  # external traffic entry point
    fw: str  # loadBalancerSourceRanges filter


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _service_chains(spn: str, protocol: str) -> ServiceChains:
    h = port_proto_hash(spn, protocol)
    return ServiceChains(SVC_PREFIX + h, SVL_PREFIX + h, EXT_PREFIX + h, FW_PREFIX + h)


def service_chains(name: ServicePortName) -> ServiceChains:
    """SVC/SVL/EXT/FW chain names of a service port."""
    return _service_chains(str(name), name.protocol.value)


def service_chain(name: ServicePortName) -> str:
    return service_chains(name).svc


def local_chain(name: ServicePortName) -> str:
    return service_chains(name).svl


def external_chain(name: ServicePortName) -> str:
    return service_chains(name).ext


def firewall_chain(name: ServicePortName) -> str:
    return service_chains(name).fw


def endpoint_chain(name: ServicePortName, endpoint: str) -> str:
    """KUBE-SEP chain of one endpoint; `endpoint` is the `ip:port` string (`[ip]:port` on IPv6)."""
    return endpoint_chain_for(str(name), name.protocol.value, endpoint)


def endpoint_chain_for(spn: str, protocol: str, endpoint: str) -> str:
    """KUBE-SEP chain from the raw parts (`spn` is the ServicePortName string)."""
    return SEP_PREFIX + hash16(spn + protocol.lower() + endpoint)


def is_service_chain(chain: str) -> bool:
    """True for chains kube-proxy creates per service or endpoint (and may delete when stale)."""
    return chain.startswith(SERVICE_CHAIN_PREFIXES)


@functools.lru_cache(maxsize=4096)
def probability(n: int) -> str:
    """The `--probability` of the first of n remaining endpoints: 1/n as Go's `%0.10f`."""
    if n < 1:
        raise ValueError(f"probability needs at least one endpoint, got {n}")
    return "%0.10f" % (1.0 / n)
