"""API objects (plain dicts) → the model, with kube-proxy's exact semantics.

This is the one boundary where Kubernetes payloads become `model` objects. It is pure: the
same objects give the same ClusterState. The rules, and where upstream implements them:

Services (`pkg/proxy/serviceport.go`, `pkg/proxy/util/utils.go`):
* ExternalName Services, headless ones (clusterIP "None") and those without a cluster IP
  yet (clusterIP missing or empty: not allocated) are not proxied; neither are Services
  labelled `service.kubernetes.io/service-proxy-name` (any value). They are still
  converted, with `skip_reason` saying why.
* LB ingress IPs with `ipMode: Proxy` are skipped; `healthCheckNodePort` counts only for
  type LoadBalancer with externalTrafficPolicy Local; ETP Local counts only on an externally
  accessible Service (LoadBalancer, NodePort, or ClusterIP with externalIPs).
* ClientIP affinity timeout defaults to 10800 s.

EndpointSlices (`pkg/proxy/endpointslicecache.go`, `cmd/kube-proxy/app/server.go`):
* Slices labelled `service.kubernetes.io/service-proxy-name` or
  `service.kubernetes.io/headless`, slices without `kubernetes.io/service-name`, and FQDN
  slices are ignored (recorded in `ignored_slices`).
* Only `addresses[0]` of an endpoint is used; a slice port needs a non-nil name and a
  non-zero port.
* Nil conditions: ready → true, serving → true, terminating → false.
* All slices of a service are merged per service port; duplicates (same `ip:port`) keep the
  non-terminating copy; the result is sorted by the string `ip:port`.

Addresses (`k8s.io/utils/net` ParseIPSloppy / ParseCIDRSloppy, which kube-proxy uses for
cluster IPs, external IPs, LB ingress IPs, source ranges, endpoint and node addresses): IPv4
text with leading zeros (`172.30.0.041`, `203.0.113.000/025`), which Go accepted before 1.17
and old clusters still store, is read with the legacy parser (each part decimal, leading
zeros ignored; never octal) and normalised (`172.30.0.41`); one warning per object names the
fields. Text the strict parsers accept is kept as it is.

Bad objects never stop a conversion: each is skipped and reported once through `warn`.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from typing import Any, Callable, Iterable, Mapping

from kubectl_proxyctl.model import (
    ClusterState,
    Endpoint,
    IgnoredSlice,
    NodeInfo,
    Pod,
    Protocol,
    Service,
    ServicePort,
    ServicePortName,
    ServiceType,
)

Obj = Mapping[str, Any]
Warn = Callable[[str], None]

LABEL_SERVICE_NAME = "kubernetes.io/service-name"
LABEL_PROXY_NAME = "service.kubernetes.io/service-proxy-name"
LABEL_HEADLESS = "service.kubernetes.io/headless"
DEFAULT_AFFINITY_SECONDS = 10800

KINDS = ("Service", "EndpointSlice", "Node", "Pod", "ServiceCIDR")


class InvalidObject(ValueError):
    """An object that cannot be converted; the message says why."""


def _ignore(_msg: str) -> None:
    return None


def _meta(obj: Obj) -> Mapping[str, Any]:
    meta = obj.get("metadata")
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str) or not meta["name"]:
        raise InvalidObject("metadata.name is missing")
    return meta


def _labels(meta: Mapping[str, Any]) -> Mapping[str, str]:
    labels = meta.get("labels") or {}
    if not isinstance(labels, dict):
        raise InvalidObject("metadata.labels is not a map")
    return labels


# What the API server allows in a namespace, a Service name and a port name (DNS labels;
# kept lenient: a leading digit and port names up to 63 characters pass). These strings end
# up inside iptables comments, so anything else (spaces, quotes, newlines, unicode, more
# than 63 characters) must never get through from a hand-written file.
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?\Z")


def _dns_label(value: Any, what: str) -> str:
    if not isinstance(value, str) or len(value) > 63 or not _DNS_LABEL.match(value):
        raise InvalidObject(f"{what} {value!r} is not a DNS label (a-z, 0-9 and '-', at most 63 characters)")
    return value


def _str_list(value: Any, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidObject(f"{what} is not a list of strings")
    return tuple(value)


def _valid_ip(text: str) -> bool:
    """A valid IPv4 or IPv6 address (inet_pton: strict, and much faster than ipaddress)."""
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)
        return True
    except (OSError, ValueError, TypeError):
        return False


def _valid_cidr(text: str) -> bool:
    try:
        ipaddress.ip_network(text.strip(), strict=False)
        return True
    except ValueError:
        return False


# --- Go's legacy (pre-1.17) address parser, as forked into k8s.io/utils/net -------------------

_BIG = 0xFFFFFF  # Go's `big`: dtoi/xtoi give up at this value


def _dtoi(s: str) -> tuple[int, int, bool]:
    """Go's dtoi: decimal digits → (number, characters used, ok). Leading zeros are fine."""
    n = i = 0
    while i < len(s) and "0" <= s[i] <= "9":
        n = n * 10 + ord(s[i]) - 48
        if n >= _BIG:
            return _BIG, i, False
        i += 1
    return (n, i, i > 0)


