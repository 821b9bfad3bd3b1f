"""Text a source sent, shown on one line: control characters escaped, readable text kept."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from concord.text import printable


@pytest.mark.parametrize(
    ("sent", "shown"),
    [
        ("lab\x00", "lab\\x00"),
        ("\x1b[2J", "\\x1b[2J"),
        ("a\nb\r\nc", "a\\nb\\r\\nc"),
        ("a\tb", "a\\tb"),
        ("del\x7f", "del\\x7f"),
        ("c1\x85\x9b", "c1\\x85\\x9b"),
        ("line\u2028paragraph\u2029", "line\\u2028paragraph\\u2029"),
        ("\u202eevil", "\\u202eevil"),  # a bidirectional override, a format character
    ],
)
def test_control_characters_are_escaped(sent: str, shown: str) -> None:
    assert printable(sent) == shown


@pytest.mark.parametrize("name", ["José Núñez", "Zoë Brontë-Ōtsuka", "Łukasz Żółć", "李小龍", ""])
def test_printable_text_is_kept_as_sent(name: str) -> None:
    assert printable(name) == name


def test_an_accented_name_stays_readable_beside_a_control_character() -> None:
    # Only the control character is escaped: the accent and the backslash are printable.
    assert printable("José\nC:\\x") == "José\\nC:\\x"


def test_bytes_are_read_as_utf8_and_a_byte_that_is_not_is_shown_as_hex() -> None:
    assert printable("Renée".encode()) == "Renée"
    assert printable(b"lab\x1b[2J\n\xff") == "lab\\x1b[2J\\n\\xff"


@given(st.one_of(st.text(), st.binary()))
def test_any_input_is_one_printable_line(value: str | bytes) -> None:
    shown = printable(value)
    assert shown.isprintable()
    assert len(shown.splitlines()) <= 1 and "\n" not in shown and "\r" not in shown
    shown.encode("utf-8")  # no lone surrogate: it can be written anywhere


@given(st.text(st.characters(categories=["L", "M", "N", "P", "S"]), max_size=40))
def test_text_of_letters_marks_numbers_punctuation_and_symbols_is_unchanged(text: str) -> None:
    assert printable(text) == text
