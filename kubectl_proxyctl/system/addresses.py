"""The node's own IP addresses, as `ip -json address` reports them."""

from __future__ import annotations

import json

from kubectl_proxyctl.errors import ProxyctlError
from kubectl_proxyctl.system.executor import Executor, SubprocessExecutor


def local_addresses(executor: Executor | None = None) -> list[str]:
    """Every address on every interface (global and host scope), in `ip` order."""
    ex = executor if executor is not None else SubprocessExecutor()
    result = ex.run(["ip", "-json", "address", "show"])
    if not result.ok:
        raise ProxyctlError(f"ip address show failed: {result.stderr.strip()}")
    try:
        links = json.loads(result.stdout or "[]")
    except ValueError as exc:
        raise ProxyctlError("ip -json address show printed something that is not JSON") from exc
    out: list[str] = []
    for link in links:
        for info in link.get("addr_info") or []:
            local = info.get("local")
            if local and info.get("scope") in ("global", "host") and local not in out:
                out.append(str(local))
    return out