def _xtoi(s: str) -> tuple[int, int, bool]:
    """Go's xtoi: hexadecimal digits → (number, characters used, ok)."""
    n = i = 0
    while i < len(s) and s[i] in "0123456789abcdefABCDEF":
        n = n * 16 + int(s[i], 16)
        if n >= _BIG:
            return 0, i, False
        i += 1
    return (n, i, i > 0)


def _sloppy_v4(s: str) -> bytes | None:
    out = bytearray()
    for i in range(4):
        if not s:
            return None
        if i > 0:
            if s[0] != ".":
                return None
            s = s[1:]
        n, c, ok = _dtoi(s)
        if not ok or n > 0xFF:
            return None
        s = s[c:]
        out.append(n)
    return bytes(out) if not s else None


def _sloppy_v6(s: str) -> bytes | None:
    ip = bytearray(16)
    ellipsis = -1
    if len(s) >= 2 and s[0] == ":" and s[1] == ":":
        ellipsis = 0
        s = s[2:]
        if not s:
            return bytes(ip)
    i = 0
    while i < 16:
        n, c, ok = _xtoi(s)
        if not ok or n > 0xFFFF:
            return None
        if c < len(s) and s[c] == ".":
            if (ellipsis < 0 and i != 12) or i + 4 > 16:
                return None
            v4 = _sloppy_v4(s)
            if v4 is None:
                return None
            ip[i:i + 4] = v4
            s = ""
            i += 4
            break
        ip[i], ip[i + 1] = n >> 8, n & 0xFF
        i += 2
        s = s[c:]
        if not s:
            break
        if s[0] != ":" or len(s) == 1:
            return None
        s = s[1:]
        if s[0] == ":":
            if ellipsis >= 0:
                return None
            ellipsis = i
            s = s[1:]
            if not s:
                break
    if s:
        return None
    if i < 16:
        if ellipsis < 0:
            return None
        n = 16 - i
        ip[ellipsis + n:16] = ip[ellipsis:i]
        ip[ellipsis:ellipsis + n] = bytes(n)
    elif ellipsis >= 0:
        return None
    return bytes(ip)


_V4_MAPPED = bytes(10) + b"\xff\xff"


def _go_ip_text(raw: bytes) -> str:
    """Go's IP.String(): dotted quad for IPv4 and IPv4-mapped IPv6, else RFC 5952."""
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw))
    if raw[:12] == _V4_MAPPED:
        return str(ipaddress.IPv4Address(raw[12:]))
    return ipaddress.IPv6Address(raw).compressed


def parse_ip_sloppy(text: str) -> str | None:
    """k8s.io/utils/net ParseIPSloppy (Go ≤ 1.16 net.ParseIP), normalised; None if invalid."""
    for ch in text:
        if ch == ".":
            raw = _sloppy_v4(text)
            return _go_ip_text(raw) if raw is not None else None
        if ch == ":":
            raw = _sloppy_v6(text)
            return _go_ip_text(raw) if raw is not None else None
    return None


def parse_cidr_sloppy(text: str) -> str | None:
    """k8s.io/utils/net ParseCIDRSloppy, as the network it names (`IPNet.String()`), or None."""
    addr, sep, mask = text.partition("/")
    if not sep:
        return None
    raw = _sloppy_v4(addr)
    bits = 32
    if raw is None:
        raw, bits = _sloppy_v6(addr), 128
    n, used, ok = _dtoi(mask)
    if raw is None or not ok or used != len(mask) or n > bits:
        return None
    if bits == 32:
        return str(ipaddress.IPv4Network((raw, n), strict=False))
    return str(ipaddress.IPv6Network((raw, n), strict=False))


