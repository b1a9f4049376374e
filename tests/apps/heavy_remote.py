"""Processes for heavy arrays across hosts: the frames app plus a reader and a producer of a
plain numpy array (not from `ctx.heavy.alloc`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline import StateUpdate, process
from tests.apps.frames import fill, inspect, scale, tamper, total

__all__ = ["fill", "given", "inspect", "peek", "scale", "tamper", "total"]


@process(inputs=["heavy.result"], outputs=["peek_sum"])
def peek(ctx) -> dict[str, Any]:
    arr = ctx.heavy["result"]
    if arr.flags.writeable:
        raise AssertionError("a heavy input must be read-only")
    return {"peek_sum": float(arr.sum())}


@process(inputs=[], outputs=["heavy.result"])
def given(ctx, n: int, value: float) -> StateUpdate:
    return StateUpdate(heavy={"result": np.full(n, value)})
