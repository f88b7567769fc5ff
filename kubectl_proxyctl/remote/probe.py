"""What runs on a node to probe addresses, and how its answer is read back. Pure: no I/O.

Theory of operation: all probes a node makes in one run go out as ONE remote command, a
fixed POSIX shell program (`DRIVER`) whose only variable parts are its positional
arguments: the per-probe timeout, then five words per probe (id, mode, address, port,
HTTP path). Every one of those words is validated here first (an IP address, a port
number, a path of URL characters) and then shell-quoted by `remote_argv`, so no text
from a user, a kubeconfig or an API object is ever parsed as shell code on a node.

The driver starts every probe in the background at once (at most `BATCH` at a time),
waits for all of them, and prints one line per probe::

    R <id> <exit code | unsupported> <tool> <latency | -> [C<response hex>]

It uses what a minimal node has. With bash, `timeout W bash -c 'exec 3<>/dev/tcp/IP/PORT'`
connects (and, for HTTP, sends a `GET` and relays the first 1 KiB of the response as hex;
for UDP, sends one datagram over `/dev/udp` and waits for one reply); latency is the
connect (UDP: round-trip) time in microseconds from `$EPOCHREALTIME`. Without bash it falls
back to `nc -z`, then to `curl telnet://` (TCP only; `curl -w %{time_connect}` gives the
latency). Results are read from exit codes only — 0 open, 1 closed (refused or
unreachable), 124 timeout — never from a tool's human-readable messages.

When the node has no bash at all the login shell answers 127 and the caller runs the same
driver with `sh` instead (`remote_argv(..., shell="sh")`).
"""

from __future__ import annotations

import enum
import ipaddress
import json
import re
from dataclasses import dataclass
from typing import Mapping, Sequence

from kubectl_proxyctl.errors import ConfigError

BATCH = 32  # probes started at once on one node
RESPONSE_BYTES = 1024  # how much of an HTTP (or UDP) answer comes back
PROBE_NAME = "proxyctl-probe"  # $0 of the driver, visible in the node's process list


class Mode(str, enum.Enum):
    """How a probe talks to its address."""

    TCP = "tcp"  # connect only
    HTTP = "http"  # connect, GET a path, read the status line, headers and body start
    UDP = "udp"  # send one datagram, wait for one reply

    def __str__(self) -> str:
        return self.value


class Seen(str, enum.Enum):
    """What a probe observed."""

    OPEN = "open"  # connected (TCP, HTTP) or got a reply (UDP)
    CLOSED = "closed"  # refused, or no route (ICMP unreachable)
    TIMEOUT = "timeout"  # no answer within the probe timeout (TCP, HTTP)
    SENT = "sent"  # UDP datagram sent, no reply and no refusal within the timeout
    ERROR = "error"  # the probe could not run (no tool, SSH failed, garbled output)

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class ProbeSpec:
    """One probe from one source: `id` is unique within the source's batch."""

    id: str
    mode: Mode
    address: str
    port: int
    path: str = "/"


@dataclass(frozen=True)
class Observation:
    """The outcome of one probe."""

    seen: Seen
    latency_ms: float | None = None
    http_status: int | None = None
    backend: str = ""  # which pod answered, when the response names it
    local_endpoints: int | None = None  # from a health-check node port's JSON body
    detail: str = ""


# --- validation ----------------------------------------------------------------------------

_PATH = re.compile(r"^/[A-Za-z0-9._~!$&'()*+,;=:@%/?-]{0,1023}$")
_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def validate_address(text: str, what: str = "address") -> str:
    """An IPv4/IPv6 address in canonical form, or ConfigError (nothing else reaches a node)."""
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        raise ConfigError(f"{what} {text!r} is not an IP address") from None


def validate_port(value: int | str, what: str = "port") -> int:
    text = str(value).strip()
    if not text.isascii() or not text.isdecimal() or not 0 < int(text) <= 65535:
        raise ConfigError(f"{what} {value!r} is not a port number (1-65535)")
    return int(text)


def validate_http_path(text: str) -> str:
    """A request path such as `/healthz?verbose=1`: URL characters only (no spaces, quotes
    or control characters, so it can never split the request line or add a header)."""
    if not _PATH.match(text):
        raise ConfigError(
            f"--http path {text!r} must start with '/' and contain only URL characters "
            "(letters, digits and -._~!$&'()*+,;=:@%/?)"
        )
    return text


def _checked(spec: ProbeSpec) -> ProbeSpec:
    if not _ID.match(spec.id):
        raise ValueError(f"bad probe id {spec.id!r}")
    return ProbeSpec(
        spec.id, Mode(spec.mode), validate_address(spec.address), validate_port(spec.port),
        validate_http_path(spec.path),
    )


# --- the remote program ----------------------------------------------------------------------

