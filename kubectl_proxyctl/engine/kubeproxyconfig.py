"""kube-proxy's configuration file (`KubeProxyConfiguration`, kubeproxy.config.k8s.io/v1alpha1) for `run --config`.

An operator replacing kube-proxy keeps its `kube-proxy` ConfigMap: `run --config
/var/lib/kube-proxy/config.conf` reads the same file kube-proxy reads. This module is the one
boundary between that file and `run`'s flags:

* `load(path)` parses and type-checks the document against the v1alpha1 schema (field names
  and types as in `staging/src/k8s.io/kube-proxy/config/v1alpha1/types.go`) and returns a
  `KubeProxyConfiguration`. Fields the schema does not know are collected, not fatal: kube-proxy
  itself falls back to lenient decoding after a strict-decoding failure, and so a file written
  for a newer kube-proxy still loads.
* `KubeProxyConfiguration.flag_values(mode)` turns it into `run`'s flag values, keyed by the
  flag's parameter name, each with the field it came from. Zero values (`""`, `0s`, `null`,
  `false`) mean "the default", as kube-proxy's defaulting treats them, so they yield nothing
  and the flag's own default stays. The mode decides which section is read, as kube-proxy's
  v1alpha1 conversion does: sync periods from the mode's own section (`iptables`, `nftables`
  or `ipvs`), `masqueradeAll` and `masqueradeBit` from `nftables` in nftables mode and from
  `iptables` otherwise (IPVS mode included).
* `to_document(flags, kubeconfig)` is the reverse, for `--write-config-to`: the effective
  configuration as a v1alpha1 document that `load` reads back to the same flags.

Which flags win is decided by the caller (`run`): a flag given on the command line overrides
the file, as with kube-proxy; everything else comes from the file, else the flag's default.
Fields the engine does not implement (conntrack sysctls, oomScoreAdj, …) are
known, checked, and reported as ignored when set to anything but their zero value.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Union

from kubectl_proxyctl.errors import ConfigError

API_VERSION = "kubeproxy.config.k8s.io/v1alpha1"
KIND = "KubeProxyConfiguration"
HEALTHZ_PORT = 10256  # kube-proxy's ports.ProxyHealthzPort, appended to a bind address without one
METRICS_PORT = 10249  # ports.ProxyStatusPort

# The v1alpha1 schema: a field's type, or a nested section. "any" is a structure we only carry
# (logging's options differ between releases); "boolmap" is featureGates.
Schema = Mapping[str, Union[str, "Schema"]]
SCHEMA: Schema = {
    "apiVersion": "str", "kind": "str",
    "featureGates": "boolmap",
    "clientConnection": {"kubeconfig": "str", "acceptContentTypes": "str", "contentType": "str",
                         "qps": "float", "burst": "int"},
    "logging": "any",
    "hostnameOverride": "str",
    "bindAddress": "str",
    "healthzBindAddress": "str",
    "metricsBindAddress": "str",
    "bindAddressHardFail": "bool",
    "enableProfiling": "bool",
    "showHiddenMetricsForVersion": "str",
    "mode": "str",
    "iptables": {"masqueradeBit": "int", "masqueradeAll": "bool", "localhostNodePorts": "bool",
                 "snatNodeInternalIP": "bool", "syncPeriod": "duration", "minSyncPeriod": "duration"},
    "ipvs": {"syncPeriod": "duration", "minSyncPeriod": "duration", "scheduler": "str", "excludeCIDRs": "strlist",
             "strictARP": "bool", "tcpTimeout": "duration", "tcpFinTimeout": "duration", "udpTimeout": "duration"},
    "nftables": {"masqueradeBit": "int", "masqueradeAll": "bool", "syncPeriod": "duration",
                 "minSyncPeriod": "duration"},
    "winkernel": {"networkName": "str", "sourceVip": "str", "enableDSR": "bool", "rootHnsEndpointName": "str",
                  "forwardHealthCheckVip": "bool"},
    "detectLocalMode": "str",
    "detectLocal": {"bridgeInterface": "str", "interfaceNamePrefix": "str"},
    "clusterCIDR": "str",
    "nodePortAddresses": "strlist",
    "oomScoreAdj": "int",
    "conntrack": {"maxPerCore": "int", "min": "int", "tcpEstablishedTimeout": "duration",
                  "tcpCloseWaitTimeout": "duration", "tcpBeLiberal": "bool", "udpTimeout": "duration",
                  "udpStreamTimeout": "duration"},
    "configSyncPeriod": "duration",
    "portRange": "str",
    "windowsRunAsService": "bool",
}

# The fields the engine acts on; every other field of SCHEMA is known but ignored.
SUPPORTED = frozenset({
    "apiVersion", "kind", "clientConnection.kubeconfig", "hostnameOverride", "bindAddress", "healthzBindAddress",
    "metricsBindAddress", "bindAddressHardFail", "mode", "detectLocalMode", "detectLocal.bridgeInterface",
    "detectLocal.interfaceNamePrefix", "clusterCIDR", "nodePortAddresses",
    "iptables.masqueradeBit", "iptables.masqueradeAll", "iptables.localhostNodePorts", "iptables.syncPeriod",
    "iptables.minSyncPeriod", "nftables.masqueradeBit", "nftables.masqueradeAll", "nftables.syncPeriod",
    "nftables.minSyncPeriod", "ipvs.syncPeriod", "ipvs.minSyncPeriod", "ipvs.scheduler", "ipvs.strictARP",
    "ipvs.excludeCIDRs", "ipvs.tcpTimeout", "ipvs.tcpFinTimeout", "ipvs.udpTimeout",
})

# nodePortAddresses keywords other than `primary` (which the engine takes as it is).
NODEPORT_KEYWORDS = {"all": ("0.0.0.0/0", "::/0"), "localhost": ("127.0.0.0/8", "::1/128")}

# `run`'s IPVS timeout parameters and their fields (read in every mode, as kube-proxy reads them).
IPVS_TIMEOUT_FIELDS = (("ipvs_tcp_timeout", "ipvs.tcpTimeout"), ("ipvs_tcpfin_timeout", "ipvs.tcpFinTimeout"),
                       ("ipvs_udp_timeout", "ipvs.udpTimeout"))

_GO_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_go_duration(text: str) -> float:
    """A Go `time.Duration` string (`30s`, `1m30s`, `500ms`, `2h22m`, `0`) in seconds; ValueError otherwise."""
    body = text.strip()
    if body in ("0", "+0", "-0"):
        return 0.0
    sign = -1.0 if body.startswith("-") else 1.0
    body = body.lstrip("+-")
    parts = _GO_DURATION.findall(body)
    if not body or "".join(n + u for n, u in parts) != body:
        raise ValueError(f"invalid duration {text!r} (examples: 30s, 1m30s, 500ms)")
    return sign * sum(float(n) * _GO_UNITS[u] for n, u in parts)


def format_go_duration(seconds: float) -> str:
    """Seconds as Go prints a Duration: `30s`, `1m30s`, `1h0m0s`, `500ms`, `0s`."""
    nanos = round(seconds * 1e9)
    if nanos == 0:
        return "0s"
    sign, nanos = ("-", -nanos) if nanos < 0 else ("", nanos)
    if nanos < 1_000_000_000:
        for unit, size in (("ms", 1_000_000), ("µs", 1_000), ("ns", 1)):
            if nanos >= size:
                return f"{sign}{nanos / size:g}{unit}"
    hours, rest = divmod(nanos, 3600 * 10**9)
    minutes, rest = divmod(rest, 60 * 10**9)
    secs = f"{rest / 1e9:.9f}".rstrip("0").rstrip(".")
    if hours:
        return f"{sign}{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{sign}{minutes}m{secs}s"
    return f"{sign}{secs}s"


def _is_zero(value: Any) -> bool:
    """kube-proxy's "unset": null, "", false, 0, "0", a zero duration, or a section of only those."""
    if value is None or value is False or value == "" or value == 0 or value == "0":
        return True
    if isinstance(value, str):
        try:
            return parse_go_duration(value) == 0
        except ValueError:
            return False
    if isinstance(value, Mapping):
        return all(_is_zero(v) for v in value.values())
    if isinstance(value, list):
        return not value
    return False


