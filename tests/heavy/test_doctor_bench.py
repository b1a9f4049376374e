"""Preflight findings and the micro benchmark's shape (figures are not asserted here)."""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.heavy import doctor
from pipeline.heavy.bench import bench_alloc_fill, bench_inline
from pipeline.heavy.names import SHM_ROOT


def test_doctor_passes_on_this_host(ns: str) -> None:
    findings = doctor(min_bytes=1 << 20, namespace=ns)
    assert [f.check for f in findings] == ["exists", "tmpfs", "writable", "size", "namespace"]
    assert all(f.level == "ok" for f in findings), findings
    assert not list(SHM_ROOT.glob(f"pipeline-doctor-{os.getpid()}"))


def test_doctor_reports_a_small_dev_shm_with_the_fix() -> None:
    total = os.statvfs(SHM_ROOT)
    too_big = total.f_blocks * total.f_frsize * 2
    (size,) = [f for f in doctor(min_bytes=too_big) if f.check == "size"]
    assert size.level == "error" and not size.ok
    assert "shm_size: 2gb" in size.fix and "--shm-size" in size.fix and "remount" in size.fix


def test_doctor_reports_a_missing_dev_shm(tmp_path: Path) -> None:
    (finding,) = doctor(root=tmp_path / "nope")
    assert finding.level == "error" and "tmpfs" in finding.fix


def test_doctor_warns_on_a_directory_that_is_not_tmpfs(tmp_path: Path) -> None:
    by_check = {f.check: f for f in doctor(root=tmp_path, min_bytes=1)}
    assert by_check["tmpfs"].level in ("warn", "ok")
    assert by_check["writable"].level == "ok"


def test_doctor_refuses_a_namespace_open_to_others(ns: str) -> None:
    path = SHM_ROOT / f"pipeline-{ns}"
    path.mkdir(mode=0o755)
    path.chmod(0o755)
    try:
        (finding,) = [f for f in doctor(namespace=ns, min_bytes=1) if f.check == "namespace"]
        assert finding.level == "error" and "open to other users" in finding.message
    finally:
        path.rmdir()


def test_bench_alloc_fill_reports_both_sides() -> None:
    figures = bench_alloc_fill(size_mb=4, repeat=2)
    assert figures["correct"] is True
    for key in ("alloc_fill_ms", "numpy_fill_ms", "numpy_full_ms", "ratio",
                "foreign_pool_alloc_fill_ms", "cold_alloc_fill_ms"):
        assert figures[key] > 0, key


def test_bench_inline_reports_each_size() -> None:
    figures = bench_inline(sizes=(1024, 1 << 17), repeat=5)
    assert [r["bytes"] for r in figures["rows"]] == [1024, 1 << 17]
    assert all(r["correct"] for r in figures["rows"])
