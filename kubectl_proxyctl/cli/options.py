"""Shared kubectl-style options, as decorators, and the values they produce.

Every subcommand that talks to a cluster takes `@cluster_options()`; it receives one
`ClusterOptions` argument named `cluster`. Every command takes `@common_options` (`-v`,
`--debug`), which may also be given before the subcommand.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class RunSettings:
    """Process-wide settings from `-v` and `--debug` (read by the error boundary)."""

    verbosity: int = 0
    debug: bool = False


SETTINGS = RunSettings()


def configure_logging() -> None:
    level = logging.WARNING
    if SETTINGS.verbosity == 1:
        level = logging.INFO
    elif SETTINGS.verbosity >= 2 or SETTINGS.debug:
        level = logging.DEBUG
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    # paramiko and urllib3 are chatty at INFO; they only speak at -vvv.
    for noisy in ("paramiko", "urllib3", "kubernetes"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if SETTINGS.verbosity >= 3 else logging.WARNING)


class _OwnWarningsOnly(logging.Handler):
    """Without -v: our own warnings on stderr (as Python's last-resort handler prints them);
    libraries (the kubernetes client's `logging.error`, urllib3, paramiko) stay quiet."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == "kubectl_proxyctl" or record.name.startswith("kubectl_proxyctl."):
            import sys

            try:
                sys.stderr.write(self.format(record) + "\n")
            except Exception:
                self.handleError(record)


def quiet_libraries() -> None:
    """Before -v is parsed: keep library log records from reaching the user.

    Only when nothing configured logging yet (a CLI process; under pytest or an embedding
    program the root logger already has handlers). `configure_logging` (-v, --debug, `run`)
    replaces this handler."""
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(_OwnWarningsOnly())


def _set_verbosity(ctx: click.Context, _param: click.Parameter, value: int) -> None:
    if value:
        SETTINGS.verbosity = max(SETTINGS.verbosity, value)
        configure_logging()


def _set_debug(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        SETTINGS.debug = True
        configure_logging()


def common_options(f: F) -> F:
    f = click.option(
        "-v", "--verbose", count=True, expose_value=False, is_eager=True, callback=_set_verbosity,
        help="More log detail on stderr (-v info, -vv debug, -vvv library debug).",
    )(f)
    f = click.option(
        "--debug", is_flag=True, expose_value=False, is_eager=True, callback=_set_debug,
        help="Show tracebacks for errors.",
    )(f)
    return f


_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)(h|m|s|ms)?)+$")
_PART = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s)?")


def parse_duration(text: str) -> float:
    """kubectl-style durations: `0`, `5`, `5s`, `250ms`, `1m30s`, `2h`. Returns seconds."""
    text = text.strip()
    if not text or not _DURATION.match(text):
        raise click.BadParameter(f"invalid duration {text!r} (examples: 10s, 1m30s, 500ms)")
    unit = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, None: 1.0}
    return sum(float(n) * unit[u or None] for n, u in _PART.findall(text))


class DurationType(click.ParamType):
    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, (int, float)):
            return float(value)
        try:
            return parse_duration(str(value))
        except click.BadParameter as exc:
            self.fail(str(exc), param, ctx)


DURATION = DurationType()


@dataclass(frozen=True)
class ClusterOptions:
    """Where cluster objects come from, and which namespace a command is about."""

    kubeconfig: str | None = None
    context: str | None = None
    namespace_flag: str | None = None
    all_namespaces: bool = False
    request_timeout: float = 30.0
    from_file: str | None = None

    @property
    def namespace(self) -> str:
        """`-n`, else the kubeconfig context's namespace, else `default` (ConfigError when it
        is not a valid namespace name: a DNS label)."""
        from kubectl_proxyctl.errors import ConfigError

        if self.namespace_flag:
            name, where = self.namespace_flag, "-n/--namespace"
        else:
            from kubectl_proxyctl.kube.kubeconfig import context_namespace

            name = context_namespace(self.kubeconfig, self.context) or "default"
            where = "the kubeconfig context's namespace"
        if len(name) > 63 or not _DNS_LABEL.match(name):
            raise ConfigError(f"{where}: {name!r} is not a valid namespace name (a DNS label: lower-case "
                              "letters, digits and '-', at most 63 characters)")
        return name


_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?\Z")


def _complete_namespaces(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[Any]:
    from kubectl_proxyctl.cli.completion import namespaces_for

    return namespaces_for(ctx, incomplete)


def _complete_contexts(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[Any]:
    from kubectl_proxyctl.kube.kubeconfig import list_contexts

    try:
        return [c for c in list_contexts(ctx.params.get("kubeconfig")) if c.startswith(incomplete)]
    except Exception:  # completion must never fail loudly
        return []


def cluster_options(
    outputs: tuple[str, ...] = ("table", "wide", "json", "yaml"), namespaced: bool = True
) -> Callable[[F], F]:
    """Add the shared cluster options; the command receives `cluster` and `output`."""

    def decorate(f: F) -> F:
        def collect(**kwargs: Any) -> Any:
            cluster = ClusterOptions(
                kubeconfig=kwargs.pop("kubeconfig"),
                context=kwargs.pop("context"),
                namespace_flag=kwargs.pop("namespace", None),
                all_namespaces=kwargs.pop("all_namespaces", False),
                request_timeout=kwargs.pop("request_timeout"),
                from_file=kwargs.pop("from_file"),
            )
            return f(cluster=cluster, **kwargs)

        collect.__name__ = f.__name__
        collect.__doc__ = f.__doc__
        g: Any = collect
        if hasattr(f, "__click_params__"):
            g.__click_params__ = f.__click_params__  # type: ignore[attr-defined]
        g = click.option(
            "--from-file", "from_file", metavar="PATH",
            type=click.Path(dir_okay=False, allow_dash=True),
            help="Read Services, EndpointSlices, Nodes and Pods from a YAML/JSON file ('-' = stdin), "
            "e.g. the output of `kubectl get svc,endpointslices,nodes,pods -A -o yaml`, instead of the API.",
        )(g)
        g = click.option(
            "--request-timeout", type=DURATION, default="30s", show_default=True,
            help="Give up on an API request after this long (e.g. 10s, 1m).",
        )(g)
        if namespaced:
            g = click.option(
                "-A", "--all-namespaces", is_flag=True, help="All namespaces."
            )(g)
            g = click.option(
                "-n", "--namespace", metavar="NS", shell_complete=_complete_namespaces,
                help="Namespace (default: the context's namespace, else 'default').",
            )(g)
        g = click.option(
            "--context", metavar="NAME", shell_complete=_complete_contexts,
            help="The kubeconfig context to use.",
        )(g)
        g = click.option(
            "--kubeconfig", envvar="KUBECONFIG", metavar="PATH", type=click.Path(dir_okay=False),
            help="Path to the kubeconfig file (default: $KUBECONFIG, else ~/.kube/config).",
        )(g)
        if outputs:
            g = click.option(
                "-o", "--output", type=click.Choice(list(outputs)), default=outputs[0],
                show_default=True, help="Output format.",
            )(g)
        return common_options(g)  # type: ignore[no-any-return]

    return decorate
