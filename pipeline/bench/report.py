"""The table `pipeline bench` prints on a terminal (rich)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def print_table(result: dict[str, Any]) -> None:
    table = Table(title=f"pipeline bench {result['mode']} ({result['tasks']:,} tasks, "
                        f"{result['machine']['cpus']} cpus)")
    table.add_column("figure")
    table.add_column("value", justify="right")
    skip = {"mode", "tasks", "machine"}
    for key, value in result.items():
        if key not in skip:
            table.add_row(key, _fmt(value))
    m = result["machine"]
    table.caption = (f"python {m['python']}; load average {m['loadavg_before']:.2f} before, "
                     f"{m['loadavg_after']:.2f} after")
    Console().print(table)


def _fmt(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {_fmt(v)}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(_fmt(v) for v in value)
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)
