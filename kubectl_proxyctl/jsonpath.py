"""kubectl's JSONPath templates (`-o jsonpath=…`, `custom-columns`, `--sort-by`), pure Python.

The dialect is client-go's `util/jsonpath`, not the JSONPath RFC: a template is text with
actions in braces, `{.items[*].ip}`; each action prints its results separated by spaces.
Supported inside an action:

    .name  ['name']  ["name"]      a field (missing fields print nothing, as kubectl's
                                   --allow-missing-template-keys=true does)
    ..name                         every `name` below, at any depth
    .*  [*]                        every value of a map, every item of a list
    [0]  [-1]  [1:3]  [::2]  [0,2] items by index, slice and union
    [?(@.ready==true)]             a filter: ==, !=, <, <=, >, >= against a string, number,
                                   true/false/null or another path; `[?(@.node)]` = exists
    $  @                           the root, the current item
    range EXPR … end               repeat the enclosed template for every result of EXPR
    "text"                         a string literal with Go escapes (`{"\\n"}`, `{"\\t"}`)

Printing follows kubectl: strings as they are, numbers and booleans as JSON, null as
`null`, maps and lists as compact JSON (indented JSON, in a list, with jsonpath-as-json).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Iterator, Sequence, Union


class JSONPathError(ValueError):
    """A template that cannot be parsed."""


# --- the parsed form -------------------------------------------------------------------------

@dataclass(frozen=True)
class Field:
    name: str  # "*": every value


@dataclass(frozen=True)
class Recursive:
    pass


@dataclass(frozen=True)
class Index:
    items: tuple[Union[int, tuple[int | None, int | None, int | None], None], ...]  # None: [*]


@dataclass(frozen=True)
class Filter:
    left: "Path | Literal"
    op: str  # "" = exists
    right: "Path | Literal | None"


@dataclass(frozen=True)
class Literal:
    value: Any


@dataclass(frozen=True)
class Path:
    root: str  # "$" or "@"
    steps: tuple[Union[Field, Recursive, Index, Filter], ...]


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class Action:
    expr: "Path | Literal"


@dataclass(frozen=True)
class Range:
    expr: Path
    body: tuple["Node", ...]


Node = Union[Text, Action, Range]


# --- parsing ---------------------------------------------------------------------------------

_IDENT = re.compile(r"[A-Za-z0-9_\-/$:]+")  # kubectl field names may hold '-', '/', ':'
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
_ESCAPE = re.compile(r"\\(u[0-9a-fA-F]{4}|x[0-9a-fA-F]{2}|.)", re.S)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'", "a": "\a", "b": "\b",
            "f": "\f", "v": "\v", "0": "\0"}


def _unescape(m: "re.Match[str]") -> str:
    """Go's string escapes."""
    code = m.group(1)
    if code[0] in "ux" and len(code) > 1:
        return chr(int(code[1:], 16))
    if code in _ESCAPES:
        return _ESCAPES[code]
    raise ValueError(code)


