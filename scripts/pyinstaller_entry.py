"""The entry point of the one-file executable in the krew archive (`scripts/build-krew`).

One frozen binary serves as both executables of the plugin: `kubectl-proxyctl` (the CLI) and,
started through the archive's `kubectl_complete-proxyctl` script, kubectl's completion hook.
"""

import os
import sys

if __name__ == "__main__":
    if os.environ.pop("KUBECTL_PROXYCTL_COMPLETE_HOOK", "") == "1":
        from kubectl_proxyctl.cli.completion import main
    else:
        from kubectl_proxyctl.cli.main import main
    main()
