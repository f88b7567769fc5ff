"""Decoding the Kubernetes protobuf wire format, for the request bodies kubectl sends that way.

Since 1.32, client-go's typed clients send built-in objects as
`application/vnd.kubernetes.protobuf`, so `kubectl create namespace NAME` and `kubectl create
service nodeport NAME ...` POST protobuf, not JSON (everything kubectl builds from manifests
stays JSON). kube-proxy talks protobuf by default (`--kube-api-content-type`) and POSTs its
events.k8s.io/v1 Events that way. The server answers in JSON, which those clients accept.

A body is the 4-byte magic `k8s\\0` and a `runtime.Unknown` envelope: `typeMeta` (apiVersion,
kind) and `raw`, the object's own message. `MESSAGES` restates the field numbers of
k8s.io/api generated.proto for the kinds clients create this way (Namespace, Service, and
events.k8s.io/v1 Event: the only Event this server serves) and for DeleteOptions. The result
is the JSON form of the object, with Go's `omitempty` behaviour: zero scalars are left out,
nested structs are kept.
"""

from __future__ import annotations

import datetime
from typing import Any

MAGIC = b"k8s\x00"


class ProtobufError(ValueError):
    """The body is not a protobuf object this server can decode."""


# message -> field number -> (json name, type, repeated). Types: "string", "int", "bool",
# "time" (meta/v1 Time), "microtime" (meta/v1 MicroTime), "intstr" (IntOrString), "map"
# (map<string,string>), or a message name.
Field = tuple[str, str, bool]
MESSAGES: dict[str, dict[int, Field]] = {
    "Unknown": {1: ("typeMeta", "TypeMeta", False), 2: ("raw", "bytes", False),
                3: ("contentEncoding", "string", False), 4: ("contentType", "string", False)},
    "TypeMeta": {1: ("apiVersion", "string", False), 2: ("kind", "string", False)},
    "Time": {1: ("seconds", "int", False), 2: ("nanos", "int", False)},
    "IntOrString": {1: ("type", "int", False), 2: ("intVal", "int", False), 3: ("strVal", "string", False)},
    "ObjectMeta": {
        1: ("name", "string", False), 2: ("generateName", "string", False), 3: ("namespace", "string", False),
        4: ("selfLink", "string", False), 5: ("uid", "string", False), 6: ("resourceVersion", "string", False),
        7: ("generation", "int", False), 8: ("creationTimestamp", "time", False),
        9: ("deletionTimestamp", "time", False), 10: ("deletionGracePeriodSeconds", "int", False),
        11: ("labels", "map", False), 12: ("annotations", "map", False),
        13: ("ownerReferences", "OwnerReference", True), 14: ("finalizers", "string", True),
    },
    "OwnerReference": {
        1: ("kind", "string", False), 3: ("name", "string", False), 4: ("uid", "string", False),
        5: ("apiVersion", "string", False), 6: ("controller", "bool", False),
        7: ("blockOwnerDeletion", "bool", False),
    },
    "Condition": {
        1: ("type", "string", False), 2: ("status", "string", False),
        3: ("observedGeneration", "int", False), 4: ("lastTransitionTime", "time", False),
        5: ("reason", "string", False), 6: ("message", "string", False),
    },
    "Namespace": {1: ("metadata", "ObjectMeta", False), 2: ("spec", "NamespaceSpec", False),
                  3: ("status", "NamespaceStatus", False)},
    "NamespaceSpec": {1: ("finalizers", "string", True)},
    "NamespaceStatus": {1: ("phase", "string", False), 2: ("conditions", "Condition", True)},
    "Service": {1: ("metadata", "ObjectMeta", False), 2: ("spec", "ServiceSpec", False),
                3: ("status", "ServiceStatus", False)},
    "ServiceSpec": {
        1: ("ports", "ServicePort", True), 2: ("selector", "map", False), 3: ("clusterIP", "string", False),
        4: ("type", "string", False), 5: ("externalIPs", "string", True),
        7: ("sessionAffinity", "string", False),
        8: ("loadBalancerIP", "string", False), 9: ("loadBalancerSourceRanges", "string", True),
        10: ("externalName", "string", False), 11: ("externalTrafficPolicy", "string", False),
        12: ("healthCheckNodePort", "int", False), 13: ("publishNotReadyAddresses", "bool", False),
        14: ("sessionAffinityConfig", "SessionAffinityConfig", False), 17: ("ipFamilyPolicy", "string", False),
        18: ("clusterIPs", "string", True), 19: ("ipFamilies", "string", True),
        20: ("allocateLoadBalancerNodePorts", "bool", False), 21: ("loadBalancerClass", "string", False),
        22: ("internalTrafficPolicy", "string", False), 23: ("trafficDistribution", "string", False),
    },
    "ServicePort": {
        1: ("name", "string", False), 2: ("protocol", "string", False), 3: ("port", "int", False),
        4: ("targetPort", "intstr", False), 5: ("nodePort", "int", False), 6: ("appProtocol", "string", False),
    },
    "SessionAffinityConfig": {1: ("clientIP", "ClientIPConfig", False)},
    "ClientIPConfig": {1: ("timeoutSeconds", "int", False)},
    "ServiceStatus": {1: ("loadBalancer", "LoadBalancerStatus", False), 2: ("conditions", "Condition", True)},
    "LoadBalancerStatus": {1: ("ingress", "LoadBalancerIngress", True)},
    "LoadBalancerIngress": {1: ("ip", "string", False), 2: ("hostname", "string", False),
                            3: ("ipMode", "string", False), 4: ("ports", "PortStatus", True)},
    "PortStatus": {1: ("port", "int", False), 2: ("protocol", "string", False), 3: ("error", "string", False)},
    "Event": {  # events.k8s.io/v1
        1: ("metadata", "ObjectMeta", False), 2: ("eventTime", "microtime", False),
        3: ("series", "EventSeries", False), 4: ("reportingController", "string", False),
        5: ("reportingInstance", "string", False), 6: ("action", "string", False),
        7: ("reason", "string", False), 8: ("regarding", "ObjectReference", False),
        9: ("related", "ObjectReference", False), 10: ("note", "string", False), 11: ("type", "string", False),
        12: ("deprecatedSource", "EventSource", False), 13: ("deprecatedFirstTimestamp", "time", False),
        14: ("deprecatedLastTimestamp", "time", False), 15: ("deprecatedCount", "int", False),
    },
    "EventSeries": {1: ("count", "int", False), 2: ("lastObservedTime", "microtime", False)},
    "EventSource": {1: ("component", "string", False), 2: ("host", "string", False)},
    "ObjectReference": {
        1: ("kind", "string", False), 2: ("namespace", "string", False), 3: ("name", "string", False),
        4: ("uid", "string", False), 5: ("apiVersion", "string", False), 6: ("resourceVersion", "string", False),
        7: ("fieldPath", "string", False),
    },
    "DeleteOptions": {
        1: ("gracePeriodSeconds", "int", False), 2: ("preconditions", "Preconditions", False),
        3: ("orphanDependents", "bool", False), 4: ("propagationPolicy", "string", False),
        5: ("dryRun", "string", True),
    },
    "Preconditions": {1: ("uid", "string", False), 2: ("resourceVersion", "string", False)},
}


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ProtobufError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ProtobufError("varint too long")


