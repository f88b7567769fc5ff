"""Rendering rows and records the way kubectl does: tables, JSON, YAML, names, templates.

Tables follow kubectl's printer: upper-case headers, columns left-aligned and separated by
three spaces, no borders, `<none>` for empty cells (tabulate with KUBECTL_TABLE).

A command that lists things describes them once as a `Listing` (table rows, and the records
`-o json` prints) and `render_listing` prints any `-o` format kubectl has for a list:
table, wide, json, yaml, name, jsonpath=, jsonpath-as-json=, custom-columns=, with
`--no-headers` and `--sort-by`. All functions are pure (text out).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

if TYPE_CHECKING:
    from tabulate import TableFormat

NONE = "<none>"


class TemplateError(ValueError):
    """A `-o jsonpath=`, `custom-columns=` or `--sort-by` that cannot be used."""


def kubectl_table_format() -> "TableFormat":
    """kubectl's table: no borders, no rule under the header, three spaces between columns."""
    from tabulate import DataRow, TableFormat

    row = DataRow("", "   ", "")
    return TableFormat(lineabove=None, linebelowheader=None, linebetweenrows=None, linebelow=None,
                       headerrow=row, datarow=row, padding=0, with_header_hide=None)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], no_headers: bool = False,
          widths: Sequence[int] = ()) -> str:
    """kubectl-style table text (with a trailing newline); empty cells print `<none>`.

    `widths`: minimum column widths (a watch keeps the columns of its first table)."""
    from tabulate import tabulate

    cells = [[NONE if c is None or c == "" else str(c) for c in row] for row in rows]
    head = [str(h) for h in headers]
    if widths:
        head = [h.ljust(w) if i < len(head) - 1 else h for i, (h, w) in enumerate(zip(head, widths))] \
            + head[len(widths):]
    body = cells if no_headers else [head, *cells]
    if not body:
        return ""
    # The header goes in as a row: tabulate pads a real header row by two extra spaces.
    text = tabulate(body, tablefmt=kubectl_table_format(), disable_numparse=True, stralign="left",
                    preserve_whitespace=True)
    return "\n".join(line.rstrip() for line in text.split("\n")) + "\n"


