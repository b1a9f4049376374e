"""Shared fixtures: every test leaves no child process and no shared-memory segment behind."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.runner import Cluster

SHM = Path("/dev/shm")


def _children() -> set[int]:
    me = str(os.getpid())
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 1 and fields[1] == me and fields[0] != "Z":
            found.add(int(entry.name))
    return found


def _our_shm() -> set[str]:
    # Namespaces made by this test process carry its pid (Cluster: p<pid>-..., heavy tests:
    # t-<pid>-...): other sessions' runs on the same machine are not ours to judge.
    pid = f"{os.getpid()}-"
    return {p.name for p in SHM.iterdir() if p.name.startswith("pipeline-") and pid in p.name}


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    shm_before = _our_shm()
    yield
    leaked_children = _children()
    leaked_shm = _our_shm() - shm_before
    assert not leaked_children, f"child processes left running: {sorted(leaked_children)}"
    assert not leaked_shm, f"shared-memory segments left behind: {sorted(leaked_shm)}"


@pytest.fixture
def run_dir() -> Iterator[Path]:
    # ipc:// paths are limited to ~107 bytes: keep the run directory short.
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="pl-"))
    yield d
    import shutil

    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def cluster_factory(run_dir: Path) -> Iterator:
    made: list[Cluster] = []

    def make(app: str = "tests.apps.counter", workers: int = 2, **kw) -> Cluster:
        c = Cluster(app=app, workers=workers, run_dir=str(run_dir / f"c{len(made)}"), **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.stop()
