"""`pipeline demo` end to end (a real embedded cluster): every task decided, the audit's
rejections and the workers' errors where the workload puts them."""

from __future__ import annotations

import re
import subprocess
import sys

from pipeline.demo import make_tasks
from pipeline.demo_app import LIMITS


def test_demo_runs_and_reports_every_decision() -> None:
    tasks = 600
    work = make_tasks(tasks)
    # flag_outlier writes an undeclared key for a wildly-off reading: the audit rejects it;
    # calibrate raises on a missing offset: the worker's error comes back as failed
    expected_rejected = sum(
        1 for p, a in work if p == "flag_outlier"
        and abs(a["value"]) > 10 * max(abs(x) for x in LIMITS[a["sensor"]]))
    expected_failed = sum(1 for p, a in work if p == "calibrate" and a["offset"] is None)
    out = subprocess.run([sys.executable, "-m", "pipeline", "demo", "--tasks", str(tasks)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    rows = dict(re.findall(r"│ (committed|rejected|failed)\s+│\s+(\d+) │", out.stdout))
    assert {k: int(v) for k, v in rows.items()} == {
        "committed": tasks - expected_rejected - expected_failed,
        "rejected": expected_rejected, "failed": expected_failed}
    assert "undeclared" in out.stdout  # the audit's reason for the rejections
    assert expected_rejected and expected_failed
    assert {p for p, _ in work} >= {"record_temperature", "record_humidity", "record_pressure"}