class _Notes:
    """The legacy-text normalisations of one object, reported in one warning."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def ip(self, text: str, what: str) -> str | None:
        """`text` if it is a valid IP, its normalised form if only the legacy parser reads it."""
        if _valid_ip(text):
            return text
        fixed = parse_ip_sloppy(text)
        if fixed is not None:
            self.items.append(f"{what} {text!r} → {fixed}")
        return fixed

    def cidr(self, text: str, what: str) -> str | None:
        text = text.strip()  # kube-proxy trims (validation let padding through)
        if _valid_cidr(text):
            return text
        fixed = parse_cidr_sloppy(text)
        if fixed is not None:
            self.items.append(f"{what} {text!r} → {fixed}")
        return fixed

    def report(self, obj: Obj, warn: "Warn | None") -> None:
        if self.items and warn is not None:
            warn(f"{_describe(obj)}: IPv4 text with leading zeros read as kube-proxy reads it "
                 f"(decimal): {', '.join(self.items)}")


# DNS subdomain (RFC 1123), what Kubernetes requires of a Node's name.
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\Z")


def is_dns_subdomain(value: str) -> bool:
    """A valid Node name: lower-case RFC 1123 labels joined by dots, at most 253 characters."""
    return isinstance(value, str) and 0 < len(value) <= 253 and bool(_DNS_SUBDOMAIN.match(value))


def _port_number(value: Any, what: str, allow_zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidObject(f"{what} is not a number: {value!r}")
    if not (0 if allow_zero else 1) <= value <= 65535:
        raise InvalidObject(f"{what} is out of range: {value}")
    return value


def _protocol(value: Any, what: str) -> Protocol:
    if value is None:
        return Protocol.TCP
    try:
        return Protocol(value)
    except ValueError:
        raise InvalidObject(f"{what} has an unknown protocol {value!r}") from None


def _service_type(value: Any) -> ServiceType:
    if value is None:
        return ServiceType.ClusterIP
    try:
        return ServiceType(value)
    except ValueError:
        raise InvalidObject(f"unknown service type {value!r}") from None


def convert_service(obj: Obj, warn: Warn | None = None) -> Service:
    """One Service object → model.Service (raises InvalidObject).

    `warn` hears, once for the object, about legacy address text that was normalised."""
    notes = _Notes()
    svc = _convert_service(obj, notes)
    notes.report(obj, warn)
    return svc


def _convert_service(obj: Obj, notes: "_Notes") -> Service:
    meta = _meta(obj)
    labels = _labels(meta)
    namespace = _dns_label(meta.get("namespace") or "default", "metadata.namespace")
    name = _dns_label(meta["name"], "metadata.name")
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    if not isinstance(spec, dict) or not isinstance(status, dict):
        raise InvalidObject("spec or status is not a map")
    svc_type = _service_type(spec.get("type"))

    primary = spec.get("clusterIP")
    if primary is not None and not isinstance(primary, str):
        raise InvalidObject(f"spec.clusterIP is not a string: {primary!r}")
    cluster_ips: list[str] = []
    for i, text in enumerate(_str_list(spec.get("clusterIPs"), "spec.clusterIPs")):
        if text == "None":
            cluster_ips.append(text)
            continue
        ip = notes.ip(text, f"spec.clusterIPs[{i}]")
        if ip is None:
            raise InvalidObject(f"spec.clusterIPs[{i}] {text!r} is not an IP address")
        cluster_ips.append(ip)
    if primary and primary != "None":
        ip = notes.ip(primary, "spec.clusterIP")
        if ip is None:
            raise InvalidObject(f"spec.clusterIP {primary!r} is not an IP address")
        if ip not in cluster_ips:
            cluster_ips.insert(0, ip)
    elif primary == "None" and "None" not in cluster_ips:
        cluster_ips.insert(0, primary)
    # Only "None" makes a Service headless; a missing or empty clusterIP means the API server
    # has not allocated one (yet). kube-proxy skips both (`IsServiceIPSet`).
    headless = bool(cluster_ips) and cluster_ips[0] == "None"
    unallocated = not cluster_ips
    real_ips = tuple(ip for ip in cluster_ips if ip != "None")

    skip = ""
    if svc_type == ServiceType.ExternalName:
        skip = "type ExternalName: resolved by DNS, never proxied"
    elif headless:
        skip = "headless (clusterIP: None): clients reach pods directly, never proxied"
    elif unallocated:
        skip = ("no cluster IP allocated yet (spec.clusterIP is missing or empty): kube-proxy skips it "
                "until the API server assigns one")
    elif LABEL_PROXY_NAME in labels:
        skip = f"labelled {LABEL_PROXY_NAME}={labels[LABEL_PROXY_NAME]}: another proxy owns it"

    external_ips: list[str] = []
    for i, text in enumerate(_str_list(spec.get("externalIPs"), "spec.externalIPs")):
        ip = notes.ip(text, f"spec.externalIPs[{i}]")
        if ip is not None:
            external_ips.append(ip)
    lb_ips: list[str] = []
    lb = status.get("loadBalancer") or {}
    ingresses = lb.get("ingress") if isinstance(lb, dict) else None
    for i, ingress in enumerate(ingresses if isinstance(ingresses, list) else []):
        if not isinstance(ingress, dict):
            continue
        text = ingress.get("ip")
        if not isinstance(text, str) or not text or ingress.get("ipMode") == "Proxy":
            continue
        ip = notes.ip(text, f"status.loadBalancer.ingress[{i}].ip")
        if ip is not None:
            lb_ips.append(ip)
    source_ranges: list[str] = []
    for i, text in enumerate(_str_list(spec.get("loadBalancerSourceRanges"), "spec.loadBalancerSourceRanges")):
        cidr = notes.cidr(text, f"spec.loadBalancerSourceRanges[{i}]")
        if cidr is not None:
            source_ranges.append(cidr)
    affinity = spec.get("sessionAffinity") == "ClientIP"
    timeout = DEFAULT_AFFINITY_SECONDS
    if affinity:
        cfg = ((spec.get("sessionAffinityConfig") or {}).get("clientIP") or {}).get("timeoutSeconds")
        if isinstance(cfg, int) and not isinstance(cfg, bool) and cfg > 0:
            timeout = cfg
    accessible_by_type = svc_type in (ServiceType.NodePort, ServiceType.LoadBalancer) or bool(external_ips)
    etp_local = accessible_by_type and spec.get("externalTrafficPolicy") == "Local"
    itp_local = spec.get("internalTrafficPolicy") == "Local"
    hc_port = 0
    if svc_type == ServiceType.LoadBalancer and etp_local:
        raw_hc = spec.get("healthCheckNodePort")
        if isinstance(raw_hc, int) and not isinstance(raw_hc, bool) and 0 < raw_hc <= 65535:
            hc_port = raw_hc
    distribution = spec.get("trafficDistribution") or ""

    ports: list[ServicePort] = []
    raw_ports = spec.get("ports") or []
    if not isinstance(raw_ports, list):
        raise InvalidObject("spec.ports is not a list")
    for i, raw in enumerate(raw_ports):
        if not isinstance(raw, dict):
            raise InvalidObject(f"spec.ports[{i}] is not a map")
        port_name = raw.get("name") or ""
        if not isinstance(port_name, str):
            raise InvalidObject(f"spec.ports[{i}].name is not a string")
        if port_name:
            _dns_label(port_name, f"spec.ports[{i}].name")
        proto = _protocol(raw.get("protocol"), f"spec.ports[{i}]")
        number = _port_number(raw.get("port"), f"spec.ports[{i}].port")
        node_port = 0
        if svc_type in (ServiceType.NodePort, ServiceType.LoadBalancer) and raw.get("nodePort") is not None:
            node_port = _port_number(raw.get("nodePort"), f"spec.ports[{i}].nodePort", allow_zero=True)
        target = raw.get("targetPort", number)
        if not isinstance(target, (int, str)) or isinstance(target, bool):
            raise InvalidObject(f"spec.ports[{i}].targetPort is neither a number nor a name")
        ports.append(
            ServicePort(
                name=ServicePortName(namespace, name, port_name, proto),
                port=number,
                protocol=proto,
                type=svc_type,
                cluster_ips=real_ips,
                target_port=target,
                node_port=node_port,
                external_ips=tuple(external_ips),
                load_balancer_ips=tuple(lb_ips),
                load_balancer_source_ranges=tuple(source_ranges),
                session_affinity=affinity,
                sticky_max_age_seconds=timeout if affinity else 0,
                external_policy_local=etp_local,
                internal_policy_local=itp_local,
                health_check_node_port=hc_port,
                traffic_distribution=distribution if isinstance(distribution, str) else "",
            )
        )
    selector = spec.get("selector") or {}
    if not isinstance(selector, dict):
        raise InvalidObject("spec.selector is not a map")
    return Service(
        namespace=namespace,
        name=name,
        type=svc_type,
        cluster_ips=real_ips,
        ports=tuple(ports),
        selector=tuple(sorted((str(k), str(v)) for k, v in selector.items())),
        skip_reason=skip,
        uid=str(meta.get("uid") or ""),
    )


def _condition(conditions: Mapping[str, Any], key: str, default: bool) -> bool:
    value = conditions.get(key)
    return default if value is None else bool(value)


def slice_endpoints(obj: Obj, warn: Warn | None = None) -> tuple[str, str, list[tuple[ServicePortName, Endpoint]]]:
    """One EndpointSlice → (namespace, service name, [(port name, endpoint)]).

    `warn` hears, once for the slice, about legacy address text that was normalised."""
    notes = _Notes()
    found = _slice_endpoints(obj, notes)
    notes.report(obj, warn)
    return found


def _slice_endpoints(obj: Obj, notes: "_Notes") -> tuple[str, str, list[tuple[ServicePortName, Endpoint]]]:
    meta = _meta(obj)
    namespace = _dns_label(meta.get("namespace") or "default", "metadata.namespace")
    service = _labels(meta).get(LABEL_SERVICE_NAME)
    if not service:
        raise InvalidObject(f"no {LABEL_SERVICE_NAME} label")
    service = _dns_label(service, f"label {LABEL_SERVICE_NAME}")
    out: list[tuple[ServicePortName, Endpoint]] = []
    raw_ports = obj.get("ports") or []
    raw_eps = obj.get("endpoints") or []
    if not isinstance(raw_ports, list) or not isinstance(raw_eps, list):
        raise InvalidObject("ports or endpoints is not a list")
    # kube-proxy uses addresses[0] as ParseIPSloppy(...).String(); unparsable ones are skipped
    ips: list[str | None] = []
    for i, raw_ep in enumerate(raw_eps):
        addresses = raw_ep.get("addresses") if isinstance(raw_ep, dict) else None
        if not isinstance(addresses, list) or not addresses or not isinstance(addresses[0], str):
            ips.append(None)
            continue
        ips.append(notes.ip(addresses[0], f"endpoints[{i}].addresses[0]"))
    for raw_port in raw_ports:
        if not isinstance(raw_port, dict):
            continue
        port_name = raw_port.get("name")
        number = raw_port.get("port")
        if port_name is None or not isinstance(port_name, str) or not number:
            continue  # kube-proxy: name must be non-nil, port non-zero
        number = _port_number(number, "ports[].port")
        proto = _protocol(raw_port.get("protocol"), "ports[]")
        spn = ServicePortName(namespace, service, port_name, proto)
        for raw_ep, ip in zip(raw_eps, ips):
            if ip is None:
                continue
            conditions = raw_ep.get("conditions") or {}
            hints = raw_ep.get("hints") or {}
            ref = raw_ep.get("targetRef") or {}
            for_zones = hints.get("forZones") if hints else None  # most endpoints have no hints:
            for_nodes = hints.get("forNodes") if hints else None  # no generator for them (big files)
            out.append(
                (
                    spn,
                    Endpoint(
                        ip=ip,
                        port=number,
                        ready=_condition(conditions, "ready", True),
                        serving=_condition(conditions, "serving", True),
                        terminating=_condition(conditions, "terminating", False),
                        node_name=str(raw_ep.get("nodeName") or ""),
                        zone=str(raw_ep.get("zone") or ""),
                        zone_hints=tuple(
                            str(h.get("name")) for h in for_zones if isinstance(h, dict)
                        ) if for_zones else (),
                        node_hints=tuple(
                            str(h.get("name")) for h in for_nodes if isinstance(h, dict)
                        ) if for_nodes else (),
                        target_ref=f"{ref.get('kind', '')}/{ref.get('name', '')}" if ref.get("name") else "",
                        slice_name=meta["name"],
                    ),
                )
            )
    return namespace, service, out


def slice_ignore_reason(obj: Obj) -> str:
    """Why kube-proxy ignores this slice, or "" when it does not."""
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {} if isinstance(meta, dict) else {}
    if not isinstance(labels, dict):
        return "metadata.labels is not a map"
    if LABEL_PROXY_NAME in labels:
        return f"labelled {LABEL_PROXY_NAME}"
    if LABEL_HEADLESS in labels:
        return f"labelled {LABEL_HEADLESS}"
    if obj.get("addressType") == "FQDN":
        return "addressType FQDN"
    if LABEL_SERVICE_NAME not in labels:
        return f"no {LABEL_SERVICE_NAME} label"
    return ""


def merge_endpoints(pairs: Iterable[tuple[ServicePortName, Endpoint]]) -> dict[ServicePortName, tuple[Endpoint, ...]]:
    """Merge endpoints from all slices: dedup by ip:port (non-terminating wins), string sort."""
    merged: dict[ServicePortName, dict[str, Endpoint]] = {}
    for spn, ep in pairs:
        by_addr = merged.setdefault(spn, {})
        key = ep.address
        old = by_addr.get(key)
        if old is None or (old.terminating and not ep.terminating):
            by_addr[key] = ep
    return {spn: tuple(by_addr[k] for k in sorted(by_addr)) for spn, by_addr in merged.items()}


def service_cidrs_of(obj: Obj) -> tuple[str, ...]:
    """A ServiceCIDR's `spec.cidrs` (networking.k8s.io/v1, every cluster from 1.33): the
    ranges cluster IPs are allocated from; each must be a CIDR."""
    spec = obj.get("spec")
    cidrs = spec.get("cidrs") if isinstance(spec, dict) else None
    if not isinstance(cidrs, list) or not cidrs:
        raise InvalidObject("spec.cidrs must be a non-empty list")
    out = []
    for cidr in cidrs:
        try:
            out.append(str(ipaddress.ip_network(str(cidr), strict=True)))
        except ValueError:
            raise InvalidObject(f"spec.cidrs: {cidr!r} is not a CIDR") from None
    return tuple(out)


def convert_node(obj: Obj, warn: Warn | None = None) -> NodeInfo:
    """One Node → model.NodeInfo; `warn` hears once about normalised legacy address text."""
    notes = _Notes()
    node = _convert_node(obj, notes)
    notes.report(obj, warn)
    return node


def _convert_node(obj: Obj, notes: "_Notes") -> NodeInfo:
    meta = _meta(obj)
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    if not isinstance(spec, dict) or not isinstance(status, dict):
        raise InvalidObject("spec or status is not a map")
    raw_addresses = status.get("addresses") or []
    if not isinstance(raw_addresses, list):
        raise InvalidObject("status.addresses is not a list")
    addresses: list[tuple[str, str]] = []
    for i, a in enumerate(raw_addresses):
        if not isinstance(a, dict) or not a.get("address"):
            continue
        kind, text = str(a.get("type")), str(a.get("address"))
        if kind in ("InternalIP", "ExternalIP"):
            # kube-proxy reads node IPs with ParseIPSloppy; others (Hostname, ...) are names.
            # Text that is no IP at all stays as it is: its users reject it, naming it.
            text = notes.ip(text, f"status.addresses[{i}].address") or text
        addresses.append((kind, text))
    cidrs: list[str] = []
    for i, text in enumerate(_str_list(spec.get("podCIDRs"), "spec.podCIDRs")):
        cidr = notes.cidr(text, f"spec.podCIDRs[{i}]")
        if cidr is not None:
            cidrs.append(cidr)
    primary = spec.get("podCIDR")
    if primary is not None and not isinstance(primary, str):
        raise InvalidObject("spec.podCIDR is not a string")
    if primary:
        cidr = notes.cidr(primary, "spec.podCIDR")
        if cidr is not None and cidr not in cidrs:
            cidrs.insert(0, cidr)
    taints = spec.get("taints") or []
    if not isinstance(taints, list):
        raise InvalidObject("spec.taints is not a list")
    return NodeInfo(
        name=meta["name"],
        addresses=tuple(addresses),
        labels=tuple(sorted((str(k), str(v)) for k, v in _labels(meta).items())),
        pod_cidrs=tuple(cidrs),
        unschedulable=bool(spec.get("unschedulable")),
        deleting=bool(meta.get("deletionTimestamp")),
        taints=tuple(str(t.get("key")) for t in taints if isinstance(t, dict)),
    )


def convert_pod(obj: Obj) -> Pod:
    meta = _meta(obj)
    namespace = _dns_label(meta.get("namespace") or "default", "metadata.namespace")
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    if not isinstance(spec, dict) or not isinstance(status, dict):
        raise InvalidObject("spec or status is not a map")
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (status.get("conditions") or [])
        if isinstance(c, dict)
    )
    ports: list[tuple[str, int, Protocol]] = []
    for container in spec.get("containers") or []:
        for p in (container.get("ports") or []) if isinstance(container, dict) else []:
            if isinstance(p, dict) and isinstance(p.get("containerPort"), int):
                ports.append((str(p.get("name") or ""), p["containerPort"], _protocol(p.get("protocol"), "containerPort")))
    return Pod(
        namespace=namespace,
        name=meta["name"],
        labels=tuple(sorted((str(k), str(v)) for k, v in _labels(meta).items())),
        ip=str(status.get("podIP") or ""),
        node_name=str(spec.get("nodeName") or ""),
        ready=ready,
        container_ports=tuple(ports),
    )


def printable(value: Any) -> str:
    """Text from an object, safe for one line: control characters (newlines) escaped."""
    text = value if isinstance(value, str) else str(value)
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _describe(obj: Obj) -> str:
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    ns = meta.get("namespace")  # type: ignore[union-attr]
    name = meta.get("name") or "<unnamed>"  # type: ignore[union-attr]
    return printable(f"{obj.get('kind', '?')} {f'{ns}/' if ns else ''}{name}")


def state_from_objects(objects: Iterable[Obj], warn: Warn = _ignore) -> ClusterState:
    """Build a ClusterState from any mix of Service, EndpointSlice, Node and Pod objects.

    Objects of other kinds are skipped with a warning; invalid ones too. Endpoints whose
    slice kind is missing are accepted when they look like slices (tests and files often
    omit `kind` for List items of one kind, but the informer always sets it).
    """
    services: dict[str, Service] = {}
    nodes: dict[str, NodeInfo] = {}
    pods: dict[str, Pod] = {}
    pairs: list[tuple[ServicePortName, Endpoint]] = []
    ignored: list[IgnoredSlice] = []
    slices_by_service: dict[str, list[str]] = {}
    cidrs: set[str] = set()
    has_pods = False
    for obj in objects:
        if not isinstance(obj, dict):
            warn(f"skipping an item that is not an object: {obj!r:.60}")
            continue
        kind = obj.get("kind")
        try:
            if kind == "Service":
                svc = convert_service(obj, warn)
                services[svc.key] = svc
            elif kind == "EndpointSlice":
                reason = slice_ignore_reason(obj)
                meta = _meta(obj)
                ns = _dns_label(meta.get("namespace") or "default", "metadata.namespace")
                owner = (_labels(meta)).get(LABEL_SERVICE_NAME, "")
                owner = owner if isinstance(owner, str) else ""
                if reason:
                    ignored.append(IgnoredSlice(ns, meta["name"], f"{ns}/{owner}" if owner else "", reason))
                    continue
                ns, owner, found = slice_endpoints(obj, warn)
                slices_by_service.setdefault(f"{ns}/{owner}", []).append(meta["name"])
                pairs.extend(found)
            elif kind == "Node":
                node = convert_node(obj, warn)
                nodes[node.name] = node
            elif kind == "Pod":
                has_pods = True
                pod = convert_pod(obj)
                pods[f"{pod.namespace}/{pod.name}"] = pod
            elif kind == "ServiceCIDR":
                cidrs.update(service_cidrs_of(obj))
            else:
                warn(f"skipping {_describe(obj)}: kind {kind!r} is not used (only {', '.join(KINDS)})")
        except InvalidObject as exc:
            warn(f"skipping invalid {_describe(obj)}: {exc}")
        except (TypeError, AttributeError, ValueError) as exc:
            warn(f"skipping malformed {_describe(obj)}: {exc}")
    ports = {
        p.name: p for svc in services.values() if svc.proxied for p in svc.ports
    }
    return ClusterState(
        services=services,
        ports=ports,
        endpoints=merge_endpoints(pairs),
        nodes=nodes,
        pods=pods,
        ignored_slices=tuple(ignored),
        slices_by_service={k: tuple(sorted(v)) for k, v in slices_by_service.items()},
        has_pods=has_pods,
        service_cidrs=tuple(sorted(cidrs)),
    )
