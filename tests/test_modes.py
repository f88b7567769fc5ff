"""The mode registry: every mode is a folder behind the two protocols of `modes/base.py`."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

import kubectl_proxyctl.modes as modes
from kubectl_proxyctl.errors import ConfigError
from kubectl_proxyctl.model import IPFamily
from kubectl_proxyctl.modes.base import Mode, Reader, Writer
from kubectl_proxyctl.plan.planner import ProxyConfig


def _protocol_methods(protocol: type) -> dict[str, inspect.Signature]:
    return {name: inspect.signature(member) for name, member in vars(protocol).items()
            if callable(member) and not name.startswith("_")}


def _assert_implements(obj: Any, protocol: type) -> None:
    for name, wanted in _protocol_methods(protocol).items():
        method = getattr(obj, name, None)
        assert callable(method), f"{type(obj).__name__} lacks {name}()"
        have = list(inspect.signature(method).parameters)
        want = [p for p in wanted.parameters if p != "self"]
        assert have[:len(want)] == want, f"{type(obj).__name__}.{name}{have} vs {protocol.__name__}{want}"
    assert obj.mode in Mode


def test_the_registry_lists_every_mode_once() -> None:
    assert list(modes.REGISTRY) == [Mode.IPTABLES, Mode.NFTABLES, Mode.IPVS, Mode.EBPF]
    assert [str(m) for m in modes.REGISTRY] == ["iptables", "nftables", "ipvs", "ebpf"]
    assert all(entry.mode == mode for mode, entry in modes.REGISTRY.items())


@pytest.mark.parametrize("mode", list(Mode))
def test_every_mode_has_a_reader(mode: Mode) -> None:
    reader = modes.reader(mode)
    _assert_implements(reader, Reader)
    assert reader.mode == mode


@pytest.mark.parametrize("mode", [m for m, e in modes.REGISTRY.items() if e.has_writer])
def test_every_writable_mode_has_a_writer_and_node_functions(mode: Mode) -> None:
    module = modes.REGISTRY[mode].module("writer")
    writer_class = {Mode.IPTABLES: "IptablesWriter", Mode.NFTABLES: "NftablesWriter", Mode.IPVS: "IpvsWriter",
                    Mode.EBPF: "EbpfWriter"}[mode]
    if mode == Mode.EBPF:  # its maps are opened when it is made
        writer = module.EbpfWriter(_NoMaps(), IPFamily.IPv4)
    else:
        writer = getattr(module, writer_class)(object())
    _assert_implements(writer, Writer)
    assert writer.mode == mode and writer.full_sync_period > 0
    for function in ("make_writer", "dry_run", "prepare_node", "cleanup"):
        assert callable(getattr(module, function)), function
    assert isinstance(module.DEFAULT_NODEPORT_ADDRESSES, tuple) and isinstance(module.LOCALHOST_NODEPORTS, bool)


class _NoMaps:
    def map(self, name: str) -> object:
        return object()


def test_ipvs_on_a_kernel_without_ip_vs_is_a_clear_configuration_error() -> None:
    # This host's kernel has no IP_VS (the IPVS suite runs in a VM: tests/test_ipvs_vm.py).
    with pytest.raises(ConfigError, match="--mode ipvs: kernel module ip_vs"):
        modes.writer_factory(Mode.IPVS)(ProxyConfig(node_name="n"))


def test_a_writer_is_made_from_the_registry() -> None:
    assert modes.writer_factory("nftables") is modes.REGISTRY[Mode.NFTABLES].module("writer").make_writer
