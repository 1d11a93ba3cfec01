"""Text from requests and Terraform made inert in a Markdown comment (GitHub flavour).

Reasons, paths, resource names and messages may come from an attacker (a
crafted request, a pull request's Terraform): they must not format, link,
mention anyone or break out of the table the comment puts them in.
"""

from __future__ import annotations

import re

# Anything that ends a line or a table row (\r too), or a terminal would act on.
_CONTROL = re.compile("[\x00-\x1f\x7f\x85\u2028\u2029]")
# Outside code, GitHub links @user, @org/team, #123, owner/repo#7, https://... and
# www... in the rendered text (so a backslash doesn't stop it). A zero-width space
# after the @ or #, or inside :// and www., leaves the text as it reads, unlinked.
_LINKS = re.compile(r"@|#|://|(?i:www)\.")
_ZWSP = "\u200b"


def cell(text: str) -> str:
    """Safe inside a table cell and inert as Markdown and HTML."""
    escaped = _CONTROL.sub(" ", text).replace("\\", "\\\\").replace("|", "\\|")
    for char in "<>*_[]`#~&":  # & too: &commat; would render as @
        escaped = escaped.replace(char, "\\" + char)
    return _LINKS.sub(_unlinked, escaped)


def code(text: str) -> str:
    """Safe inside a `code span` in a table cell: no backtick can close it early,
    nothing ends the row (code spans link and mention nothing)."""
    return _CONTROL.sub(" ", text).replace("`", "'").replace("|", "\\|")


def _unlinked(match: re.Match[str]) -> str:
    found = match.group()
    return found + _ZWSP if found in "@#" else found[0] + _ZWSP + found[1:]
