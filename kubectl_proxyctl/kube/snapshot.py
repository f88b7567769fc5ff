"""Reading cluster objects from files: what `kubectl get ... -o yaml|json` writes.

Accepted: a YAML stream (documents separated by `---`), one JSON document, a `v1 List`
(what `kubectl get svc,endpointslices -A -o yaml` prints), typed lists such as
`ServiceList` whose items carry no `kind`, or any nesting of those. `-` reads stdin.
A file that cannot be read or parsed raises ConfigError with the position of the problem.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Iterator

from kubectl_proxyctl.errors import ConfigError

Obj = dict[str, Any]


def _flatten(doc: Any, kind_hint: str | None = None) -> Iterator[Obj]:
    if doc is None:
        return
    if isinstance(doc, list):
        for item in doc:
            yield from _flatten(item, kind_hint)
        return
    if not isinstance(doc, dict):
        raise ConfigError(f"expected a Kubernetes object or a List, found {type(doc).__name__}: {str(doc)[:60]!r}")
    kind = doc.get("kind")
    if isinstance(kind, str) and kind.endswith("List") and isinstance(doc.get("items"), list):
        item_kind = kind[: -len("List")] or None
        for item in doc["items"]:
            yield from _flatten(item, item_kind)
        return
    if kind is None and kind_hint:
        doc = dict(doc, kind=kind_hint)
    yield doc


def parse_objects(text: str, source: str = "<input>") -> list[Obj]:
    """Parse YAML or JSON text into a flat list of objects."""
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")):
        try:
            return list(_flatten(json.loads(text)))
        except json.JSONDecodeError as exc:
            # Not JSON after all? YAML is a superset; fall through for a YAML error message.
            json_error: Exception | None = exc
    else:
        json_error = None
    docs = _fast_yaml(text)
    if docs is None:
        docs = _pyyaml_documents(text, source, json_error)
    out: list[Obj] = []
    for doc in docs:
        out.extend(_flatten(doc))
    return out


def _fast_yaml(text: str) -> list[Any] | None:
    """Parse with yaml-rs (about 15x faster than libyaml here) when it is installed.

    Returns None when it is missing or rejects the text; PyYAML then decides and gives the
    error message. yaml-rs returns a list for a multi-document stream, which flattens the
    same way as a List would.
    """
    try:
        import yaml_rs
    except ImportError:
        return None
    try:
        doc = yaml_rs.loads(text)
    except Exception:  # any rejection: let PyYAML have the final word
        return None
    return [doc]


def _pyyaml_documents(text: str, source: str, json_error: Exception | None) -> list[Any]:
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        return list(yaml.load_all(text, Loader=loader))
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        if json_error is not None:
            raise ConfigError(f"{source}: invalid JSON: {json_error}") from exc
        raise ConfigError(f"{source}: invalid YAML{where}: {problem}") from exc


def read_text(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from exc


def load_objects(path: str) -> list[Obj]:
    """Read every object in a file (`-` = stdin)."""
    return parse_objects(read_text(path), "stdin" if path == "-" else path)
