"""Markdown tables of benchmark cells: the load first, then the columns that say which cell a row
is, then the measured columns as (key, label, format); a missing value prints as –."""
from __future__ import annotations


def cell(value, fmt: str) -> str:
    return "–" if value is None else fmt.format(value)


def runs_table(runs: list[dict], by: list[tuple[str, str]], columns: list[tuple[str, str, str]]) -> list[str]:
    """by: (header, key) of the identifying columns after the load."""
    lines = ["| " + " | ".join(["load", *(h for h, _ in by), *(label for _, label, _ in columns)]) + " |",
             "|" + "---|" * (1 + len(by) + len(columns))]
    for s in runs:
        cells = [f"{s['load']}x", *(str(s[k]) for _, k in by), *(cell(s[k], fmt) for k, _, fmt in columns)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines
