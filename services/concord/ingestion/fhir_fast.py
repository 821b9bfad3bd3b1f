"""A fast, conservative structural check of FHIR resources: True only for a resource that
fhir.resources' R4B model would accept; False for anything it doubts, which then goes to the
model (fhir.py's _validate_structure), whose rejection is the one reported.

The check is compiled, lazily and per type, from the R4B models themselves: the same element
names (aliases), the same cardinality (array or single), the same required elements and choice
groups (value[x]: at most one), and, for each primitive value, the model's own type validator
(a pydantic TypeAdapter of the field's annotation), whose verdict is cached per value. It is
stricter than the model everywhere it differs, never looser:

- only the JSON types a parser gives for a valid instance are read (a string for a string,
  dateTime, code...; a bool for a boolean; an int for an integer; an int or float for a
  decimal); the model's lax coercions ("true" for a boolean, 1.0 for an integer) are doubted;
- null, an empty object or array, an element name the model does not declare (and so a
  misspelt one), a primitive's extension (`_birthDate`), `fhir_comments`, a contained or other
  inline resource, and a field with constraints outside its type are all doubted;
- a missing required element or a choice group with none of its required types is doubted.

Whatever is doubted costs what validation cost before; what is accepted skips ~12 nested model
constructions per resource. tests/unit/test_fhir_fast_path.py runs both paths side by side.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from fhir_core.types import FhirBase, FhirElementOrResourceBase
from pydantic import TypeAdapter

Check = Callable[[Any], bool]
# Verdicts cached per primitive type; cleared when this many values are held, so that a
# long-running worker's memory stays bounded (identifiers and times rarely repeat).
_CACHE_LIMIT = 50_000


def _never(_: Any) -> bool:
    return False


def _is_bool(value: Any) -> bool:
    return value is True or value is False


# What JSON gives for a valid value of each primitive's Python type: the input types the fast
# path reads. Any other input (a number for a string, a string for a number) is doubted.
_INPUTS: dict[Any, frozenset[type]] = {
    str: frozenset({str}),
    bytes: frozenset({str}),
    int: frozenset({int}),
    Decimal: frozenset({int, float}),
}


def _primitive(annotation: Any) -> Check:
    """The model's own validator of one primitive type, cached per value, for the input types
    listed above; a doubt (False) for any other input or annotation."""
    if annotation is bool:
        return _is_bool
    if typing.get_origin(annotation) is not typing.Annotated:
        return _never
    base = typing.get_args(annotation)[0]
    if typing.get_origin(base) is typing.Union:  # Url: Union[AnyUrl, str]
        base = str
    inputs = _INPUTS.get(
        base, frozenset({str}) if base.__module__ in ("datetime", "uuid") else None
    )
    if inputs is None:
        return _never
    validate = TypeAdapter(annotation).validate_python
    verdicts: dict[tuple[type, Any], bool] = {}

    def check(value: Any) -> bool:
        kind = type(value)
        if kind not in inputs:
            return False
        key = (kind, value)
        verdict = verdicts.get(key)
        if verdict is None:
            try:
                validate(value)
                verdict = True
            except Exception:  # any failure of the model's validator is a doubt
                verdict = False
            if len(verdicts) >= _CACHE_LIMIT:
                verdicts.clear()
            verdicts[key] = verdict
        return verdict

    return check


class _Model:
    """The check of one R4B model class (an element type or a resource), built on first use so
    that recursive types (Extension in Extension, Identifier.assigner's Reference) terminate."""

    def __init__(self, model: Any, resource_type: str | None = None) -> None:
        self.model = model
        self.resource_type = resource_type
        self.fields: dict[str, tuple[bool, Check]] | None = None
        self.required: tuple[str, ...] = ()
        self.choices: tuple[tuple[frozenset[str], bool], ...] = ()
        self.choice_keys: frozenset[str] = frozenset()

    def children(self) -> list[_Model]:
        """The element types this model's fields hold (built first if need be)."""
        fields = self.fields if self.fields is not None else self._build()
        # An element type's check is its model's bound `check`.
        owners = (getattr(check, "__self__", None) for _, check in fields.values())
        return [owner for owner in owners if isinstance(owner, _Model)]

    def _build(self) -> dict[str, tuple[bool, Check]]:
        fields: dict[str, tuple[bool, Check]] = {}
        required: list[str] = []
        for name, info in self.model.model_fields.items():
            extra = info.json_schema_extra
            alias = info.alias or name
            if not isinstance(extra, dict) or not extra.get("element_property"):
                continue  # `_x` primitive extensions, fhir_comments: doubted
            if alias.startswith("_") or alias == "resourceType":
                continue
            many, check = _field_check(info)
            fields[alias] = (many, check)
            if info.is_required():
                required.append(alias)
        instance = self.model.model_construct()
        aliases = {name: (info.alias or name) for name, info in self.model.model_fields.items()}
        for element, _ext in instance.get_required_fields():
            if element not in required:
                required.append(element)
        choices = []
        for names in instance.get_one_of_many_fields().values():
            first = self.model.model_fields[names[0]].json_schema_extra
            group = frozenset(aliases[name] for name in names)
            choices.append((group, bool(first.get("one_of_many_required"))))
        if self.resource_type is not None:
            expected = self.resource_type
            fields["resourceType"] = (False, lambda value: value == expected)
        self.required = tuple(required)
        self.choices = tuple(choices)
        self.choice_keys = frozenset().union(*(group for group, _ in choices))
        self.fields = fields
        return fields

    def check(self, node: Any) -> bool:
        if type(node) is not dict or not node:
            return False
        fields = self.fields if self.fields is not None else self._build()
        for key, value in node.items():
            spec = fields.get(key)
            if spec is None:
                return False
            many, check = spec
            if not (_every(check, value) if many else check(value)):
                return False
        for element in self.required:
            if element not in node:
                return False
        for group, needed in self.choices:
            present = len(group.intersection(node))
            if present > 1 or (needed and present == 0):
                return False
        return True


def _every(check: Check, value: Any) -> bool:
    """An array (FHIR has no empty one) whose every item passes."""
    if type(value) is not list or not value:
        return False
    return all(check(item) for item in value)


_ELEMENTS: dict[Any, _Model] = {}
_RESOURCES: dict[str, _Model] = {}


def _element(model: Any) -> _Model:
    found = _ELEMENTS.get(model)
    if found is None:
        found = _ELEMENTS[model] = _Model(model)
    return found


def _optional(annotation: Any) -> Any:
    """X for X | None; None for a union of several types (the fast path doubts it)."""
    if typing.get_origin(annotation) not in (typing.Union, types.UnionType):
        return annotation
    members = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    return members[0] if len(members) == 1 else None


def _field_check(info: Any) -> tuple[bool, Check]:
    """(is an array, the check of one value) for a model field; a field this module does not
    fully understand is a check that always doubts."""
    if info.metadata:
        return False, _never
    annotation = _optional(info.annotation)
    many = typing.get_origin(annotation) is list
    if many:
        (item,) = typing.get_args(annotation)
        annotation = _optional(item)  # a primitive array may hold nulls (never read here)
    if annotation is None:
        return False, _never
    if isinstance(annotation, type) and issubclass(annotation, FhirBase):
        if issubclass(annotation, FhirElementOrResourceBase):
            return many, _never  # an inline resource (contained): the model's to check
        return many, _element(annotation.get_model_klass()).check
    return many, _primitive(annotation)


def prepare(resource_types: Iterable[str]) -> int:
    """Build the checks of these resource types and of every element type they hold now,
    rather than on the events that first need them (~0.2 s for the types ingestion checks
    element by element, the fhir.resources models imported with them). Returns how many
    models are built."""
    pending = [_resource(name) for name in resource_types]
    built: set[_Model] = set()
    while pending:
        model = pending.pop()
        if model is None or model in built:
            continue
        built.add(model)
        pending.extend(model.children())
    return len(built)


def _resource(resource_type: str) -> _Model | None:
    model = _RESOURCES.get(resource_type)
    if model is None:
        try:
            klass = get_fhir_model_class(resource_type)
        except Exception:  # not an R4B type: the model path says what it is
            return None
        model = _RESOURCES[resource_type] = _Model(klass, resource_type)
    return model


def structurally_valid(resource: Mapping[str, Any]) -> bool:
    """True if fhir.resources' R4B model of the resource's type certainly accepts it; False
    if it might not (then only the model can say)."""
    resource_type = resource.get("resourceType")
    if not isinstance(resource_type, str):
        return False
    model = _resource(resource_type)
    return model is not None and model.check(resource)
