"""YAML text -> plain JSON-like data, plus the source line of every key and value.

Hostile input is refused in bounded time and memory:
- more than 1 MB of bytes, or bytes that are not UTF-8 (the message names the line);
- nesting deeper than `MAX_DEPTH` (composing is iterative and stops at the cap, so neither
  Python's stack nor libyaml sees the rest of a deeply nested document);
- more than `MAX_NODES` nodes *after alias expansion*. Aliases and merge keys (`<<: *base`)
  stay usable for ordinary reuse, but a "billion laughs" document stops at the cap instead of
  being expanded, and a self-referencing alias stops at the depth cap;
- tags other than the JSON ones (str, int, float, bool, null), non-finite floats, non-scalar
  mapping keys and duplicate keys (PyYAML would silently keep the last one).

Scalars resolve as PyYAML's SafeLoader does (YAML 1.1: `yes`/`off` are booleans), except that
dates stay strings (no implicit timestamps), so every value is JSON-serialisable. Mapping keys
are always strings: the key's source text (`on:` stays "on", `1:` becomes "1").
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache, lru_cache
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from attune_pg.errors import SpecError

MAX_BYTES = 1024 * 1024
MAX_DEPTH = 64
MAX_NODES = 100_000

Path = tuple[str | int, ...]

_TAG = "tag:yaml.org,2002:"
_MERGE = _TAG + "merge"
_SCALAR_TAGS = {_TAG + t for t in ("str", "int", "float", "bool", "null")}
_STR, _SEQ, _MAP = _TAG + "str", _TAG + "seq", _TAG + "map"


class Problem(Exception):
    """A problem at a path of a document; turned into a located SpecError by the caller."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


def one_line(text: str, limit: int = 300) -> str:
    """Collapse whitespace so every message stays on one line, and cap its length."""
    text = re.sub(r"\s+", " ", text).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass
class Document:
    """Parsed data plus where each part came from.

    Lines are looked up in the composed node tree when asked for (`root`), so a file that
    loads cleanly costs no line bookkeeping; `value_lines`/`key_lines` hold lines given
    explicitly (documents built without YAML) and win over the tree.
    """

    file: str
    data: Any
    value_lines: dict[Path, int] = field(default_factory=dict)
    key_lines: dict[Path, int] = field(default_factory=dict)
    root: Node | None = field(default=None, repr=False)

    def line(self, path: Path) -> int | None:
        """Line of the node at `path` (its key's line for mapping values), else of its parent."""
        if self.value_lines or self.key_lines:
            for end in range(len(path), -1, -1):
                sub = path[:end]
                found = self.key_lines.get(sub) or self.value_lines.get(sub)
                if found:
                    return found
        return _tree_line(self.root, path)

    def field(self, path: Path) -> str:
        """`tasks[2] (build).retry.count`: indices in brackets, task names in parentheses."""
        out = ""
        node: Any = self.data
        for i, part in enumerate(path):
            if isinstance(part, int):
                out += f"[{part}]"
            else:
                out += f".{part}" if out else str(part)
            node = _child(node, part)
            # Name the task at tasks[i] and tasks[i].tasks[j] (not lists called "tasks" in inputs).
            if isinstance(part, int) and path[:i] in (("tasks",), ("tasks", path[1], "tasks")):
                name = node.get("name") if isinstance(node, dict) else None
                if isinstance(name, str):
                    out += f" ({one_line(name, 60)})"
        return out

    def error(self, message: str, path: Path = ()) -> SpecError:
        return SpecError(
            one_line(message),
            file=self.file,
            line=self.line(path),
            field=self.field(path) or None,
        )

    def problem(self, problem: Problem) -> SpecError:
        return self.error(problem.message, problem.path)


def _tree_line(root: Node | None, path: Path) -> int | None:
    """Walk the node tree along `path` as the data was built (a mapping's own keys before
    merged ones, aliases followed); the line of the deepest part found."""
    if root is None:
        return None
    node: Node = root
    line = root.start_mark.line + 1
    for part in path:
        found: tuple[Node, Node] | None = None
        if isinstance(node, SequenceNode) and isinstance(part, int):
            if 0 <= part < len(node.value):
                child: Node = node.value[part]
                found = (child, child)
        elif isinstance(node, MappingNode) and isinstance(part, str):
            found = _find_key(node, part, 0)
        if found is None:
            return line
        key_node, node = found
        line = key_node.start_mark.line + 1
    return line


