"""Heavy arrays across hosts for real: sink and broker in one network namespace, a worker in
another (plain tcp://; its `heavy_remote` left at `auto`, which must pick the remote mode),
and a subscriber on the sink's side that reads the committed array zero-copy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.heavy import names
from pipeline.heavy.store import purge_namespace
from pipeline.runner import Child, spawn, stop_children
from tests import netns

pytestmark = pytest.mark.timeout(180)
ROOT = Path(__file__).resolve().parents[1]
APP = "tests.apps.heavy_remote"
NAMES = ("frontend", "backend", "control", "updates", "events", "sync")
N = 300_000  # 2.4 MB of float64

_why = netns.unavailable()
if _why is not None:
    pytest.skip(f"network namespaces unavailable: {_why}", allow_module_level=True)

ENDPOINTS = {f"PIPELINE_ENDPOINTS_{n.upper()}": f"tcp://{netns.SERVER_IP}:{7301 + i}"
             for i, n in enumerate(NAMES)}


@pytest.fixture
def pair() -> Iterator[netns.NetPair]:
    with netns.NetPair(f"ph{os.getpid() % 100000}") as p:
        yield p
    assert not netns.exists(p.server) and not netns.exists(p.client)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
    return {**env, **ENDPOINTS, "PYTHONPATH": str(ROOT)}


def _run_in(ns: str, args: list[str]) -> subprocess.CompletedProcess[str]:
    cmd = netns.exec_cmd(ns, [sys.executable, *args])
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=60, cwd=ROOT)


READ = """
import json, sys
import numpy as np
from pipeline import Subscriber
events, sync, ns = sys.argv[1:4]
with Subscriber(events, sync, from_version=0, namespace=ns) as sub:
    snap = sub.next(timeout=20)
    arr = sub.array(snap, "heavy.result")
    out = {"shape": list(arr.shape), "all": bool(np.all(arr == 3.0)),
           "writeable": bool(arr.flags.writeable), "values": snap.values}
    del arr
print(json.dumps(out))
"""


def test_worker_in_another_namespace_commits_a_heavy_output(pair: netns.NetPair,
                                                           tmp_path: Path) -> None:
    ns = f"p{os.getpid()}-netns"
    log = str(tmp_path / "servers.log")
    children: list[Child] = []
    try:
        children.append(spawn("sink", ["--app", APP, "--journal", str(tmp_path / "journal"),
                                       "--namespace", ns], env=ENDPOINTS,
                              prelude=netns.enter(pair.server), log_path=log))
        children.append(spawn("broker", ["--journal", str(tmp_path / "bj")], env=ENDPOINTS,
                              prelude=netns.enter(pair.server), log_path=log))
        children.append(spawn("worker", ["--app", APP, "--name", "far", "--namespace", ns],
                              env=ENDPOINTS, prelude=netns.enter(pair.client),
                              log_path=str(tmp_path / "worker.log")))
        tasks = tmp_path / "tasks.jsonl"
        tasks.write_text(json.dumps({"process": "fill", "args": {"n": N, "value": 3.0}}) + "\n"
                         + json.dumps({"process": "peek", "args": {}}) + "\n")
        out = _run_in(pair.client, ["-m", "pipeline", "publish", "--json", str(tasks),
                                    "--timeout", "30"])
        assert out.returncode == 0, out.stdout + out.stderr
        assert json.loads(out.stdout)["by_status"] == {"committed": 2}
        read = _run_in(pair.server, ["-c", READ, ENDPOINTS["PIPELINE_ENDPOINTS_EVENTS"],
                                     ENDPOINTS["PIPELINE_ENDPOINTS_SYNC"], ns])
        assert read.returncode == 0, read.stderr
        got: dict[str, Any] = json.loads(read.stdout)
        assert got["shape"] == [N] and got["all"] and not got["writeable"]
        assert got["values"]["peek_sum"] == 3.0 * N  # the worker fetched it from the sink
        status = _run_in(pair.server, ["-m", "pipeline", "status", "--once", "--json"])
        assert status.returncode == 0, status.stderr
        counters = json.loads(status.stdout)["sink"]["counters"]
        assert counters["heavy_placed"] == 1 and counters["heavy_served"] == 1, counters
    finally:
        stop_children(children)
        purge_namespace(names.namespace_dir(ns))
