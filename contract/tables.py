"""Markdown tables for the reports (benchmark, experiments, build, load)."""
from __future__ import annotations

from typing import Sequence


def cell(value, float_format: str = "{:.4f}") -> str:
    if isinstance(value, float):
        return float_format.format(value)
    return "" if value is None else str(value).replace("|", "\\|")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence], align: Sequence[str] | None = None,
                   float_format: str = "{:.4f}") -> str:
    """`align`: one of "l", "r" per column (default left)."""
    marks = {"l": "---", "r": "---:", "c": ":---:"}
    rule = [marks[a] for a in (align or ["l"] * len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(rule) + "|"]
    lines += ["| " + " | ".join(cell(v, float_format) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