def column_widths(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[int]:
    widths = [len(str(h)) for h in headers]
    for row in rows:
        for i, c in enumerate(row):
            widths[i] = max(widths[i], len(NONE if c is None or c == "" else str(c)))
    return widths


def to_json(data: Any) -> str:
    """`json.dumps(data, indent=2)` and a newline. Built from batches of the encoder's pieces:
    json.dumps keeps every piece (millions of small strings for a big cluster, several
    times the size of the text) until it joins them."""
    parts: list[str] = []
    batch: list[str] = []
    for piece in json.JSONEncoder(indent=2).iterencode(data):
        batch.append(piece)
        if len(batch) >= 4096:
            parts.append("".join(batch))
            batch.clear()
    parts.append("".join(batch))
    parts.append("\n")
    return "".join(parts)


def to_yaml(data: Any) -> str:
    import yaml

    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    return str(yaml.dump(data, Dumper=dumper, sort_keys=False, default_flow_style=False))


def render(data: Any, fmt: str) -> str:
    if fmt == "json":
        return to_json(data)
    if fmt == "yaml":
        return to_yaml(data)
    raise ValueError(f"render() handles json and yaml, not {fmt!r}")


def yes_no(flag: bool) -> str:
    return "true" if flag else "false"


# --- lists: every -o format kubectl has for them ---------------------------------------------

TEMPLATE_KINDS = ("jsonpath", "jsonpath-as-json", "custom-columns")


def split_format(output: str) -> tuple[str, str]:
    """`jsonpath={.x}` → ("jsonpath", "{.x}"); `json` → ("json", "")."""
    for kind in TEMPLATE_KINDS:
        if output.startswith(kind + "="):
            return kind, output[len(kind) + 1:]
    return output, ""


def check_template(kind: str, template: str) -> None:
    """Raise TemplateError when a `-o` template cannot be parsed."""
    if kind in ("jsonpath", "jsonpath-as-json"):
        _compile(template)
    elif kind == "custom-columns":
        custom_columns(template)


def _compile(template: str) -> Any:
    from kubectl_proxyctl import jsonpath

    if not template:
        raise TemplateError("the template is empty")
    try:
        return jsonpath.parse(template)
    except jsonpath.JSONPathError as exc:
        raise TemplateError(str(exc)) from None


def custom_columns(spec: str) -> list[tuple[str, Any]]:
    """`NAME:.service,IP:{.ip}` → [(header, compiled template)], as kubectl parses it."""
    from kubectl_proxyctl import jsonpath

    columns = []
    for part in spec.split(","):
        header, sep, expr = part.partition(":")
        if not sep or not header or not expr.strip():
            raise TemplateError(f"custom-columns: {part!r} is not HEADER:JSONPATH (e.g. IP:.ip)")
        columns.append((header, _compile(jsonpath.relaxed(expr))))
    if not columns:
        raise TemplateError("custom-columns: no columns (e.g. custom-columns=SERVICE:.service,IP:.ip)")
    return columns


def render_template(kind: str, template: str, data: Any) -> str:
    """`-o jsonpath=…` (with a final newline, as kubectl ends its output) or jsonpath-as-json."""
    from kubectl_proxyctl import jsonpath

    nodes = _compile(template)
    if kind == "jsonpath-as-json":
        return jsonpath.execute_as_json(nodes, data)
    text = jsonpath.execute(nodes, data)
    return text if text.endswith("\n") else text + "\n"


def column_text(found: Sequence[Any]) -> str:
    """A custom column's cell: the values joined by commas, `<none>` when there is none."""
    from kubectl_proxyctl import jsonpath

    shown = [v for v in found if v is not None]
    if not shown:
        return NONE
    return ",".join(jsonpath.text_of(v) for v in shown)


_CHUNK = re.compile(r"(\d+)")


def natural_key(text: str) -> tuple[Any, ...]:
    """kubectl sorts strings naturally: `node2` before `node10`, `10.0.0.9` before `10.0.0.10`."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in _CHUNK.split(text) if p)


def _sort_value(found: Sequence[Any]) -> tuple[Any, ...]:
    if not found or found[0] is None:
        return (0,)
    v = found[0]
    if isinstance(v, bool):
        return (1, v)
    if isinstance(v, (int, float)):
        return (2, v)
    if isinstance(v, str):
        return (3, natural_key(v))
    return (4, json.dumps(v, sort_keys=True))


@dataclass
class Listing:
    """What a list command shows, independent of the format.

    `rows` are the table's rows (for the chosen width), each with the record `--sort-by`
    and `custom-columns` read; `records` are what `-o json|yaml` print (and what
    `jsonpath` sees as `{.items}`). `document` builds the -o json document from the sorted
    records when it is not the list itself; `name` gives a record's `-o name`."""

    headers: list[str]
    rows: list[tuple[list[Any], dict[str, Any]]]
    records: list[dict[str, Any]]
    document: Callable[[list[dict[str, Any]]], Any] | None = None
    name: Callable[[dict[str, Any]], str] | None = None
    columns: dict[str, str] = field(default_factory=dict)  # header -> the record's JSONPath (--sort-by NAME)
    footer: str = ""  # printed under a table (e.g. a summary line)
    widths: list[int] = field(default_factory=list)

    def jsonpath_root(self, records: list[dict[str, Any]]) -> Any:
        if self.document is not None:
            return self.document(records)
        return {"kind": "List", "items": records}


def sort_path(spec: str, columns: dict[str, str]) -> str:
    """The JSONPath `--sort-by` means: a column name of the table (case-insensitive: NODE)
    stands for the record field it shows; anything else is a JSONPath into the record."""
    wanted = spec.strip()
    by_name = {h.upper(): path for h, path in columns.items()}
    if wanted.upper() in by_name and not wanted.startswith((".", "{", "[", "$", "@")):
        return by_name[wanted.upper()]
    if re.fullmatch(r"[A-Z][A-Z0-9_-]*", wanted):
        known = ", ".join(columns) or "none"
        raise TemplateError(f"--sort-by {spec!r}: no such column (columns: {known}; or give a JSONPath "
                            "like .name)")
    return wanted


def sorted_by(spec: str, columns: dict[str, str], items: Sequence[Any],
              record: Callable[[Any], dict[str, Any]] = lambda r: r) -> list[Any]:
    """`items` sorted by `--sort-by spec` (stable; missing values first, strings naturally)."""
    from kubectl_proxyctl import jsonpath

    path = sort_path(spec, columns)
    try:
        nodes = jsonpath.parse(jsonpath.relaxed(path))
    except jsonpath.JSONPathError as exc:
        raise TemplateError(f"--sort-by {spec!r}: {exc}") from None
    keys = [_sort_value(jsonpath.values(nodes, record(item))) for item in items]
    if len({k[0] for k in keys if k[0] != 0}) > 1:
        raise TemplateError(f"--sort-by {spec!r}: the field holds values of different types")
    return [item for _, item in sorted(zip(keys, items), key=lambda pair: pair[0])]


def render_listing(listing: Listing, output: str, no_headers: bool = False, sort_by: str | None = None) -> str:
    """The listing in `output` (table, wide, json, yaml, name, or a template)."""
    rows = list(listing.rows)
    records = list(listing.records)
    if sort_by:
        rows = sorted_by(sort_by, listing.columns, rows, lambda row: row[1])
        records = sorted_by(sort_by, listing.columns, records)
    kind, template = split_format(output)
    if kind in ("json", "yaml"):
        return render(listing.document(records) if listing.document else records, kind)
    if kind in ("jsonpath", "jsonpath-as-json"):
        return render_template(kind, template, listing.jsonpath_root(records))
    if kind == "name":
        if listing.name is None:
            raise TemplateError("-o name is not available here")
        return "".join(f"{n}\n" for n in dict.fromkeys(listing.name(r) for r in records))
    if kind == "custom-columns":
        from kubectl_proxyctl import jsonpath

        columns = custom_columns(template)
        body = [[column_text(jsonpath.values(nodes, rec)) for _, nodes in columns] for rec in records]
        return table([h for h, _ in columns], body, no_headers=no_headers)
    text = table(listing.headers, [cells for cells, _ in rows], no_headers=no_headers, widths=listing.widths)
    return text + listing.footer


def render_document(data: Any, output: str) -> str:
    """One document (not a list) in json, yaml, jsonpath= or jsonpath-as-json=."""
    kind, template = split_format(output)
    if kind in ("jsonpath", "jsonpath-as-json"):
        return render_template(kind, template, data)
    return render(data, kind)
