"""The known fields of the kinds the lab serves: strict field validation and pruning.

A real API server decodes a request into typed Go structs, so fields it does not know are
dropped — and reported: rejected with `fieldValidation=Strict` (what kubectl sends), a
`Warning` header with `Warn` (the default), nothing with `Ignore`. `unknown_fields` does
the same walk over a dict: it lists (and optionally removes) the fields the schema below
does not declare.

The schema restates the field names of the Kubernetes API types (as of v1.35, a superset
of what older servers accept) for Services, EndpointSlices, Endpoints, Namespaces, Nodes
and ServiceCIDRs. A field maps to None (any value: scalars, maps like labels,
int-or-string), to the fields of an object, or to a one-element list holding the fields of
each list item. Pods are checked down to their metadata; their spec and status are accepted
as given.
"""

from __future__ import annotations

from typing import Any, Union

Fields = dict[str, Union["Fields", "list[Fields]", None]]

_MANAGED_FIELDS_ENTRY: Fields = {
    "apiVersion": None, "fieldsType": None, "fieldsV1": None, "manager": None, "operation": None,
    "subresource": None, "time": None,
}
_OWNER_REFERENCE: Fields = {
    "apiVersion": None, "blockOwnerDeletion": None, "controller": None, "kind": None, "name": None,
    "uid": None,
}
_OBJECT_META: Fields = {
    "annotations": None, "creationTimestamp": None, "deletionGracePeriodSeconds": None,
    "deletionTimestamp": None, "finalizers": None, "generateName": None, "generation": None, "labels": None,
    "managedFields": [_MANAGED_FIELDS_ENTRY], "name": None, "namespace": None,
    "ownerReferences": [_OWNER_REFERENCE], "resourceVersion": None, "selfLink": None, "uid": None,
}
_SERVICE_PORT: Fields = {
    "appProtocol": None, "name": None, "nodePort": None, "port": None, "protocol": None, "targetPort": None,
}
_CLIENT_IP_CONFIG: Fields = {"timeoutSeconds": None}
_SESSION_AFFINITY_CONFIG: Fields = {"clientIP": _CLIENT_IP_CONFIG}
_SERVICE_SPEC: Fields = {
    "allocateLoadBalancerNodePorts": None, "clusterIP": None, "clusterIPs": None, "externalIPs": None,
    "externalName": None, "externalTrafficPolicy": None, "healthCheckNodePort": None,
    "internalTrafficPolicy": None, "ipFamilies": None, "ipFamilyPolicy": None, "loadBalancerClass": None,
    "loadBalancerIP": None, "loadBalancerSourceRanges": None, "ports": [_SERVICE_PORT],
    "publishNotReadyAddresses": None, "selector": None, "sessionAffinity": None,
    "sessionAffinityConfig": _SESSION_AFFINITY_CONFIG, "trafficDistribution": None, "type": None,
}
_CONDITION: Fields = {
    "lastTransitionTime": None, "message": None, "observedGeneration": None, "reason": None, "status": None,
    "type": None,
}
_PORT_STATUS: Fields = {"error": None, "port": None, "protocol": None}
_LOAD_BALANCER_INGRESS: Fields = {"hostname": None, "ip": None, "ipMode": None, "ports": [_PORT_STATUS]}
_LOAD_BALANCER_STATUS: Fields = {"ingress": [_LOAD_BALANCER_INGRESS]}
_SERVICE_STATUS: Fields = {"conditions": [_CONDITION], "loadBalancer": _LOAD_BALANCER_STATUS}
_SERVICE: Fields = {
    "apiVersion": None, "kind": None, "metadata": _OBJECT_META, "spec": _SERVICE_SPEC,
    "status": _SERVICE_STATUS,
}
_ENDPOINT_CONDITIONS: Fields = {"ready": None, "serving": None, "terminating": None}
_FOR_NODE: Fields = {"name": None}
_FOR_ZONE: Fields = {"name": None}
_ENDPOINT_HINTS: Fields = {"forNodes": [_FOR_NODE], "forZones": [_FOR_ZONE]}
_OBJECT_REFERENCE: Fields = {
    "apiVersion": None, "fieldPath": None, "kind": None, "name": None, "namespace": None,
    "resourceVersion": None, "uid": None,
}
_ENDPOINT: Fields = {
    "addresses": None, "conditions": _ENDPOINT_CONDITIONS, "deprecatedTopology": None,
    "hints": _ENDPOINT_HINTS, "hostname": None, "nodeName": None, "targetRef": _OBJECT_REFERENCE,
    "zone": None,
}
_DISCOVERY_ENDPOINT_PORT: Fields = {"appProtocol": None, "name": None, "port": None, "protocol": None}
_ENDPOINT_SLICE: Fields = {
    "addressType": None, "apiVersion": None, "endpoints": [_ENDPOINT], "kind": None, "metadata": _OBJECT_META,
    "ports": [_DISCOVERY_ENDPOINT_PORT],
}
_ENDPOINT_ADDRESS: Fields = {"hostname": None, "ip": None, "nodeName": None, "targetRef": _OBJECT_REFERENCE}
_CORE_ENDPOINT_PORT: Fields = {"appProtocol": None, "name": None, "port": None, "protocol": None}
_ENDPOINT_SUBSET: Fields = {
    "addresses": [_ENDPOINT_ADDRESS], "notReadyAddresses": [_ENDPOINT_ADDRESS],
    "ports": [_CORE_ENDPOINT_PORT],
}
_ENDPOINTS: Fields = {
    "apiVersion": None, "kind": None, "metadata": _OBJECT_META, "subsets": [_ENDPOINT_SUBSET],
}
_NAMESPACE_SPEC: Fields = {"finalizers": None}
_NAMESPACE_CONDITION: Fields = {
    "lastTransitionTime": None, "message": None, "reason": None, "status": None, "type": None,
}
_NAMESPACE_STATUS: Fields = {"conditions": [_NAMESPACE_CONDITION], "phase": None}
_NAMESPACE: Fields = {
    "apiVersion": None, "kind": None, "metadata": _OBJECT_META, "spec": _NAMESPACE_SPEC,
    "status": _NAMESPACE_STATUS,
}
_CONFIG_MAP_NODE_CONFIG_SOURCE: Fields = {
    "kubeletConfigKey": None, "name": None, "namespace": None, "resourceVersion": None, "uid": None,
}
_NODE_CONFIG_SOURCE: Fields = {"configMap": _CONFIG_MAP_NODE_CONFIG_SOURCE}
_NODE_POD_PREEMPTION_POLICY: Fields = {"disableResizePreemption": None}
_TAINT: Fields = {"effect": None, "key": None, "timeAdded": None, "value": None}
_NODE_SPEC: Fields = {
    "configSource": _NODE_CONFIG_SOURCE, "externalID": None, "podCIDR": None, "podCIDRs": None,
    "podPreemptionPolicy": _NODE_POD_PREEMPTION_POLICY, "providerID": None, "taints": [_TAINT],
    "unschedulable": None,
}
_NODE_ADDRESS: Fields = {"address": None, "type": None}
_NODE_CONDITION: Fields = {
    "lastHeartbeatTime": None, "lastTransitionTime": None, "message": None, "reason": None, "status": None,
    "type": None,
}
_NODE_CONFIG_STATUS: Fields = {
    "active": _NODE_CONFIG_SOURCE, "assigned": _NODE_CONFIG_SOURCE, "error": None,
    "lastKnownGood": _NODE_CONFIG_SOURCE,
}
_DAEMON_ENDPOINT: Fields = {"Port": None}
_NODE_DAEMON_ENDPOINTS: Fields = {"kubeletEndpoint": _DAEMON_ENDPOINT}
_NODE_FEATURES: Fields = {"supplementalGroupsPolicy": None}
_CONTAINER_IMAGE: Fields = {"names": None, "sizeBytes": None}
_NODE_SWAP_STATUS: Fields = {"capacity": None}
_NODE_SYSTEM_INFO: Fields = {
    "architecture": None, "bootID": None, "containerRuntimeVersion": None, "kernelVersion": None,
    "kubeProxyVersion": None, "kubeletVersion": None, "machineID": None, "operatingSystem": None,
    "osImage": None, "runningInUserNamespace": None, "swap": _NODE_SWAP_STATUS, "systemUUID": None,
}
_NODE_RUNTIME_HANDLER_FEATURES: Fields = {"recursiveReadOnlyMounts": None, "userNamespaces": None}
_NODE_RUNTIME_HANDLER: Fields = {"features": _NODE_RUNTIME_HANDLER_FEATURES, "name": None}
_ATTACHED_VOLUME: Fields = {"devicePath": None, "name": None}
_NODE_STATUS: Fields = {
    "addresses": [_NODE_ADDRESS], "allocatable": None, "capacity": None, "conditions": [_NODE_CONDITION],
    "config": _NODE_CONFIG_STATUS, "daemonEndpoints": _NODE_DAEMON_ENDPOINTS, "declaredFeatures": None,
    "features": _NODE_FEATURES, "images": [_CONTAINER_IMAGE], "nodeInfo": _NODE_SYSTEM_INFO, "phase": None,
    "runtimeHandlers": [_NODE_RUNTIME_HANDLER], "volumesAttached": [_ATTACHED_VOLUME], "volumesInUse": None,
}
_NODE: Fields = {
    "apiVersion": None, "kind": None, "metadata": _OBJECT_META, "spec": _NODE_SPEC, "status": _NODE_STATUS,
}
_POD: Fields = {"apiVersion": None, "kind": None, "metadata": _OBJECT_META, "spec": None, "status": None}

