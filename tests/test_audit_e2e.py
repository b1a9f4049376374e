"""Audit, blocking and recovery through the real sink, broker and workers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import Producer, Status
from pipeline.errors import TaskTimeout

pytestmark = pytest.mark.timeout(120)
RECIPE = str(Path(__file__).parent / "recipes" / "measure.toml")


def pipeline_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True,
                          text=True, timeout=60, check=False)


def test_b_threshold_blocks_parks_and_unblock_resumes(cluster_factory):
    cluster = cluster_factory(workers=1, recipes=RECIPE).start()
    with Producer(cluster.endpoints.frontend) as producer:
        first = producer.submit("measure", value=500).result(timeout=20)
        assert first.status is Status.REJECTED and first.rule == "reading-in-range"
        assert first.level == "B"
        second = producer.submit("measure", value=600).result(timeout=20)
        assert second.status is Status.REJECTED
        parked = producer.submit("measure", value=5)
        with pytest.raises(TaskTimeout):
            parked.result(timeout=1.5)  # the broker holds it while the process is blocked
        done = pipeline_cli("unblock", "measure", "--sync", cluster.endpoints.sync,
                            "--control", cluster.endpoints.control, "--json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["unblocked"] is True
        resumed = parked.result(timeout=20)
    assert resumed.status is Status.COMMITTED


def test_s_violation_stops_the_pipeline_with_the_reason(cluster_factory, tmp_path):
    cluster = cluster_factory(workers=1, recipes=RECIPE, log_dir=str(tmp_path)).start()
    with Producer(cluster.endpoints.frontend) as producer:
        decision = producer.submit("measure", value=5e9).result(timeout=20)
    assert decision.status is Status.REJECTED and decision.level == "S"
    assert cluster.sink_child is not None
    code = cluster.sink_child.proc.wait(timeout=20)
    err = (tmp_path / "sink.log").read_text()
    assert code == 3
    assert "reading-not-absurd" in err


def test_sink_killed_mid_run_loses_nothing_and_applies_nothing_twice(cluster_factory):
    cluster = cluster_factory(workers=2, heartbeat_interval_ms=200).start()
    assert cluster.sink_child is not None
    with Producer(cluster.endpoints.frontend) as producer:
        handles = [producer.submit("append", item=f"t{i}") for i in range(300)]
        first = list(producer.as_completed(handles[:60], timeout=60))
        assert len(first) == 60
        os.kill(cluster.sink_child.pid, signal.SIGKILL)
        cluster.sink_child.proc.wait()
        cluster.start_sink()
        decisions = producer.results(handles[60:], timeout=90)
    assert all(d.status in (Status.COMMITTED, Status.DUPLICATE) for d in decisions), [
        (d.status, d.reason) for d in decisions if not d.committed][:5]
    ledger = cluster.state()["ledger"]
    assert sorted(ledger) == sorted(f"t{i}" for i in range(300))


def _journal_after_some_commits(cluster_factory) -> Path:
    cluster = cluster_factory(workers=1).start()
    with Producer(cluster.endpoints.frontend) as producer:
        producer.results([producer.submit("increment", by=1) for _ in range(30)], timeout=30)
    cluster.stop()
    return Path(str(cluster.journal_dir))


def test_flipped_byte_fails_audit_verify_naming_the_record(cluster_factory):
    journal = _journal_after_some_commits(cluster_factory)
    ok = pipeline_cli("audit", "verify", str(journal), "--json")
    assert ok.returncode == 0, ok.stderr
    records = json.loads(ok.stdout)["records_ok"]
    assert records >= 1  # batches of decisions, plus outbox release marks
    seg = sorted(journal.glob("*.seg"))[0]
    data = bytearray(seg.read_bytes())
    data[len(data) // 2] ^= 0x01
    seg.write_bytes(bytes(data))
    bad = pipeline_cli("audit", "verify", str(journal))
    assert bad.returncode == 1
    assert "BROKEN at record" in bad.stdout
    report = json.loads(pipeline_cli("audit", "verify", str(journal), "--json").stdout)
    assert 0 < report["first_bad"] < records


def test_torn_tail_is_repaired_on_open(cluster_factory):
    from pipeline._engine import Engine
    from pipeline.cli_audit import read_decisions

    journal = _journal_after_some_commits(cluster_factory)
    seg = sorted(journal.glob("*.seg"))[-1]
    seg.write_bytes(seg.read_bytes()[:-7])  # the last record (one batch) is now torn
    kept = [row["version"] for row in read_decisions(journal)]
    assert 0 < len(kept) <= 30  # the torn record may hold decisions or only a mark
    engine = Engine(str(journal), fsync="never")
    try:
        assert engine.version == max(kept) == len(kept)
    finally:
        engine.close()
    assert pipeline_cli("audit", "verify", str(journal)).returncode == 0


def test_audit_tail_shows_recent_decisions(cluster_factory):
    journal = _journal_after_some_commits(cluster_factory)
    out = pipeline_cli("audit", "tail", str(journal), "-n", "5", "--json")
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["version"] for r in rows] == [26, 27, 28, 29, 30]
    assert all(r["status"] == "committed" and r["process"] == "increment" for r in rows)
    one = pipeline_cli("audit", "tail", str(journal), "--task", rows[0]["task"], "--json")
    assert [json.loads(line) for line in one.stdout.splitlines()] == rows[:1]
    none = pipeline_cli("audit", "tail", str(journal), "--task", "no-such-task", "--json")
    assert none.returncode == 0 and none.stdout == ""
