"""CurveZMQ across network namespaces: broker and sink in one, clients in another, over TCP.

A client whose key is in the allow-list works (and the journal records its allow-list name);
an unknown key is refused by the ZAP handler of both servers.
"""

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
from pipeline.runner import Child, StartError, spawn, stop_children
from pipeline.security import generate_keys
from tests import netns

pytestmark = pytest.mark.timeout(180)
ROOT = Path(__file__).resolve().parents[1]
NAMES = ("frontend", "backend", "control", "updates", "events", "sync")

_why = netns.unavailable()
if _why is not None:
    pytest.skip(f"network namespaces unavailable: {_why}", allow_module_level=True)


def write_config(path: Path, keys: Path, client: str) -> Path:
    endpoints = "\n".join(f'{n} = "tcp://{netns.SERVER_IP}:{7101 + i}"'
                          for i, n in enumerate(NAMES))
    path.write_text(f"""
[endpoints]
{endpoints}

[security]
curve = true
server_secret = "{keys / 'server.key_secret'}"
server_public = "{keys / 'server.key'}"
client_secret = "{keys / f'{client}.key_secret'}"
allow = "{keys / 'allow'}"
""")
    return path


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    base = tmp_path / "keys"
    for name in ("server", "w1", "ops", "intruder"):
        generate_keys(base, name)
    (base / "allow").mkdir()
    for name in ("w1", "ops"):  # the intruder's key is not allowed
        (base / "allow" / f"{name}.key").write_bytes((base / f"{name}.key").read_bytes())
    return base


@pytest.fixture
def pair() -> Iterator[netns.NetPair]:
    with netns.NetPair(f"pl{os.getpid() % 100000}") as p:
        yield p
    assert not netns.exists(p.server) and not netns.exists(p.client)


@pytest.fixture
def servers(pair: netns.NetPair, keys: Path, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Sink and broker in the server namespace, logging to a file."""
    config = write_config(tmp_path / "server.toml", keys, "w1")
    env = {"PIPELINE_CONFIG": str(config), "PIPELINE_LOG_LEVEL": "INFO"}
    log_path = tmp_path / "servers.log"
    children: list[Child] = []
    journal = tmp_path / "journal"
    ns = f"curve{os.getpid()}"
    try:
        children.append(spawn("sink", ["--app", "tests.apps.counter", "--journal",
                                       str(journal), "--namespace", ns], env=env,
                              prelude=netns.enter(pair.server), log_path=str(log_path)))
        children.append(spawn("broker", [], env=env, prelude=netns.enter(pair.server),
                              log_path=str(log_path)))
        yield {"log": log_path, "journal": journal, "namespace": ns}
    finally:
        stop_children(children)
        purge_namespace(names.namespace_dir(ns))  # the deployment's teardown


def client_env(keys: Path, tmp_path: Path, name: str) -> dict[str, str]:
    config = write_config(tmp_path / f"{name}.toml", keys, name)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
    return {**env, "PYTHONPATH": str(ROOT), "PIPELINE_CONFIG": str(config)}


def in_client_ns(pair: netns.NetPair, env: dict[str, str], *args: str
                 ) -> subprocess.CompletedProcess[str]:
    cmd = netns.exec_cmd(pair.client, [sys.executable, "-m", "pipeline", *args])
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60, cwd=ROOT)


def journal_workers(journal: Path) -> list[str]:
    """The `worker` field of every journalled decision (format: docs/JOURNAL.md)."""
    from pipeline.cli_audit import read_decisions

    return [row["worker"] for row in read_decisions(journal)]


def test_known_keys_work_across_namespaces(pair: netns.NetPair, servers: dict[str, Any],
                                           keys: Path, tmp_path: Path) -> None:
    worker_env = {"PIPELINE_CONFIG": str(write_config(tmp_path / "w.toml", keys, "w1"))}
    worker = spawn("worker", ["--app", "tests.apps.counter", "--name", "w1", "--namespace",
                              servers["namespace"]], env=worker_env,
                   prelude=netns.enter(pair.client), log_path=str(tmp_path / "w.log"))
    try:
        tasks = tmp_path / "tasks.jsonl"
        tasks.write_text("".join(json.dumps({"process": "increment", "args": {"by": 2}}) + "\n"
                                 for _ in range(10)))
        out = in_client_ns(pair, client_env(keys, tmp_path, "ops"), "publish", "--json",
                           str(tasks), "--timeout", "30")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["by_status"] == {"committed": 10}
        status = in_client_ns(pair, client_env(keys, tmp_path, "ops"), "status", "--once",
                              "--json")
        assert status.returncode == 0, status.stderr
        snap = json.loads(status.stdout)
        assert snap["sink"]["version"] == 10
        assert [w["name"] for w in snap["broker"]["workers"]] == ["w1"]
    finally:
        stop_children([worker])
    assert journal_workers(servers["journal"]) == ["w1"] * 10


def test_unknown_key_is_refused(pair: netns.NetPair, servers: dict[str, Any], keys: Path,
                                tmp_path: Path) -> None:
    env = client_env(keys, tmp_path, "intruder")
    out = in_client_ns(pair, env, "status", "--once", "--timeout", "1.5")
    assert out.returncode == 1
    assert out.stdout.count("no answer from") == 2, out.stdout
    worker_env = {"PIPELINE_CONFIG": env["PIPELINE_CONFIG"]}
    with pytest.raises(StartError):
        spawn("worker", ["--app", "tests.apps.counter", "--namespace", servers["namespace"]],
              env=worker_env, prelude=netns.enter(pair.client),
              log_path=str(tmp_path / "intruder.log"), ready_timeout_s=3)
    refusals = servers["log"].read_text().count("CURVE client refused: unknown key")
    assert refusals >= 2, "both the broker and the sink refused the intruder"
    ok = in_client_ns(pair, client_env(keys, tmp_path, "ops"), "status", "--once")
    assert ok.returncode == 0, ok.stdout + ok.stderr


def test_plain_client_cannot_talk_to_a_curve_server(pair: netns.NetPair,
                                                    servers: dict[str, Any],
                                                    tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
    env["PYTHONPATH"] = str(ROOT)
    for i, n in enumerate(NAMES):
        env[f"PIPELINE_ENDPOINTS_{n.upper()}"] = f"tcp://{netns.SERVER_IP}:{7101 + i}"
    out = in_client_ns(pair, env, "status", "--once", "--timeout", "1")
    assert out.returncode == 1 and out.stdout.count("no answer from") == 2
