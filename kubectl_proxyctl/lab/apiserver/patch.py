"""The three PATCH flavours of the Kubernetes API, applied to plain dicts.

* JSON patch (RFC 6902, `application/json-patch+json`): a list of operations on JSON pointers.
* JSON merge patch (RFC 7386, `application/merge-patch+json`): maps merge recursively,
  `null` deletes a key, anything else (lists included) replaces.
* Strategic merge patch (`application/strategic-merge-patch+json`): a merge patch where
  some lists merge element-wise by a key (containers by `name`, service ports by `port`)
  instead of being replaced, plus the directives kubectl's client-side `apply` sends:
  `$patch: replace|delete|merge`, `$retainKeys`, `$setElementOrder/<list>` and
  `$deleteFromPrimitiveList/<list>`.

Which lists merge, and by which key, is the `patchStrategy`/`patchMergeKey` metadata of the
Go API types; `PATCH_META` restates it for the kinds the lab serves. Every function is
pure: it returns a new document and never mutates its inputs.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Mapping


class PatchError(ValueError):
    """The patch cannot be applied; `str()` is the message for the client."""


# --- strategic merge metadata --------------------------------------------------------------------


@dataclass(frozen=True)
class FieldMeta:
    """Patch behaviour of one field: its strategy, its merge key, and its children."""

    strategy: str = ""  # "" (replace lists / merge maps), "merge", "merge,retainKeys", "retainKeys"
    key: str = ""  # merge key of a list of maps
    fields: Mapping[str, FieldMeta] = field(default_factory=dict)

    @property
    def merges(self) -> bool:
        return "merge" in self.strategy.split(",")


Meta = Mapping[str, FieldMeta]


def _keyed(key: str, fields: Meta | None = None, retain: bool = False) -> FieldMeta:
    return FieldMeta("merge,retainKeys" if retain else "merge", key, fields or {})


_SET = FieldMeta("merge")  # a list of scalars merged as a set
_CONDITIONS = _keyed("type")

OBJECT_META: Meta = {
    "finalizers": _SET,
    "ownerReferences": _keyed("uid"),
}

_CONTAINER: Meta = {
    "ports": _keyed("containerPort"),
    "env": _keyed("name"),
    "volumeMounts": _keyed("mountPath"),
    "volumeDevices": _keyed("devicePath"),
}

_POD_SPEC: Meta = {
    "containers": _keyed("name", _CONTAINER),
    "initContainers": _keyed("name", _CONTAINER),
    "ephemeralContainers": _keyed("name", _CONTAINER),
    "volumes": _keyed("name", retain=True),
    "imagePullSecrets": _keyed("name"),
    "hostAliases": _keyed("ip"),
    "topologySpreadConstraints": _keyed("topologyKey"),
    "schedulingGates": _keyed("name"),
    "resourceClaims": _keyed("name", retain=True),
}

PATCH_META: dict[str, Meta] = {
    "Service": {
        "metadata": FieldMeta(fields=OBJECT_META),
        "spec": FieldMeta(fields={"ports": _keyed("port")}),
        "status": FieldMeta(fields={"conditions": _CONDITIONS}),
    },
    "Pod": {
        "metadata": FieldMeta(fields=OBJECT_META),
        "spec": FieldMeta(fields=_POD_SPEC),
        "status": FieldMeta(fields={
            "conditions": _CONDITIONS, "podIPs": _keyed("ip"), "hostIPs": _keyed("ip"),
        }),
    },
    "Node": {
        "metadata": FieldMeta(fields=OBJECT_META),
        "spec": FieldMeta(fields={"podCIDRs": _SET}),
        "status": FieldMeta(fields={"addresses": _keyed("type"), "conditions": _CONDITIONS}),
    },
    "Namespace": {
        "metadata": FieldMeta(fields=OBJECT_META),
        "status": FieldMeta(fields={"conditions": _CONDITIONS}),
    },
    # Endpoints.subsets and EndpointSlice.endpoints/ports carry no patch strategy: atomic.
    "Endpoints": {"metadata": FieldMeta(fields=OBJECT_META)},
    "EndpointSlice": {"metadata": FieldMeta(fields=OBJECT_META)},
}

_DIRECTIVE = "$patch"
_RETAIN = "$retainKeys"
_ORDER = "$setElementOrder/"
_DELETE_FROM = "$deleteFromPrimitiveList/"
_DELETE = object()  # marker: the value asked to be removed


def strategic_merge(original: Mapping[str, Any], patch: Any, kind: str) -> dict[str, Any]:
    if not isinstance(patch, dict):
        raise PatchError("strategic merge patch must be a JSON object")
    merged = _merge_map(copy.deepcopy(dict(original)), patch, PATCH_META.get(kind, {}))
    if merged is _DELETE:
        raise PatchError("a strategic merge patch cannot delete the whole object")
    return merged  # type: ignore[no-any-return]


def _merge_map(original: dict[str, Any], patch: Mapping[str, Any], meta: Meta) -> Any:
    directive = patch.get(_DIRECTIVE)
    if directive == "delete":
        return _DELETE
    if directive == "replace":
        return _merge_map({}, {k: v for k, v in patch.items() if k != _DIRECTIVE}, meta)
    if directive not in (None, "merge"):
        raise PatchError(f"unknown patch type: {directive}")
    retain = patch.get(_RETAIN)
    if retain is not None:
        if not isinstance(retain, list):
            raise PatchError(f"{_RETAIN} must be a list")
        original = {k: v for k, v in original.items() if k in retain}
    orders: dict[str, list[Any]] = {}
    deletions: dict[str, list[Any]] = {}
    for k, v in patch.items():
        if k in (_DIRECTIVE, _RETAIN):
            continue
        if k.startswith(_ORDER):
            orders[k[len(_ORDER):]] = v
            continue
        if k.startswith(_DELETE_FROM):
            deletions[k[len(_DELETE_FROM):]] = v
            continue
        if v is None:
            original.pop(k, None)
            continue
        merged = _merge_value(original.get(k), v, meta.get(k))
        if merged is _DELETE:
            original.pop(k, None)
        else:
            original[k] = merged
    for k, values in deletions.items():
        if isinstance(original.get(k), list):
            original[k] = [x for x in original[k] if x not in values]
    for k, order in orders.items():
        if isinstance(original.get(k), list) and isinstance(order, list):
            original[k] = _apply_order(original[k], order, meta.get(k))
    return original


def _merge_value(original: Any, patch: Any, meta: FieldMeta | None) -> Any:
    children = meta.fields if meta else {}
    if isinstance(patch, dict):
        return _merge_map(original if isinstance(original, dict) else {}, patch, children)
    if isinstance(patch, list):
        if meta is not None and meta.merges:
            base = original if isinstance(original, list) else []
            if meta.key:
                return _merge_keyed_list(base, patch, meta)
            return base + [x for x in patch if x not in base]
        return copy.deepcopy(patch)
    return patch


def _merge_keyed_list(original: list[Any], patch: list[Any], meta: FieldMeta) -> list[Any]:
    if any(isinstance(x, dict) and x.get(_DIRECTIVE) == "replace" for x in patch):
        items = [x for x in patch if not (isinstance(x, dict) and _DIRECTIVE in x)]
        return [_merge_map({}, x, meta.fields) for x in items]
    result = list(original)
    for item in patch:
        if not isinstance(item, dict):
            raise PatchError(f"a list merged by key {meta.key!r} must hold objects")
        index = _find(result, meta.key, item.get(meta.key))
        if item.get(_DIRECTIVE) == "delete":
            if index is not None:
                del result[index]
            continue
        if index is None:
            merged = _merge_map({}, item, meta.fields)
            if merged is not _DELETE:
                result.append(merged)
        else:
            result[index] = _merge_map(result[index], item, meta.fields)
    return result


def _find(items: list[Any], key: str, value: Any) -> int | None:
    for i, item in enumerate(items):
        if isinstance(item, dict) and item.get(key) == value:
            return i
    return None


def _apply_order(items: list[Any], order: list[Any], meta: FieldMeta | None) -> list[Any]:
    """Sort the listed items as `$setElementOrder` says; others keep their place after them."""
    key = meta.key if meta is not None else ""

    def ident(item: Any) -> str:
        return repr(item.get(key)) if key and isinstance(item, dict) else repr(item)

    position = {ident(o): i for i, o in enumerate(order)}
    listed = sorted((x for x in items if ident(x) in position), key=lambda x: position[ident(x)])
    return listed + [x for x in items if ident(x) not in position]


# --- JSON merge patch (RFC 7386) -------------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            result.pop(k, None)
        else:
            result[k] = merge_patch(result.get(k), v)
    return result


# --- JSON patch (RFC 6902) ---------------------------------------------------------------------------


def _pointer(path: Any) -> list[str]:
    if not isinstance(path, str) or (path and not path.startswith("/")):
        raise PatchError(f"invalid JSON pointer {path!r}")
    if path == "":
        return []
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _index(container: list[Any], token: str, allow_end: bool) -> int:
    if allow_end and token == "-":
        return len(container)
    if not token.isdigit() or (token != "0" and token.startswith("0")):
        raise PatchError(f"invalid array index {token!r}")
    i = int(token)
    if i > len(container) or (i == len(container) and not allow_end):
        raise PatchError(f"array index {i} out of bounds")
    return i


def _parent(doc: Any, tokens: list[str]) -> Any:
    cur = doc
    for tok in tokens[:-1]:
        if isinstance(cur, dict):
            if tok not in cur:
                raise PatchError(f"missing path element {tok!r}")
            cur = cur[tok]
        elif isinstance(cur, list):
            cur = cur[_index(cur, tok, allow_end=False)]
        else:
            raise PatchError(f"cannot descend into {type(cur).__name__} at {tok!r}")
    return cur


def _get(doc: Any, tokens: list[str]) -> Any:
    if not tokens:
        return doc
    parent = _parent(doc, tokens)
    last = tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchError(f"missing path element {last!r}")
        return parent[last]
    if isinstance(parent, list):
        return parent[_index(parent, last, allow_end=False)]
    raise PatchError(f"cannot read {last!r} from {type(parent).__name__}")


def _remove(doc: Any, tokens: list[str]) -> Any:
    if not tokens:
        raise PatchError("cannot remove the whole document")
    parent = _parent(doc, tokens)
    last = tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchError(f"unable to remove nonexistent key: {last}")
        return parent.pop(last)
    if isinstance(parent, list):
        return parent.pop(_index(parent, last, allow_end=False))
    raise PatchError(f"cannot remove {last!r} from {type(parent).__name__}")


def _add(doc: Any, tokens: list[str], value: Any, replace: bool = False) -> Any:
    if not tokens:
        return value
    parent = _parent(doc, tokens)
    last = tokens[-1]
    if isinstance(parent, dict):
        if replace and last not in parent:
            raise PatchError(f"replace operation does not apply: doc is missing key: {last}")
        parent[last] = value
    elif isinstance(parent, list):
        if replace:
            parent[_index(parent, last, allow_end=False)] = value
        else:
            parent.insert(_index(parent, last, allow_end=True), value)
    else:
        raise PatchError(f"cannot add {last!r} to {type(parent).__name__}")
    return doc


def json_patch(document: Any, operations: Any) -> Any:
    if not isinstance(operations, list):
        raise PatchError("json patch must be a JSON array of operations")
    doc = copy.deepcopy(document)
    for op in operations:
        if not isinstance(op, dict) or "op" not in op:
            raise PatchError(f"invalid operation {op!r}")
        kind = op["op"]
        path = _pointer(op.get("path"))
        if kind in ("add", "replace", "test") and "value" not in op:
            raise PatchError(f"operation {kind!r} needs a value")
        if kind == "add":
            doc = _add(doc, path, copy.deepcopy(op["value"]))
        elif kind == "remove":
            _remove(doc, path)
        elif kind == "replace":
            doc = _add(doc, path, copy.deepcopy(op["value"]), replace=True)
        elif kind in ("move", "copy"):
            source = _pointer(op.get("from"))
            value = _remove(doc, source) if kind == "move" else copy.deepcopy(_get(doc, source))
            doc = _add(doc, path, value)
        elif kind == "test":
            if _get(doc, path) != op["value"]:
                raise PatchError(f"testing value {op.get('path')} failed")
        else:
            raise PatchError(f"unexpected kind: {kind}")
    return doc
