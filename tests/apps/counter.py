"""Test processes whose correct final state is known."""

from __future__ import annotations

from typing import Any

from pipeline import FollowUp, Signal, StateUpdate, process


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


@process(inputs=["count"], outputs=["count"])
def chain(ctx, n: int) -> StateUpdate:
    """Commits, then (only then) signals and submits a follow-up task."""
    return StateUpdate(data={"count": ctx.get("count", 0) + 1},
                       signals=[Signal("chained", str(n).encode())],
                       tasks=[FollowUp("increment", {"by": 100})])


@process(inputs=[], outputs=["slot"])
def chain_rejected(ctx) -> StateUpdate:
    """Breaks its contract: its signal and follow-up must never be released."""
    return StateUpdate(data={"undeclared": 1}, signals=[Signal("never", b"")],
                       tasks=[FollowUp("increment", {"by": 1000})])
