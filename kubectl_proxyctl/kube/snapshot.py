"""Reading cluster objects from files: what `kubectl get ... -o yaml|json` writes.

Accepted: a YAML stream (documents separated by `---`), one JSON document, a `v1 List`
(what `kubectl get svc,endpointslices -A -o yaml` prints), typed lists such as
`ServiceList` whose items carry no `kind`, or any nesting of those. `-` reads stdin.
A file that cannot be read or parsed raises ConfigError with the position of the problem:
not UTF-8 text, invalid YAML/JSON, or a List cut short — kubectl writes a List's `kind: List`
after its items, so `items:` without a `kind` is the mark of a truncated file.

Big files are read as a stream (`iter_objects`): a `kubectl get -o yaml` List is cut at its
items (the `- ` lines at column 0 after `items:`) and each item is parsed, flattened and
handed on before the next one is parsed, so the parsed tree of the whole file never exists
(a 50 MB List is 600 MB of Python dicts); JSON is read item by item with the C decoder's
`raw_decode` the same way. What comes out is exactly what parsing the whole text gives: the
same objects in the same order, and the same error messages. Anything the cutter is unsure
of (directives, `...`, anchors spanning items, an item that does not parse on its own) goes
to the whole-text path; errors are found with PyYAML's event parser (positions without
building a tree) before that path is taken.
"""

from __future__ import annotations

import contextlib
import gc
import json
import re
import sys
from typing import Any, Callable, Iterator

from kubectl_proxyctl.errors import ConfigError

Obj = dict[str, Any]


class _CutShort(Exception):
    """A List without its `kind` (the file ends inside it); parse_objects says where."""


class _NotAnObject(Exception):
    """A document that is neither an object nor a List; parse_objects names the source."""


def _flatten(doc: Any, kind_hint: str | None = None) -> Iterator[Obj]:
    if doc is None:
        return
    if isinstance(doc, list):
        for item in doc:
            yield from _flatten(item, kind_hint)
        return
    if not isinstance(doc, dict):
        raise _NotAnObject(f"expected a Kubernetes object or a List, found {type(doc).__name__}: {str(doc)[:60]!r}")
    kind = doc.get("kind")
    if kind_hint is None:
        # kubectl writes `apiVersion` first, then an object's `kind`, or a List's `items`
        # and after them its `kind: List`: anything else at the top is a file cut short
        if "items" in doc and not (isinstance(kind, str) and kind.endswith("List")):
            raise _CutShort("a List's `items` are not followed by its `kind: List`, which kubectl writes after them")
        if kind is None and "apiVersion" in doc:
            raise _CutShort("a document has `apiVersion` but no `kind`, which kubectl writes next")
    if isinstance(kind, str) and kind.endswith("List") and isinstance(doc.get("items"), list):
        item_kind = kind[: -len("List")] or None
        for item in doc["items"]:
            yield from _flatten(item, item_kind)
        return
    if kind is None and kind_hint:
        doc = dict(doc, kind=kind_hint)
    yield doc


def parse_objects(text: str, source: str = "<input>") -> list[Obj]:
    """Parse YAML or JSON text into a flat list of objects."""
    with paused_gc():
        return list(iter_parsed(text, source))


