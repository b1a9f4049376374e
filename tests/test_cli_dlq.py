"""`pipeline dlq` against a real broker (a thread running `serve`) over ipc://."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from brokers import BrokerConfig, serve
from pipeline.cli import main
from pipeline.protocol import Cmd, decode, encode

WAIT_MS = 3000


def _recv(sock: zmq.Socket[Any], cmd: Cmd) -> dict[str, Any]:
    assert sock.poll(WAIT_MS), f"no {cmd.name} in time"
    msg = decode(sock.recv_multipart())
    assert msg.cmd is cmd, (msg.cmd, msg.header)
    return msg.header


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[BrokerConfig]:
    config = BrokerConfig(frontend=f"ipc://{tmp_path}/f", backend=f"ipc://{tmp_path}/b",
                          control=f"ipc://{tmp_path}/c", max_attempts=1,
                          journal_dir=str(tmp_path / "j"))
    ready, stop = threading.Event(), threading.Event()
    thread = threading.Thread(target=serve, args=(config, ready.set, stop))
    thread.start()
    try:
        assert ready.wait(WAIT_MS / 1000)
        yield config
    finally:
        stop.set()
        thread.join(WAIT_MS / 1000)


def _make_dead_letters(config: BrokerConfig, n: int) -> None:
    """Submit n tasks to a worker that leaves: with max_attempts 1 each is a dead letter."""
    ctx: zmq.Context[Any] = zmq.Context()
    prod, worker = ctx.socket(zmq.DEALER), ctx.socket(zmq.DEALER)
    try:
        prod.connect(config.frontend)
        worker.connect(config.backend)
        prod.send_multipart(encode(Cmd.SUBMIT, {"tasks": [
            {"id": f"t{i}", "process": "p", "args": {"i": i}} for i in range(n)]}))
        _recv(prod, Cmd.ACCEPTED)
        worker.send_multipart(encode(Cmd.READY, {"credit": n, "processes": ["p"]}))
        _recv(worker, Cmd.DISPATCH)
        worker.send_multipart(encode(Cmd.DISCONNECT))
        assert len(_recv(prod, Cmd.RESULT)["decisions"]) == n
    finally:
        prod.close(linger=0)
        worker.close(linger=0)
        ctx.term()


@pytest.fixture
def dlq(broker: BrokerConfig, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str]]:
    def run(*argv: str) -> tuple[int, str]:
        command, rest = argv[0], list(argv[1:])
        code = main(["dlq", command, "--run-dir", str(tmp_path / "run"), "--control",
                     broker.control, *rest])
        return code, capsys.readouterr().out
    return run


def test_list_show_requeue_purge(broker: BrokerConfig,
                                 dlq: Callable[..., tuple[int, str]]) -> None:
    _make_dead_letters(broker, 3)
    code, out = dlq("list", "--json")
    listed = json.loads(out)
    assert code == 0 and listed["total"] == 3 and listed["affected"] == ["t0", "t1", "t2"]
    assert "disconnect" in listed["items"][0]["reason"]
    code, out = dlq("list")  # piped: a plain table
    assert code == 0 and "dead letters (3)" in out and "t1" in out
    code, out = dlq("show", "t1", "--json")
    assert code == 0 and json.loads(out)["task"]["args"] == {"i": 1}
    code, out = dlq("show", "t1")
    assert code == 0 and "reason" in out
    assert dlq("show", "nope")[0] == 2
    code, out = dlq("requeue", "t0", "nope", "--json")
    assert code == 2 and json.loads(out) == {"requeued": ["t0"], "missing": ["nope"],
                                             "total": 2}
    assert dlq("purge")[0] == 1  # neither ids nor --all
    code, out = dlq("purge", "--all")
    assert code == 0 and "purged 2 dead letter(s); 0 left" in out
    assert json.loads(dlq("list", "--json")[1])["total"] == 0


def test_an_unreachable_broker_is_exit_code_1(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["dlq", "list", "--run-dir", str(tmp_path), "--control",
                 f"ipc://{tmp_path}/nobody", "--timeout", "0.2"])
    assert code == 1 and "no answer" in capsys.readouterr().out