_SERVICE_CIDR: Fields = {
    "apiVersion": None, "kind": None, "metadata": _OBJECT_META, "spec": {"cidrs": None},
    "status": {"conditions": [_CONDITION]},
}

KINDS: dict[str, Fields] = {
    "Service": _SERVICE,
    "EndpointSlice": _ENDPOINT_SLICE,
    "Endpoints": _ENDPOINTS,
    "Namespace": _NAMESPACE,
    "Node": _NODE,
    "Pod": _POD,
    "ServiceCIDR": _SERVICE_CIDR,
}


def unknown_fields(kind: str, obj: dict[str, Any], prune: bool = False) -> list[str]:
    """Paths (`spec.ports[0].bogus`) of fields `kind` does not declare; removed if `prune`."""
    found: list[str] = []
    schema = KINDS.get(kind)
    if schema is not None:
        _walk(obj, schema, "", found, prune)
    return found


def _walk(value: Any, schema: Fields, path: str, found: list[str], prune: bool) -> None:
    if not isinstance(value, dict):
        return
    for key in list(value):
        where = f"{path}.{key}" if path else key
        if key not in schema:
            found.append(where)
            if prune:
                del value[key]
            continue
        sub = schema[key]
        child = value[key]
        if isinstance(sub, list):
            if isinstance(child, list):
                for i, item in enumerate(child):
                    _walk(item, sub[0], f"{where}[{i}]", found, prune)
        elif sub is not None:
            _walk(child, sub, where, found, prune)