# In the inner bash programs: `now` sets t to the wall clock in microseconds (empty before
# bash 5), `lat` prints the latency t - s (or "-").
_CLOCK = """now() { t=${EPOCHREALTIME:-}; t=${t/[.,]/}; }
lat() { if [ -n "$s" ]; then printf "%s" "$((t - s))"; else printf -; fi; }"""

_TEMPLATE = r"""W=$1
shift
if command -v bash >/dev/null 2>&1; then tool=bash
elif command -v nc >/dev/null 2>&1; then tool=nc
elif command -v curl >/dev/null 2>&1; then tool=curl
else tool=none
fi
TCP='@CLOCK@
now; s=$t
exec 3<>"/dev/tcp/$0/$1"; r=$?
now; lat
exit $r'
HTTP='set -o pipefail
trap "" PIPE
@CLOCK@
now; s=$t
exec 3<>"/dev/tcp/$0/$1"; r=$?
now; lat
[ "$r" = 0 ] || exit "$r"
case $0 in *:*) h="[$0]" ;; *) h=$0 ;; esac
printf " C"
f="GET %s HTTP/1.0\r\nHost: %s\r\nUser-Agent: kubectl-proxyctl\r\nAccept: */*\r\nConnection: close\r\n\r\n"
printf "$f" "$2" "$h" >&3
head -c @BYTES@ <&3 | od -An -v -tx1 | tr -d " \n"'
UDP='set -o pipefail
@CLOCK@
exec 3<>"/dev/udp/$0/$1" || exit 1
now; s=$t
printf "proxyctl-probe\n" >&3 || exit 1
d=$(dd bs=65536 count=1 <&3 2>/dev/null | head -c @BYTES@ | od -An -v -tx1 | tr -d " \n") || exit 1
now; lat
printf " C%s" "$d"'
probe() {
  out=
  case $2:$tool in
  tcp:bash) out=$(timeout "$W" bash --norc -c "$TCP" "$3" "$4" 2>/dev/null) ;;
  http:bash) out=$(timeout "$W" bash --norc -c "$HTTP" "$3" "$4" "$5" 2>/dev/null) ;;
  udp:bash) out=$(timeout "$W" bash --norc -c "$UDP" "$3" "$4" 2>/dev/null) ;;
  tcp:nc) timeout "$W" nc -z "$3" "$4" </dev/null >/dev/null 2>&1 ;;
  tcp:curl)
    case $3 in *:*) hp="[$3]:$4" ;; *) hp="$3:$4" ;; esac
    out=$(curl -s -o /dev/null -w "%{time_connect}" --connect-timeout "$W" -m "$W" "telnet://$hp" \
      </dev/null 2>/dev/null) ;;
  *) printf "R %s unsupported %s\n" "$1" "$tool"; return ;;
  esac
  r=$?
  printf "R %s %s %s %s\n" "$1" "$r" "$tool" "${out:--}"
}
n=0
while [ "$#" -ge 5 ]; do
  probe "$1" "$2" "$3" "$4" "$5" &
  shift 5
  n=$((n + 1))
  if [ "$n" -ge @BATCH@ ]; then wait; n=0; fi
done
wait
"""

DRIVER = (_TEMPLATE.replace("@CLOCK@", _CLOCK).replace("@BYTES@", str(RESPONSE_BYTES))
          .replace("@BATCH@", str(BATCH)))


def _seconds(timeout: float) -> str:
    if not 0 < timeout <= 3600:
        raise ValueError(f"probe timeout {timeout!r} out of range")
    return f"{timeout:.3f}".rstrip("0").rstrip(".")


def remote_argv(specs: Sequence[ProbeSpec], timeout: float, shell: str = "bash") -> list[str]:
    """The argv to run on a node (the SSH layer quotes every element with shlex.quote).

    Raises ValueError/ConfigError when a spec is not valid: nothing unchecked goes out.
    """
    if shell not in ("bash", "sh"):
        raise ValueError(f"shell must be bash or sh, not {shell!r}")
    ids = [s.id for s in specs]
    if len(set(ids)) != len(ids):
        raise ValueError("probe ids must be unique")
    # --norc: a bash started by sshd would read ~/.bashrc again (the login shell already did)
    argv = [shell, *(["--norc"] if shell == "bash" else []), "-c", DRIVER, PROBE_NAME, _seconds(timeout)]
    for spec in map(_checked, specs):
        argv += [spec.id, spec.mode.value, spec.address, str(spec.port), spec.path]
    return argv


