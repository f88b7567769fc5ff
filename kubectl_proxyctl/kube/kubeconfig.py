"""Light kubeconfig reading (contexts, default namespace) without the kubernetes client.

`--help`, completion and namespace defaulting must stay fast, so this reads the YAML
directly. Merging of a colon-separated $KUBECONFIG follows kubectl: the first file that
sets a value wins.
"""

from __future__ import annotations

import os
from typing import Any

from kubectl_proxyctl.errors import ConfigError


def kubeconfig_paths(explicit: str | None) -> list[str]:
    if explicit:
        return [explicit]
    env = os.environ.get("KUBECONFIG")
    if env:
        return [p for p in env.split(os.pathsep) if p]
    return [os.path.expanduser("~/.kube/config")]


# The fields of a kubeconfig (client-go's clientcmd/api/v1 types) whose type we check, so a
# wrong one is reported with its path instead of failing somewhere inside the client library.
_ENTRY = {"clusters": "cluster", "contexts": "context", "users": "user"}
_STRINGS = {
    "cluster": ("server", "certificate-authority", "certificate-authority-data", "tls-server-name", "proxy-url"),
    "context": ("cluster", "user", "namespace"),
    "user": ("token", "tokenFile", "client-certificate", "client-certificate-data", "client-key",
             "client-key-data", "username", "password", "as", "as-uid"),
}
_BOOLS = {"cluster": ("insecure-skip-tls-verify", "disable-compression"), "context": (), "user": ()}


def _type_name(value: Any) -> str:
    return {dict: "a map", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "empty"}.get(type(value), type(value).__name__)


def _check_exec(where: str, spec: Any) -> None:
    if not isinstance(spec, dict):
        raise ConfigError(f"{where} is {_type_name(spec)}, not a map")
    for key in ("command", "apiVersion"):
        if not isinstance(spec.get(key), str) or not spec.get(key):
            raise ConfigError(f"{where}.{key} is missing or not a string")
    args = spec.get("args")
    if args is not None and (not isinstance(args, list) or not all(isinstance(a, str) for a in args)):
        raise ConfigError(f"{where}.args is not a list of strings")
    env = spec.get("env")
    if env is not None:
        if not isinstance(env, list):
            raise ConfigError(f"{where}.env is not a list")
        for i, item in enumerate(env):
            if not isinstance(item, dict) or not isinstance(item.get("name"), str) \
                    or not isinstance(item.get("value"), str):
                raise ConfigError(f"{where}.env[{i}] is not a map with a string name and value")


def _check_auth_provider(where: str, spec: Any) -> None:
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise ConfigError(f"{where} is not a map with a string name")
    config = spec.get("config")
    if config is not None and (not isinstance(config, dict)
                               or not all(isinstance(v, str) for v in config.values())):
        raise ConfigError(f"{where}.config is not a map of strings")


def check_document(doc: Any, path: str) -> dict[str, Any]:
    """The kubeconfig document, or ConfigError saying which field has the wrong type."""
    if not isinstance(doc, dict):
        raise ConfigError(f"kubeconfig {path}: not a kubeconfig (the file holds {_type_name(doc)}, "
                          "not a map with clusters, contexts and users)")
    current = doc.get("current-context")
    if current is not None and not isinstance(current, str):
        raise ConfigError(f"kubeconfig {path}: current-context is {_type_name(current)}, not a string")
    for key, inner in _ENTRY.items():
        entries = doc.get(key)
        if entries is None:
            continue
        if not isinstance(entries, list):
            raise ConfigError(f"kubeconfig {path}: {key} is {_type_name(entries)}, not a list")
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                raise ConfigError(f"kubeconfig {path}: {key}[{i}] is not a map with a string name")
            where = f"kubeconfig {path}: {key}[{i}] ({entry['name']})"
            body = entry.get(inner)
            if body is None:
                continue  # the client says what is missing, if the entry is used
            if not isinstance(body, dict):
                raise ConfigError(f"{where}.{inner} is {_type_name(body)}, not a map")
            for field in _STRINGS[inner]:
                if field in body and body[field] is not None and not isinstance(body[field], str):
                    raise ConfigError(f"{where}.{inner}.{field} is {_type_name(body[field])}, not a string")
            for field in _BOOLS[inner]:
                if field in body and body[field] is not None and not isinstance(body[field], bool):
                    raise ConfigError(f"{where}.{inner}.{field} is {_type_name(body[field])}, not true/false")
            if inner == "user":
                if body.get("exec") is not None:
                    _check_exec(f"{where}.user.exec", body["exec"])
                if body.get("auth-provider") is not None:
                    _check_auth_provider(f"{where}.user.auth-provider", body["auth-provider"])
    return doc


def _read(path: str) -> Any:
    import yaml

    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise ConfigError(f"kubeconfig {path}: cannot read: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"kubeconfig {path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset "
                          f"{exc.start})") from None
    try:
        return yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"kubeconfig {path}: invalid YAML{where}: {problem}") from None
    except RecursionError:
        raise ConfigError(f"kubeconfig {path}: nested too deeply to be a kubeconfig") from None


def load_merged(explicit: str | None) -> dict[str, Any]:
    """The merged kubeconfig; {} when no file exists. Malformed files raise ConfigError."""
    merged: dict[str, Any] = {"contexts": [], "clusters": [], "users": []}
    seen: dict[str, set[str]] = {"contexts": set(), "clusters": set(), "users": set()}
    found = False
    for path in kubeconfig_paths(explicit):
        if not os.path.exists(path):
            if explicit:
                raise ConfigError(f"kubeconfig {path}: no such file")
            continue
        if os.path.isdir(path):
            raise ConfigError(f"kubeconfig {path}: is a directory")
        doc = check_document(_read(path), path)
        found = True
        merged.setdefault("current-context", doc.get("current-context"))
        if not merged.get("current-context"):
            merged["current-context"] = doc.get("current-context")
        for key in ("contexts", "clusters", "users"):
            for entry in doc.get(key) or []:
                if isinstance(entry, dict) and entry.get("name") not in seen[key]:
                    seen[key].add(entry.get("name"))
                    merged[key].append(entry)
    return merged if found else {}


def list_contexts(explicit: str | None) -> list[str]:
    return [str(c.get("name")) for c in load_merged(explicit).get("contexts", [])]


def context_namespace(explicit: str | None, context: str | None) -> str | None:
    """The namespace the chosen (or current) context sets, if any."""
    try:
        cfg = load_merged(explicit)
    except ConfigError:
        return None
    name = context or cfg.get("current-context")
    ctx = find(cfg, "contexts", name)
    ns = ctx.get("namespace") if ctx else None
    return str(ns) if ns else None


def find(cfg: dict[str, Any], key: str, name: Any) -> dict[str, Any] | None:
    """The body (`context`, `cluster`, `user`) of the named entry of a merged kubeconfig."""
    for entry in cfg.get(key, []):
        if entry.get("name") == name:
            body = entry.get(_ENTRY[key])
            return body if isinstance(body, dict) else {}
    return None
