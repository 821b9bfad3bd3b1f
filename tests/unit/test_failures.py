"""A failure is logged by its type and code line, never by its text (which may quote PHI)."""

from __future__ import annotations

from concord.failures import failure_site


def _fails() -> None:
    raise ValueError('duplicate key value violates unique constraint: (family)=("Okafor")')


def test_the_site_names_the_type_and_line_and_never_the_text() -> None:
    try:
        _fails()
    except ValueError as exc:
        site = failure_site(exc)
    assert site.startswith("ValueError at ") and site.endswith(f"test_failures.py:{_LINE}")
    assert "Okafor" not in site and "duplicate" not in site


def test_an_exception_never_raised_has_only_its_type() -> None:
    assert failure_site(KeyError("Patient/123")) == "KeyError"


_LINE = _fails.__code__.co_firstlineno + 1
