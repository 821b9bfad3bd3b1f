"""Text a source sent, shown on a terminal or in a log: one line, whatever the source sent."""

from __future__ import annotations


def printable(value: str | bytes) -> str:
    """`value` with each character that is not printable shown as its Python escape (`\\n`,
    `\\t`, `\\x00`, `\\x1b`, `\\x7f`, `\\x85`, `\\u2028`), so that what a source sent can neither
    break the line nor drive the terminal; printable text, accents and all, stays as sent.

    Not printable is what str.isprintable refuses: control characters, line and paragraph
    separators, format characters (bidirectional overrides among them), spaces other than
    the ASCII one, surrogates and unassigned code points. Bytes are read as UTF-8, each byte
    that is not UTF-8 shown as `\\xNN`.
    """
    text = value.decode("utf-8", errors="backslashreplace") if isinstance(value, bytes) else value
    if text.isprintable():
        return text
    return "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text
    )
