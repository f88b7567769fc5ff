"""The resource catalog of the lab API server, and the discovery documents derived from it.

Every kind the server stores is one `ResourceType` row in `RESOURCES`. Everything a client
learns about the API (legacy discovery `/api/v1`, aggregated discovery, the OpenAPI v3 stubs
kubectl reads to decide on server-side field validation) is computed from that table, so
adding a kind is adding a row (plus, optionally, a printer in tables.py, patch metadata in
patch.py and defaults in strategy.py).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

SERVER_VERSION: dict[str, str] = {
    "major": "1",
    "minor": "32",
    "emulationMajor": "1",
    "emulationMinor": "32",
    "minCompatibilityMajor": "1",
    "minCompatibilityMinor": "31",
    "gitVersion": "v1.32.4",
    "gitCommit": "59526cd4867447956156ae3a602fcbac10a2c335",
    "gitTreeState": "clean",
    "buildDate": "2025-04-22T16:02:27Z",
    "goVersion": "go1.23.6",
    "compiler": "gc",
    "platform": "linux/amd64",
}

ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
STATUS_VERBS = ("get", "patch", "update")


@dataclass(frozen=True)
class ResourceType:
    """One REST resource: where it lives in the URL space and how discovery describes it."""

    group: str
    version: str
    plural: str
    singular: str
    kind: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    verbs: tuple[str, ...] = ALL_VERBS
    has_status: bool = False
    # DELETE answers with the deleted object (like pods and services) instead of a Status.
    returns_deleted_object: bool = False

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    @property
    def id(self) -> str:
        """Stable identifier, used as the persistence key: `v1/services`."""
        return f"{self.api_version}/{self.plural}"

    def __str__(self) -> str:
        return self.plural if not self.group else f"{self.plural}.{self.group}"


NAMESPACES = ResourceType(
    "", "v1", "namespaces", "namespace", "Namespace", namespaced=False, short_names=("ns",),
    verbs=("create", "delete", "get", "list", "patch", "update", "watch"), has_status=True,
)
SERVICES = ResourceType(
    "", "v1", "services", "service", "Service", namespaced=True, short_names=("svc",),
    categories=("all",), has_status=True, returns_deleted_object=True,
)
ENDPOINTS = ResourceType(
    "", "v1", "endpoints", "endpoints", "Endpoints", namespaced=True, short_names=("ep",),
)
NODES = ResourceType(
    "", "v1", "nodes", "node", "Node", namespaced=False, short_names=("no",), has_status=True,
)
PODS = ResourceType(
    "", "v1", "pods", "pod", "Pod", namespaced=True, short_names=("po",), categories=("all",),
    has_status=True, returns_deleted_object=True,
)
ENDPOINT_SLICES = ResourceType(
    "discovery.k8s.io", "v1", "endpointslices", "endpointslice", "EndpointSlice", namespaced=True,
)

# kube-proxy posts its events here ("Starting", health-check failures): they are stored, listed
# and watched like any object (no TTL; core/v1 events are not served).
EVENTS = ResourceType(
    "events.k8s.io", "v1", "events", "event", "Event", namespaced=True, short_names=("ev",),
)
# The cluster's Service IP ranges. kube-proxy (1.33+) lists and watches them: nftables mode
# drops traffic to ClusterIPs inside them that no Service holds. The lab API server creates
# none by itself (a real one creates "kubernetes" from --service-cluster-ip-range): whoever
# runs it adds one when it wants that behaviour.
SERVICE_CIDRS = ResourceType(
    "networking.k8s.io", "v1", "servicecidrs", "servicecidr", "ServiceCIDR", namespaced=False,
    has_status=True,
)

# In discovery order: by group, then alphabetically (kubectl expands "all" in this order).
RESOURCES: tuple[ResourceType, ...] = (
    ENDPOINTS, NAMESPACES, NODES, PODS, SERVICES, ENDPOINT_SLICES, EVENTS, SERVICE_CIDRS,
)

# group -> versions served, in preference order ("" is the legacy core group).
GROUP_VERSIONS: dict[str, tuple[str, ...]] = {}
for _r in RESOURCES:
    GROUP_VERSIONS.setdefault(_r.group, ())
    if _r.version not in GROUP_VERSIONS[_r.group]:
        GROUP_VERSIONS[_r.group] += (_r.version,)

_BY_PATH = {(r.group, r.version, r.plural): r for r in RESOURCES}
_BY_NAME: dict[str, ResourceType] = {}
for _r in RESOURCES:
    for _name in (_r.plural, _r.singular, _r.kind, _r.kind.lower(), *_r.short_names, str(_r)):
        _BY_NAME[_name] = _r


def by_path(group: str, version: str, plural: str) -> ResourceType | None:
    return _BY_PATH.get((group, version, plural))


def by_name(name: str) -> ResourceType:
    """`services`, `service`, `svc`, `Service` or `endpointslices.discovery.k8s.io`."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown resource {name!r}") from None


