"""Why `run --mode ipvs` cannot run here: the engine writes no IPVS state yet, and a kernel
without IP_VS could not hold it anyway."""

from __future__ import annotations

import os


def unavailable() -> str:
    if not os.path.exists("/proc/net/ip_vs"):
        return ("--mode ipvs needs the kernel's IP_VS support, which this kernel lacks "
                "(no /proc/net/ip_vs); IPVS mode is not available in this version either; "
                "use --mode iptables or --mode nftables")
    return "--mode ipvs is not available in this version yet; use --mode iptables or --mode nftables"
