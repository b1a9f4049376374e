"""Heavy-zone fixtures: a unique namespace per test, stores, allocators, child processes.

Every test runs in its own namespace under the real /dev/shm. After each test the namespace
directory must be gone (the store fixture's `destroy` is the deployment's teardown); if
anything is left, it is removed and the test fails.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.heavy import HeavyAllocator, HeavyStore, close_readers, purge_namespace
from pipeline.heavy.names import SHM_ROOT, namespace_dir

REPO = Path(__file__).resolve().parents[2]
_seq = itertools.count()


@pytest.fixture(autouse=True)
def ns() -> Iterator[str]:
    name = f"t-{os.getpid()}-{next(_seq)}-{uuid.uuid4().hex[:8]}"
    yield name
    close_readers()
    path = namespace_dir(name)
    left = sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else None
    purge_namespace(path)
    assert left is None, f"heavy namespace {name} left behind: {left}"
    ours = [p.name for p in SHM_ROOT.iterdir() if p.name.startswith(f"pipeline-t-{os.getpid()}-")]
    assert not ours, f"heavy namespaces left in /dev/shm: {ours}"


@pytest.fixture
def store(ns: str) -> Iterator[HeavyStore]:
    s = HeavyStore(ns)
    yield s
    s.destroy()


@pytest.fixture
def alloc(ns: str, store: HeavyStore) -> Iterator[HeavyAllocator]:
    a = HeavyAllocator(ns)
    yield a
    a.close()


class Child:
    """A tests.heavy.child process; lines in, JSON lines out."""

    def __init__(self, *args: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.heavy.child", *args], cwd=REPO, env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def recv(self) -> Any:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, f"child exited early (rc={self.proc.wait(5)})"
        return json.loads(line)

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def finish(self) -> int:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                self.proc.stdin.close()
        rc = self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return rc


@pytest.fixture
def spawn() -> Iterator[Any]:
    children: list[Child] = []

    def start(*args: str) -> Child:
        child = Child(*args)
        children.append(child)
        return child

    yield start
    for child in children:
        if child.proc.poll() is None:
            child.proc.kill()
        child.finish()