def by_kind(api_version: str, kind: str) -> ResourceType:
    for r in RESOURCES:
        if r.kind == kind and r.api_version == api_version:
            return r
    raise KeyError(f"unknown kind {api_version}/{kind}")


def resources_in(group: str, version: str) -> list[ResourceType]:
    return [r for r in RESOURCES if r.group == group and r.version == version]


# --- legacy discovery -----------------------------------------------------------------------


def api_versions(server_address: str) -> dict[str, Any]:
    """`/api`: the core group's versions."""
    return {
        "kind": "APIVersions",
        "versions": list(GROUP_VERSIONS[""]),
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    }


def _group(group: str) -> dict[str, Any]:
    versions = [{"groupVersion": f"{group}/{v}", "version": v} for v in GROUP_VERSIONS[group]]
    return {"name": group, "versions": versions, "preferredVersion": versions[0]}


def api_group_list() -> dict[str, Any]:
    """`/apis`: every named group."""
    groups = [_group(g) for g in GROUP_VERSIONS if g]
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def api_group(group: str) -> dict[str, Any] | None:
    """`/apis/<group>`."""
    if not group or group not in GROUP_VERSIONS:
        return None
    return {"kind": "APIGroup", "apiVersion": "v1", **_group(group)}


def api_resource_list(group: str, version: str) -> dict[str, Any] | None:
    """`/api/v1`, `/apis/<group>/<version>`."""
    found = resources_in(group, version)
    if not found:
        return None
    resources: list[dict[str, Any]] = []
    for r in found:
        entry: dict[str, Any] = {
            "name": r.plural, "singularName": r.singular, "namespaced": r.namespaced,
            "kind": r.kind, "verbs": list(r.verbs),
        }
        if r.short_names:
            entry["shortNames"] = list(r.short_names)
        if r.categories:
            entry["categories"] = list(r.categories)
        resources.append(entry)
        if r.has_status:
            resources.append({
                "name": f"{r.plural}/status", "singularName": "", "namespaced": r.namespaced,
                "kind": r.kind, "verbs": list(STATUS_VERBS),
            })
    gv = f"{group}/{version}" if group else version
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}


# --- aggregated discovery (apidiscovery.k8s.io/v2) ----------------------------------------------

AGGREGATED_MEDIA_TYPE = "application/json;g=apidiscovery.k8s.io;v={v};as=APIGroupDiscoveryList"


def _discovery_resource(r: ResourceType) -> dict[str, Any]:
    kind = {"group": r.group, "version": r.version, "kind": r.kind}
    entry: dict[str, Any] = {
        "resource": r.plural,
        "responseKind": kind,
        "scope": "Namespaced" if r.namespaced else "Cluster",
        "singularResource": r.singular,
        "verbs": list(r.verbs),
    }
    if r.short_names:
        entry["shortNames"] = list(r.short_names)
    if r.categories:
        entry["categories"] = list(r.categories)
    if r.has_status:
        entry["subresources"] = [
            {"subresource": "status", "responseKind": kind, "verbs": list(STATUS_VERBS)}
        ]
    return entry


