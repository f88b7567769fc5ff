"""Label and field selectors, parsed and matched as the API server does.

Label selectors take the full set-based syntax of k8s.io/apimachinery/pkg/labels:
`a=b`, `a==b`, `a!=b`, `a in (x,y)`, `a notin (x)`, `a`, `!a`, `a>1`, `a<9`, joined with
commas (all must hold). `!=` and `notin` also match objects without the key.

Field selectors take `field=value`, `field==value` and `field!=value`; which fields exist
depends on the kind (always `metadata.name` and `metadata.namespace`). A selector is
compiled once per request into a predicate over the object's dict.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from kubectl_proxyctl.lab.apiserver.resources import ResourceType

Object = Mapping[str, Any]
Predicate = Callable[[Object], bool]


class SelectorError(ValueError):
    """The selector text does not parse; `str()` is the message a real server sends."""


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!", "gt", "lt"
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key, "")
        if self.op == "exists":
            return present
        if self.op == "!":
            return not present
        if self.op in ("=", "in"):
            return present and value in self.values
        if self.op in ("!=", "notin"):
            return not present or value not in self.values
        if not present:
            return False
        try:
            number = int(value)
        except ValueError:
            return False
        bound = int(self.values[0])
        return number > bound if self.op == "gt" else number < bound


_TOKEN = re.compile(r"\s*(==|!=|=|!|\(|\)|,|>|<|[A-Za-z0-9_./-]+)")
_KEY = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                  r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def _tokens(text: str) -> list[str]:
    out: list[str] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise SelectorError(f"unable to parse requirement: unexpected character at {text[pos:]!r}")
        out.append(m.group(1))
        pos = m.end()
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.toks = _tokens(text)
        self.i = 0

    def peek(self) -> str | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self) -> str:
        tok = self.peek()
        if tok is None:
            raise SelectorError("unable to parse requirement: unexpected end of string")
        self.i += 1
        return tok

    def key(self) -> str:
        tok = self.take()
        if not _KEY.match(tok) or len(tok.split("/")[-1]) > 63:
            raise SelectorError(f"unable to parse requirement: invalid label key {tok!r}")
        return tok

    def value(self) -> str:
        tok = self.peek()
        if tok is None or tok in (",", ")"):
            return ""
        self.i += 1
        if not _VALUE.match(tok) or len(tok) > 63:
            raise SelectorError(f"unable to parse requirement: invalid label value {tok!r}")
        return tok

    def value_set(self) -> tuple[str, ...]:
        if self.take() != "(":
            raise SelectorError("unable to parse requirement: found '', expected: '('")
        values: list[str] = []
        while True:
            values.append(self.value())
            tok = self.take()
            if tok == ")":
                break
            if tok != ",":
                raise SelectorError(f"unable to parse requirement: found '{tok}', expected: ',', ')'")
        return tuple(values)

    def requirement(self) -> Requirement:
        if self.peek() == "!":
            self.take()
            return Requirement(self.key(), "!")
        key = self.key()
        op = self.peek()
        if op is None or op == ",":
            return Requirement(key, "exists")
        self.take()
        if op in ("=", "=="):
            return Requirement(key, "=", (self.value(),))
        if op == "!=":
            return Requirement(key, "!=", (self.value(),))
        if op in ("in", "notin"):
            return Requirement(key, op, self.value_set())
        if op in (">", "<"):
            bound = self.take()
            if not bound.lstrip("-").isdigit():
                raise SelectorError(
                    f"unable to parse requirement: for 'Gt', 'Lt' operators, the value must be an integer: {bound!r}"
                )
            return Requirement(key, "gt" if op == ">" else "lt", (bound,))
        raise SelectorError(
            f"unable to parse requirement: found '{op}', expected: in, notin, =, ==, !=, gt, lt"
        )

    def parse(self) -> list[Requirement]:
        reqs: list[Requirement] = []
        if self.peek() is None:
            return reqs
        while True:
            reqs.append(self.requirement())
            tok = self.peek()
            if tok is None:
                return reqs
            if tok != ",":
                raise SelectorError(
                    f"unable to parse requirement: found '{tok}', expected: ',' or 'end of string'"
                )
            self.take()


def parse_label_selector(text: str) -> list[Requirement]:
    return _Parser(text).parse()


def label_predicate(text: str) -> Predicate | None:
    """A predicate over objects, or None when the selector selects everything."""
    reqs = parse_label_selector(text or "")
    if not reqs:
        return None

    def matches(obj: Object) -> bool:
        labels = obj.get("metadata", {}).get("labels") or {}
        return all(r.matches(labels) for r in reqs)

    return matches


# --- field selectors ---------------------------------------------------------------------------


def _path(*keys: str) -> Callable[[Object], str]:
    def get(obj: Object) -> str:
        cur: Any = obj
        for k in keys:
            cur = cur.get(k) if isinstance(cur, Mapping) else None
        if isinstance(cur, bool):
            return "true" if cur else "false"
        return "" if cur is None else str(cur)

    return get


def _pod_ips(obj: Object) -> str:
    ips = (obj.get("status") or {}).get("podIPs") or []
    return ",".join(str(p.get("ip", "")) for p in ips)


_COMMON_FIELDS: dict[str, Callable[[Object], str]] = {
    "metadata.name": _path("metadata", "name"),
    "metadata.namespace": _path("metadata", "namespace"),
}
_KIND_FIELDS: dict[str, dict[str, Callable[[Object], str]]] = {
    "Pod": {
        "spec.nodeName": _path("spec", "nodeName"),
        "spec.restartPolicy": _path("spec", "restartPolicy"),
        "spec.schedulerName": _path("spec", "schedulerName"),
        "spec.serviceAccountName": _path("spec", "serviceAccountName"),
        "spec.hostNetwork": _path("spec", "hostNetwork"),
        "status.phase": _path("status", "phase"),
        "status.podIP": _path("status", "podIP"),
        "status.podIPs": _pod_ips,
        "status.nominatedNodeName": _path("status", "nominatedNodeName"),
    },
    "Node": {"spec.unschedulable": _path("spec", "unschedulable")},
    "Namespace": {"status.phase": _path("status", "phase")},
    "Service": {"spec.clusterIP": _path("spec", "clusterIP"), "spec.type": _path("spec", "type")},
}


def _split_unescaped(text: str, sep: str) -> list[str]:
    parts, cur, escaped = [], "", False
    for ch in text:
        if escaped:
            cur += ch
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == sep:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return parts


def field_predicate(text: str, resource: ResourceType) -> Predicate | None:
    """A predicate for a field selector on `resource`, or None when it selects everything."""
    fields = {**_COMMON_FIELDS, **_KIND_FIELDS.get(resource.kind, {})}
    terms: list[tuple[Callable[[Object], str], bool, str]] = []
    for part in _split_unescaped(text or "", ","):
        if not part.strip():
            continue
        m = re.match(r"^\s*([^=!\s]+)\s*(==|!=|=)(.*)$", part)
        if not m:
            raise SelectorError(f"invalid selector: '{text}'; can't understand '{part}'")
        name, op, value = m.group(1), m.group(2), m.group(3).strip()
        if name not in fields:
            raise SelectorError(f"field label not supported: {name}")
        terms.append((fields[name], op != "!=", value))
    if not terms:
        return None

    def matches(obj: Object) -> bool:
        return all((get(obj) == value) == want for get, want, value in terms)

    return matches


def combine(*predicates: Predicate | None) -> Predicate | None:
    active = [p for p in predicates if p is not None]
    if not active:
        return None
    if len(active) == 1:
        return active[0]
    return lambda obj: all(p(obj) for p in active)