def iter_parsed(text: str, source: str = "<input>") -> Iterator[Obj]:
    """The objects of YAML or JSON text, one at a time (see the module docstring).

    The same objects, in the same order, as parsing the whole text; an error (ConfigError)
    may come after some objects were yielded: a caller that must not act on a bad file
    holds back what it does with them until the iterator is exhausted."""
    try:
        yield from _stream(text, source)
    except _CutShort as exc:
        raise ConfigError(f"{source}:{_cut_line(text)}: the file looks cut short: {exc}; save it again") from None
    except _NotAnObject as exc:
        raise ConfigError(f"{source}: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply to be Kubernetes objects") from None


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """No cyclic garbage collection while a big file's objects are made: parsing creates
    millions of containers and no cycles, and each collection would walk all of them
    (it doubles the time of a 50 MB file)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


# --- streaming ---------------------------------------------------------------------------

class _Unsure(Exception):
    """The streaming path cannot tell: the whole-text path decides."""


def _stream(text: str, source: str) -> Iterator[Obj]:
    """What `_flatten` yields for every document of `_parse_objects(text)`, streamed."""
    stripped_start = _first_char(text)
    if stripped_start in ("{", "["):
        yield from _stream_json(text, source)
        return
    plan = _yaml_plan(text)
    if plan is None:
        yield from _parse_objects(text, source)
        return
    yield from _stream_yaml(text, source, plan)


def _first_char(text: str) -> str:
    """The first character of `text.lstrip()`, without copying a big text."""
    m = _NON_SPACE.search(text)
    return m.group() if m else ""


_NON_SPACE = re.compile(r"\S")


# YAML: a document is cut at its top-level lines (column 0, not a comment): `---` separates
# documents, `items:` followed by `- ` lines is a List's items, one item per `- ` line.
_TOP_LINE = re.compile(r"^[^ \t\r\n#]", re.M)
_ITEMS_KEY = re.compile(r"items:[ \t]*(#.*)?\r?$")
_DOC_START = re.compile(r"---[ \t]*\r?$")


class _Doc:
    """One document of a YAML stream: `whole` (start, end), or a List cut into its `rest`
    (the text without the items) and the spans of its items."""

    __slots__ = ("whole", "rest", "items")

    def __init__(self, whole: tuple[int, int] | None = None, rest: str = "",
                 items: list[tuple[int, int]] | None = None) -> None:
        self.whole = whole
        self.rest = rest
        self.items = items or []


def _yaml_plan(text: str) -> list[_Doc] | None:
    """The documents of a YAML stream and the items of its Lists, or None when the text has
    something the cutter does not handle (directives, `...`, text after `---`)."""
    docs: list[_Doc] = []
    doc_start = 0
    lines: list[tuple[int, str]] = []  # (position, first characters) of the top-level lines

    def close(end: int) -> None:
        docs.append(_plan_doc(text, doc_start, end, lines))

    for m in _TOP_LINE.finditer(text):
        pos = m.start()
        head = text[pos:pos + 3]
        if head[0] == "-":
            if head == "---":
                line_end = text.find("\n", pos)
                if not _DOC_START.match(text, pos, len(text) if line_end < 0 else line_end + 1):
                    return None  # `--- value`, `--- !tag`, `----`: the whole-text path decides
                close(pos)
                doc_start = len(text) if line_end < 0 else line_end + 1
                lines = []
                continue
            if len(head) > 1 and head[1] not in " \t\r\n":
                head = "x"  # `-1: a`, `-foo`: a key, not an item
        elif head == "..." or head[0] in "%&*!|>'\"{[?@`":
            return None  # directives, document ends, anchors, tags, flow or block scalars at the top
        lines.append((pos, head[0]))
    close(len(text))
    return docs


def _plan_doc(text: str, start: int, end: int, lines: list[tuple[int, str]]) -> _Doc:
    items_at = -1
    for n, (pos, head) in enumerate(lines):
        if head == "-" or not _ITEMS_KEY.match(text, pos, _line_end(text, pos)):
            continue
        items_at = n
        break
    entries: list[int] = []
    if items_at >= 0:
        n = items_at + 1
        while n < len(lines) and lines[n][1] == "-":
            entries.append(lines[n][0])
            n += 1
        if entries and all(head != "-" for _, head in lines[n:]) and all(
                head != "-" for _, head in lines[:items_at]):
            block_end = lines[n][0] if n < len(lines) else end
            rest = text[start:lines[items_at][0]] + text[block_end:end]
            spans = [(a, b) for a, b in zip(entries, entries[1:] + [block_end])]
            return _Doc(rest=rest, items=spans)
    return _Doc(whole=(start, end))


def _line_end(text: str, pos: int) -> int:
    end = text.find("\n", pos)
    return len(text) if end < 0 else end + 1


def _yaml_value(text: str) -> Any:
    import yaml_rs

    return yaml_rs.loads(text)


def _stream_yaml(text: str, source: str, plan: list[_Doc]) -> Iterator[Obj]:
    try:
        import yaml_rs  # noqa: F401
    except ImportError:
        yield from _parse_objects(text, source)
        return
    yielded = 0
    problem: Exception | None = None  # a _CutShort or _NotAnObject, raised once all is parsed

    def flattened(doc: Any, hint: str | None = None, top: bool = True) -> Iterator[Obj]:
        nonlocal problem, yielded
        if problem is not None:
            return
        try:
            for obj in (_flatten(doc) if top else _flatten(doc, hint)):
                yielded += 1
                yield obj
        except (_CutShort, _NotAnObject) as exc:
            problem = exc

    try:
        for doc in plan:
            if doc.whole is not None:
                a, b = doc.whole
                value = _yaml_value(text[a:b]) if text[a:b].strip() else None
                if value is None:
                    continue
                yield from flattened(value)
                continue
            rest = _yaml_value(doc.rest) if doc.rest.strip() else {}
            if not isinstance(rest, dict) or "items" in rest:
                raise _Unsure
            kind = rest.get("kind")
            hint: str | None = None
            if problem is None:
                if not (isinstance(kind, str) and kind.endswith("List")):
                    # _flatten's check, made before the items are read
                    problem = _CutShort("a List's `items` are not followed by its `kind: List`, "
                                        "which kubectl writes after them")
                else:
                    hint = kind[: -len("List")] or None
            for a, b in doc.items:
                value = _yaml_value(text[a:b])
                if not (isinstance(value, list) and len(value) == 1):
                    raise _Unsure
                yield from flattened(value[0], hint, top=False)
    except _Unsure:
        yield from _parse_objects(text, source)[yielded:]
        return
    except Exception as exc:  # noqa: BLE001 (yaml-rs rejected a piece: find the error in the whole text)
        if isinstance(exc, (ConfigError, RecursionError)):
            raise
        _raise_yaml_error(text, source, None)
        # PyYAML reads the whole text: a piece cut where it should not have been
        yield from _parse_objects(text, source)[yielded:]
        return
    if problem is not None:
        raise problem


_JSON = json.JSONDecoder()  # what json.loads uses
_WS = re.compile(r"[ \t\n\r]*")


class _JsonStop(Exception):
    """Not the JSON the streaming reader handles, or not JSON: `_json_fallback` decides."""


def _stream_json(text: str, source: str) -> Iterator[Obj]:
    """A JSON object read member by member, its `items` one at a time (the C decoder's
    `raw_decode`); anything else (a top-level array, two `items`, bad JSON) is handed to the
    whole-text path, which finds the same objects or the same error.

    kubectl writes a List's `kind` after its items, so the kind of typed Lists (whose items
    carry none) is not known while the items are read: items that do not depend on it are
    flattened at once, and from the first one that does on, the items wait for the `kind`."""
    yielded = 0
    pending: list[Any] | None = None  # items waiting for the List's kind
    rest: dict[str, Any] = {}
    items_seen = False
    ws = _WS.match
    decode = _JSON.raw_decode
    try:
        pos = ws(text, 0).end()
        if text[pos:pos + 1] != "{":
            raise _JsonStop
        pos = ws(text, pos + 1).end()
        if text[pos:pos + 1] == "}":
            raise _JsonStop  # an empty object: nothing to stream
        while True:
            if text[pos:pos + 1] != '"':
                raise _JsonStop
            key, pos = decode(text, pos)
            pos = ws(text, pos).end()
            if text[pos:pos + 1] != ":":
                raise _JsonStop
            pos = ws(text, pos + 1).end()
            if key == "items" and text[pos:pos + 1] == "[" and not items_seen and "items" not in rest:
                items_seen = True
                pos = ws(text, pos + 1).end()
                if text[pos:pos + 1] == "]":
                    pos += 1
                else:
                    while True:
                        item, pos = decode(text, pos)
                        if pending is None and _hint_free(item):
                            for obj in _flatten(item, "?"):  # the hint is not used for such items
                                yielded += 1
                                yield obj
                        else:
                            if pending is None:
                                pending = []
                            pending.append(item)
                        pos = ws(text, pos).end()
                        sep = text[pos:pos + 1]
                        if sep == ",":
                            pos = ws(text, pos + 1).end()
                        elif sep == "]":
                            pos += 1
                            break
                        else:
                            raise _JsonStop
            else:
                if key == "items":
                    raise _JsonStop  # `items` twice, or not a list: the whole-text path
                value, pos = decode(text, pos)
                rest[key] = value
            pos = ws(text, pos).end()
            sep = text[pos:pos + 1]
            if sep == ",":
                pos = ws(text, pos + 1).end()
            elif sep == "}":
                break
            else:
                raise _JsonStop
        if ws(text, pos + 1).end() != len(text):
            raise _JsonStop  # "Extra data"
    except (_JsonStop, ValueError, _NotAnObject, _CutShort):
        # not JSON after all, or an item that does not flatten: errors later in the text come
        # first on the whole-text path, which gives the same objects or the same error
        yield from _json_fallback(text, source)[yielded:]
        return
    if not items_seen:
        yield from _flatten(rest)
        return
    kind = rest.get("kind")
    # _flatten's checks of a top-level document, with "items" in it
    if not (isinstance(kind, str) and kind.endswith("List")):
        raise _CutShort("a List's `items` are not followed by its `kind: List`, which kubectl writes after them")
    for item in pending or ():
        yield from _flatten(item, kind[: -len("List")] or None)


def _hint_free(item: Any) -> bool:
    """Whether `_flatten(item, hint)` is the same for every hint: an object with its own
    string `kind` (a List's items are flattened with their List's own kind)."""
    if not isinstance(item, dict):
        return item is None
    kind = item.get("kind")
    if not isinstance(kind, str):
        return False
    # with no hint, _flatten checks for a List cut short: only `items` under a non-List kind
    return not ("items" in item and not kind.endswith("List"))


def _json_fallback(text: str, source: str) -> list[Obj]:
    """The whole-text path for a JSON-looking text the streaming reader stopped at; when
    it is not JSON, the YAML parsers decide (as `_parse_objects` does), PyYAML's event
    parser first so that a broken 50 MB file is not built into a tree to find its error."""
    try:
        return list(_flatten(json.loads(text)))
    except json.JSONDecodeError as exc:
        json_error: Exception = exc
    docs = _fast_yaml(text)
    if docs is None:
        _raise_yaml_error(text, source, json_error)
        docs = _pyyaml_documents(text, source, json_error)
    out: list[Obj] = []
    for doc in docs:
        out.extend(_flatten(doc))
    return out


def _raise_yaml_error(text: str, source: str, json_error: Exception | None) -> None:
    """Raise what `_pyyaml_documents` raises for a text PyYAML's parser rejects (found from
    its events, without building a tree); return when the parser accepts the text."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        for _ in yaml.parse(text, Loader=loader):
            pass
    except yaml.YAMLError as exc:
        _raise_pyyaml(exc, source, json_error)


