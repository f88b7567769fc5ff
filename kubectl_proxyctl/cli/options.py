"""Shared kubectl-style options, as decorators, and the values they produce.

Every subcommand that talks to a cluster takes `@cluster_options()`; it receives one
`ClusterOptions` argument named `cluster`. Every command takes `@common_options` (`-v`,
`--debug`), which may also be given before the subcommand.

kubectl's global client flags (`client_flags`: --kubeconfig, --context, --cluster, --user,
-n, -s/--server, --token, --as, --as-group, --as-uid, the TLS flags, --request-timeout) are
accepted both before the subcommand (on the root group) and after it, as kubectl accepts
them anywhere; a value given after the subcommand wins. `-o` takes kubectl's template
formats too (`jsonpath=`, `jsonpath-as-json=`, `custom-columns=`) where a command offers them.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence, TypeVar

import click

from kubectl_proxyctl.kube.kubeconfig import ClientOverrides

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
    """Without -v: our own warnings on stderr, with kubectl's prefix (`warning: `, `error: `);
    libraries (the kubernetes client's `logging.error`, urllib3, paramiko) stay quiet."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == "kubectl_proxyctl" or record.name.startswith("kubectl_proxyctl."):
            import sys

            prefix = "error: " if record.levelno >= logging.ERROR else "warning: "
            try:
                sys.stderr.write(prefix + self.format(record) + "\n")
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
    overrides: ClientOverrides | None = None  # the global client flags (kubectl's --server, --token, --as, …)
    # The connection `connect()` made, reused: a command that reads a node through its proxy
    # pod and then the cluster's objects loads the kubeconfig (and runs its exec plugin) once.
    _api: list[Any] = field(default_factory=list, init=False, compare=False, repr=False)

    @property
    def namespace(self) -> str:
        """`-n`, else the kubeconfig context's namespace, else (in a pod without a kubeconfig)
        the service account's, else `default` (ConfigError when it is not a valid namespace
        name: a DNS label)."""
        from kubectl_proxyctl.errors import ConfigError

        if self.namespace_flag:
            name, where = self.namespace_flag, "-n/--namespace"
        else:
            name = self._configured_namespace() or "default"
            where = "the kubeconfig context's namespace"
        if len(name) > 63 or not _DNS_LABEL.match(name):
            raise ConfigError(f"{where}: {name!r} is not a valid namespace name (a DNS label: lower-case "
                              "letters, digits and '-', at most 63 characters)")
        return name

    def _configured_namespace(self) -> str | None:
        import os

        from kubectl_proxyctl.errors import ConfigError
        from kubectl_proxyctl.kube.kubeconfig import in_cluster_namespace, resolve

        overrides = self.overrides or ClientOverrides()
        if self.context and not overrides.context:
            from dataclasses import replace

            overrides = replace(overrides, context=self.context)
        try:
            resolved = resolve(self.kubeconfig, overrides)
        except ConfigError:
            return None  # connecting reports it
        if resolved is None:
            return in_cluster_namespace() if os.environ.get("KUBERNETES_SERVICE_HOST") else None
        return resolved.namespace

    def connect(self) -> Any:
        """The kube.client.KubeAPI configured like kubectl from these options (made once)."""
        if not self._api:
            from kubectl_proxyctl.kube.client import connect

            self._api.append(connect(self.kubeconfig, self.context, self.request_timeout, self.overrides))
        return self._api[0]


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


# The options kubectl takes on every command (`kubectl options`), as (param name, decorator).
# Defaults are None so that a value given after the subcommand can be told from none.
def _client_flag_decorators(namespaced: bool) -> list[Callable[[Any], Any]]:
    decorators = [
        click.option(
            "--kubeconfig", metavar="PATH", type=click.Path(dir_okay=False),
            help="Path to the kubeconfig file (default: the files listed in $KUBECONFIG, merged in order, "
            "else ~/.kube/config, else the in-cluster service account).",
        ),
        click.option("--context", metavar="NAME", shell_complete=_complete_contexts,
                     help="The kubeconfig context to use."),
        click.option("--cluster", "cluster_name", metavar="NAME", help="The kubeconfig cluster to use."),
        click.option("--user", metavar="NAME", help="The kubeconfig user to use."),
    ]
    if namespaced:
        decorators.append(click.option(
            "-n", "--namespace", metavar="NS", shell_complete=_complete_namespaces,
            help="Namespace (default: the context's namespace, else 'default').",
        ))
    decorators += [
        click.option("-s", "--server", metavar="URL", help="The address and port of the Kubernetes API server."),
        click.option("--token", metavar="TOKEN", help="Bearer token for authentication to the API server."),
        click.option("--as", "impersonate", metavar="USER",
                     help="Username to impersonate for the operation (a user or system:serviceaccount:NS:NAME)."),
        click.option("--as-group", "impersonate_groups", metavar="GROUP", multiple=True,
                     help="Group to impersonate for the operation (repeatable)."),
        click.option("--as-uid", "impersonate_uid", metavar="UID", help="UID to impersonate for the operation."),
        click.option("--certificate-authority", metavar="PATH", type=click.Path(dir_okay=False),
                     help="Path to a cert file for the certificate authority."),
        click.option("--client-certificate", metavar="PATH", type=click.Path(dir_okay=False),
                     help="Path to a client certificate file for TLS."),
        click.option("--client-key", metavar="PATH", type=click.Path(dir_okay=False),
                     help="Path to a client key file for TLS."),
        click.option("--tls-server-name", metavar="NAME",
                     help="Server name to use for server certificate validation (default: the server's host)."),
        click.option("--insecure-skip-tls-verify", is_flag=True, default=None,
                     help="Do not check the server's certificate (insecure)."),
        click.option("--request-timeout", type=DURATION, default=None, metavar="DURATION",
                     help="Give up on an API request after this long (e.g. 10s, 1m; default 30s)."),
    ]
    return decorators


CLIENT_FLAG_NAMES = (
    "kubeconfig", "context", "cluster_name", "user", "namespace", "server", "token", "impersonate",
    "impersonate_groups", "impersonate_uid", "certificate_authority", "client_certificate", "client_key",
    "tls_server_name", "insecure_skip_tls_verify", "request_timeout",
)
DEFAULT_REQUEST_TIMEOUT = 30.0


def client_flags(f: F) -> F:
    """kubectl's global client flags, for the root group (before the subcommand)."""
    for decorator in reversed(_client_flag_decorators(namespaced=True)):
        f = decorator(f)
    return f


def flag_values(ctx: click.Context, own: dict[str, Any]) -> dict[str, Any]:
    """The client flags given after the subcommand (`own`), else before it (any parent
    context's params: the root group's)."""
    values: dict[str, Any] = {}
    for name in CLIENT_FLAG_NAMES:
        value = own.get(name)
        node: click.Context | None = ctx.parent
        while value in (None, (), False) and node is not None:
            value = node.params.get(name)
            node = node.parent
        values[name] = value
    return values


def overrides_from(values: dict[str, Any]) -> ClientOverrides:
    return ClientOverrides(
        context=values.get("context"), cluster=values.get("cluster_name"), user=values.get("user"),
        server=values.get("server"), certificate_authority=values.get("certificate_authority"),
        insecure_skip_tls_verify=bool(values.get("insecure_skip_tls_verify")),
        tls_server_name=values.get("tls_server_name"), token=values.get("token"),
        client_certificate=values.get("client_certificate"), client_key=values.get("client_key"),
        impersonate=values.get("impersonate"), impersonate_uid=values.get("impersonate_uid"),
        impersonate_groups=tuple(values.get("impersonate_groups") or ()),
    )


TEMPLATE_FORMATS = ("jsonpath=", "jsonpath-as-json=", "custom-columns=")


class OutputFormat(click.Choice):
    """`-o`: the command's formats, plus kubectl's templates (`jsonpath=TEMPLATE`,
    `jsonpath-as-json=TEMPLATE`, `custom-columns=SPEC`) for the ones in `templates`. The value
    stays a string (`json`, `jsonpath={.items[*].ip}`); templates are checked when parsed."""

    def __init__(self, formats: Sequence[str], templates: Sequence[str] = ()) -> None:
        super().__init__([*formats, *templates])
        self.templates = tuple(templates)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        text = str(value)
        for prefix in self.templates:
            if text.startswith(prefix):
                template = text[len(prefix):]
                from kubectl_proxyctl.output import TemplateError, check_template

                try:
                    check_template(prefix[:-1], template)
                except TemplateError as exc:
                    self.fail(f"{text!r}: {exc}", param, ctx)
                return text
        return super().convert(value, param, ctx)


def list_options(f: F) -> F:
    """`--no-headers` and `--sort-by`, for commands that print a list."""
    f = click.option(
        "--sort-by", metavar="FIELD",
        help="Sort the list by FIELD: a JSONPath into the -o json record (kubectl style, e.g. '.node' or "
        "'{.ip}'), or a column name of the table (e.g. NODE).",
    )(f)
    f = click.option("--no-headers", is_flag=True, help="Do not print the table's header row.")(f)
    return f


def cluster_options(
    outputs: tuple[str, ...] = ("table", "wide", "json", "yaml"), namespaced: bool = True,
    templates: tuple[str, ...] = (), all_namespaces: bool | None = None,
) -> Callable[[F], F]:
    """Add the shared cluster options; the command receives `cluster` and `output`.

    `-A/--all-namespaces` is offered when `all_namespaces` (default: `namespaced`)."""
    offer_all = namespaced if all_namespaces is None else all_namespaces

    def decorate(f: F) -> F:
        def collect(**kwargs: Any) -> Any:
            own = {name: kwargs.pop(name, None) for name in CLIENT_FLAG_NAMES}
            values = flag_values(click.get_current_context(), own)
            overrides = overrides_from(values)
            timeout = values["request_timeout"]
            cluster = ClusterOptions(
                kubeconfig=values["kubeconfig"],
                context=values["context"],
                namespace_flag=values["namespace"] if namespaced else None,
                all_namespaces=kwargs.pop("all_namespaces", False),
                request_timeout=DEFAULT_REQUEST_TIMEOUT if timeout is None else timeout,
                from_file=kwargs.pop("from_file"),
                overrides=overrides,
            )
            return f(cluster=cluster, **kwargs)

        collect.__name__ = f.__name__
        collect.__doc__ = f.__doc__
        collect.__module__ = f.__module__
        g: Any = collect
        if hasattr(f, "__click_params__"):
            g.__click_params__ = f.__click_params__  # type: ignore[attr-defined]
        g = click.option(
            "--from-file", "from_file", metavar="PATH",
            type=click.Path(dir_okay=False, allow_dash=True),
            help="Read Services, EndpointSlices, Nodes and Pods from a YAML/JSON file ('-' = stdin), "
            "e.g. the output of `kubectl get svc,endpointslices,nodes,pods -A -o yaml`, instead of the API.",
        )(g)
        if offer_all:
            g = click.option(
                "-A", "--all-namespaces", is_flag=True, help="All namespaces."
            )(g)
        for decorator in reversed(_client_flag_decorators(namespaced)):
            g = decorator(g)
        if outputs:
            g = click.option(
                "-o", "--output", type=OutputFormat(outputs, templates), default=outputs[0],
                show_default=True, help="Output format"
                + (" (templates: " + ", ".join(f"{t}..." for t in templates) + ", as kubectl's)" if templates
                   else "") + ".",
            )(g)
        return common_options(g)  # type: ignore[no-any-return]

    return decorate
