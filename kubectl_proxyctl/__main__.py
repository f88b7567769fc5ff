"""`python -m kubectl_proxyctl` runs the CLI."""

from kubectl_proxyctl.cli.main import main

main()
