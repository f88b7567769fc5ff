"""Man pages for every kubectl proxyctl command, generated from the click command tree.

`python -m kubectl_proxyctl.cli.manpages man/` writes one troff page per command, recursively:
`kubectl-proxyctl.1`, `kubectl-proxyctl-endpoints.1`, `kubectl-proxyctl-lab-apiserver.1`, ...
and removes pages of commands that no longer exist. A page is a pure function of the command
tree and the package version (no dates, sorted command lists), so the committed `man/` can be
compared byte for byte with a fresh generation (tests/test_manpages.py).

This is a small generator rather than click-man, which only walks a group's eagerly registered
`commands` (lazy subcommands are invisible to it), stamps the current date, does not escape
troff (backslashes, lines starting with '.'), ignores click's `\\b` and `\\f` help markers, and
cross-references nested commands under the wrong page names.
"""

from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path
from typing import Iterator

import click

from kubectl_proxyctl import __version__

PROG = "kubectl proxyctl"  # how users type it
PAGE_PREFIX = "kubectl-proxyctl"  # how pages are named
SECTION = "1"


class ManPageError(Exception):
    """A subcommand could not be loaded, so its page cannot be written."""


def page_name(path: tuple[str, ...]) -> str:
    """`("lab", "apiserver")` -> `kubectl-proxyctl-lab-apiserver`."""
    return "-".join((PAGE_PREFIX, *path))


def _escape(text: str) -> str:
    """Make one line of text safe for troff: literal backslashes, ASCII hyphens, no requests."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + text if text.startswith((".", "'")) else text


def _help_body(help_text: str) -> str:
    """Click help text as troff paragraphs, honouring click's markers.

    Text after `\\f` is for developers only; a paragraph that starts with a `\\b` line keeps
    its line breaks (no-fill); every other paragraph is refilled, as click does.
    """
    text = inspect.cleandoc(help_text).partition("\f")[0].strip()
    paragraphs = []
    for block in re.split(r"\n\s*\n", text):
        lines = block.splitlines()
        if lines[0].strip() == "\b":
            paragraphs.append("\n".join([".nf", *(_escape(line) for line in lines[1:]), ".fi"]))
        else:
            paragraphs.append(_escape(" ".join(line.strip() for line in lines)))
    return "\n.PP\n".join(paragraphs)


def _option_term(record: str) -> str:
    """`-o, --output [table|json]` with the flags in bold."""
    words = []
    for word in record.split(" "):
        flag = word.rstrip(",")
        if flag.startswith("-"):
            words.append(f"\\fB{_escape(flag)}\\fR{word[len(flag):]}")
        else:
            words.append(_escape(word))
    return " ".join(words)


def _subcommands(ctx: click.Context) -> list[tuple[str, click.Command]]:
    """The visible subcommands of a group, sorted; lazy ones are imported here."""
    group = ctx.command
    if not isinstance(group, click.Group):
        return []
    found = []
    for name in group.list_commands(ctx):
        try:
            sub = group.get_command(ctx, name)
        except Exception as exc:
            raise ManPageError(
                f"cannot load subcommand `{ctx.command_path} {name}`: {type(exc).__name__}: {exc}"
            ) from exc
        if sub is None:
            raise ManPageError(f"cannot load subcommand `{ctx.command_path} {name}`: not found")
        if not sub.hidden:
            found.append((name, sub))
    return sorted(found, key=lambda pair: pair[0])


def render_page(
    ctx: click.Context, path: tuple[str, ...], subcommands: list[tuple[str, click.Command]]
) -> str:
    """The troff source of one command's page."""
    command = ctx.command
    name = page_name(path)
    lines = [
        f'.TH "{name.upper()}" "{SECTION}" "" "{PAGE_PREFIX} {__version__}" "{PROG} manual"',
        ".SH NAME",
        f"{_escape(name)} \\- {_escape(command.get_short_help_str(limit=1000))}",
        ".SH SYNOPSIS",
        f"\\fB{_escape(ctx.command_path)}\\fR {_escape(' '.join(command.collect_usage_pieces(ctx)))}",
    ]
    if command.help:
        lines += [".SH DESCRIPTION", _help_body(command.help)]
    records = [
        record
        for param in command.get_params(ctx)
        if isinstance(param, click.Option) and (record := param.get_help_record(ctx)) is not None
    ]
    if records:
        lines.append(".SH OPTIONS")
        for term, help_text in records:
            lines += [".TP", _option_term(term), _escape(" ".join(help_text.split()))]
    if subcommands:
        lines.append(".SH COMMANDS")
        for sub_name, sub in subcommands:
            lines += [
                ".TP",
                f"\\fB{_escape(sub_name)}\\fR",
                f"{_escape(sub.get_short_help_str(limit=1000))} "
                f"See \\fB{_escape(page_name((*path, sub_name)))}\\fR({SECTION}).",
            ]
    see_also = page_name(path[:-1]) if path else "kubectl"
    lines += [".SH SEE ALSO", f"\\fB{_escape(see_also)}\\fR({SECTION})"]
    return "\n".join(lines) + "\n"


def _walk(
    command: click.Command, info_name: str, parent: click.Context | None, path: tuple[str, ...]
) -> Iterator[tuple[str, str]]:
    ctx = click.Context(command, info_name=info_name, parent=parent, **command.context_settings)
    subcommands = _subcommands(ctx)
    yield f"{page_name(path)}.{SECTION}", render_page(ctx, path, subcommands)
    for sub_name, sub in subcommands:
        yield from _walk(sub, sub_name, ctx, (*path, sub_name))


def render_pages(root: click.Command | None = None) -> dict[str, str]:
    """File name -> troff source for `root` (default: the CLI) and every subcommand below it.

    Raises ManPageError, naming the command, when a lazy subcommand cannot be imported.
    """
    if root is None:
        from kubectl_proxyctl.cli.main import cli

        root = cli
    return dict(_walk(root, PROG, None, ()))


def write_pages(directory: Path, root: click.Command | None = None) -> list[str]:
    """Regenerate the pages in `directory`; pages of commands that are gone are removed.

    Nothing is touched when rendering fails. Returns the file names written, sorted.
    """
    pages = render_pages(root)
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob(f"{PAGE_PREFIX}*.{SECTION}"):
        if stale.name not in pages:
            stale.unlink()
    for file_name, text in pages.items():
        (directory / file_name).write_text(text, encoding="utf-8", newline="\n")
    return sorted(pages)


def main(argv: list[str] | None = None) -> int:
    """`python -m kubectl_proxyctl.cli.manpages DIR`."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0].startswith("-"):
        print("usage: python -m kubectl_proxyctl.cli.manpages DIR", file=sys.stderr)
        return 2
    try:
        written = write_pages(Path(args[0]))
    except ManPageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {len(written)} man pages to {args[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
