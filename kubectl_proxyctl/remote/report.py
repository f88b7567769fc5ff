"""Showing a judged probe matrix: kubectl-style tables (optionally coloured) and records
for `-o json|yaml`. Pure: text and plain data out.

Tables: one per section, rows = from, columns = to. A cell shows what was seen (`open`, an
HTTP status and the pod that answered, `closed`, `timeout`, `sent` for UDP without a
reply) and the latency; a cell that misses its expectation is marked `*` (and red when
coloured). `-` marks a pair that is not probed (this machine's own loopback). The wide
form adds a list of every cell with its expectation and the reason for it.
"""

from __future__ import annotations

from typing import Any, Sequence

from kubectl_proxyctl.remote.matrix import Cell, MatrixPlan, Summary, Verdict
from kubectl_proxyctl.remote.probe import Mode, Seen

_GREEN, _RED, _YELLOW, _BOLD, _RESET = "\033[32m", "\033[31m", "\033[33m", "\033[1m", "\033[0m"
_COLOR = {Verdict.OK: _GREEN, Verdict.SSH_ERROR: _YELLOW}
CORNER = "FROM \\ TO"


def observed_text(cell: Cell) -> str:
    """What a cell shows, without the failure mark."""
    seen = cell.observation
    if cell.verdict == Verdict.SSH_ERROR:
        return "ssh-error"
    if seen.seen == Seen.OPEN and seen.http_status is not None:
        text = str(seen.http_status)
        if seen.local_endpoints is not None:
            text += f" local={seen.local_endpoints}"
        if seen.backend:
            text += f" {seen.backend}"
    else:
        text = str(seen.seen)
        if seen.seen == Seen.OPEN and seen.backend:
            text += f" {seen.backend}"
    if seen.latency_ms is not None and seen.seen in (Seen.OPEN, Seen.CLOSED):
        text += f" {seen.latency_ms:.1f}ms"
    return text


def expected_text(cell: Cell) -> str:
    want = cell.expectation
    if want.http_status is not None:
        return f"{want.http_status} local={want.local_endpoints}"
    return str(want.want)


def detail_text(cell: Cell, udp_reply: bool) -> str:
    if cell.observation.seen == Seen.SENT and not udp_reply:
        return "sent, no reply expected"
    return cell.observation.detail


def _paint(text: str, cell: Cell | None, color: bool) -> str:
    if not color or cell is None:
        return text
    return f"{_COLOR.get(cell.verdict, _RED)}{text}{_RESET}"


def _grid(headers: Sequence[str], rows: Sequence[Sequence[tuple[str, Cell | None]]], color: bool) -> str:
    """A kubectl-style table (output.table: tabulate, which measures cells without their
    colour codes) of cells painted by their verdict."""
    from kubectl_proxyctl.output import table

    return table(headers, [[_paint(text, cell, color) for text, cell in row] for row in rows])


def table(plan: MatrixPlan, judged: Sequence[Cell], summary: Summary, color: bool = False, wide: bool = False) -> str:
    by_key = {(c.section, c.source, c.column.label): c for c in judged}
    out: list[str] = []
    for i, section in enumerate(plan.sections):
        title = section.title
        if section.policy:
            title += f"   (externalTrafficPolicy={section.policy})"
        if section.mode == Mode.HTTP:
            title += f"   GET {section.path}"
        out.append(f"{_BOLD}{title}{_RESET}\n" if color else f"{title}\n")
        headers = [CORNER] + [c.label for c in section.columns]
        rows = []
        for source in plan.sources:
            row: list[tuple[str, Cell | None]] = [(source, None)]
            for column in section.columns:
                cell = by_key.get((i, source, column.label))
                if cell is None:
                    row.append(("-", None))
                else:
                    mark = "" if cell.verdict == Verdict.OK else "*"
                    row.append((mark + observed_text(cell), cell))
            rows.append(row)
        out.append(_grid(headers, rows, color))
        if wide:
            out.append("\n" + _cell_list([c for c in judged if c.section == i], color, plan.udp_reply))
        out.append("\n")
    for note in plan.notes:
        out.append(f"note: {note}\n")
    if not plan.udp_reply and any(c.observation.seen == Seen.SENT for c in judged):
        out.append("note: sent = UDP datagram sent, no reply expected (--expect-udp-reply when the backend "
                   "answers every datagram)\n")
    headline = summary.headline(plan.basis)
    out.append(f"{_GREEN if summary.ok else _RED}{headline}{_RESET}\n" if color else f"{headline}\n")
    for finding in summary.findings:
        out.append(f"  {finding.message}\n")
    if not summary.ok:
        out.append("  (* = the cell misses its expectation; -o wide lists every cell with the reason)\n")
    return "".join(out)


def _cell_list(cells: Sequence[Cell], color: bool, udp_reply: bool) -> str:
    headers = ["FROM", "TO", "ADDRESS", "EXPECTED", "OBSERVED", "VERDICT", "REASON", "DETAIL"]
    rows = []
    for c in cells:
        address = f"{c.column.target()}:{c.column.port}"
        rows.append([(c.source, None), (c.column.label, None), (address, None), (expected_text(c), None),
                     (observed_text(c), None), (str(c.verdict), c), (c.expectation.reason, None),
                     (detail_text(c, udp_reply) or "-", None)])
    return _grid(headers, rows, color)


def records(plan: MatrixPlan, judged: Sequence[Cell], summary: Summary) -> dict[str, Any]:
    """Plain data for `-o json|yaml`."""
    sections = []
    for i, section in enumerate(plan.sections):
        cells = []
        for c in judged:
            if c.section != i:
                continue
            seen, want = c.observation, c.expectation
            cells.append({
                "from": c.source,
                "to": c.column.label,
                "kind": str(c.column.kind),
                "address": c.column.target(),
                "port": c.column.port,
                "expected": str(want.want),
                "expected_http_status": want.http_status,
                "expected_local_endpoints": want.local_endpoints,
                "reason": want.reason,
                "observed": str(seen.seen),
                "http_status": seen.http_status,
                "backend": seen.backend or None,
                "local_endpoints": seen.local_endpoints,
                "latency_ms": round(seen.latency_ms, 3) if seen.latency_ms is not None else None,
                "verdict": str(c.verdict),
                "detail": detail_text(c, plan.udp_reply) or None,
            })
        sections.append({
            "title": section.title,
            "service": section.service or None,
            "protocol": section.protocol,
            "mode": str(section.mode),
            "path": section.path if section.mode == Mode.HTTP else None,
            "external_traffic_policy": section.policy or None,
            "health_check": section.health_check,
            "cells": cells,
        })
    return {
        "expectations": plan.basis,
        "notes": list(plan.notes),
        "nodes": [{"name": n.name, "address": n.address, "ssh_host": n.ssh_host} for n in plan.nodes],
        "sections": sections,
        "summary": {
            "ok": summary.ok,
            "cells": summary.total,
            "failed": summary.failed,
            "headline": summary.headline(plan.basis),
            "findings": [{"node": f.node, "cells": f.cells, "message": f.message} for f in summary.findings],
        },
    }
