"""Shell completion: the kubectl plugin hook, and cluster-backed value completion.

kubectl (>= 1.26) completes `kubectl proxyctl <TAB>` by running `kubectl_complete-proxyctl`
with the words after `kubectl proxyctl`, the last one being the word under the cursor (maybe
""). It expects Cobra's `__complete` protocol: one `value<TAB>description` line per candidate,
then `:<directive>`. `main()` answers it with click's own completion engine, so the kubectl
hook and the click-native bash/zsh/fish scripts (`completions/`) offer the same candidates.

`namespaces_for`, `nodes_for` and `services_for` are `shell_complete` callbacks that ask the cluster. They
run on every <TAB>: they use a short request timeout, and they never raise or print, since
anything written to the terminal during completion corrupts the user's command line.
"""

from __future__ import annotations

import sys

import click
from click.shell_completion import CompletionItem, ShellComplete

from kubectl_proxyctl.cli.options import ClusterOptions, flag_values, overrides_from

# Cobra's ShellCompDirective values (spf13/cobra completions.go).
DIRECTIVE_DEFAULT = 0  # let the shell complete file names
DIRECTIVE_ERROR = 1  # completion failed: the shell offers nothing
DIRECTIVE_NO_FILE_COMP = 4

COMPLETION_TIMEOUT = 3.0  # seconds; a <TAB> must not hang on an unreachable API server
SERVICE_PREFIX = "svc/"


def _one_line(text: str) -> str:
    """Cobra descriptions are single-line and tab-free."""
    return " ".join(text.split())


def cobra_lines(items: list[CompletionItem]) -> list[str]:
    """Render click completion items in Cobra's `__complete` format.

    A `file` or `dir` item means "a path goes here": click leaves path expansion to the
    shell, so it becomes the default directive rather than a candidate.
    """
    lines: list[str] = []
    directive = DIRECTIVE_NO_FILE_COMP
    for item in items:
        if item.type in ("file", "dir"):
            directive = DIRECTIVE_DEFAULT
            continue
        value = str(item.value)
        lines.append(f"{value}\t{_one_line(item.help)}" if item.help else value)
    lines.append(f":{directive}")
    return lines


def complete(words: list[str]) -> list[str]:
    """Answer one kubectl plugin completion request; `words` as kubectl passes them."""
    from kubectl_proxyctl.cli.main import COMPLETE_VAR, cli

    args = list(words)
    incomplete = args.pop() if args else ""
    engine = ShellComplete(cli, {}, "kubectl proxyctl", COMPLETE_VAR)
    try:
        items = engine.get_completions(args, incomplete)
    except Exception:  # a broken subcommand must not spill a traceback onto the command line
        return [f":{DIRECTIVE_ERROR}"]
    return cobra_lines(items)


def main() -> None:
    """The `kubectl_complete-proxyctl` console script."""
    sys.stdout.write("".join(f"{line}\n" for line in complete(sys.argv[1:])))


def _param(ctx: click.Context, name: str) -> str | None:
    """The string option `name` from this command or the nearest parent that has it."""
    node: click.Context | None = ctx
    while node is not None:
        value = node.params.get(name)
        if value is not None:
            return str(value)
        node = node.parent
    return None


def _cluster_names(ctx: click.Context, resource: str, namespace_scoped: bool) -> list[str]:
    """Names of `resource` from the source the command line selects; [] on any failure."""
    from_file = _param(ctx, "from_file")
    if from_file == "-":  # the objects would come from stdin, which completion cannot read
        return []
    try:
        from kubectl_proxyctl.kube.client import list_names

        values = flag_values(ctx, dict(ctx.params))  # the client flags, before or after the command
        options = ClusterOptions(
            kubeconfig=values["kubeconfig"],
            context=values["context"],
            namespace_flag=values["namespace"],
            request_timeout=COMPLETION_TIMEOUT,
            from_file=from_file,
            overrides=overrides_from(values),
        )
        names = list_names(options, resource, options.namespace if namespace_scoped else None)
        return sorted(str(n) for n in names)
    except Exception:  # completion never fails loudly: no cluster simply means no candidates
        return []


def namespaces_for(ctx: click.Context, incomplete: str) -> list[CompletionItem]:
    """Namespace names for `-n/--namespace`."""
    return [
        CompletionItem(name)
        for name in _cluster_names(ctx, "namespaces", namespace_scoped=False)
        if name.startswith(incomplete)
    ]


def nodes_for(ctx: click.Context, incomplete: str) -> list[CompletionItem]:
    """Node names, for `--node`."""
    return [CompletionItem(name) for name in _cluster_names(ctx, "nodes", namespace_scoped=False)
            if name.startswith(incomplete)]


def services_for(ctx: click.Context, incomplete: str) -> list[CompletionItem]:
    """Service names in the `-n` (or the context's) namespace, as `NAME` or `svc/NAME`.

    The form follows what was typed: `svc/<TAB>` completes to `svc/NAME`, anything else to
    bare names.
    """
    prefix = SERVICE_PREFIX if incomplete.startswith(SERVICE_PREFIX) else ""
    stem = incomplete[len(prefix):]
    return [
        CompletionItem(prefix + name)
        for name in _cluster_names(ctx, "services", namespace_scoped=True)
        if name.startswith(stem)
    ]