def _check(path: str, kind: str, value: Any) -> Any:
    """The value of one field, type-checked (ConfigError naming the field); durations in seconds."""
    if value is None:
        return None
    if kind == "str" and isinstance(value, str):
        return value
    if kind == "bool" and isinstance(value, bool):
        return value
    if kind == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind == "strlist" and isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    if kind == "boolmap" and isinstance(value, Mapping) and all(isinstance(v, bool) for v in value.values()):
        return dict(value)
    if kind == "duration" and isinstance(value, str):
        try:
            return parse_go_duration(value)
        except ValueError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    if kind == "any":
        return value
    want = {"str": "a string", "bool": "true or false", "int": "an integer", "float": "a number",
            "strlist": "a list of strings", "boolmap": "a map of names to true/false",
            "duration": "a duration such as 30s"}[kind]
    raise ConfigError(f"{path}: want {want}, got {value!r}")


@dataclass(frozen=True)
class KubeProxyConfiguration:
    """A parsed, type-checked KubeProxyConfiguration: field path (`iptables.syncPeriod`) to value
    (durations in seconds), only the fields the file sets; plus what it set that we do not use."""

    source: str
    fields: Mapping[str, Any]
    unknown: tuple[str, ...] = ()
    ignored: tuple[str, ...] = field(default=())

    def get(self, path: str) -> Any:
        """The field's value, or None when the file leaves it at its zero value."""
        value = self.fields.get(path)
        return None if _is_zero(value) else value

    @property
    def mode(self) -> str:
        return str(self.get("mode") or "")

    @property
    def kubeconfig(self) -> str | None:
        return self.get("clientConnection.kubeconfig")

    def warnings(self) -> list[str]:
        """One line each for unknown fields and for known fields the engine does not implement."""
        out = []
        if self.unknown:
            out.append(f"{self.source}: unknown fields ignored: {', '.join(self.unknown)}")
        if self.ignored:
            out.append(f"{self.source}: fields not supported by this proxy, ignored: {', '.join(self.ignored)}")
        return out

    def flag_values(self, mode: str) -> dict[str, tuple[str, Any]]:
        """`run`'s parameter name -> (field path, value) for every field set, for `mode`'s sections."""
        masq_section = "nftables" if mode == "nftables" else "iptables"
        sync_section = mode if mode in ("ipvs", "nftables") else "iptables"
        out: dict[str, tuple[str, Any]] = {}

        def take(name: str, path: str, convert: Any = None) -> None:
            value = self.get(path)
            if value is not None:
                out[name] = (path, convert(value) if convert else value)

        take("mode", "mode")
        take("node_name", "hostnameOverride", str.strip)
        take("cluster_cidr", "clusterCIDR")
        take("detect_local_mode", "detectLocalMode")
        take("pod_bridge_interface", "detectLocal.bridgeInterface")
        take("pod_interface_name_prefix", "detectLocal.interfaceNamePrefix")
        take("nodeport_addresses", "nodePortAddresses", _nodeport_addresses)
        for name, path, port in (("healthz_bind_address", "healthzBindAddress", HEALTHZ_PORT),
                                 ("metrics_bind_address", "metricsBindAddress", METRICS_PORT)):
            if self.fields.get(path) == "0":  # the flag's "0": the server is off (our extension)
                out[name] = (path, "")
            else:
                take(name, path, lambda a, port=port: _with_port(a, port))
        take("bind_address_hard_fail", "bindAddressHardFail")
        take("masquerade_all", f"{masq_section}.masqueradeAll")
        take("masquerade_bit", f"{masq_section}.masqueradeBit")
        take("sync_period", f"{sync_section}.syncPeriod")
        take("min_sync_period", f"{sync_section}.minSyncPeriod")
        take("ipvs_scheduler", "ipvs.scheduler")
        take("ipvs_strict_arp", "ipvs.strictARP")
        take("ipvs_exclude_cidrs", "ipvs.excludeCIDRs", lambda cidrs: ",".join(c.strip() for c in cidrs))
        for name, path in IPVS_TIMEOUT_FIELDS:
            take(name, path)
        if self.fields.get("iptables.localhostNodePorts") is not None:  # false is a value here, not "unset"
            out["localhost_nodeports"] = ("iptables.localhostNodePorts", self.fields["iptables.localhostNodePorts"])
        bind = self.get("bindAddress")
        if bind is not None:
            try:
                address = ipaddress.ip_address(bind)
            except ValueError:
                raise ConfigError(f"{self.source}: bindAddress: {bind!r} is not an IP address") from None
            if address.version == 6:
                out["ip_family"] = ("bindAddress", "IPv6")
            if not address.is_unspecified:  # kube-proxy: an override of the node's primary IP
                out["node_ips"] = ("bindAddress", (str(address),))
        return out