_OPS = ("==", "!=", "<=", ">=", "<", ">")


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def fail(self, message: str) -> JSONPathError:
        return JSONPathError(f"{message} at column {self.pos + 1} of {self.text!r}")

    def peek(self, n: int = 1) -> str:
        return self.text[self.pos:self.pos + n]

    def skip_spaces(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in " \t":
            self.pos += 1

    def string(self) -> str:
        quote = self.text[self.pos]
        end = self.pos + 1
        while end < len(self.text) and self.text[end] != quote:
            end += 2 if self.text[end] == "\\" else 1
        if end >= len(self.text):
            raise self.fail("unterminated string")
        raw = self.text[self.pos + 1:end]
        self.pos = end + 1
        if quote == "'":
            return raw.replace("\\'", "'")
        try:
            return _ESCAPE.sub(_unescape, raw)
        except ValueError:
            raise self.fail(f"bad escape in string {raw!r}") from None

    def path(self, root: str = "@") -> Path:
        """Steps from the current position until something that is not a step."""
        if self.peek() in ("$", "@"):
            root = self.peek()
            self.pos += 1
        steps: list[Union[Field, Recursive, Index, Filter]] = []
        while self.pos < len(self.text):
            c = self.peek()
            if self.peek(2) == "..":
                self.pos += 2
                steps.append(Recursive())
                if self.peek() == "[":
                    continue
                steps.append(self.field())
            elif c == ".":
                self.pos += 1
                if self.pos >= len(self.text) or self.peek() in "}":
                    break  # `{.}`: the current object
                steps.append(self.field())
            elif c == "[":
                steps.append(self.bracket())
            else:
                break
        return Path(root, tuple(steps))

    def field(self) -> Field:
        if self.peek() == "*":
            self.pos += 1
            return Field("*")
        m = _IDENT.match(self.text, self.pos)
        if not m:
            raise self.fail("expected a field name")
        self.pos = m.end()
        return Field(m.group())

    def bracket(self) -> Union[Field, Index, Filter]:
        self.pos += 1  # [
        self.skip_spaces()
        if self.peek(2) == "?(":
            self.pos += 2
            flt = self.filter()
            self.skip_spaces()
            if self.peek(2) != ")]":
                raise self.fail("expected ')]' to end the filter")
            self.pos += 2
            return flt
        if self.peek() in ("'", '"'):
            name = self.string()
            self.skip_spaces()
            if self.peek() != "]":
                raise self.fail("expected ']'")
            self.pos += 1
            return Field(name)
        end = self.text.find("]", self.pos)
        if end < 0:
            raise self.fail("unterminated '['")
        body = self.text[self.pos:end].strip()
        self.pos = end + 1
        if body == "*":
            return Index((None,))
        items: list[Union[int, tuple[int | None, int | None, int | None], None]] = []
        for part in body.split(","):
            part = part.strip()
            try:
                if ":" in part:
                    bits = [b.strip() for b in part.split(":")]
                    if len(bits) > 3:
                        raise ValueError
                    nums = [int(b) if b else None for b in bits] + [None] * (3 - len(bits))
                    if nums[2] == 0:
                        raise self.fail("a slice step cannot be 0")
                    items.append((nums[0], nums[1], nums[2]))
                else:
                    items.append(int(part))
            except ValueError:
                raise self.fail(f"bad index {part!r}") from None
        return Index(tuple(items))

    def operand(self) -> "Path | Literal":
        self.skip_spaces()
        c = self.peek()
        if c in ("@", "$", "."):
            return self.path()
        if c in ("'", '"'):
            return Literal(self.string())
        m = _NUMBER.match(self.text, self.pos)
        if m:
            self.pos = m.end()
            text = m.group()
            return Literal(float(text) if any(ch in text for ch in ".eE") else int(text))
        for word, value in (("true", True), ("false", False), ("null", None), ("nil", None)):
            if self.text.startswith(word, self.pos):
                self.pos += len(word)
                return Literal(value)
        raise self.fail("expected a path or a value")

    def filter(self) -> Filter:
        left = self.operand()
        self.skip_spaces()
        for op in _OPS:
            if self.text.startswith(op, self.pos):
                self.pos += len(op)
                return Filter(left, op, self.operand())
        return Filter(left, "", None)

    def action(self) -> "Path | Literal | tuple[str, Path | None]":
        """One `{…}`: a path, a literal, or ("range", path) / ("end", None)."""
        self.skip_spaces()
        if self.text.startswith("range", self.pos) and not _IDENT.match(self.text, self.pos + 5):
            self.pos += 5
            self.skip_spaces()
            return ("range", self.path())
        if self.text.startswith("end", self.pos) and not _IDENT.match(self.text, self.pos + 3):
            self.pos += 3
            return ("end", None)
        if self.peek() in ("'", '"'):
            return Literal(self.string())
        return self.path()

    def template(self) -> tuple[Node, ...]:
        stack: list[list[Node]] = [[]]
        ranges: list[Path] = []
        while self.pos < len(self.text):
            start = self.text.find("{", self.pos)
            if start < 0:
                stack[-1].append(Text(self.text[self.pos:]))
                break
            if start > self.pos:
                stack[-1].append(Text(self.text[self.pos:start]))
            self.pos = start + 1
            got = self.action()
            self.skip_spaces()
            if self.peek() != "}":
                raise self.fail("expected '}'")
            self.pos += 1
            if isinstance(got, tuple):
                word, expr = got
                if word == "range":
                    assert expr is not None
                    ranges.append(expr)
                    stack.append([])
                else:
                    if not ranges:
                        raise self.fail("'end' without 'range'")
                    body = stack.pop()
                    stack[-1].append(Range(ranges.pop(), tuple(body)))
            else:
                stack[-1].append(Action(got))
        if ranges:
            raise self.fail("'range' without 'end'")
        return tuple(stack[0])


def parse(template: str) -> tuple[Node, ...]:
    """Parse a template (`{.items[*].ip}`, `{range .items[*]}{.ip}{"\\n"}{end}`)."""
    return _Parser(template).template()


def relaxed(expression: str) -> str:
    """kubectl's relaxed form for custom-columns and --sort-by: `.a.b`, `a.b` and `{.a.b}`
    are the same template."""
    text = expression.strip()
    if text.startswith("{") and text.endswith("}"):
        return text
    if not text.startswith((".", "[", "$", "@")):
        text = "." + text
    return "{" + text + "}"


# --- evaluation ------------------------------------------------------------------------------

_MISSING = object()


def _children(value: Any) -> Iterator[Any]:
    if isinstance(value, dict):
        yield from (value[k] for k in sorted(value, key=str))
    elif isinstance(value, list):
        yield from value


def _descendants(value: Any) -> Iterator[Any]:
    yield value
    for child in _children(value):
        yield from _descendants(child)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if _number(a) and _number(b):
        return float(a) == float(b)
    return bool(a == b)


def _compare(left: Any, op: str, right: Any) -> bool:
    if op in ("==", "!="):
        return _same(left, right) == (op == "==")
    if _number(left) and _number(right):
        a, b = float(left), float(right)
    elif isinstance(left, str) and isinstance(right, str):
        a, b = left, right  # type: ignore[assignment]
    else:
        return False
    return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]


