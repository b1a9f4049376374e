"""The operator commands, each run as a subprocess against a real cluster, output checked."""

from __future__ import annotations

import json
import os
import pty
import selectors
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from pipeline import Producer
from pipeline.config import ENDPOINT_NAMES
from pipeline.runner import Cluster

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parents[1]
BLOCK_BOOM = '[process.boom]\nmax_threshold = 2\ncount = ["exception"]\n'


def cli_env(cluster: Cluster | None = None, **extra: str) -> dict[str, str]:
    """The environment of a `pipeline` subprocess: endpoints through PIPELINE_ENDPOINTS_*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
    env["PYTHONPATH"] = str(ROOT)
    if cluster is not None:
        for name in ENDPOINT_NAMES:
            env[f"PIPELINE_ENDPOINTS_{name.upper()}"] = getattr(cluster.endpoints, name)
    return {**env, **extra}


def pipeline(*args: str, env: dict[str, str], timeout: float = 60
             ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True,
                          text=True, env=env, timeout=timeout, cwd=ROOT)


def status_json(env: dict[str, str]) -> dict[str, Any]:
    out = pipeline("status", "--once", "--json", env=env)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def write_tasks(path: Path, tasks: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(t) + "\n" for t in tasks))
    return path


@pytest.fixture
def cluster(cluster_factory: Any) -> Cluster:
    return cluster_factory(workers=2).start()


def test_publish_prints_a_table_of_decisions(cluster: Cluster, tmp_path: Path) -> None:
    tasks = [{"process": "increment", "args": {"by": i}} for i in range(30)]
    tasks += [{"process": "put", "args": {"key": "x", "value": 1}},
              {"process": "boom", "args": {"message": "sensor offline"}, "id": "boom-1"}]
    out = pipeline("publish", str(write_tasks(tmp_path / "t.jsonl", tasks)),
                   env=cli_env(cluster))
    assert out.returncode == 0, out.stderr
    rows = {tuple(line.split()) for line in out.stdout.splitlines()}
    assert ("increment", "committed", "30") in rows
    assert ("put", "rejected", "1") in rows
    assert ("boom", "failed", "1") in rows
    assert "RuntimeError: sensor offline" in out.stdout
    assert "\x1b[" not in out.stdout


def test_publish_json_lists_every_decision(cluster: Cluster, tmp_path: Path) -> None:
    tasks = [{"process": "append", "args": {"item": f"i{i}"}, "id": f"t{i}"} for i in range(10)]
    out = pipeline("publish", "--json", str(write_tasks(tmp_path / "t.jsonl", tasks)),
                   env=cli_env(cluster))
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["by_status"] == {"committed": 10} and doc["missing"] == []
    assert sorted(d["task"] for d in doc["decisions"]) == sorted(f"t{i}" for i in range(10))
    assert sorted(d["version"] for d in doc["decisions"]) == list(range(1, 11))


def test_publish_refuses_a_bad_line_with_its_number(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"process": "increment", "args": {}}\n\n{"args": {}}\n')
    out = pipeline("publish", str(path), env=cli_env(PIPELINE_ENDPOINTS_RUN_DIR=str(tmp_path)))
    assert out.returncode == 2
    assert f"{path}:3" in out.stderr


def test_status_once_reports_workers_version_and_journal(cluster: Cluster,
                                                         tmp_path: Path) -> None:
    env = cli_env(cluster)
    with Producer(cluster.endpoints.frontend) as producer:
        producer.results([producer.submit("increment") for _ in range(7)], timeout=30)
    out = pipeline("status", "--once", env=env)
    assert out.returncode == 0, out.stderr
    lines = [ln.split() for ln in out.stdout.splitlines()]
    assert ["state", "version", "7"] in lines
    assert ["workers", "2"] in lines
    assert ["broker", "up"] in lines and ["sink", "up"] in lines
    journal = next(ln for ln in lines if ln[:2] == ["journal", "bytes"])
    assert int(journal[2]) > 0
    snap = status_json(env)
    assert snap["sink"]["version"] == 7 and snap["broker"]["sink"] is True
    assert len(snap["broker"]["workers"]) == 2
    assert snap["broker"]["counters"]["decided.committed"] == 7


def test_status_refreshes_and_shows_rates(cluster: Cluster) -> None:
    out = pipeline("status", "--interval", "0.2", "--count", "2", env=cli_env(cluster))
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("pipeline:") == 2, "two refreshes"
    assert "committed/s" in out.stdout, "rates once two samples exist"


def test_status_without_a_cluster_fails_fast(tmp_path: Path) -> None:
    env = cli_env(PIPELINE_ENDPOINTS_RUN_DIR=str(tmp_path))
    out = pipeline("status", "--once", "--timeout", "0.3", env=env)
    assert out.returncode == 1
    assert "no answer from" in out.stdout


def test_status_on_a_terminal_draws_tables(cluster: Cluster) -> None:
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "status", "--once"],
                            stdout=follower, stderr=subprocess.PIPE, env=cli_env(cluster),
                            cwd=ROOT)
    os.close(follower)
    text = _read_pty(leader, proc)
    assert proc.returncode == 0
    assert "state version" in text and ("─" in text or "━" in text), text[:500]


def _read_pty(fd: int, proc: subprocess.Popen[bytes], timeout_s: float = 30) -> str:
    chunks, deadline = [], time.monotonic() + timeout_s
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if sel.select(timeout=0.5):
                try:
                    data = os.read(fd, 65536)
                except OSError:  # the child closed its end
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
    os.close(fd)
    proc.wait(timeout=10)
    if proc.stderr is not None:
        proc.stderr.close()
    return b"".join(chunks).decode("utf-8", "replace")


def test_tail_prints_commits_as_they_happen(cluster: Cluster) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "tail", "--json", "--count", "5"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=cli_env(cluster), cwd=ROOT)
    try:
        _await_line(proc, "tailing commits")
        with Producer(cluster.endpoints.frontend) as producer:
            producer.results([producer.submit("increment", by=2) for _ in range(5)],
                             timeout=30)
        stdout, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    changes = [json.loads(line) for line in stdout.splitlines()]
    assert [c["version"] for c in changes] == [1, 2, 3, 4, 5]
    assert [c["values"]["count"] for c in changes] == [2, 4, 6, 8, 10]
    assert all(c["process"] == "increment" for c in changes)


def _await_line(proc: subprocess.Popen[str], text: str, timeout_s: float = 20) -> None:
    """Wait (bounded) for a line on the child's stderr."""
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout_s
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stderr, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if sel.select(timeout=max(0.0, deadline - time.monotonic())):
                line = proc.stderr.readline()
                if text in line:
                    return
                if not line:
                    break
    raise AssertionError(f"no {text!r} from the child")