def _parse_objects(text: str, source: str) -> list[Obj]:
    """The whole-text path: parse everything, then flatten (the reference for `_stream`)."""
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")):
        try:
            return list(_flatten(json.loads(text)))
        except json.JSONDecodeError as exc:
            # Not JSON after all? YAML is a superset; fall through for a YAML error message.
            json_error: Exception | None = exc
    else:
        json_error = None
    docs = _fast_yaml(text)
    if docs is None:
        docs = _pyyaml_documents(text, source, json_error)
    out: list[Obj] = []
    for doc in docs:
        out.extend(_flatten(doc))
    return out


def _cut_line(text: str) -> int:
    """The line where the first List without its `kind` ends (PyYAML knows the positions).

    Read from PyYAML's events, not composed nodes (composing a 50 MB List makes a gigabyte
    of them), with what `yaml.compose_all` would give each top-level MappingNode: its scalar
    keys, the value of its first `kind` key, its end mark; like composing, an alias to an
    unknown anchor ends the search."""
    import yaml

    last = max(1, text.count("\n") + (0 if text.endswith("\n") else 1))
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    depth = 0
    top_is_map = False
    anchors: dict[str, tuple[bool, Any]] = {}  # anchor → (a scalar?, its value)
    keys: set[str] = set()
    kinds: list[Any] = []
    expect_key = True
    key: Any = None

    def node(scalar: bool, value: Any) -> None:
        """A key or a value directly in the top-level mapping."""
        nonlocal expect_key, key
        if expect_key:
            key = value if scalar else None
            if scalar:
                keys.add(value)
        elif key == "kind":
            kinds.append(value if scalar else ())
        expect_key = not expect_key

    try:
        for event in yaml.parse(text, Loader=loader):
            if isinstance(event, yaml.DocumentStartEvent):
                anchors = {}
            elif isinstance(event, (yaml.ScalarEvent, yaml.AliasEvent)):
                if isinstance(event, yaml.AliasEvent):
                    if event.anchor not in anchors:
                        return last  # compose_all: "found undefined alias"
                    scalar, value = anchors[event.anchor]
                else:
                    scalar, value = True, event.value
                    if event.anchor is not None:
                        anchors[event.anchor] = (True, value)
                if depth == 1 and top_is_map:
                    node(scalar, value)
            elif isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                if event.anchor is not None:
                    if event.anchor in anchors:
                        return last
                    anchors[event.anchor] = (False, None)
                if depth == 0:
                    top_is_map = isinstance(event, yaml.MappingStartEvent)
                    keys, kinds, expect_key = set(), [], True
                elif depth == 1 and top_is_map:
                    node(False, None)
                depth += 1
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                depth -= 1
                if depth == 0 and top_is_map and (
                        ("items" in keys and not (kinds and str(kinds[0]).endswith("List")))
                        or ("apiVersion" in keys and not kinds)):
                    mark = event.end_mark
                    return min(last, mark.line + (1 if mark.column else 0)) or last
    except yaml.YAMLError:
        pass
    return last