def _operand(operand: "Path | Literal", current: Any, root: Any) -> list[Any]:
    if isinstance(operand, Literal):
        return [operand.value]
    return evaluate(operand, current, root)


def _step(values: list[Any], step: Union[Field, Recursive, Index, Filter], root: Any) -> list[Any]:
    out: list[Any] = []
    if isinstance(step, Recursive):
        for v in values:
            out.extend(_descendants(v))
        return out
    if isinstance(step, Field):
        for v in values:
            if step.name == "*":
                out.extend(_children(v))
            elif isinstance(v, dict) and step.name in v:
                out.append(v[step.name])
        return out
    if isinstance(step, Index):
        for v in values:
            if not isinstance(v, list):
                if step.items == (None,) and isinstance(v, dict):
                    out.extend(_children(v))
                continue
            for item in step.items:
                if item is None:
                    out.extend(v)
                elif isinstance(item, int):
                    if -len(v) <= item < len(v):
                        out.append(v[item])
                else:
                    out.extend(v[slice(*item)])
        return out
    for v in values:  # Filter
        for item in (v if isinstance(v, list) else []):
            lefts = _operand(step.left, item, root)
            if step.op == "":
                if any(x not in (None, False, "", [], {}) for x in lefts):
                    out.append(item)
                continue
            assert step.right is not None
            rights = _operand(step.right, item, root)
            if any(_compare(a, step.op, b) for a in lefts for b in rights):
                out.append(item)
    return out


def evaluate(path: Path, current: Any, root: Any) -> list[Any]:
    """The values `path` selects (none when a field is missing)."""
    values = [root if path.root == "$" else current]
    for step in path.steps:
        values = _step(values, step, root)
        if not values:
            break
    return values


def text_of(value: Any) -> str:
    """How kubectl prints one result: strings as they are, the rest as compact JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _results(expr: "Path | Literal", current: Any, root: Any) -> list[Any]:
    return [expr.value] if isinstance(expr, Literal) else evaluate(expr, current, root)


def _render(nodes: Sequence[Node], current: Any, root: Any, out: list[str], values: list[Any] | None) -> None:
    for node in nodes:
        if isinstance(node, Text):
            if values is None:
                out.append(node.text)
        elif isinstance(node, Action):
            found = _results(node.expr, current, root)
            if values is not None:
                if not isinstance(node.expr, Literal):
                    values.extend(found)
            else:
                out.append(" ".join(text_of(v) for v in found))
        else:
            for item in evaluate(node.expr, current, root):
                _render(node.body, item, root, out, values)


def execute(nodes: Sequence[Node], data: Any) -> str:
    """The template's text for `data`."""
    out: list[str] = []
    _render(nodes, data, data, out, None)
    return "".join(out)


def execute_as_json(nodes: Sequence[Node], data: Any) -> str:
    """`jsonpath-as-json`: every result, in one indented JSON list."""
    values: list[Any] = []
    _render(nodes, data, data, [], values)
    return json.dumps(values, indent=4, ensure_ascii=False) + "\n"


def values(nodes: Sequence[Node], data: Any) -> list[Any]:
    """Every result of the template's actions (custom-columns, --sort-by)."""
    found: list[Any] = []
    _render(nodes, data, data, [], found)
    return found