def test_tail_plain_lines(cluster: Cluster) -> None:
    with Producer(cluster.endpoints.frontend) as producer:
        producer.submit("append", item="a").result(timeout=20)
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "tail", "--count", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=cli_env(cluster), cwd=ROOT)
    try:
        _await_line(proc, "tailing commits after version 1")
        with Producer(cluster.endpoints.frontend) as producer:
            tid = producer.submit("append", item="b").id
        stdout, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert stdout.split() == ["v2", "append", tid, 'ledger=["a",', '"b"]']


def test_unblock_releases_a_blocked_process(cluster_factory: Any, tmp_path: Path) -> None:
    recipes = tmp_path / "recipes.toml"
    recipes.write_text(BLOCK_BOOM)
    cluster = cluster_factory(workers=1, recipes=str(recipes)).start()
    env = cli_env(cluster)
    with Producer(cluster.endpoints.frontend) as producer:
        for _ in range(2):
            producer.submit("boom").result(timeout=20)
    snap = _await_status(env, lambda s: s["broker"]["blocked"])
    assert snap["sink"]["blocked"] == ["boom"]
    assert snap["broker"]["blocked"][0]["process"] == "boom"
    assert "boom" in pipeline("status", "--once", env=env).stdout.split("blocked processes")[1]
    out = pipeline("unblock", "boom", env=env)
    assert (out.returncode, out.stdout.strip()) == (0, "process boom unblocked")
    snap = _await_status(env, lambda s: not s["broker"]["blocked"])
    assert snap["sink"]["blocked"] == []
    out = pipeline("unblock", "boom", "--json", env=env)
    assert json.loads(out.stdout) == {"process": "boom", "unblocked": False}


def _await_status(env: dict[str, str], done: Any, timeout_s: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        snap = status_json(env)
        if done(snap):
            return snap
        assert time.monotonic() < deadline, f"status never reached the condition: {snap}"


def test_unblock_without_a_sink_fails(tmp_path: Path) -> None:
    env = cli_env(PIPELINE_ENDPOINTS_RUN_DIR=str(tmp_path))
    out = pipeline("unblock", "p", "--timeout", "0.3", env=env)
    assert out.returncode == 1 and "no answer" in out.stderr


def test_doctor_passes_here_and_fails_with_the_fix(tmp_path: Path) -> None:
    env = cli_env(PIPELINE_HEAVY_NAMESPACE=f"doc{os.getpid()}")
    out = pipeline("doctor", "--min-shm-bytes", "1048576", env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.splitlines()[0].split()[:2] == ["ok", "exists:"]
    out = pipeline("doctor", "--min-shm-bytes", str(1 << 60), "--json", env=env)
    assert out.returncode == 1
    doc = json.loads(out.stdout)
    size = next(f for f in doc["findings"] if f["check"] == "size")
    assert doc["ok"] is False and size["level"] == "error" and "shm_size" in size["fix"]
    out = pipeline("doctor", "--min-shm-bytes", str(1 << 60), env=env)
    assert "fix: give /dev/shm more room" in out.stdout
