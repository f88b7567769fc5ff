"""Rendering rows and records the way kubectl does: tables, JSON, YAML.

Tables follow kubectl's printer: upper-case headers, columns left-aligned and separated by
three spaces, no borders, `<none>` for empty cells. All functions are pure (text out).
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Sequence


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """kubectl-style table text (with a trailing newline); empty cells print `<none>`."""
    cells = [[str(h) for h in headers]]
    for row in rows:
        cells.append(["<none>" if c is None or c == "" else str(c) for c in row])
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for r in cells:
        parts = [c.ljust(widths[i]) for i, c in enumerate(r[:-1])] + [r[-1]]
        lines.append("   ".join(parts).rstrip())
    return "\n".join(lines) + "\n"


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
