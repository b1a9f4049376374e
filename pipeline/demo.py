"""`pipeline demo`: an embedded deployment running a small, realistic workload."""

from __future__ import annotations

import random
import time
from collections import Counter
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table

from pipeline.demo_app import LIMITS, SENSORS
from pipeline.producer import Producer, TaskHandle
from pipeline.runner import Cluster
from pipeline.subscriber import Subscriber


def make_tasks(n: int, seed: int = 7) -> list[tuple[str, dict[str, Any]]]:
    """Readings for `record_<sensor>`, a few outliers for `flag_outlier`, a few calibrations."""
    rng = random.Random(seed)
    tasks: list[tuple[str, dict[str, Any]]] = []
    for i in range(n):
        sensor = SENSORS[i % len(SENSORS)]
        low, high = LIMITS[sensor]
        value = round(rng.uniform(low, high), 3)
        if i % 50 == 0:
            value = value * (30 if i % 100 == 0 else 1.5)
            tasks.append(("flag_outlier", {"sensor": sensor, "value": value}))
        elif i % 97 == 0:
            tasks.append(("calibrate", {"sensor": sensor, "offset": None if i % 2 else 0.5}))
        else:
            tasks.append((f"record_{sensor}", {"value": value}))
    return tasks


def run_demo(tasks: int = 3000, workers: int = 2) -> int:
    console = Console(stderr=False)
    work = make_tasks(tasks)
    console.print(f"[bold]pipeline demo[/]: {len(work)} tasks, {workers} workers, "
                  "audited by the Rust engine, journaled with a hash chain")
    with Cluster(app="pipeline.demo_app", workers=workers) as cluster:
        ep = cluster.endpoints
        with Producer(ep.frontend) as producer, Subscriber(ep.events, ep.sync) as sub:
            sub.wait_connected()
            started = time.perf_counter()
            handles = [producer.submit(proc, **args) for proc, args in work]
            outcome = _collect(console, producer, handles)
            elapsed = time.perf_counter() - started
            commits = sum(1 for _ in sub.changes(timeout=0.5))
    _summary(console, outcome, elapsed, commits)
    return 0 if sum(outcome["status"].values()) == len(work) else 1


def _collect(console: Console, producer: Producer, handles: list[TaskHandle]
             ) -> dict[str, Any]:
    status: Counter[str] = Counter()
    examples: dict[str, str] = {}
    columns = ("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task("decisions", total=len(handles))
        for decision in producer.as_completed(handles, timeout=120):
            status[decision.status.value] += 1
            if not decision.committed and decision.status.value not in examples:
                examples[decision.status.value] = decision.reason or (
                    f"{decision.error_type}: {decision.error_message}")
            progress.advance(bar)
    return {"status": status, "examples": examples}


def _summary(console: Console, outcome: dict[str, Any], elapsed: float, commits: int) -> None:
    status: Counter[str] = outcome["status"]
    total = sum(status.values())
    table = Table(title="demo summary")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("tasks", str(total))
    for name in ("committed", "rejected", "failed"):
        table.add_row(name, str(status.get(name, 0)))
    table.add_row("commit events seen by a subscriber", str(commits))
    table.add_row("time", f"{elapsed:.2f} s")
    table.add_row("throughput", f"{total / elapsed:,.0f} tasks/s")
    console.print(table)
    for name, reason in outcome["examples"].items():
        console.print(f"[yellow]{name}[/] e.g.: {reason}")
