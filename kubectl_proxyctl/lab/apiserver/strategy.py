"""Per-kind API semantics: defaulting and validation, like pkg/registry/*/strategy.go.

`apply_defaults` fills in what the real API server's defaulters fill in for the fields the
lab and kube-proxy read (Service protocol/targetPort/clusterIPs/policies, EndpointSlice
port protocols, Namespace phase, Pod basics). It runs on every create and update, so a
patch that drops a defaulted field gets it back, as on a real server.

`validate` returns field-level causes with the real server's wording; the registry turns
a non-empty list into 422 Invalid. It checks what a typo in a lab manifest would most
likely break: names, labels, service types and ports, slice addresses, pod containers.
Nothing here allocates (cluster IPs, node ports): that is for admission hooks.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from typing import Any, Callable

from kubectl_proxyctl.lab.apiserver.resources import ResourceType
from kubectl_proxyctl.lab.apiserver.status import Cause

_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_IANA_SVC_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")

SUBDOMAIN_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
    "and must start and end with an alphanumeric character (e.g. 'example.com', regex used for "
    r"validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
LABEL_1123_MSG = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must "
    "start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for "
    "validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
)
LABEL_1035_MSG = (
    "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an "
    "alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', "
    "regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"
)
LABEL_VALUE_MSG = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', "
    "and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or "
    "'12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
)
QUALIFIED_NAME_MSG = (
    "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end "
    "with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for "
    "validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
)

SERVICE_TYPES = ("ClusterIP", "ExternalName", "LoadBalancer", "NodePort")
PROTOCOLS = ("SCTP", "TCP", "UDP")
ADDRESS_TYPES = ("FQDN", "IPv4", "IPv6")


def _q(value: Any) -> str:
    return f'"{value}"' if isinstance(value, str) else str(value)


def required(path: str, detail: str = "") -> Cause:
    return Cause("FieldValueRequired", "Required value" + (f": {detail}" if detail else ""), path)


def invalid(path: str, value: Any, detail: str) -> Cause:
    return Cause("FieldValueInvalid", f"Invalid value: {_q(value)}: {detail}", path)


def not_supported(path: str, value: Any, supported: tuple[str, ...]) -> Cause:
    choices = ", ".join(f'"{s}"' for s in supported)
    return Cause("FieldValueNotSupported", f"Unsupported value: {_q(value)}: supported values: {choices}", path)


def duplicate(path: str, value: Any) -> Cause:
    return Cause("FieldValueDuplicate", f"Duplicate value: {_q(value)}", path)


def forbidden(path: str, detail: str) -> Cause:
    return Cause("FieldValueForbidden", f"Forbidden: {detail}", path)


# --- names and metadata --------------------------------------------------------------------------

_NAME_RULES: dict[str, tuple[re.Pattern[str], int, str]] = {
    "Service": (_LABEL_1035, 63, LABEL_1035_MSG),
    "Namespace": (_LABEL_1123, 63, LABEL_1123_MSG),
}
_DEFAULT_NAME_RULE = (_SUBDOMAIN, 253, SUBDOMAIN_MSG)


def validate_name(kind: str, name: str) -> list[Cause]:
    pattern, limit, message = _NAME_RULES.get(kind, _DEFAULT_NAME_RULE)
    causes = []
    if len(name) > limit:
        causes.append(invalid("metadata.name", name, f"must be no more than {limit} characters"))
    if not pattern.match(name):
        causes.append(invalid("metadata.name", name, message))
    return causes


def _validate_label_key(path: str, key: str) -> list[Cause]:
    prefix, _, name = key.rpartition("/")
    causes = []
    if prefix and (len(prefix) > 253 or not _SUBDOMAIN.match(prefix)):
        causes.append(invalid(path, key, "prefix part " + SUBDOMAIN_MSG))
    if len(name) > 63:
        causes.append(invalid(path, key, "name part must be no more than 63 characters"))
    if not _QUALIFIED_NAME.match(name):
        causes.append(invalid(path, key, QUALIFIED_NAME_MSG))
    return causes


def validate_metadata(r: ResourceType, meta: dict[str, Any]) -> list[Cause]:
    causes = validate_name(r.kind, str(meta.get("name", "")))
    labels = meta.get("labels") or {}
    if not isinstance(labels, dict):
        return causes + [invalid("metadata.labels", labels, "must be a map of strings")]
    for key, value in labels.items():
        causes += _validate_label_key("metadata.labels", key)
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
            causes.append(invalid("metadata.labels", value, LABEL_VALUE_MSG))
    annotations = meta.get("annotations") or {}
    if not isinstance(annotations, dict) or not all(isinstance(v, str) for v in annotations.values()):
        causes.append(invalid("metadata.annotations", annotations, "must be a map of strings"))
    else:
        for key in annotations:
            causes += _validate_label_key("metadata.annotations", key)
    return causes


# --- defaults ----------------------------------------------------------------------------------------


def _ip_family(ip: str) -> str | None:
    for family, name in ((socket.AF_INET, "IPv4"), (socket.AF_INET6, "IPv6")):
        try:
            socket.inet_pton(family, ip)
            return name
        except (OSError, ValueError):
            continue
    return None


def _default_service(svc: dict[str, Any]) -> None:
    spec = svc.setdefault("spec", {})
    stype = spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    if stype == "ExternalName":
        return
    for port in spec.get("ports") or []:
        if isinstance(port, dict):
            port.setdefault("protocol", "TCP")
            port.setdefault("targetPort", port.get("port"))
    if spec.get("clusterIP") and not spec.get("clusterIPs"):
        spec["clusterIPs"] = [spec["clusterIP"]]
    elif spec.get("clusterIPs") and not spec.get("clusterIP"):
        spec["clusterIP"] = spec["clusterIPs"][0]
    families = [f for f in map(_ip_family, spec.get("clusterIPs") or []) if f]
    if families:
        spec.setdefault("ipFamilies", families)
        spec.setdefault("ipFamilyPolicy", "SingleStack" if len(families) == 1 else "RequireDualStack")
    spec.setdefault("internalTrafficPolicy", "Cluster")
    if stype in ("NodePort", "LoadBalancer"):
        spec.setdefault("externalTrafficPolicy", "Cluster")
    if stype == "LoadBalancer":
        spec.setdefault("allocateLoadBalancerNodePorts", True)
    svc.setdefault("status", {}).setdefault("loadBalancer", {})


def _default_endpoint_slice(eps: dict[str, Any]) -> None:
    for port in eps.get("ports") or []:
        if isinstance(port, dict):
            port.setdefault("protocol", "TCP")


def _default_endpoints(ep: dict[str, Any]) -> None:
    for subset in ep.get("subsets") or []:
        for port in (subset or {}).get("ports") or []:
            if isinstance(port, dict):
                port.setdefault("protocol", "TCP")


def _default_namespace(ns: dict[str, Any]) -> None:
    meta = ns["metadata"]
    meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta["name"]
    ns.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
    ns.setdefault("status", {}).setdefault("phase", "Active")


def _default_container(c: dict[str, Any]) -> None:
    image = str(c.get("image", ""))
    tag = image.rsplit("/", 1)[-1]
    latest = "@" not in tag and (":" not in tag or tag.endswith(":latest"))
    c.setdefault("imagePullPolicy", "Always" if latest else "IfNotPresent")
    c.setdefault("terminationMessagePath", "/dev/termination-log")
    c.setdefault("terminationMessagePolicy", "File")
    for port in c.get("ports") or []:
        if isinstance(port, dict):
            port.setdefault("protocol", "TCP")


def _default_pod(pod: dict[str, Any]) -> None:
    spec = pod.setdefault("spec", {})
    for key in ("containers", "initContainers"):
        for c in spec.get(key) or []:
            if isinstance(c, dict):
                _default_container(c)
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("enableServiceLinks", True)
    pod.setdefault("status", {}).setdefault("phase", "Pending")


_DEFAULTERS: dict[str, Callable[[dict[str, Any]], None]] = {
    "Service": _default_service,
    "EndpointSlice": _default_endpoint_slice,
    "Endpoints": _default_endpoints,
    "Namespace": _default_namespace,
    "Pod": _default_pod,
}


def apply_defaults(r: ResourceType, obj: dict[str, Any]) -> None:
    defaulter = _DEFAULTERS.get(r.kind)
    if defaulter is not None:
        defaulter(obj)


# --- validation --------------------------------------------------------------------------------------


def _port_number(path: str, value: Any) -> list[Cause]:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        return [invalid(path, value, "must be between 1 and 65535, inclusive")]
    return []


def _target_port(path: str, value: Any) -> list[Cause]:
    if isinstance(value, str):
        if len(value) > 15 or not _IANA_SVC_NAME.match(value) or "--" in value or not re.search("[a-z]", value):
            detail = "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)"
            return [invalid(path, value, detail)]
        return []
    return _port_number(path, value)


def _protocol(path: str, value: Any) -> list[Cause]:
    return [] if value in PROTOCOLS else [not_supported(path, value, PROTOCOLS)]


def _ip(path: str, value: Any, family: str | None = None) -> list[Cause]:
    found = _ip_family(value) if isinstance(value, str) else None
    if found is None or (family is not None and found != family):
        what = f"must be a valid {family} address"
        if family is None:
            what = "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"
        return [invalid(path, value, what)]
    return []


def _endpoint_ip(path: str, value: Any) -> list[Cause]:
    """ValidateEndpointIP: an endpoint's address may not be unspecified, loopback or
    link-local (kube-apiserver checks this on Endpoints and EndpointSlices alike)."""
    try:
        ip = ipaddress.ip_address(value) if isinstance(value, str) else None
    except ValueError:
        ip = None
    if ip is None:
        return [invalid(path, value, "must be a valid IP address")]
    for bad, detail in ((ip.is_unspecified, f"may not be unspecified ({value})"),
                        (ip.is_loopback, "may not be in the loopback range (127.0.0.0/8, ::1/128)"),
                        (ip.is_link_local and not ip.is_multicast,
                         "may not be in the link-local range (169.254.0.0/16, fe80::/10)"),
                        (ip.is_multicast and _link_local_multicast(ip),
                         "may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)")):
        if bad:
            return [invalid(path, value, detail)]
    return []


def _link_local_multicast(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    network = "224.0.0.0/24" if ip.version == 4 else "ff02::/16"
    return ip in ipaddress.ip_network(network)


def _slice_address(path: str, index: int, value: Any, family: str) -> list[Cause]:
    """An EndpointSlice address of an IP family: any IP first (an address of the other
    family is reported on the list, as upstream does), then `_endpoint_ip`."""
    found = _ip_family(value) if isinstance(value, str) else None
    if found is None:
        return _ip(f"{path}[{index}]", value)
    causes = [invalid(path, value, f"must be an {family} address")] if found != family else []
    return causes + _endpoint_ip(f"{path}[{index}]", value)


def _validate_service_ports(spec: dict[str, Any], stype: str) -> list[Cause]:
    ports = spec.get("ports") or []
    causes: list[Cause] = []
    names: set[str] = set()
    for i, port in enumerate(ports):
        path = f"spec.ports[{i}]"
        if not isinstance(port, dict):
            causes.append(invalid(path, port, "must be an object"))
            continue
        name = port.get("name", "")
        if len(ports) > 1 and not name:
            causes.append(required(f"{path}.name"))
        elif name in names:
            causes.append(duplicate(f"{path}.name", name))
        names.add(name)
        causes += _port_number(f"{path}.port", port.get("port"))
        causes += _protocol(f"{path}.protocol", port.get("protocol"))
        causes += _target_port(f"{path}.targetPort", port.get("targetPort"))
        node_port = port.get("nodePort")
        if node_port not in (None, 0):
            if stype == "ClusterIP":
                causes.append(forbidden(f"{path}.nodePort", "may not be used when `type` is 'ClusterIP'"))
            else:
                causes += _port_number(f"{path}.nodePort", node_port)
    return causes


def _validate_service(svc: dict[str, Any]) -> list[Cause]:
    spec = svc.get("spec") or {}
    stype = spec.get("type")
    if stype not in SERVICE_TYPES:
        return [not_supported("spec.type", stype, SERVICE_TYPES)]
    if stype == "ExternalName":
        if not spec.get("externalName"):
            return [required("spec.externalName")]
        return []
    causes: list[Cause] = []
    headless = spec.get("clusterIP") == "None"
    if not spec.get("ports") and not headless:
        causes.append(required("spec.ports"))
    causes += _validate_service_ports(spec, stype)
    for i, ip in enumerate(spec.get("clusterIPs") or []):
        if ip != "None":
            causes += _ip(f"spec.clusterIPs[{i}]", ip)
    for i, ip in enumerate(spec.get("externalIPs") or []):
        causes += _ip(f"spec.externalIPs[{i}]", ip)
    return causes


def _validate_endpoint_slice(eps: dict[str, Any]) -> list[Cause]:
    family = eps.get("addressType")
    if family not in ADDRESS_TYPES:
        if not family:
            return [required("addressType")]
        return [not_supported("addressType", family, ADDRESS_TYPES)]
    causes: list[Cause] = []
    for i, ep in enumerate(eps.get("endpoints") or []):
        addresses = (ep or {}).get("addresses") or []
        if not addresses:
            causes.append(required(f"endpoints[{i}].addresses", "must contain at least 1 address"))
        elif len(addresses) > 100:
            message = f"Too many: {len(addresses)}: must have at most 100 items"
            causes.append(Cause("FieldValueTooMany", message, f"endpoints[{i}].addresses"))
        if family != "FQDN":
            for j, address in enumerate(addresses):
                causes += _slice_address(f"endpoints[{i}].addresses", j, address, family)
    for i, port in enumerate(eps.get("ports") or []):
        if port.get("port") is not None:
            causes += _port_number(f"ports[{i}].port", port.get("port"))
        causes += _protocol(f"ports[{i}].protocol", port.get("protocol"))
    return causes


def _validate_endpoints(ep: dict[str, Any]) -> list[Cause]:
    causes: list[Cause] = []
    for i, subset in enumerate(ep.get("subsets") or []):
        for key in ("addresses", "notReadyAddresses"):
            for j, address in enumerate((subset or {}).get(key) or []):
                ip, path = (address or {}).get("ip"), f"subsets[{i}].{key}[{j}].ip"
                causes += _ip(path, ip) + _endpoint_ip(path, ip)
        for j, port in enumerate((subset or {}).get("ports") or []):
            causes += _port_number(f"subsets[{i}].ports[{j}].port", port.get("port"))
            causes += _protocol(f"subsets[{i}].ports[{j}].protocol", port.get("protocol"))
    return causes


def _validate_pod(pod: dict[str, Any]) -> list[Cause]:
    containers = (pod.get("spec") or {}).get("containers") or []
    if not containers:
        return [required("spec.containers")]
    causes: list[Cause] = []
    names: set[str] = set()
    for i, c in enumerate(containers):
        name = (c or {}).get("name")
        if not name:
            causes.append(required(f"spec.containers[{i}].name"))
        elif name in names:
            causes.append(duplicate(f"spec.containers[{i}].name", name))
        names.add(name or "")
        if not (c or {}).get("image"):
            causes.append(required(f"spec.containers[{i}].image"))
        for j, port in enumerate((c or {}).get("ports") or []):
            causes += _port_number(f"spec.containers[{i}].ports[{j}].containerPort", port.get("containerPort"))
    return causes


_VALIDATORS: dict[str, Callable[[dict[str, Any]], list[Cause]]] = {
    "Service": _validate_service,
    "EndpointSlice": _validate_endpoint_slice,
    "Endpoints": _validate_endpoints,
    "Pod": _validate_pod,
}


def validate(r: ResourceType, obj: dict[str, Any]) -> list[Cause]:
    causes = validate_metadata(r, obj.get("metadata") or {})
    validator = _VALIDATORS.get(r.kind)
    if validator is not None:
        causes += validator(obj)
    return causes
