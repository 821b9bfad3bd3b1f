"""A YAML file validated into a pydantic model, with every problem named by file and line.

An operator editing the source-of-truth policy needs `policy.yaml:7: classes.LABORATORY.compare:
'fuzzy' is not one of exact, code, numeric, status`, not a pydantic traceback: the document is
composed with PyYAML (whose nodes know their line) and each validation error's location is
looked up in it. Messages name keys and short values only, never more of the file.

Generic over the model, so that this module does not import the policy it parses.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

Model = TypeVar("Model", bound=BaseModel)
Loc = tuple[int | str, ...]

# Keys that read as one word in a dotted location; others (`Patient.birthDate`) are quoted.
_PLAIN_KEY = re.compile(r"[^.\s\"\[\]]+")
_SHOWN_CHARS = 40


@dataclass(frozen=True)
class PolicyProblem:
    """One thing wrong with a policy file: where (file, line, dotted key path) and what."""

    source: str
    line: int | None
    location: str
    text: str

    def __str__(self) -> str:
        where = self.source if self.line is None else f"{self.source}:{self.line}"
        what = f"{self.location}: {self.text}" if self.location else self.text
        return f"{where}: {what}"


class PolicyError(ValueError):
    """A policy file that cannot be used; its message lists every problem, one per line."""

    def __init__(self, problems: list[PolicyProblem]) -> None:
        ordered = sorted(problems, key=lambda p: p.line or 0)
        self.problems: tuple[PolicyProblem, ...] = tuple(ordered)
        super().__init__("\n".join(str(problem) for problem in ordered))


def validate_document(model: type[Model], document: str | bytes, source: str) -> Model:
    """`document` (YAML) validated as `model`; PolicyError names each problem's line."""
    text = _decode(document, source)
    root, data = _compose(text, source)
    problems = list(_duplicate_keys(root, source))
    try:
        # An empty file is an empty mapping: what it lacks is then reported like any other.
        result = model.model_validate({} if data is None else data)
    except ValidationError as exc:
        problems += [_problem(model, root, source, error) for error in exc.errors()]
        raise PolicyError(problems) from None
    if problems:
        raise PolicyError(problems)
    return result


def unreadable(source: str, exc: OSError) -> PolicyError:
    return PolicyError([PolicyProblem(source, None, "", f"cannot be read: {exc.strerror or exc}")])


# --- reading ----------------------------------------------------------------------------------


def _decode(document: str | bytes, source: str) -> str:
    if isinstance(document, str):
        return document
    try:
        return document.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = document.count(b"\n", 0, exc.start) + 1
        raise PolicyError([PolicyProblem(source, line, "", "not UTF-8 text")]) from None


def _compose(text: str, source: str) -> tuple[yaml.Node | None, Any]:
    """The document's node tree (for lines) and its data, from one parse."""
    try:
        loader = yaml.SafeLoader(text)  # already reads the text: may raise a ReaderError
        try:
            root = loader.get_single_node()
            data = None if root is None else loader.construct_document(root)
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        raise PolicyError([_yaml_problem(exc, text, source)]) from None
    return root, data


def _yaml_problem(exc: yaml.YAMLError, text: str, source: str) -> PolicyProblem:
    if isinstance(exc, yaml.reader.ReaderError):
        line = text.count("\n", 0, exc.position) + 1
        what = f"unacceptable character #x{exc.character:04x} ({exc.reason})"
        return PolicyProblem(source, line, "", f"invalid YAML: {what}")
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        what = exc.problem or exc.context or "unreadable"
        if exc.problem and exc.context and exc.problem.startswith("but "):
            what = f"{exc.context}, {exc.problem}"  # PyYAML's "expected X" + "but found Y"
        elif exc.problem and exc.context and exc.context_mark:
            # The problem alone ("expected <block end>") rarely says which block it meant.
            what += f" ({exc.context} on line {exc.context_mark.line + 1})"
        return PolicyProblem(source, mark.line + 1 if mark else None, "", f"invalid YAML: {what}")
    return PolicyProblem(source, None, "", f"invalid YAML: {exc}")


def _duplicate_keys(root: yaml.Node | None, source: str) -> Iterator[PolicyProblem]:
    """YAML keeps the last of two equal keys silently; in a policy that hides a rule."""
    seen: set[int] = set()  # an alias can make the tree a graph, even a cycle

    def walk(node: yaml.Node | None, path: Loc) -> Iterator[PolicyProblem]:
        if node is None or id(node) in seen:
            return
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                yield from walk(item, (*path, index))
        if isinstance(node, yaml.MappingNode):
            yield from _mapping_duplicates(node, source, path)
            for key, value in node.value:
                name = key.value if isinstance(key, yaml.ScalarNode) else "?"
                yield from walk(value, (*path, name))

    yield from walk(root, ())


def _mapping_duplicates(node: yaml.MappingNode, source: str, path: Loc) -> Iterator[PolicyProblem]:
    first_line: dict[str, int] = {}
    for key, _ in node.value:
        if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
            continue
        line = key.start_mark.line + 1
        if key.value in first_line:
            yield PolicyProblem(
                source,
                line,
                _dotted((*path, key.value)),
                f"duplicate key; the first is on line {first_line[key.value]}",
            )
        first_line.setdefault(key.value, line)