def aggregated_discovery(legacy: bool, version: str = "v2") -> dict[str, Any]:
    """`/api` (legacy=True) or `/apis` as one APIGroupDiscoveryList."""
    items = []
    for group, versions in GROUP_VERSIONS.items():
        if (group == "") != legacy:
            continue
        item: dict[str, Any] = {"metadata": {"name": group} if group else {}}
        item["versions"] = [
            {
                "version": v,
                "resources": [_discovery_resource(r) for r in resources_in(group, v)],
                "freshness": "Current",
            }
            for v in versions
        ]
        items.append(item)
    return {
        "kind": "APIGroupDiscoveryList",
        "apiVersion": f"apidiscovery.k8s.io/{version}",
        "metadata": {},
        "items": items,
    }


# --- OpenAPI v3 ---------------------------------------------------------------------------------
#
# kubectl decides between server-side and client-side field validation by looking, in the
# OpenAPI v3 document of the object's group-version, for a PATCH operation tagged with the
# object's x-kubernetes-group-version-kind that takes a `fieldValidation` query parameter.
# These documents carry exactly that (plus the other write parameters), not full schemas:
# kubectl then sends `fieldValidation=Strict` and computes strategic merge patches from its
# compiled-in types.

_WRITE_PARAMETERS = ("dryRun", "fieldManager", "fieldValidation", "force", "pretty")
_PATCH_MEDIA_TYPES = (
    "application/apply-patch+yaml",
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
)


def _openapi_path(r: ResourceType) -> str:
    prefix = f"/apis/{r.group}/{r.version}" if r.group else f"/api/{r.version}"
    if r.namespaced:
        return f"{prefix}/namespaces/{{namespace}}/{r.plural}/{{name}}"
    return f"{prefix}/{r.plural}/{{name}}"


def _operation_id(verb: str, r: ResourceType) -> str:
    group = "".join(p.capitalize() for p in (r.group.split(".")[0] or "core").split("-"))
    scope = "Namespaced" if r.namespaced else ""
    return f"{verb}{group}{r.version.capitalize()}{scope}{r.kind}"


def openapi_v3_document(group: str, version: str) -> dict[str, Any] | None:
    found = resources_in(group, version)
    if not found:
        return None
    paths: dict[str, Any] = {}
    for r in found:
        gvk = {"group": r.group, "version": r.version, "kind": r.kind}
        params = [
            {"name": p, "in": "query", "schema": {"type": "string", "uniqueItems": True}}
            for p in _WRITE_PARAMETERS
        ]
        patch_op = {
            "operationId": _operation_id("patch", r),
            "parameters": params,
            "requestBody": {
                "content": {
                    t: {"schema": {"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.Patch"}}
                    for t in _PATCH_MEDIA_TYPES
                },
                "required": True,
            },
            "responses": {"200": {"description": "OK"}},
            "x-kubernetes-action": "patch",
            "x-kubernetes-group-version-kind": gvk,
        }
        paths[_openapi_path(r)] = {"patch": patch_op}
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": SERVER_VERSION["gitVersion"]},
        "paths": paths,
        "components": {
            "schemas": {"io.k8s.apimachinery.pkg.apis.meta.v1.Patch": {"type": "object"}}
        },
    }


def openapi_v3_root() -> dict[str, Any]:
    """`/openapi/v3`: where each group-version's document lives (with a content hash)."""
    paths: dict[str, Any] = {}
    for group, versions in GROUP_VERSIONS.items():
        for v in versions:
            rel = f"apis/{group}/{v}" if group else f"api/{v}"
            doc = json.dumps(openapi_v3_document(group, v), sort_keys=True).encode()
            digest = hashlib.sha512(doc).hexdigest()[:128].upper()
            paths[rel] = {"serverRelativeURL": f"/openapi/v3/{rel}?hash={digest}"}
    return {"paths": paths}
