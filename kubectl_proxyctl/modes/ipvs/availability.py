"""Why `run --mode ipvs` cannot run here, in one line (empty when it can): the kernel must
have IP_VS, built in or as a module that can be loaded."""

from __future__ import annotations


def unavailable() -> str:
    from kubectl_proxyctl.system.ipvs import ensure_module

    why = ensure_module("ip_vs")
    return f"--mode ipvs: {why}; use --mode iptables or --mode nftables" if why else ""
