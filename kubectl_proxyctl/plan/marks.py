"""The masquerade mark: one bit of the packet mark, shared by every proxy mode.

kube-proxy marks packets that need SNAT with `1 << --iptables-masquerade-bit` and writes the
mark as Go's `%#08x`, which pads to eight hex digits after the `0x` (`0x00004000`); Python's
`"0x%08x"` is that same string.
"""

from __future__ import annotations


def masquerade_mark(bit: int) -> int:
    """The mark value for `--iptables-masquerade-bit` (0-31)."""
    if not 0 <= bit <= 31:
        raise ValueError(f"masquerade bit must be within 0..31, got {bit}")
    return 1 << bit


def format_mark(value: int) -> str:
    """A mark as kube-proxy writes it: `0x` and eight hex digits (`0x00004000`)."""
    return "0x%08x" % value
