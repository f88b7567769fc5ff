"""Netlink requests sent many to a write (`system/netlink.py`), and the writes built on it.

Unit tests pin the encoding; the lab tests use the host kernel inside a throw-away network
namespace: set members (ip_set) and addresses (rtnetlink) written in batches, refusals named
one by one while the requests around them still apply. IPVS itself needs the VM: the IPVS
suite there (tests/test_ipvs_vm.py) writes every virtual and real server through the same
batches.
"""

from __future__ import annotations

import struct
from typing import Iterator

import pytest

from kubectl_proxyctl.errors import ApplyError
from kubectl_proxyctl.system import netlink as nl
from kubectl_proxyctl.system.ipset import member_attrs
from netns import exec_in, lab_skip_reason, lone_netns

LAB_SKIP = lab_skip_reason("ipset")


def test_attributes_are_padded_to_four_bytes_and_read_back() -> None:
    data = nl.string(6, "rr") + nl.u8(1, 7) + nl.be16(4, 80) + nl.u32(8, 10800)
    assert len(data) % 4 == 0
    assert nl.parse_attrs(data) == {6: b"rr\0", 1: b"\x07", 4: b"\x00\x50", 8: struct.pack("=I", 10800)}
    assert nl.nested(2, nl.u8(1, 1))[2:4] == struct.pack("=H", 2 | nl.NLA_F_NESTED)


def test_set_members_are_encoded_for_their_type() -> None:
    attrs = nl.parse_attrs(member_attrs("hash:ip,port,net", "10.96.0.1,tcp:80,10.0.0.0/8"))
    assert attrs[1] == nl.attr(1 | nl.NLA_F_NET_BYTEORDER, bytes([10, 96, 0, 1]))  # IPSET_ATTR_IP
    assert attrs[4] == b"\x00\x50" and attrs[7] == b"\x06"  # port 80, TCP
    assert attrs[20] == nl.attr(1 | nl.NLA_F_NET_BYTEORDER, bytes([10, 0, 0, 0])) and attrs[21] == b"\x08"
    assert nl.parse_attrs(member_attrs("bitmap:port", "30080")) == {4: struct.pack("!H", 30080)}
    for bad in ("10.96.0.1,tcp:99999", "10.96.0.1,icmp:1", "10.96.0.1"):
        with pytest.raises(ValueError):
            member_attrs("hash:ip,port", bad)


@pytest.fixture()
def netns() -> Iterator[str]:
    yield from lone_netns("nl", LAB_SKIP)


def sh(netns: str, *args: str) -> str:
    return exec_in(netns, *args)


@pytest.mark.lab
def test_a_refusal_names_its_request_and_the_others_in_the_batch_still_apply(netns: str) -> None:
    from kubectl_proxyctl.system.ipset import IpsetKernel
    from kubectl_proxyctl.system.netns import call_in_netns

    sh(netns, "ipset", "create", "S", "hash:ip,port")
    kernel = call_in_netns(netns, IpsetKernel)
    try:
        kernel.defer(True)
        kernel.add("S", "hash:ip,port", ["10.96.0.1,tcp:80"])
        kernel.add("MISSING", "hash:ip,port", ["10.96.0.2,tcp:80"])
        kernel.add("S", "hash:ip,port", ["10.96.0.3,udp:53"])
        with pytest.raises(ApplyError) as caught:
            kernel.flush()
        assert str(caught.value).startswith("ipset add MISSING 10.96.0.2,tcp:80: ")
        assert sorted(sh(netns, "ipset", "list", "S").split("Members:\n")[1].split()) == ["10.96.0.1,tcp:80", "10.96.0.3,udp:53"]
        kernel.add("S", "hash:ip,port", ["10.96.0.1,tcp:80"])  # already there: not an error
        kernel.delete("S", "hash:ip,port", ["10.96.0.9,tcp:80"])  # not there: not an error
        kernel.add("S", "hash:ip,port", ["10.96.0.4,tcp:80"])
        kernel.defer(False)  # a failed sync's leftovers are dropped, not sent later
        kernel.flush()
        assert "10.96.0.4" not in sh(netns, "ipset", "list", "S")
        kernel.add("S", "hash:ip,port", ["10.96.0.5,tcp:80"])  # not deferred: sent at once
        assert "10.96.0.5" in sh(netns, "ipset", "list", "S")
    finally:
        kernel.close()


@pytest.mark.lab
def test_addresses_are_bound_and_unbound_in_one_batch(netns: str) -> None:
    from kubectl_proxyctl.system.ipvs import DummyDevice
    from kubectl_proxyctl.system.netns import call_in_netns

    # The namespace's lo (index 1, as on the host, where pyroute2's lookups go) stands in for
    # kube-ipvs0; what is bound is read with `ip`, inside the namespace.
    device = call_in_netns(netns, lambda: DummyDevice("lo"))

    def bound() -> set[str]:
        lines = sh(netns, "ip", "-o", "addr", "show", "dev", "lo").splitlines()
        return {line.split()[3].split("/")[0] for line in lines} - {"127.0.0.1", "::1"}
    try:
        wanted = [f"10.96.{i // 250}.{i % 250 + 1}" for i in range(600)] + ["fd00:96::1", "fd00:96::a"]
        device.defer(True)
        device.bind(wanted)
        device.bind(wanted[:5])  # bound already: not an error
        device.flush()
        assert bound() == set(wanted)
        assert device.addresses() - {"127.0.0.1", "::1"} == set(wanted)  # one dump, decoded by us
        assert "10.96.2.100/32" in sh(netns, "ip", "-4", "addr", "show", "dev", "lo")
        device.unbind(wanted + ["10.99.0.1"])  # one that was never bound: not an error
        device.flush()
        assert bound() == set()
    finally:
        device.defer(False)
        device.close()


@pytest.mark.lab
def test_an_unknown_generic_family_is_a_clear_error() -> None:
    batch = nl.Batch(nl.NETLINK_GENERIC)
    try:
        with pytest.raises(ApplyError, match="cannot find the generic netlink family NO-SUCH-FAMILY: "):
            nl.generic_family(batch, "NO-SUCH-FAMILY")
        assert nl.generic_family(batch, "nlctrl") == 0x10
    finally:
        batch.close()
