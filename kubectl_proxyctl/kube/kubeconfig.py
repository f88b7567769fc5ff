"""Light kubeconfig reading (contexts, default namespace) without the kubernetes client.

`--help`, completion and namespace defaulting must stay fast, so this reads the YAML
directly. Where the configuration comes from follows kubectl (client-go's clientcmd):

1. `--kubeconfig FILE`: that file alone (it must exist);
2. else `$KUBECONFIG`, a list of files (`:`-separated) merged in order: the first file that
   sets `current-context` wins, and for clusters, contexts and users the first file that
   defines a name wins the whole entry; files that do not exist are skipped;
3. else `~/.kube/config`;
4. else, inside a pod, the in-cluster service account (kube/client.py).

The global client flags (`ClientOverrides`: --context, --cluster, --user, --server, --token,
--as, ...) are applied on top of the merged file by `resolve`, as kubectl applies its
ConfigOverrides: a flag beats the file, and a flag naming a file (--certificate-authority,
--client-certificate, --client-key) replaces the inline `-data` the file may hold.

Relative paths inside a kubeconfig are relative to the file that holds them; `resolve`
makes them absolute (client-go's ResolveLocalPaths) so entries merged from several files
keep working.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from typing import Any

from kubectl_proxyctl.errors import ConfigError

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


def kubeconfig_paths(explicit: str | None) -> list[str]:
    if explicit:
        return [os.path.expanduser(explicit)]
    env = os.environ.get("KUBECONFIG")
    if env:
        return [os.path.expanduser(p) for p in env.split(os.pathsep) if p]
    return [os.path.expanduser("~/.kube/config")]


@dataclass(frozen=True)
class ClientOverrides:
    """kubectl's global client flags (client-go's ConfigOverrides), applied over the kubeconfig."""

    context: str | None = None
    cluster: str | None = None
    user: str | None = None
    server: str | None = None
    certificate_authority: str | None = None
    insecure_skip_tls_verify: bool = False
    tls_server_name: str | None = None
    token: str | None = None
    client_certificate: str | None = None
    client_key: str | None = None
    impersonate: str | None = None
    impersonate_uid: str | None = None
    impersonate_groups: tuple[str, ...] = ()

    def flags(self) -> list[str]:
        """The flags that were given, as they are spelled on the command line (for messages)."""
        names = [("context", "--context"), ("cluster", "--cluster"), ("user", "--user"), ("server", "--server"),
                 ("certificate_authority", "--certificate-authority"),
                 ("insecure_skip_tls_verify", "--insecure-skip-tls-verify"), ("tls_server_name", "--tls-server-name"),
                 ("token", "--token"), ("client_certificate", "--client-certificate"),
                 ("client_key", "--client-key"), ("impersonate", "--as"), ("impersonate_uid", "--as-uid"),
                 ("impersonate_groups", "--as-group")]
        return [flag for attr, flag in names if getattr(self, attr)]


@dataclass(frozen=True)
class Resolved:
    """The effective configuration: one cluster and one user, with absolute file paths."""

    context: str  # the context's name ("" when none is used: flags alone)
    cluster: dict[str, Any]
    user: dict[str, Any]
    user_name: str
    namespace: str | None
    files: tuple[str, ...]  # the kubeconfig files read (existing ones), in order
    impersonation: dict[str, tuple[str, ...]]  # Impersonate-* header -> values

    @property
    def where(self) -> str:
        return os.pathsep.join(self.files) if self.files else "the command-line flags"


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
                groups = body.get("as-groups")
                if groups is not None and (not isinstance(groups, list) or not all(isinstance(g, str) for g in groups)):
                    raise ConfigError(f"{where}.user.as-groups is not a list of strings")
                extra = body.get("as-user-extra")
                if extra is not None and (not isinstance(extra, dict) or not all(
                        isinstance(v, list) and all(isinstance(x, str) for x in v) for v in extra.values())):
                    raise ConfigError(f"{where}.user.as-user-extra is not a map of lists of strings")
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
    return merge(explicit)[0]


def merge(explicit: str | None) -> tuple[dict[str, Any], dict[tuple[str, str], str]]:
    """The merged kubeconfig ({} when no file exists) and the file each entry came from,
    keyed by (`clusters`|`contexts`|`users`, name). Malformed files raise ConfigError."""
    merged: dict[str, Any] = {"contexts": [], "clusters": [], "users": []}
    origin: dict[tuple[str, str], str] = {}
    files: list[str] = []
    for path in kubeconfig_paths(explicit):
        if not os.path.exists(path):
            if explicit:
                raise ConfigError(f"kubeconfig {path}: no such file")
            continue
        if os.path.isdir(path):
            raise ConfigError(f"kubeconfig {path}: is a directory")
        doc = check_document(_read(path), path)
        files.append(path)
        if not merged.get("current-context"):
            merged["current-context"] = doc.get("current-context")
        for key in ("contexts", "clusters", "users"):
            for entry in doc.get(key) or []:
                if isinstance(entry, dict) and (key, entry.get("name")) not in origin:
                    origin[(key, str(entry.get("name")))] = path
                    merged[key].append(entry)
    if not files:
        return {}, {}
    merged["files"] = files
    return merged, origin


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


# Fields holding a file path, relative to the kubeconfig that holds them.
_PATH_FIELDS = {"clusters": ("certificate-authority",), "users": ("client-certificate", "client-key", "tokenFile")}


def _absolute(key: str, body: dict[str, Any], path: str | None) -> dict[str, Any]:
    """A copy of an entry's body with its relative file paths made absolute."""
    body = copy.deepcopy(body)
    base = os.path.dirname(os.path.abspath(path)) if path else os.getcwd()
    for name in _PATH_FIELDS.get(key, ()):
        value = body.get(name)
        if isinstance(value, str) and value and not os.path.isabs(value):
            body[name] = os.path.join(base, os.path.expanduser(value))
    spec = body.get("exec") if key == "users" else None
    if isinstance(spec, dict):
        command = spec.get("command")
        # client-go resolves a command only when it is a path (`./get-token`), not a name on PATH
        if isinstance(command, str) and os.sep in command and not os.path.isabs(command):
            spec["command"] = os.path.join(base, command)
    return body


