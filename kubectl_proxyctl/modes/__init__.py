"""The proxy modes: the one list of them, and where each one's Writer and Reader live.

`REGISTRY` maps every `Mode` to its entry; `writer_factory(mode)` and `reader(mode)` load a
mode's sides on first use (so `--help` and the other modes never import them). To add a mode,
add `modes/<name>/` implementing `base.Writer` and `base.Reader`, a `Mode` member, and one
entry here; nothing else branches on a mode's name.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from kubectl_proxyctl.modes.base import Mode, Reader, Writer

__all__ = ["Mode", "REGISTRY", "ModeEntry", "Reader", "Writer", "reader", "writer_factory"]


@dataclass(frozen=True)
class ModeEntry:
    mode: Mode
    package: str  # the mode's folder, as a module path
    has_writer: bool  # False: the engine cannot run this mode (yet); the inspector still reads it
    summary: str

    def module(self, name: str) -> Any:
        return importlib.import_module(f"{self.package}.{name}")


REGISTRY: dict[Mode, ModeEntry] = {
    Mode.IPTABLES: ModeEntry(Mode.IPTABLES, "kubectl_proxyctl.modes.iptables", True,
                             "kube-proxy's iptables layout, one iptables-restore per sync"),
    Mode.NFTABLES: ModeEntry(Mode.NFTABLES, "kubectl_proxyctl.modes.nftables", True,
                             "kube-proxy's nftables table, one atomic nft transaction per sync"),
    Mode.IPVS: ModeEntry(Mode.IPVS, "kubectl_proxyctl.modes.ipvs", True,
                         "kube-proxy's IPVS layout: virtual servers and ipsets over netlink, plus iptables rules"),
    Mode.EBPF: ModeEntry(Mode.EBPF, "kubectl_proxyctl.modes.ebpf", True,
                         "socket load balancing: cgroup BPF programs rewrite connect(), plus an nftables "
                         "table for entry points from outside the node"),
}


def reader(mode: Mode | str) -> Reader:
    """The Reader of `mode`."""
    reader_: Reader = REGISTRY[Mode(mode)].module("reader").READER
    return reader_


def writer_factory(mode: Mode | str) -> Callable[..., Writer]:
    """The function that makes `mode`'s Writer (`make_writer(config, **options)`)."""
    entry = REGISTRY[Mode(mode)]
    if not entry.has_writer:
        unavailable: Callable[[], str] = entry.module("availability").unavailable
        from kubectl_proxyctl.errors import ConfigError

        raise ConfigError(unavailable())
    factory: Callable[..., Writer] = entry.module("writer").make_writer
    return factory