def _find_key(node: MappingNode, key: str, depth: int) -> tuple[Node, Node] | None:
    merges: list[Node] = []
    for key_node, value_node in node.value:
        if key_node.tag == _MERGE:
            merges.append(value_node)
        elif isinstance(key_node, ScalarNode) and str(key_node.value) == key:
            return key_node, value_node
    if depth > MAX_DEPTH:
        return None
    for merge in merges:
        for source in merge.value if isinstance(merge, SequenceNode) else [merge]:
            if isinstance(source, MappingNode):
                found = _find_key(source, key, depth + 1)
                if found is not None:
                    return found
    return None


def _child(node: Any, part: str | int) -> Any:
    if isinstance(part, int) and isinstance(node, list) and 0 <= part < len(node):
        return node[part]
    if isinstance(part, str) and isinstance(node, dict):
        return node.get(part)
    return None


class _TooDeep(yaml.composer.ComposerError):
    """Nesting cap hit while composing (not a syntax error, so reported plainly)."""


def _line(mark: yaml.Mark | None) -> int | None:
    return mark.line + 1 if mark else None


class _Resolver(yaml.resolver.Resolver):
    """YAML 1.1 implicit types as SafeLoader has them, minus timestamps (dates stay strings)."""

    yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag != _TAG + "timestamp"]
        for first, resolvers in yaml.resolver.Resolver.yaml_implicit_resolvers.items()
    }


# libyaml's parser when available (about 10x faster); both are iterative state machines, so
# they never recurse however deep the input nests. Composing is ours, iterative and capped.
_Parser: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

if hasattr(yaml, "CSafeLoader"):

    class _CLoader(yaml.CSafeLoader):
        """libyaml's own composer (C), with our resolver (no implicit timestamps)."""

        yaml_implicit_resolvers = _Resolver.yaml_implicit_resolvers

        def resolve(self, kind: Any, value: Any, implicit: Any) -> str:
            # Without path resolvers a scalar's tag depends on its text and on whether it
            # was plain only; the same keys and values recur in every file: cache them.
            if kind is ScalarNode:
                return _scalar_tag(value, bool(implicit[0]))
            return _SEQ if kind is SequenceNode else _MAP


_RESOLVER = _Resolver()


@lru_cache(maxsize=16384)
def _scalar_tag(value: str, plain: bool) -> str:
    tag: str = _RESOLVER.resolve(ScalarNode, value, (plain, not plain))  # type: ignore[no-untyped-call]
    return tag


@cache
def _c_composer_is_safe() -> bool:
    """libyaml >= 0.2.6 (PyYAML 6.0.4's wheels) refuses nesting deeper than 1000 levels in
    its scanner, so its recursive composer cannot exhaust the C stack: then compose in C
    (twice as fast as our composer). Older libyaml has no such cap: our iterative one."""
    if not hasattr(yaml, "CSafeLoader"):
        return False
    block = "".join(" " * i + "a:\n" for i in range(1100)) + " " * 1100 + "b\n"
    for probe in ("[" * 1100, block):
        loader = yaml.CSafeLoader(probe)
        try:
            loader.get_single_node()
        except yaml.YAMLError as exc:
            if "maximum nesting depth" not in str(exc):
                return False
        else:
            return False
        finally:
            loader.dispose()
    return True


def _compose_fast(text: str) -> Node | None:
    if not _c_composer_is_safe():
        return _compose(text)
    loader = _CLoader(text)
    try:
        node: Node | None = loader.get_single_node()
        return node
    except yaml.YAMLError:
        pass  # rare: let our composer word the error, exactly as it always did
    finally:
        loader.dispose()
    return _compose(text)