def resolve(explicit: str | None, overrides: ClientOverrides | None = None) -> Resolved | None:
    """The effective cluster and user: the merged kubeconfig with the flags applied.

    None when no kubeconfig file exists and no --server is given (the caller may use the
    in-cluster configuration). ConfigError for unusable files, unknown names and flags
    that contradict each other."""
    o = overrides or ClientOverrides()
    merged, origin = merge(explicit)
    files = tuple(merged.get("files", ()))
    where = os.pathsep.join(files) if files else "the command-line flags"
    if not files and not o.server:
        if o.context or o.cluster or o.user:
            named = ", ".join(f for f in ("--context", "--cluster", "--user") if getattr(o, f[2:]))
            raise ConfigError(f"{named} name(s) kubeconfig entries, and there is no kubeconfig "
                              f"({os.pathsep.join(kubeconfig_paths(explicit))})")
        return None
    name = o.context or merged.get("current-context") or ""
    ctx: dict[str, Any] = {}
    if name:
        found = find(merged, "contexts", name)
        if found is None:
            known = sorted(str(c.get("name")) for c in merged.get("contexts", []))
            raise ConfigError(f"kubeconfig {where}: context {name!r} not found"
                              + (f" (contexts: {', '.join(known[:5])}{', …' if len(known) > 5 else ''})"
                                 if known else " (it defines no contexts)"))
        ctx = found
    elif not (o.server or o.cluster):
        raise ConfigError(f"kubeconfig {where}: no current-context; pass --context")

    cluster_name = o.cluster or ctx.get("cluster") or ""
    cluster: dict[str, Any] = {}
    if cluster_name:
        found = find(merged, "clusters", cluster_name)
        if found is None and (o.cluster or not o.server):
            said = "--cluster" if o.cluster else f"context {name!r}"
            raise ConfigError(f"kubeconfig {where}: cluster {cluster_name!r} ({said}) not found")
        if found is not None:
            cluster = _absolute("clusters", found, origin.get(("clusters", cluster_name)))
    user_name = o.user or ctx.get("user") or ""
    user: dict[str, Any] = {}
    if user_name:
        found = find(merged, "users", user_name)
        if found is None and o.user:
            raise ConfigError(f"kubeconfig {where}: user {user_name!r} (--user) not found")
        if found is not None:
            user = _absolute("users", found, origin.get(("users", user_name)))

    # kubectl's overrides (client-go clientcmd getCluster / getAuthInfo)
    if o.server:
        cluster["server"] = o.server
        if not o.tls_server_name:
            cluster.pop("tls-server-name", None)  # it named the kubeconfig's server, not this one
    if o.certificate_authority:
        cluster["certificate-authority"] = os.path.abspath(os.path.expanduser(o.certificate_authority))
        cluster.pop("certificate-authority-data", None)
    if o.insecure_skip_tls_verify:
        cluster["insecure-skip-tls-verify"] = True
        if not o.certificate_authority:  # the file's CA would contradict the flag
            cluster.pop("certificate-authority", None)
            cluster.pop("certificate-authority-data", None)
    if o.tls_server_name:
        cluster["tls-server-name"] = o.tls_server_name
    if o.token:
        for key in ("tokenFile", "exec", "auth-provider", "username", "password"):
            user.pop(key, None)
        user["token"] = o.token
    if o.client_certificate:
        user["client-certificate"] = os.path.abspath(os.path.expanduser(o.client_certificate))
        user.pop("client-certificate-data", None)
    if o.client_key:
        user["client-key"] = os.path.abspath(os.path.expanduser(o.client_key))
        user.pop("client-key-data", None)

    namespace = ctx.get("namespace")
    return Resolved(
        context=name, cluster=cluster, user=user, user_name=user_name,
        namespace=str(namespace) if namespace else None, files=files,
        impersonation=impersonation(user, o),
    )


def impersonation(user: dict[str, Any], o: ClientOverrides) -> dict[str, tuple[str, ...]]:
    """The Impersonate-* headers: the flags (--as, --as-group, --as-uid), else the
    kubeconfig user's `as`, `as-groups`, `as-uid` and `as-user-extra`."""
    name = o.impersonate or user.get("as") or ""
    groups = tuple(o.impersonate_groups) or tuple(str(g) for g in user.get("as-groups") or ())
    uid = o.impersonate_uid or user.get("as-uid") or ""
    extra = user.get("as-user-extra") if not o.impersonate else None
    if not name:
        if groups or uid:
            raise ConfigError("--as-group and --as-uid impersonate a user's groups and UID: pass --as USER too")
        return {}
    headers: dict[str, tuple[str, ...]] = {"Impersonate-User": (str(name),)}
    if groups:
        headers["Impersonate-Group"] = groups
    if uid:
        headers["Impersonate-Uid"] = (str(uid),)
    if isinstance(extra, dict):
        for key, values in sorted(extra.items()):
            if isinstance(values, list):
                headers[f"Impersonate-Extra-{key}"] = tuple(str(v) for v in values)
    return headers


def in_cluster_namespace() -> str | None:
    """The namespace of the pod's service account (kubectl's in-cluster default namespace)."""
    try:
        with open(os.path.join(SERVICE_ACCOUNT_DIR, "namespace"), encoding="utf-8") as fh:
            return fh.read().strip() or None
    except OSError:
        return None
