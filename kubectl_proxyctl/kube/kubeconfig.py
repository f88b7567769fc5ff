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


def load_merged(explicit: str | None) -> dict[str, Any]:
    """The merged kubeconfig; {} when no file exists. Malformed files raise ConfigError."""
    import yaml

    merged: dict[str, Any] = {"contexts": [], "clusters": [], "users": []}
    seen: dict[str, set[str]] = {"contexts": set(), "clusters": set(), "users": set()}
    found = False
    for path in kubeconfig_paths(explicit):
        if not os.path.exists(path):
            if explicit:
                raise ConfigError(f"kubeconfig {path}: no such file")
            continue
        try:
            with open(path, encoding="utf-8") as fh:
                doc = yaml.safe_load(fh) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"kubeconfig {path}: cannot read: {str(exc).splitlines()[0]}") from exc
        if not isinstance(doc, dict):
            raise ConfigError(f"kubeconfig {path}: not a kubeconfig")
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
    for ctx in cfg.get("contexts", []):
        if ctx.get("name") == name:
            ns = (ctx.get("context") or {}).get("namespace")
            return str(ns) if ns else None
    return None
