"""Processes for the chaos test: K counters, one per process, whose final state is known.

Task i runs `bump{i % K}` with `i`: it adds 1 to the counter's count and i to its sum, so the
final value of `c{k}` is [number of tasks of k committed, sum of their i] - a task lost or
committed twice shows in both figures.
"""

from __future__ import annotations

from typing import Any

from pipeline import process

KEYS = 32


def _bumper(key: str) -> Any:
    def bump(ctx: Any, i: int) -> dict[str, Any]:
        count, total = ctx.get(key, [0, 0])
        return {key: [count + 1, total + i]}
    return bump


for _k in range(KEYS):
    globals()[f"bump{_k}"] = process(inputs=[f"c{_k}"], outputs=[f"c{_k}"],
                                     name=f"bump{_k}")(_bumper(f"c{_k}"))