# --- locating ---------------------------------------------------------------------------------


def _problem(
    model: type[BaseModel], root: yaml.Node | None, source: str, error: ErrorDetails
) -> PolicyProblem:
    loc = tuple(error["loc"])
    line = 1 if root is None else _line(root, loc)
    return PolicyProblem(source, line, _dotted(loc), _describe(model, error, loc))


def _line(root: yaml.Node, loc: Loc) -> int:
    """1-based line of the node at `loc`: a key's own line, a value's line, or, for a key that
    is missing, the line of the mapping that lacks it."""
    node: yaml.Node | None = root
    line = root.start_mark.line
    for part in loc:
        if part == "[key]" or node is None:
            break  # a bad dict key: its line is the one just found
        node, line = _child(node, part, line)
    else:
        if isinstance(node, yaml.ScalarNode):
            line = node.start_mark.line
    return line + 1


def _child(node: yaml.Node, part: int | str, line: int) -> tuple[yaml.Node | None, int]:
    if isinstance(node, yaml.MappingNode):
        found: tuple[yaml.Node | None, int] = (None, line)
        for key, value in node.value:  # the last of equal keys, as YAML itself keeps
            if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                found = (value, key.start_mark.line)
        return found
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
        item = node.value[part]
        return item, item.start_mark.line
    return None, line


def _dotted(loc: Loc) -> str:
    text = ""
    for part in loc:
        if part == "[key]":
            continue
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            name = part if _PLAIN_KEY.fullmatch(part) else f'"{part}"'
            text += f".{name}" if text else name
    return text


# --- describing -------------------------------------------------------------------------------


def _describe(model: type[BaseModel], error: ErrorDetails, loc: Loc) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        allowed = _fields_at(model, loc[:-1])
        return "unknown key" + (f"; allowed here: {', '.join(allowed)}" if allowed else "")
    if kind in _BOUNDS:
        bound, phrase = _BOUNDS[kind]
        limit = error.get("ctx", {}).get(bound)
        return f"{_show(error['input'])} is out of range: it must be {phrase} {_number(limit)}"
    describe = _DESCRIPTIONS.get(kind)
    return describe(error) if describe else _plain(error["msg"])


def _literal(error: ErrorDetails) -> str:
    allowed = re.findall(r"'([^']*)'", str(error.get("ctx", {}).get("expected", "")))
    return f"{_show(error['input'])} is not one of {', '.join(allowed)}"


def _not_text(error: ErrorDetails) -> str:
    value = error["input"]
    hint = "; quote it" if isinstance(value, int | float) else ""
    return f"{_show(value)} is not text{hint}"


def _not_duration(error: ErrorDetails) -> str:
    return f"{_show(error['input'])} is not a duration: write ISO 8601 (P90D, PT1H) or seconds"


def _not_number(error: ErrorDetails) -> str:
    return f"{_show(error['input'])} is not a number"


def _not_list(error: ErrorDetails) -> str:
    return f"{_show(error['input'])} is not a list: write [a, b]"


def _not_mapping(error: ErrorDetails) -> str:
    return f"{_show(error['input'])} is not a mapping of keys to values"


def _missing(error: ErrorDetails) -> str:
    return "required, but missing"


_DESCRIPTIONS: dict[str, Callable[[ErrorDetails], str]] = {
    "literal_error": _literal,
    "enum": _literal,
    "missing": _missing,
    "string_type": _not_text,
    "time_delta_parsing": _not_duration,
    "time_delta_type": _not_duration,
    "float_parsing": _not_number,
    "float_type": _not_number,
    "tuple_type": _not_list,
    "list_type": _not_list,
    "dict_type": _not_mapping,
    "model_type": _not_mapping,
    "model_attributes_type": _not_mapping,
}
_BOUNDS = {
    "greater_than_equal": ("ge", "at least"),
    "greater_than": ("gt", "more than"),
    "less_than_equal": ("le", "at most"),
    "less_than": ("lt", "less than"),
}


def _plain(message: str) -> str:
    """A validator's own message, without pydantic's `Value error, ` prefix."""
    return re.sub(r"^(Value|Assertion) error, ", "", message)


def _show(value: object) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."


def _number(value: object) -> str:
    return f"{value:g}" if isinstance(value, int | float) else str(value)


def _fields_at(model: type[BaseModel], loc: Loc) -> list[str]:
    """The keys the model allows at `loc`, for telling what a misspelt key could have been."""
    current: Any = model
    for part in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            current = field.annotation if field is not None else None
        elif get_origin(current) is dict:
            current = get_args(current)[1]
        elif get_origin(current) in (tuple, list):
            current = get_args(current)[0]
        else:
            return []
    current = _unwrap(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _unwrap(annotation: Any) -> Any:
    """`X | None` → X."""
    if get_origin(annotation) in (types.UnionType, typing.Union):
        members = [arg for arg in get_args(annotation) if arg is not type(None)]
        return members[0] if len(members) == 1 else annotation
    return annotation