def _compose(text: str) -> Node | None:
    """Events -> node graph, like PyYAML's Composer but iterative and depth-capped."""
    resolver = _Resolver()
    parser = _Parser(text)
    try:
        anchors: dict[str, Node] = {}
        stack: list[list[Any]] = []  # [open collection node, pending mapping key]
        root: Node | None = None
        documents = 0
        while parser.check_event():
            event = parser.get_event()
            # libyaml's marks are their own type; nodes only need .line from them.
            start: Any = event.start_mark
            end: Any = event.end_mark
            node: Node
            if isinstance(event, yaml.DocumentStartEvent):
                documents += 1
                if documents > 1:
                    raise yaml.composer.ComposerError(
                        None, None, "expected a single document, found another", start
                    )
                continue
            if isinstance(event, yaml.CollectionEndEvent):
                node = stack.pop()[0]
                node.end_mark = end
            elif isinstance(event, yaml.AliasEvent):
                if event.anchor not in anchors:
                    raise yaml.composer.ComposerError(
                        None, None, f"found undefined alias {event.anchor!r}", start
                    )
                node = anchors[event.anchor]
            elif isinstance(event, yaml.ScalarEvent):
                node = ScalarNode(
                    _tag(resolver, ScalarNode, event.tag, event.value, event.implicit),
                    event.value,
                    start,
                    end,
                    event.style,
                )
            elif isinstance(event, yaml.SequenceStartEvent | yaml.MappingStartEvent):
                if len(stack) >= MAX_DEPTH:
                    raise _TooDeep(
                        None,
                        None,
                        f"document is nested deeper than {MAX_DEPTH} levels",
                        start,
                    )
                kind = SequenceNode if isinstance(event, yaml.SequenceStartEvent) else MappingNode
                tag = _tag(resolver, kind, event.tag, None, event.implicit)
                node = kind(tag, [], start, None, event.flow_style)
                if event.anchor is not None:
                    anchors[event.anchor] = node
                stack.append([node, None])
                continue
            else:
                continue  # stream start/end, document end
            if isinstance(event, yaml.NodeEvent) and event.anchor is not None:
                anchors[event.anchor] = node
            if not stack:
                root = node
            elif isinstance(stack[-1][0], SequenceNode):
                stack[-1][0].value.append(node)
            elif stack[-1][1] is None:
                stack[-1][1] = node
            else:
                stack[-1][0].value.append((stack[-1][1], node))
                stack[-1][1] = None
        return root
    finally:
        parser.dispose()


def _tag(resolver: _Resolver, kind: type[Node], tag: str | None, value: Any, implicit: Any) -> str:
    if tag is None or tag == "!":
        resolved: str = resolver.resolve(kind, value, implicit)  # type: ignore[no-untyped-call]
        return resolved
    return tag


def size_limit_error(max_bytes: int) -> SpecError:
    return SpecError(f"file is larger than {human_size(max_bytes)}")


def human_size(n: int) -> str:
    """1048576 -> '1 MB', 1536 -> '1.5 KB' (the limit as a person wrote it)."""
    for unit, size in (("MB", 1024 * 1024), ("KB", 1024)):
        if n >= size:
            return f"{n / size:g} {unit}"
    return f"{n} bytes"


def decode(source: str | bytes, max_bytes: int = MAX_BYTES) -> str:
    """The text of `source`, refusing oversized files and non-UTF-8 bytes (naming the line)."""
    if isinstance(source, str):
        if len(source) > max_bytes or len(source.encode("utf-8", "surrogatepass")) > max_bytes:
            raise size_limit_error(max_bytes)
        return source
    if len(source) > max_bytes:
        raise size_limit_error(max_bytes)
    try:
        return source.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = source[: exc.start].count(b"\n") + 1
        byte = source[exc.start]
        raise SpecError(f"invalid UTF-8 byte 0x{byte:02x}", line=line) from None


def load_yaml(source: str | bytes, *, file: str, max_bytes: int = MAX_BYTES) -> Document:
    """Parse one YAML document into a `Document`; every failure is a one-line SpecError."""
    try:
        text = decode(source, max_bytes)
    except SpecError as exc:
        raise exc.located(file) from None
    try:
        root = _compose_fast(text)
    except _TooDeep as exc:
        raise SpecError(str(exc.problem), file=file, line=_line(exc.problem_mark)) from None
    except yaml.MarkedYAMLError as exc:
        if "maximum nesting depth" in str(exc.problem):
            # libyaml >= 0.2.6 (PyYAML 6.0.4's wheels) caps nesting in its scanner, which reads
            # ahead of our composer on a long line: the same limit, reported as ours.
            depth = f"document is nested deeper than {MAX_DEPTH} levels"
            raise SpecError(depth, file=file, line=_line(exc.problem_mark)) from None
        raise _syntax_error(exc, file) from None
    except yaml.reader.ReaderError as exc:
        char = exc.character
        code = char if isinstance(char, int) else ord(str(char)[:1] or "\0")
        line = text[: exc.position].count("\n") + 1
        raise SpecError(
            f"character 0x{code:02x} is not allowed in YAML", file=file, line=line
        ) from None
    except yaml.YAMLError as exc:
        raise SpecError(one_line(f"YAML error: {exc}"), file=file) from None
    if root is None:
        raise SpecError("file is empty", file=file)
    doc = Document(file=file, data=None, root=root)
    doc.data = _Builder(doc).build(root, 0)
    return doc