def _with_port(address: str, port: int) -> str:
    """kube-proxy's AppendPortIfNeeded: `0.0.0.0` -> `0.0.0.0:10256`, `::` -> `[::]:10256`."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address  # has a port already, or is malformed (the flag's check says which)
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def _nodeport_addresses(values: list[str]) -> str:
    out: list[str] = []
    for value in values:
        out.extend(NODEPORT_KEYWORDS.get(value.strip(), (value.strip(),)))
    return ",".join(out)


def _walk(doc: Mapping[str, Any], schema: Schema, prefix: str, fields: dict[str, Any], unknown: list[str],
          source: str) -> None:
    for key, value in doc.items():
        path = f"{prefix}{key}"
        kind = schema.get(str(key))
        if kind is None:
            unknown.append(path)
        elif isinstance(kind, Mapping):
            if value is None:
                continue
            if not isinstance(value, Mapping):
                raise ConfigError(f"{source}: {path}: want a mapping, got {value!r}")
            _walk(value, kind, f"{path}.", fields, unknown, source)
        else:
            try:
                fields[path] = _check(path, kind, value)
            except ConfigError as exc:
                raise ConfigError(f"{source}: {exc}") from None


def parse(text: str, source: str) -> KubeProxyConfiguration:
    """A KubeProxyConfiguration from YAML or JSON text; ConfigError naming `source` when it is not one."""
    import yaml

    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(doc, Mapping):
        raise ConfigError(f"{source}: want a {KIND} object, got {type(doc).__name__}")
    if doc.get("kind") != KIND or doc.get("apiVersion") != API_VERSION:
        raise ConfigError(f"{source}: want kind {KIND} of apiVersion {API_VERSION}, got kind "
                          f"{doc.get('kind')!r} of apiVersion {doc.get('apiVersion')!r}")
    fields: dict[str, Any] = {}
    unknown: list[str] = []
    _walk(doc, SCHEMA, "", fields, unknown, source)
    ignored = sorted(p for p, v in fields.items() if p not in SUPPORTED and not _is_zero(v))
    return KubeProxyConfiguration(source, fields, tuple(unknown), tuple(ignored))


def load(path: str | Path) -> KubeProxyConfiguration:
    """Read and parse the file at `path` (ConfigError when it cannot be read or is not a KubeProxyConfiguration)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--config {path}: {exc.strerror if isinstance(exc, OSError) else exc}") from None
    return parse(text, str(path))


