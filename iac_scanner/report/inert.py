"""Text a pull request wrote (resource keys, attribute values, file names) made
inert in each report: it can't drive the CI log's terminal, break the JUnit
XML, or add a link to a code scanning alert."""

from __future__ import annotations

import re

# What a terminal acts on or a log viewer breaks lines at: C0 and C1 controls
# (ESC, BEL, CR, NL...), DEL, line and paragraph separators, bidirectional
# overrides that reorder what a reader sees, and lone surrogates (no UTF-8).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
# Characters XML 1.0 can't hold (a JUnit parser refuses the whole report), and
# the controls above but for tab and newline, which a failure's text may hold.
_XML_UNSAFE = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff\ufffe\uffff]"
)


def _escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def line(text: str) -> str:
    """One line of the text report or stderr: controls shown as \\uXXXX, as a
    resource address shows its for_each key."""
    return _CONTROL.sub(_escape, text)


def xml(text: str) -> str:
    """Text an XML 1.0 document can hold; newlines and tabs kept."""
    return _XML_UNSAFE.sub(_escape, text)


def sarif_message(text: str) -> str:
    """A SARIF plain-text message: `[text](target)` there is an embedded link
    (SARIF 2.1.0 3.11.6), so literal brackets are escaped with a backslash."""
    return line(text).replace("[", "\\[").replace("]", "\\]")
