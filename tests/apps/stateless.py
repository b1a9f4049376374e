"""Processes that declare no state key: a worker serving only these does not follow the
commit stream (pipeline/worker.py, `Worker.following`)."""

from __future__ import annotations

from typing import Any

from pipeline import StateUpdate, process


@process(inputs=[], outputs=[])
def tick(ctx: Any, i: int = 0) -> dict[str, Any]:
    return {}


@process(inputs=[], outputs=[])
def stamp(ctx: Any) -> StateUpdate:
    """Commits only if no other commit came between its context and its update."""
    return StateUpdate(assert_version=ctx.version)
