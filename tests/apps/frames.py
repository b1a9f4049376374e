"""Processes over heavy arrays (the heavy zone)."""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline import StateUpdate, process

_kept: list[np.ndarray] = []  # arrays a process keeps after returning them (tamper test)


@process(inputs=["heavy.frame"], outputs=["heavy.scaled", "frame_sum"])
def scale(ctx, factor: float = 2.0) -> StateUpdate:
    frame = ctx.heavy["frame"]
    out = ctx.heavy.alloc("scaled", frame.shape, frame.dtype)
    np.multiply(frame, factor, out=out)
    return StateUpdate(data={"frame_sum": float(frame.sum())}, heavy={"scaled": out})


@process(inputs=["heavy.scaled"], outputs=["scaled_sum"])
def total(ctx) -> dict[str, Any]:
    return {"scaled_sum": float(ctx.heavy["scaled"].sum())}


@process(inputs=["heavy.result"], outputs=["heavy.result"])
def fill(ctx, n: int, value: float, keep: bool = False) -> StateUpdate:
    out = ctx.heavy.alloc("result", (n,), "float64")
    out[:] = value
    if keep:
        _kept.append(out)
    return StateUpdate(heavy={"result": out})


@process(inputs=[], outputs=["tampered"])
def tamper(ctx) -> dict[str, Any]:
    _kept[-1][0] = -1.0  # must raise: the array was exported
    return {"tampered": True}


@process(inputs=["heavy.frame"], outputs=["seen"])
def inspect(ctx) -> dict[str, Any]:
    return {"seen": ctx.heavy.available()}
