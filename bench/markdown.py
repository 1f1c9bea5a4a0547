"""Markdown for the report: tables, and figures written to a precision that fits them."""

from __future__ import annotations

from collections.abc import Sequence


def table(header: Sequence[str], rows: Sequence[Sequence[str]], *, numbers: bool = True) -> str:
    """A Markdown table; with `numbers`, the columns after the first are right-aligned."""
    rest = "---:" if numbers else ":---"
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join([":---"] + [rest] * (len(header) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def ms(value: float) -> str:
    """Milliseconds, to a precision that fits their size."""
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def percent(value: float) -> str:
    """A share as a percentage."""
    return f"{value * 100:.1f} %"


def clients(count: int) -> str:
    """ "1 client", "8 clients"."""
    return f"{count} client" if count == 1 else f"{count} clients"