def to_document(flags: Mapping[str, Any], kubeconfig: str | None = None) -> dict[str, Any]:
    """The effective configuration (`run`'s flag values) as a v1alpha1 KubeProxyConfiguration.

    Sync periods and masqueradeAll go into the section of the mode that reads them (as
    kube-proxy's conversion writes them); masqueradeBit goes into both `iptables` and
    `nftables`. Flags kube-proxy has no field for (`--ip-family`, a second `--node-ip`) are
    expressed as far as the schema allows: the IPv6 family as bindAddress `::`. A server the
    flags turned off is written as bind address `0` (an empty one would mean the default)."""
    mode = str(flags["mode"])
    node_ips = tuple(flags.get("node_ips") or ())
    if node_ips:
        bind = node_ips[0]
    else:
        bind = "::" if flags.get("ip_family") == "IPv6" else "0.0.0.0"
    sync = {"syncPeriod": format_go_duration(float(flags["sync_period"])),
            "minSyncPeriod": format_go_duration(float(flags["min_sync_period"]))}
    zero_sync = {"syncPeriod": "0s", "minSyncPeriod": "0s"}
    masq_all = bool(flags["masquerade_all"])
    bit = int(flags["masquerade_bit"])
    nodeports = _csv(flags.get("nodeport_addresses"))
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "bindAddress": bind,
        "bindAddressHardFail": bool(flags["bind_address_hard_fail"]),
        "clientConnection": {"kubeconfig": kubeconfig or ""},
        "clusterCIDR": str(flags.get("cluster_cidr") or ""),
        "detectLocalMode": str(flags["detect_local_mode"]),
        "detectLocal": {"bridgeInterface": str(flags.get("pod_bridge_interface") or ""),
                        "interfaceNamePrefix": str(flags.get("pod_interface_name_prefix") or "")},
        "healthzBindAddress": _bind_address(flags.get("healthz_bind_address")),
        "hostnameOverride": str(flags.get("node_name") or ""),
        "iptables": {"masqueradeAll": masq_all and mode != "nftables", "masqueradeBit": bit,
                     "localhostNodePorts": bool(flags["localhost_nodeports"]),
                     **(sync if mode == "iptables" else zero_sync)},
        "ipvs": {"scheduler": str(flags.get("ipvs_scheduler") or ""), "strictARP": bool(flags.get("ipvs_strict_arp")),
                 "excludeCIDRs": _csv(flags.get("ipvs_exclude_cidrs")) or None,
                 **{path.split(".")[1]: format_go_duration(float(flags.get(name) or 0))
                    for name, path in IPVS_TIMEOUT_FIELDS},
                 **(sync if mode == "ipvs" else zero_sync)},
        "metricsBindAddress": _bind_address(flags.get("metrics_bind_address")),
        "mode": mode,
        "nftables": {"masqueradeAll": masq_all and mode == "nftables", "masqueradeBit": bit,
                     **(sync if mode == "nftables" else zero_sync)},
        "nodePortAddresses": nodeports or None,
    }


def _csv(value: Any) -> list[str]:
    return [p.strip() for p in str(value or "").split(",") if p.strip()]


def _bind_address(value: Any) -> str:
    return str(value) if value not in (None, "", "0") else "0"


def dump(document: Mapping[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(dict(document), sort_keys=False, default_flow_style=False)