def _fast_yaml(text: str) -> list[Any] | None:
    """Parse with yaml-rs (about 15x faster than libyaml here) when it is installed.

    Returns None when it is missing or rejects the text; PyYAML then decides and gives the
    error message. yaml-rs returns a list for a multi-document stream, which flattens the
    same way as a List would.
    """
    try:
        import yaml_rs
    except ImportError:
        return None
    try:
        doc = yaml_rs.loads(text)
    except Exception:  # any rejection: let PyYAML have the final word
        return None
    return [doc]


def _pyyaml_documents(text: str, source: str, json_error: Exception | None) -> list[Any]:
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        return list(yaml.load_all(text, Loader=loader))
    except yaml.YAMLError as exc:
        _raise_pyyaml(exc, source, json_error)
        raise  # not reached


def _raise_pyyaml(exc: Exception, source: str, json_error: Exception | None) -> None:
    """The ConfigError for a PyYAML error (and the JSON error, when the text looked like JSON)."""
    where = ""
    mark = getattr(exc, "problem_mark", None)
    if mark is not None:
        where = f" at line {mark.line + 1}, column {mark.column + 1}"
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    if json_error is not None:
        raise ConfigError(f"{source}: invalid JSON: {json_error}") from exc
    raise ConfigError(f"{source}: invalid YAML{where}: {problem}") from exc


