"""The runner's start-up hand-shake: a child is ready when it prints READY on stdout."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.runner import Child, StartError, _await_ready, spawn, stop_children


def _child(code: str) -> Child:
    return Child("test", subprocess.Popen([sys.executable, "-c", code],
                                          stdout=subprocess.PIPE))


def test_ready_after_other_lines_in_the_same_write():
    # One write holding a banner and READY: a buffered readline would return the banner
    # and keep READY in its own buffer, where select cannot see it (it would wait out the
    # whole timeout).
    child = _child("import os, time; os.write(1, b'a banner\\nREADY\\n'); time.sleep(30)")
    try:
        t0 = time.monotonic()
        _await_ready(child, 10.0)
        assert time.monotonic() - t0 < 5
    finally:
        stop_children([child])


def test_ready_split_across_writes():
    child = _child("import os, time; os.write(1, b'REA'); time.sleep(0.2); "
                   "os.write(1, b'DY\\n'); time.sleep(30)")
    try:
        _await_ready(child, 10.0)
    finally:
        stop_children([child])


def test_not_ready_in_time():
    child = _child("import time; print('READY?', flush=True); time.sleep(30)")
    try:
        with pytest.raises(StartError, match=r"not ready after 0\.5s"):
            _await_ready(child, 0.5)
    finally:
        stop_children([child])


def test_exit_before_ready_is_reported_with_its_code(run_dir: Path):
    with pytest.raises(StartError, match="exited with 5 before ready"):
        spawn("broker", ["--run-dir", str(run_dir)], prelude="raise SystemExit(5); ")
