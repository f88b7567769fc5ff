"""What the eBPF tests on the real kernel share: backends that answer with their name, and a
client that runs inside a cgroup and a network namespace.

The client is a separate process: a shell moves itself into the cgroup, then `nsenter
--net` enters the namespace (cgroup membership is inherited, and `ip netns exec` would hide
the cgroup2 mount) and runs a small Python client that prints what it saw as JSON.
"""

from __future__ import annotations

import contextlib
import json
import selectors
import socket
import subprocess
import sys
import threading
from collections import Counter
from typing import Any

from kubectl_proxyctl.system.executor import netns_path
from kubectl_proxyctl.system.netns import call_in_netns

TCP_PORT, UDP_PORT = 8080, 8053

CLIENT = r"""
import json, os, socket, sys, time

def family(ip):
    return socket.AF_INET6 if ":" in ip else socket.AF_INET

def tcp(op):
    s = socket.socket(family(op["ip"]), socket.SOCK_STREAM)
    s.settimeout(2)
    start = time.monotonic()
    try:
        s.connect((op["ip"], op["port"]))
        peer = list(s.getpeername()[:2])
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        return {"answer": data.decode().strip(), "peer": peer}
    except OSError as e:
        return {"errno": e.errno, "error": type(e).__name__, "seconds": time.monotonic() - start}
    finally:
        s.close()

def udp(op):
    s = socket.socket(family(op["ip"]), socket.SOCK_DGRAM)
    s.settimeout(2)
    try:
        if op["connected"]:
            s.connect((op["ip"], op["port"]))
            s.send(b"ping")
            peer = list(s.getpeername()[:2])
        else:
            s.sendto(b"ping", (op["ip"], op["port"]))
            peer = None
        data, source = s.recvfrom(4096)
        return {"answer": data.decode().strip(), "source": list(source[:2]), "peer": peer}
    except OSError as e:
        return {"errno": e.errno}
    finally:
        s.close()

def stamped(run, op):
    result = run(op)
    if op.get("stamp"):
        result["t"] = time.time()
    return result

out = []
for op in json.loads(sys.argv[1]):
    run = tcp if op["kind"] == "tcp" else udp
    if "until" in op:  # again and again until that file exists (60 s at most)
        end, results = time.monotonic() + 60, []
        while time.monotonic() < end and not os.path.exists(op["until"]):
            results.append(stamped(run, op))
        out.append(results)
    else:
        out.append([stamped(run, op) for _ in range(op.get("count", 1))])
print(json.dumps(out))
"""


class Servers:
    """One thread answering every backend's TCP (TCP_PORT) and UDP (UDP_PORT) sockets with the
    backend's name."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self.sockets: list[socket.socket] = []
        self.stop = False
        self.thread = threading.Thread(target=self.serve, name="ebpf-backends", daemon=True)

    def add(self, name: str, netns: str) -> None:
        def make() -> list[socket.socket]:
            made = []
            for kind, port in ((socket.SOCK_STREAM, TCP_PORT), (socket.SOCK_DGRAM, UDP_PORT)):
                s = socket.socket(socket.AF_INET6, kind)
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # v4 and v6 alike
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("::", port))
                if kind == socket.SOCK_STREAM:
                    s.listen(512)
                made.append(s)
            return made

        for s in call_in_netns(netns, make):
            s.setblocking(False)
            self.sockets.append(s)
            self.selector.register(s, selectors.EVENT_READ, name)

    def serve(self) -> None:
        while not self.stop:
            for key, _ in self.selector.select(timeout=0.2):
                s = key.fileobj
                assert isinstance(s, socket.socket)
                with contextlib.suppress(OSError):
                    if s.type == socket.SOCK_STREAM:
                        conn, _addr = s.accept()
                        with conn:
                            conn.sendall(f"{key.data}\n".encode())
                    else:
                        _data, source = s.recvfrom(4096)
                        s.sendto(f"{key.data}\n".encode(), source)

    def close(self) -> None:
        self.stop = True
        if self.thread.is_alive():
            self.thread.join(timeout=5)
        for s in self.sockets:
            s.close()
        self.selector.close()


def ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def run_client(cgroup: str, netns: str, *ops: dict[str, Any], timeout: float = 40) -> list[list[dict[str, Any]]]:
    """Run the client over `ops` (in `cgroup`, in `netns`): one list of results per op.

    An op: {"kind": "tcp", "ip", "port", "count"} or {"kind": "udp", "ip", "port",
    "connected", "count"}; a result: {"answer", "peer"} (TCP), {"answer", "source", "peer"}
    (UDP), or {"errno", "error", "seconds"}; with "stamp": true each result also has "t",
    the wall-clock time it was made; with "until": PATH instead of "count", the op repeats
    until that file exists."""
    prefix = f"echo $$ > {cgroup}/cgroup.procs && " if cgroup else ""
    script = f"{prefix}exec nsenter --net={netns_path(netns)} -- {sys.executable} -c \"$0\" \"$1\""
    done = subprocess.run(["sh", "-c", script, CLIENT, json.dumps(list(ops))],
                          capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, done.stderr
    result: list[list[dict[str, Any]]] = json.loads(done.stdout)
    return result


def answers(results: list[dict[str, Any]]) -> Counter[str]:
    return Counter(r.get("answer") or f"errno {r.get('errno')}" for r in results)