def _decode(data: bytes, source: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}): "
                          "expected YAML or JSON from `kubectl get -o yaml|json`") from None


def read_text(path: str) -> str:
    if path == "-":
        stream = getattr(sys.stdin, "buffer", None)
        try:
            if stream is not None:
                return _decode(stream.read(), "stdin")
            text = sys.stdin.read()
        except OSError as exc:
            raise ConfigError(f"stdin: cannot read: {exc}") from exc
        # a text stream may carry undecodable bytes as surrogates (surrogateescape)
        return _decode(text.encode("utf-8", "surrogateescape"), "stdin")
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    return _decode(data, path)


def load_objects(path: str) -> list[Obj]:
    """Read every object in a file (`-` = stdin)."""
    return parse_objects(read_text(path), "stdin" if path == "-" else path)


def iter_objects(path: str) -> Iterator[Obj]:
    """The objects of a file (`-` = stdin) one at a time: what `load_objects` returns, without
    the parsed tree of the whole file (see `iter_parsed` about errors)."""
    text = read_text(path)
    yield from iter_parsed(text, "stdin" if path == "-" else path)


def state_from_file(path: str, warn: Callable[[str], None], wanted: Callable[[Obj], bool] | None = None) -> Any:
    """The ClusterState of a file's objects (those `wanted` picks), converted as they are
    parsed. Conversion warnings are held back until the whole file is read: a file that turns
    out to be malformed says so alone, as it did when it was parsed before converting."""
    from kubectl_proxyctl.kube.convert import state_from_objects

    held: list[str] = []
    objects = iter_objects(path)
    if wanted is not None:
        objects = (o for o in objects if isinstance(o, dict) and wanted(o))
    with paused_gc():
        state = state_from_objects(objects, held.append)
    for message in held:
        warn(message)
    return state