def command_deadline(timeout: float, probes: int) -> float:
    """How long the whole remote command may take: every batch may use the full timeout."""
    batches = max(1, -(-probes // BATCH))
    return batches * timeout + 5.0


# --- reading the answer ----------------------------------------------------------------------

_TIMEOUT_CODES = {124, 137, 143}  # timeout(1): 124; a KILL or TERM that beat it
_LINE = re.compile(r"^R (\S+) (\d+|unsupported) (\S+)(?: (\S+))?(?: (\S*))?$")


def parse_remote_output(stdout: str, specs: Sequence[ProbeSpec]) -> dict[str, Observation]:
    """Observations by probe id, one for every spec (missing lines become errors)."""
    by_id = {s.id: s for s in specs}
    out: dict[str, Observation] = {}
    for line in stdout.splitlines():
        m = _LINE.match(line.strip())
        if not m or m.group(1) not in by_id:
            continue
        pid, code, tool, first, rest = m.groups()
        out[pid] = _observation(by_id[pid], code, tool, first or "-", rest or "")
    for pid in by_id:
        out.setdefault(pid, Observation(Seen.ERROR, detail="the node printed no result for this probe"))
    return out


def _latency(tool: str, text: str) -> float | None:
    try:
        if tool == "bash" and text.isdecimal():
            return int(text) / 1000.0
        if tool == "curl":
            value = float(text)
            return value * 1000.0 if value > 0 else None
    except ValueError:
        return None
    return None


def _observation(spec: ProbeSpec, code: str, tool: str, first: str, rest: str) -> Observation:
    if code == "unsupported":
        if tool == "none":
            return Observation(Seen.ERROR, detail="the node has none of bash, nc, curl")
        return Observation(Seen.ERROR, detail=f"{spec.mode} probes need bash on the node (found only {tool})")
    rc = int(code)
    # bash prints "LATENCY[ C<hex>]" (the data part glued to the first token when no latency)
    latency_text, data = first, rest
    if first.startswith("C"):
        latency_text, data = "-", first
    connected = data.startswith("C")
    raw = _unhex(data[1:]) if connected else b""
    latency = _latency(tool, latency_text)
    if tool == "curl":
        if rc == 0 or (rc == 28 and latency is not None):
            return Observation(Seen.OPEN, latency)
        if rc == 7:
            return Observation(Seen.CLOSED)
        if rc == 28:
            return Observation(Seen.TIMEOUT)
        return Observation(Seen.ERROR, detail=f"curl exited {rc}")
    if rc in _TIMEOUT_CODES:
        if spec.mode == Mode.UDP:
            return Observation(Seen.SENT, detail="no reply within the timeout")
        if connected:
            return Observation(Seen.OPEN, latency, detail="connected; no HTTP response within the timeout")
        return Observation(Seen.TIMEOUT)
    if rc == 1:
        return Observation(Seen.CLOSED, latency)
    if rc != 0:
        hint = " (is timeout(1) installed?)" if rc == 127 else ""
        return Observation(Seen.ERROR, detail=f"probe exited {rc}{hint}")
    if spec.mode == Mode.TCP:
        return Observation(Seen.OPEN, latency)
    if spec.mode == Mode.UDP:
        return Observation(Seen.OPEN, latency, backend=backend_of({}, raw), detail="reply received")
    return http_observation(raw, latency)


def _unhex(text: str) -> bytes:
    try:
        return bytes.fromhex(text)
    except ValueError:
        return b""


# --- HTTP answers ----------------------------------------------------------------------------

_STATUS = re.compile(rb"^HTTP/\d(?:\.\d)? (\d{3})")
_POD_BODY = re.compile(r"(?:^|[\s,;&{\"'])pod[=:]\s*\"?([A-Za-z0-9][A-Za-z0-9._-]{0,252})")
BACKEND_HEADERS = ("x-pod-name", "x-backend", "x-served-by")


def split_http(raw: bytes) -> tuple[int | None, dict[str, str], bytes]:
    """(status, lower-cased headers, body start) of an HTTP/1.x response; status None when
    `raw` does not start with a status line."""
    head, _, body = raw.partition(b"\r\n\r\n")
    if not _:
        head, _, body = raw.partition(b"\n\n")
    lines = head.replace(b"\r\n", b"\n").split(b"\n")
    m = _STATUS.match(lines[0]) if lines else None
    if not m:
        return None, {}, raw
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.decode("latin-1").partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return int(m.group(1)), headers, body


def backend_of(headers: Mapping[str, str], body: bytes) -> str:
    """The pod that answered, when the response names it (a header, or `pod=NAME` in the body)."""
    for name in BACKEND_HEADERS:
        if headers.get(name):
            return headers[name].split()[0][:253]
    m = _POD_BODY.search(body.decode("utf-8", "replace"))
    return m.group(1) if m else ""


def http_observation(raw: bytes, latency: float | None) -> Observation:
    """An HTTP answer → Observation, with `localEndpoints` when the body is a kube-proxy
    health-check reply (`{"service": {...}, "localEndpoints": N, ...}`)."""
    status, headers, body = split_http(raw)
    if status is None:
        return Observation(Seen.OPEN, latency, detail="connected; the answer is not HTTP")
    local: int | None = None
    try:
        doc = json.loads(body.decode("utf-8"))
        if isinstance(doc, dict) and isinstance(doc.get("localEndpoints"), int):
            local = int(doc["localEndpoints"])
    except ValueError:
        pass
    return Observation(Seen.OPEN, latency, http_status=status, backend=backend_of(headers, body),
                       local_endpoints=local)

