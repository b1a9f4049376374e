"""Processes the benchmarks run, and the same work as plain functions for the baselines.

`small` is the "small task": it reads nothing and writes nothing, so no two tasks contend
on a key (key-level compare-and-swap never conflicts), yet every update is still decoded,
checked against its contract, audited, journaled and committed by the sink.
`spin` is CPU-bound: a pure-Python loop of about a millisecond (`SPIN_LOOPS` iterations).
"""

from __future__ import annotations

from typing import Any

from pipeline.api import process

SPIN_LOOPS = 20_000


def small_work(i: int = 0) -> int:
    """The baselines' small task: as little work as the pipeline's `small`."""
    return i


def spin_work(loops: int = SPIN_LOOPS) -> int:
    """A pure-Python loop holding one core for about a millisecond."""
    acc = 0
    for k in range(loops):
        acc += k * k
    return acc & 0xFFFF


@process(inputs=[], outputs=[])
def small(ctx: Any, i: int = 0) -> dict[str, Any]:
    small_work(i)
    return {}


@process(inputs=[], outputs=[])
def spin(ctx: Any, loops: int = SPIN_LOOPS) -> dict[str, Any]:
    spin_work(loops)
    return {}


WORK = {"small": small_work, "spin": spin_work}
