"""Text from requests and Terraform made inert in a Markdown comment (GitHub flavour).

Reasons, paths, resource names and messages may come from an attacker (a
crafted request, a pull request's Terraform): they must not format, link,
mention anyone or break out of the table the comment puts them in.
"""

from __future__ import annotations

import re

# Anything that ends a line or a table row (\r too), or a terminal would act on.
_CONTROL = re.compile("[\x00-\x1f\x7f\x85\u2028\u2029]")
# Outside code, GitHub turns text into links after rendering the Markdown (so a
# backslash doesn't stop it): @user, @org/team and e-mail addresses at the @; #1 and
# owner/repo#1 at the #; GH-1; a commit SHA, any 7 to 40 hex digits in a row, alone
# or as user@SHA and owner/repo@SHA; URLs at :// and www. A zero-width space after
# the @, the # and the GH- of GH-1, inside :// and www., and after every sixth hex
# digit of a longer run leaves the text as it reads, unlinked.
_LINKS = re.compile(r"@|#|(?i:gh)-(?=[0-9])|://|(?i:www)\.|[0-9A-Fa-f]{6}(?=[0-9A-Fa-f])")
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
    if found == "://" or found.lower() == "www.":
        return found[0] + _ZWSP + found[1:]
    return found + _ZWSP
