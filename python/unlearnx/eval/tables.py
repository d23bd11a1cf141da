"""Markdown tables of evaluation results (shared by the classification and the LLM suites).

Kept apart from eval/suite.py, which dispatches to the LLM suites, so that eval/llm can use the
table without importing the dispatcher (no import circle).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = ["results_table"]


def _format(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and (value != 0 and abs(value) < 0.01 or abs(value) >= 1e6):
        return f"{value:.2e}"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def results_table(rows: Mapping[str, Mapping[str, float]], *, columns: Sequence[str] | None = None) -> str:
    """A Markdown table: one row per method (Retrain first, then in the given order), one column per
    metric. Default columns: every metric in order of first appearance, then "Avg.Gap", "RTE-s",
    "RTE-ratio"; the per-metric "gap/<name>" columns only when named in `columns`. Missing entries
    show "–"; numbers have 2 decimals (scientific notation below 0.01)."""
    if not isinstance(rows, Mapping) or not rows:
        raise ValueError("rows must be a non-empty mapping of method name -> metrics dict")
    names = sorted(rows, key=lambda n: str(n).lower() != "retrain")  # stable: keeps the given order otherwise
    for n in names:
        if not isinstance(rows[n], Mapping):
            raise ValueError(f"rows[{n!r}] must be a metrics dict, got {type(rows[n]).__name__}")
    if columns is None:
        seen = list(dict.fromkeys(k for n in names for k in rows[n]))
        tail = ("Avg.Gap", "RTE-s", "RTE-ratio")
        columns = [c for c in seen if c not in tail and not c.startswith("gap/")] + [c for c in tail if c in seen]
    else:
        columns = list(columns)
        if not columns:
            raise ValueError("columns must name at least one metric")
    lines = ["| Method | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for n in names:
        lines.append(f"| {n} | " + " | ".join(_format(rows[n].get(c)) for c in columns) + " |")
    return "\n".join(lines) + "\n"
