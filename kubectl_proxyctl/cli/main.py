"""The CLI root: lazy subcommands and the one error boundary.

`main()` is the only place where exceptions become exit codes (errors.ExitStatus):
ProxyctlError subclasses print one line on stderr; click's usage errors exit 2; anything
else is a bug and prints a short message (or the traceback with --debug).

Every message a command prints on stderr starts with `error: ` or `warning: ` (kubectl's
prefixes); usage errors add kubectl's `See '… --help' for usage.` line.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from kubectl_proxyctl import __version__
from kubectl_proxyctl.cli.lazy import LazyGroup
from kubectl_proxyctl.cli.options import SETTINGS, client_flags, common_options, quiet_libraries
from kubectl_proxyctl.errors import ApplyError, ExitStatus, ProxyctlError

CONTEXT_SETTINGS = {
    "help_option_names": ["-h", "--help"],
    "max_content_width": 100,
    "auto_envvar_prefix": "PROXYCTL",
}

COMMANDS: dict[str, tuple[str, str]] = {
    "endpoints": (
        "kubectl_proxyctl.cli.commands.endpoints:endpoints",
        "Show each service port's endpoints, their state, and why traffic might not reach them.",
    ),
    "dump": (
        "kubectl_proxyctl.cli.commands.dump:dump",
        "Show the node's Service rules, each annotated with its service port and endpoint.",
    ),
    "explain": (
        "kubectl_proxyctl.cli.commands.explain:explain",
        "Explain where a new connection to a Service goes on a node, and which rules decide it.",
    ),
    "verify": (
        "kubectl_proxyctl.cli.commands.verify:verify",
        "Check a node's rules against the desired state from the API: missing, extra, stale.",
    ),
    "run": (
        "kubectl_proxyctl.cli.commands.run:run",
        "Run the node engine: a drop-in kube-proxy.",
    ),
    "probe": (
        "kubectl_proxyctl.cli.commands.probe:probe",
        "Probe NodePort and LoadBalancer reachability from every node over SSH, judged by Service policy.",
    ),
    "lab": (
        "kubectl_proxyctl.cli.commands.lab:lab",
        "A real multi-node Service data plane on this machine (network namespaces).",
    ),
}

COMPLETE_VAR = "_PROXYCTL_COMPLETE"


@click.group(cls=LazyGroup, lazy_subcommands=COMMANDS, context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, "--version", prog_name="kubectl-proxyctl")
@common_options
@client_flags
def cli(**_flags: Any) -> None:
    """kubectl proxyctl: a kube-proxy you can read.

    Run a minimal kube-proxy on a node, and see, explain, verify and probe how Services are
    routed: endpoints, NAT rules, NodePort reachability.

    kubectl's client flags (--kubeconfig, --context, --cluster, --user, -n, -s/--server,
    --token, --as, --as-group, the TLS flags, --request-timeout) work before or after the
    command, as in kubectl; after it they win.

    Exit codes: 0 ok, 1 not found or a failed check, 2 usage or configuration error,
    3 the API server is unreachable or refused the request.
    """


def run(args: list[str] | None = None, prog_name: str | None = None) -> int:
    """Run the CLI and return its exit code (never raises for user errors)."""
    completing = COMPLETE_VAR in os.environ
    quiet_libraries()
    if prog_name is None:
        prog_name = "kubectl-proxyctl" if completing else "kubectl proxyctl"
    try:
        rv = cli.main(
            args=args, prog_name=prog_name, complete_var=COMPLETE_VAR, standalone_mode=False
        )
        return int(rv) if isinstance(rv, int) else 0
    except ProxyctlError as err:
        if SETTINGS.debug:
            import traceback

            traceback.print_exc()
        click.echo(f"error: {_one_line(err)}", err=True)
        return int(err.exit_status)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.ClickException as exc:
        _show_usage_error(exc)
        return int(ExitStatus.USAGE) if exc.exit_code == 2 else int(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("error: aborted", err=True)
        return 130
    except KeyboardInterrupt:
        click.echo("error: interrupted", err=True)
        return 130
    except BrokenPipeError:
        # stdout closed early (`| head`): not an error for a CLI.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except Exception as exc:  # a bug: say so without a wall of text
        if SETTINGS.debug:
            raise
        click.echo(f"error: internal error: {type(exc).__name__}: {exc} (run with --debug for details)", err=True)
        return 70


def _show_usage_error(exc: click.ClickException) -> None:
    """kubectl's form: `error: MESSAGE`, then where to read the usage."""
    message = " ".join(exc.format_message().split())
    click.echo(f"error: {message}", err=True)
    ctx = getattr(exc, "ctx", None)
    if isinstance(exc, click.UsageError) and ctx is not None:
        click.echo(f"See '{ctx.command_path} --help' for usage.", err=True)


def _one_line(err: ProxyctlError) -> str:
    """Errors are one line: control characters that reached a message from the input
    (a name, a file's text) are shown escaped. An ApplyError alone shows the failing lines
    of the payload under its first line."""
    text = str(err)
    if isinstance(err, ApplyError) or text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def main() -> None:
    sys.exit(run())