def _fields(data: bytes) -> list[tuple[int, int | bytes]]:
    """(field number, value) pairs; varints as ints, length-delimited fields as bytes."""
    out: list[tuple[int, int | bytes]] = []
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
            out.append((number, value - (1 << 64) if value >= 1 << 63 else value))
        elif wire == 2:
            length, pos = _varint(data, pos)
            if pos + length > len(data):
                raise ProtobufError("truncated field")
            out.append((number, data[pos:pos + length]))
            pos += length
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        else:
            raise ProtobufError(f"unsupported wire type {wire}")
    return out


def _convert(kind: str, value: int | bytes) -> Any:
    if kind == "int" or kind == "bool":
        if not isinstance(value, int):
            raise ProtobufError(f"expected a varint for a {kind}")
        return bool(value) if kind == "bool" else value
    if not isinstance(value, bytes):
        raise ProtobufError(f"expected bytes for a {kind}")
    if kind == "bytes":
        return value
    if kind == "string":
        return value.decode()
    if kind == "map":
        entry = dict(_fields(value))
        key, val = entry.get(1, b""), entry.get(2, b"")
        return (key.decode() if isinstance(key, bytes) else "", val.decode() if isinstance(val, bytes) else "")
    if kind in ("time", "microtime"):
        t = decode_message("Time", value)
        if not t.get("seconds"):
            return None
        stamp = datetime.datetime.fromtimestamp(t["seconds"], datetime.timezone.utc)
        if kind == "time":
            return stamp.strftime("%Y-%m-%dT%H:%M:%SZ")
        return stamp.strftime("%Y-%m-%dT%H:%M:%S") + f".{t.get('nanos', 0) // 1000:06d}Z"
    if kind == "intstr":
        ios = decode_message("IntOrString", value)
        return ios.get("strVal", "") if ios.get("type") == 1 else ios.get("intVal", 0)
    return decode_message(kind, value)


def decode_message(name: str, data: bytes) -> dict[str, Any]:
    schema = MESSAGES[name]
    out: dict[str, Any] = {}
    for number, raw in _fields(data):
        if number not in schema:
            continue
        json_name, kind, repeated = schema[number]
        value = _convert(kind, raw)
        if kind == "map":
            out.setdefault(json_name, {})[value[0]] = value[1]
        elif repeated:
            out.setdefault(json_name, []).append(value)
        elif isinstance(value, dict) or value not in (None, "", 0):
            out[json_name] = value
    return out


def decode_object(body: bytes, expected: str | None = None) -> dict[str, Any]:
    """The JSON form of a protobuf-encoded object (envelope included)."""
    if not body.startswith(MAGIC):
        raise ProtobufError("missing the k8s protobuf magic number")
    envelope = decode_message("Unknown", body[len(MAGIC):])
    type_meta = envelope.get("typeMeta", {})
    kind = type_meta.get("kind") or expected or ""
    if kind not in MESSAGES or kind in ("Unknown", "TypeMeta"):
        raise ProtobufError(f"protobuf bodies of kind {kind or '(none)'} are not supported; send JSON")
    obj = decode_message(kind, envelope.get("raw", b""))
    if kind == "DeleteOptions":
        return obj
    return {"apiVersion": type_meta.get("apiVersion", "v1"), "kind": kind, **obj}
