"""kubectl proxyctl: a minimal kube-proxy plus the tools to see, explain and probe it.

Importing this package has no side effects and imports nothing heavy.
"""

__version__ = "0.1.0"
