"""Test processes whose correct final state is known."""

from __future__ import annotations

from typing import Any

from pipeline import StateUpdate, process


@process(inputs=["count"], outputs=["count"])
def increment(ctx, by: int = 1) -> dict[str, Any]:
    return {"count": ctx.get("count", 0) + by}


@process(inputs=[], outputs=[], name="put")
def put_undeclared(ctx, key: str, value: Any) -> dict[str, Any]:
    return {key: value}


@process(inputs=["ledger"], outputs=["ledger"])
def append(ctx, item: str) -> StateUpdate:
    return StateUpdate(data={"ledger": [*ctx.get("ledger", []), item]})


@process(inputs=[], outputs=["slot"])
def boom(ctx, message: str = "boom") -> dict[str, Any]:
    raise RuntimeError(message)


@process(inputs=[], outputs=["bucket"])
def slow(ctx, seconds: float, tag: str) -> dict[str, Any]:
    import time

    time.sleep(seconds)
    return {}


@process(inputs=["heavy.frame"], outputs=["heavy.sum_in", "frame_sum"])
def frame_sum(ctx) -> dict[str, Any]:
    frame = ctx.heavy["frame"]
    return {"frame_sum": float(frame.sum())}


@process(inputs=[], outputs=["reading"])
def measure(ctx, value: float) -> dict[str, Any]:
    return {"reading": value}
