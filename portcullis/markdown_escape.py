"""Text from requests and Terraform made inert in a Markdown comment (GitHub flavour).

Reasons, paths, resource names and messages may come from an attacker (a
crafted request, a pull request's Terraform): they must not format, link or
break out of the table the comment puts them in.
"""

from __future__ import annotations


def cell(text: str) -> str:
    """Safe inside a table cell and inert as Markdown and HTML."""
    escaped = text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")
    for char in "<>*_[]`#":
        escaped = escaped.replace(char, "\\" + char)
    return escaped


def code(text: str) -> str:
    """Safe inside a `code span` in a table cell: no backtick can close it early."""
    return text.replace("`", "'").replace("|", "\\|").replace("\n", " ")