def _syntax_error(exc: yaml.MarkedYAMLError, file: str) -> SpecError:
    mark = exc.problem_mark or exc.context_mark
    message = exc.problem or exc.context or "invalid YAML"
    if exc.context and exc.problem:
        message = f"{message} ({exc.context}"
        if exc.context_mark and mark and exc.context_mark.line != mark.line:
            message += f" at line {exc.context_mark.line + 1}"
        message += ")"
    return SpecError(
        one_line(f"YAML syntax error: {message}"),
        file=file,
        line=_line(mark),
    )


class _Builder:
    """Turns composed nodes into data, enforcing the node cap, the depth cap and the tags."""

    def __init__(self, doc: Document) -> None:
        self.doc = doc
        self.constructor = yaml.constructor.SafeConstructor()
        self.count = 0

    def fail(self, node: Node, message: str) -> SpecError:
        return SpecError(one_line(message), file=self.doc.file, line=node.start_mark.line + 1)

    def build(self, node: Node, depth: int) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise self.fail(
                node, f"document has more than {MAX_NODES} nodes after expanding aliases"
            )
        # The 65th nested collection is refused where it starts, as our composer does.
        if depth >= MAX_DEPTH and not isinstance(node, ScalarNode):
            raise self.fail(node, f"document is nested deeper than {MAX_DEPTH} levels")
        tag = node.tag
        if isinstance(node, ScalarNode):
            if tag == _STR:  # by far the most common: no constructor call
                return node.value
            return self.scalar(node)
        if isinstance(node, SequenceNode):
            if tag != _SEQ:
                raise self.fail(node, f"unsupported YAML tag {tag!r}")
            return [self.child(item, depth + 1) for item in node.value]
        if isinstance(node, MappingNode):
            if tag != _MAP:
                raise self.fail(node, f"unsupported YAML tag {tag!r}")
            return self.mapping(node, depth)
        raise self.fail(node, "unsupported YAML node")

    def child(self, node: Node, depth: int) -> Any:
        """`build`, with the commonest node (a plain string) handled without a call."""
        if node.tag == _STR and node.__class__ is ScalarNode:
            self.count += 1
            if self.count > MAX_NODES:
                raise self.fail(
                    node, f"document has more than {MAX_NODES} nodes after expanding aliases"
                )
            return node.value
        return self.build(node, depth)

    def scalar(self, node: ScalarNode) -> Any:
        if node.tag not in _SCALAR_TAGS:
            raise self.fail(node, f"unsupported YAML tag {node.tag!r}")
        value = self.constructor.construct_object(node)
        if isinstance(value, float) and not math.isfinite(value):
            raise self.fail(node, f"{node.value!r} is not a finite number")
        return value

    def mapping(self, node: MappingNode, depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        merges: list[Node] = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                merges.append(value_node)
                continue
            if not isinstance(key_node, ScalarNode):
                raise self.fail(key_node, "mapping keys must be plain strings")
            key = str(key_node.value)
            if key in out:
                raise self.fail(key_node, f"duplicate key {key!r}")
            out[key] = self.child(value_node, depth + 1)
        # Merge keys fill in what the mapping does not say itself (YAML merge semantics).
        for source in self.merge_sources(merges):
            for key, value in self.build(source, depth).items():
                out.setdefault(key, value)
        return out

    def merge_sources(self, merges: list[Node]) -> Iterator[Node]:
        for value in merges:
            sources = value.value if isinstance(value, SequenceNode) else [value]
            for source in sources:
                if not isinstance(source, MappingNode):
                    raise self.fail(source, "a merge key ('<<') needs a mapping or a list of them")
                yield source
