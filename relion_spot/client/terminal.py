"""Text from a job or a message, made safe to print on the lab's terminal.

A log tail, a rejection reason, a user name or a parameter is written by whoever submitted the
job (or by the job itself), and the CLI prints it on someone else's terminal. Terminal control
sequences in it could recolour, hide or rewrite what the CLI says (an ANSI escape, a CR that
returns to the start of the line), set the window title, or plant a hyperlink (OSC 8); a
right-to-left override reorders what is shown. ``printable`` removes them; ``cell`` does the same
for a rich table cell and keeps rich from reading ``[...]`` in the text as markup.
"""

from __future__ import annotations

import re

from rich.text import Text

_ESCAPE_SEQUENCE = re.compile(
    r"""
    \x1b\][^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?   # OSC (title, hyperlink), to BEL or ST
    | \x1b[P_^X][^\x1b\x9c]*(?:\x1b\\|\x9c)?      # DCS, APC, PM, SOS strings, to ST
    | \x1b\[[0-?]*[ -/]*[@-~]?                      # CSI (colour, cursor, erase)
    | \x9b[0-?]*[ -/]*[@-~]?                        # CSI as its one-byte C1 form
    | \x1b[ -/]*[0-~]?                              # any other escape
    """,
    re.VERBOSE,
)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
"""C0 but tab and newline, DEL, C1, and the bidirectional marks, embeddings and isolates."""


def printable(text: object, *, multiline: bool = False) -> str:
    """``text`` without escape sequences and control characters. A CR ends a line where
    ``multiline`` (a log tail: a progress line rewritten in place shows as its own lines),
    else it becomes a space, as do newline and tab (one line: a name, a reason, a value)."""
    cleaned = _ESCAPE_SEQUENCE.sub("", str(text))
    cleaned = cleaned.replace("\r\n", "\n")
    cleaned = cleaned.replace("\r", "\n") if multiline else re.sub(r"[\r\n\t]", " ", cleaned)
    return _CONTROL.sub("", cleaned)


def cell(text: object) -> Text:
    """A rich table cell holding ``text`` as plain, printable characters (no markup)."""
    return Text(printable(text))
