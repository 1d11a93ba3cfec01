"""Counts in messages: "1 finding", "2 findings", never "1 findings"."""


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """`count` and the noun, singular for exactly one (`plural` when not noun + "s")."""
    return f"{count} {noun if count == 1 else plural or noun + 's'}"
