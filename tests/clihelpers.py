"""Driving the CLI in-process from tests: the same entry point and error boundary as the
`kubectl-proxyctl` executable, with captured output."""

from __future__ import annotations

import pytest

from kubectl_proxyctl.cli.main import run


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `kubectl proxyctl ARGS`."""
    code = run(list(args), prog_name="kubectl proxyctl")
    out, err = capsys.readouterr()
    return code, out, err
