"""Stateful fakes of the system adapters and small object builders shared by the unit tests.

A fake keeps what it was given (payloads, scripts, chains) so a test can read its state, and
`fail_next` makes the next write fail the way the real tool reports it.
"""

from __future__ import annotations

from typing import Any

from kubectl_proxyctl.errors import ApplyError


class FakeIptables:
    """Keeps the payloads it was given; `fail_next` makes the next restore fail."""

    def __init__(self) -> None:
        self.payloads: list[str] = []
        self.jumps: list[Any] = []
        self.canaries = False
        self.fail_next = 0
        self.nat_chains: list[str] = []

    def restore(self, payload: str, noflush: bool = True, counters: bool = False) -> None:
        if self.fail_next:
            self.fail_next -= 1
            raise ApplyError("iptables-restore: line 3 failed", script=payload, line=3)
        self.payloads.append(payload)

    def save(self, table: str | None = None) -> str:
        return "".join(f":{c} - [0:0]\n" for c in self.nat_chains)

    def ensure_jumps(self, jumps: Any) -> list[Any]:
        self.jumps = list(jumps)
        return []

    def ensure_canaries(self) -> None:
        self.canaries = True

    def missing_canaries(self) -> list[str]:
        return [] if self.canaries else ["mangle", "nat", "filter"]


def service(name: str, ip: str) -> dict[str, Any]:
    return {"kind": "Service", "metadata": {"name": name, "namespace": "ns", "resourceVersion": "1"},
            "spec": {"clusterIP": ip, "ports": [{"name": "p", "port": 80}]}}


def slice_(name: str, ips: list[str]) -> dict[str, Any]:
    return {"kind": "EndpointSlice",
            "metadata": {"name": f"{name}-1", "namespace": "ns", "labels": {"kubernetes.io/service-name": name}},
            "ports": [{"name": "p", "port": 8080}],
            "endpoints": [{"addresses": [ip]} for ip in ips]}


class FakeNft:
    """Records transactions; keeps the chain names a real table would have."""

    fam = "ip"

    def __init__(self) -> None:
        self.scripts: list[str] = []
        self.fail_next = 0
        self.existing: set[str] = set()
        self.affinity: set[str] = set()
        self.masquerading_rules: int | None = None

    def run(self, script: str, check: bool = False) -> None:
        if self.fail_next:
            self.fail_next -= 1
            raise ApplyError("nft failed at line 3: No such file or directory", script=script, line=3)
        self.scripts.append(script)
        for line in script.splitlines():
            words = line.split()
            if words[:2] == ["add", "chain"]:
                self.existing.add(words[4])
            elif words[:2] == ["delete", "chain"]:
                self.existing.discard(words[4])
        self.masquerading_rules = 3

    def chains(self) -> set[str]:
        return set(self.existing)

    def sets(self) -> set[str]:
        return set(self.affinity)

    def set_present(self, name: str) -> bool:
        return self.masquerading_rules is not None

    def chain_rule_count(self, chain: str) -> int | None:
        return self.masquerading_rules


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now
