"""Processes of `pipeline bench heavy`: each fills a float64 array of `mb` megabytes in the
heavy zone and stamps the moment it returns (CLOCK_MONOTONIC is one clock for every
process of the host), so the benchmark can time everything after the process's own work."""

from __future__ import annotations

import time
from typing import Any

from pipeline.api import StateUpdate, process


def _fill(ctx: Any, key: str, mb: int, value: float) -> Any:
    out = ctx.heavy.alloc(key, (mb * 1_000_000 // 8,), "float64")
    out.fill(value)
    return out


@process(inputs=[], outputs=["heavy.out", "t_return_ns"])
def produce(ctx: Any, mb: int, value: float) -> StateUpdate:
    out = _fill(ctx, "out", mb, value)
    return StateUpdate(heavy={"out": out}, data={"t_return_ns": time.monotonic_ns()})


@process(inputs=[], outputs=["heavy.checked", "t_return_ns"])
def produce_checked(ctx: Any, mb: int, value: float) -> StateUpdate:
    out = _fill(ctx, "checked", mb, value)
    return StateUpdate(heavy={"checked": out}, data={"t_return_ns": time.monotonic_ns()})


RECIPE = """
[process.produce_checked]
rules = [
  { name = "finite-in-range", field = "heavy.checked", finite = true, min = -1e9, max = 1e9,
    level = "B" },
]
"""
