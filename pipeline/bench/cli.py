"""`pipeline bench MODE`: throughput, latency, scaling (the whole pipeline against two
baselines measured in the same run), engine (the Rust engine alone), heavy (arrays through
shared memory) and soak (many small tasks, watching broker and sink memory).

A table on a terminal, or with `--json` one JSON object. See docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from typing import Any

# The benchmarks use no BLAS; OpenBLAS's idle threads would compete for the machine's cores
# with the processes being measured (numpy is imported later, by the modes).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

MODES = ("throughput", "latency", "scaling", "engine", "heavy", "soak")
DEFAULT_TASKS = {"throughput": 100_000, "latency": 10_000, "scaling": 2_000,
                 "engine": 1_000_000, "heavy": 5, "soak": 1_000_000}


def register(sub: Any) -> None:
    p = sub.add_parser("bench", help="measure throughput, latency, scaling or the engine")
    p.add_argument("mode", choices=MODES)
    p.add_argument("--tasks", type=int, default=None,
                   help="tasks (latency: samples; scaling: per worker count; engine: "
                        "updates); default " + ", ".join(f"{m} {n:,}" for m, n in
                                                         DEFAULT_TASKS.items()))
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes (default 2; scaling: the largest count, default "
                        "every core)")
    p.add_argument("--scan-mb", type=int, default=100,
                   help="engine: size of the float64 array scanned (MB)")
    p.add_argument("--sizes", default="1,10,100",
                   help="heavy: array sizes in MB, comma-separated (--tasks: runs per size)")
    p.add_argument("--dedup-max-entries", type=int, default=None,
                   help="soak: the sink's de-duplication bound (default 100,000, so that "
                        "the table fills within the run)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    from pipeline.bench import modes

    tasks = args.tasks if args.tasks is not None else DEFAULT_TASKS[args.mode]
    workers = args.workers or ((os.cpu_count() or 1) if args.mode == "scaling" else 2)
    if tasks < 1 or workers < 1:
        print("pipeline bench: --tasks and --workers must be >= 1", file=sys.stderr)
        return 2
    machine = _machine()
    result: dict[str, Any] = {"mode": args.mode, "tasks": tasks}
    t0 = time.perf_counter()
    if args.mode == "heavy":
        from pipeline.bench.heavy import run_heavy

        sizes = tuple(int(x) for x in args.sizes.split(","))
        result.update(run_heavy(tasks, sizes))
    elif args.mode == "soak":
        from pipeline.bench.soak import SOAK_DEDUP_MAX_ENTRIES, run_soak

        bound = args.dedup_max_entries
        result.update(run_soak(tasks, workers, dedup_max_entries=SOAK_DEDUP_MAX_ENTRIES
                               if bound is None else bound))
    else:
        result.update(modes.run(args.mode, tasks, workers,
                                scan_bytes=args.scan_mb * 1_000_000))
    result["elapsed_s"] = round(time.perf_counter() - t0, 2)
    machine["loadavg_after"] = os.getloadavg()[0]
    result["machine"] = machine
    if args.json:
        print(json.dumps(result))
    else:
        from pipeline.bench.report import print_table
        print_table(result)
    return 0


def _machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "loadavg_before": os.getloadavg()[0]}
