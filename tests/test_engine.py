"""The Rust engine through its Python API (pipeline._engine): decisions, events, replay,
journal verification and error classes."""

from __future__ import annotations

from pathlib import Path

import msgpack
import pytest

from pipeline import errors
from pipeline._engine import Engine, verify_journal


def update(task: str, reads: dict[str, int], data: dict[str, object], **extra: object) -> dict:
    return {"task": task, "process": "p", "attempt": 1, "worker": "w", "reads": reads,
            "data": data, **extra}


def frame(*updates: dict) -> bytes:
    return msgpack.packb({"updates": list(updates)}, use_bin_type=True)


def unpack(b: bytes) -> dict:
    return msgpack.unpackb(b, raw=False, strict_map_key=True)


@pytest.fixture
def engine(tmp_path: Path):
    e = Engine(str(tmp_path / "j"), fsync="never")
    e.register("p", ["in"], ["a", "b"])
    yield e
    e.close()


def test_commit_decisions_and_events(engine: Engine) -> None:
    sig = {"topic": "t", "payload": b"\x00"}
    batch = engine.apply_batch([frame(update("t1", {"a": 0}, {"a": {"x": [1, 2]}},
                                             signals=[sig]))])
    assert (len(batch), batch.commits, batch.malformed, batch.stop) == (1, 1, [], None)
    d = batch[0]
    assert (d.task, d.status, d.process, d.version, d.reason, d.rule) == (
        "t1", "committed", "p", 1, "", None)
    wire = unpack(batch.decisions)["decisions"][0]
    assert set(wire) == {"task", "status", "process", "attempt", "version", "reason", "rule",
                         "level", "retry_after_ms", "error", "blocked"}
    events = unpack(batch.events)["events"]
    assert events == [{"version": 1, "task": "t1", "process": "p",
                       "writes": {"a": {"x": [1, 2]}}, "signals": [sig]}]
    assert engine.get("a") == (1, msgpack.packb({"x": [1, 2]}))
    assert unpack(engine.snapshot()) == {"version": 1, "state": {"a": [1, {"x": [1, 2]}]}}


def test_conflict_duplicate_failed_rejected_and_malformed(engine: Engine) -> None:
    err = {"type": "ValueError", "message": "boom", "traceback": ""}
    batch = engine.apply_batch([
        frame(update("t1", {"a": 0}, {"a": 1}), update("t2", {"a": 0}, {"a": 2}),
              update("t1", {"a": 1}, {"a": 3}), update("t3", {}, {}, error=err),
              update("t4", {"z": 0}, {"z": 1})),
        b"\xc1",
    ])
    assert [d.status for d in batch] == ["committed", "conflict", "duplicate", "failed",
                                         "rejected"]
    conflict, dup, failed, rejected = batch[1], batch[2], batch[3], batch[-1]
    assert (conflict.version, conflict.rule) == (1, "cas") and conflict.retry_after_ms > 0
    assert (dup.version, dup.attempt) == (1, 1)
    assert (failed.error_type, failed.error_message) == ("ValueError", "boom")
    assert rejected.rule == "contract"
    assert len(batch.malformed) == 1
    assert engine.version == 1
    with pytest.raises(IndexError):
        batch[5]


def test_replay_after_reopen(tmp_path: Path) -> None:
    path = str(tmp_path / "j")
    e = Engine(path, fsync="always")
    e.register("p", [], ["a"])
    e.apply_batch([frame(update("t1", {"a": 0}, {"a": 1}), update("t2", {"a": 1}, {"a": 2}))])
    snap = e.snapshot()
    e.close()
    with pytest.raises(errors.EngineError):
        e.apply_batch([])
    again = Engine(path)
    again.register("p", [], ["a"])
    assert (again.snapshot(), again.version) == (snap, 2)
    assert again.apply_batch([frame(update("t2", {"a": 2}, {"a": 9}))])[0].status == "duplicate"
    assert verify_journal(path) == (1, None, None)  # one record per batch


def test_verify_journal_names_the_corrupted_record(tmp_path: Path) -> None:
    path = tmp_path / "j"
    e = Engine(str(path), fsync="never")
    e.register("p", [], ["a"])
    for i in range(3):
        e.apply_batch([frame(update(f"t{i}", {"a": i}, {"a": i + 1}))])
    e.close()
    (seg,) = path.glob("*.seg")
    raw = bytearray(seg.read_bytes())
    second = 8 + 44 + int.from_bytes(raw[8:12], "little")
    raw[second + 50] ^= 0xFF
    seg.write_bytes(bytes(raw))
    ok, bad, reason = verify_journal(str(path))
    assert (ok, bad) == (1, 1) and reason
    with pytest.raises(errors.JournalCorrupt, match="record 1") as info:
        Engine(str(path))
    assert info.value.index == 1
    assert isinstance(info.value, errors.JournalError)


def test_error_classes(tmp_path: Path) -> None:
    with pytest.raises(errors.EngineError):
        Engine(str(tmp_path), fsync="sometimes")
    bad = tmp_path / "bad.toml"
    bad.write_text("this is = = not toml")
    with pytest.raises(errors.RecipeError):
        Engine(str(tmp_path / "j"), recipes=str(bad))
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(errors.JournalError):
        Engine(str(blocker / "j"))


@pytest.mark.parametrize("strict", [False, True])
def test_expect_is_checked_in_any_cas_mode(tmp_path: Path, strict: bool) -> None:
    e = Engine(str(tmp_path / "j"), fsync="never", strict=strict)
    e.register("p", [], ["a", "b"])
    assert e.apply_batch([frame(update("t1", {"a": 0}, {"a": 1}, expect=0))])[0].status == \
        "committed"
    stale = e.apply_batch([frame(update("t2", {"b": 0}, {"b": 1}, base=1, expect=0))])[0]
    assert (stale.status, stale.rule, stale.version) == ("conflict", "cas", 1)
    assert stale.reason == "expected global version 0, current 1"
    batch = e.apply_batch([frame(update("t3", {"b": 0}, {"b": 1}, base=1, expect=1),
                                 update("t4", {"a": 1}, {"a": 2}, base=2, expect=None))])
    assert [d.status for d in batch] == ["committed", "committed"]
    e.close()


def seg_desc(seg: str, n: int) -> dict:
    return {"seg": seg, "off": 4096, "len": 8 * n, "dtype": "<f8", "shape": [n],
            "strides": [8], "gen": 1}


def test_heavy_writes_are_vetted_by_the_sink(tmp_path: Path) -> None:
    e = Engine(str(tmp_path / "j"), fsync="never")
    e.register("p", [], ["heavy.x", "heavy.y"])
    good, bad = seg_desc("s1", 4), {"inline": b"\0" * 8, "dtype": "<f8", "shape": [1]}
    unknown = seg_desc("s3", 2)
    ups = [update("t1", {"heavy.x": 0}, {}, heavy={"heavy.x": good}),
           update("t2", {"heavy.y": 0}, {}, heavy={"heavy.y": bad}),
           update("t3", {"heavy.y": 0}, {}, heavy={"heavy.y": unknown})]
    vetted = {msgpack.packb(good): None, msgpack.packb(bad): "len 8 does not match"}
    batch = e.apply_batch([frame(*ups)], vetted)
    assert [(d.status, d.rule, d.reason) for d in batch] == [
        ("committed", None, ""), ("rejected", "heavy", "heavy.y: len 8 does not match"),
        ("rejected", "heavy", "heavy descriptor for heavy.y was not vetted by the sink")]
    assert batch.heavy_committed == [("heavy.x", msgpack.packb(good))]
    assert batch.heavy_dropped == [msgpack.packb(bad), msgpack.packb(unknown)]
    fresh = seg_desc("s5", 1)
    again = e.apply_batch([frame(update("t4", {"heavy.y": 0}, {}, heavy={"heavy.y": fresh}))])
    assert (again[0].status, again.heavy_dropped) == ("rejected", [msgpack.packb(fresh)])
    assert unpack(e.snapshot())["state"] == {"heavy.x": [1, good]}
    e.close()


ARRAY_RECIPE = """
[process.p]
max_threshold = 10
rules = [{ name = "x-range", field = "heavy.x", finite = true, min = 0.0, max = 10.0 }]
"""


def test_array_rules_read_the_real_segment_bytes(tmp_path: Path) -> None:
    import numpy as np

    from pipeline.heavy import names
    from pipeline.heavy.allocator import HeavyAllocator

    recipe = tmp_path / "audit.toml"
    recipe.write_text(ARRAY_RECIPE)
    alloc = HeavyAllocator("enginetest", root=tmp_path, inline_threshold_bytes=1024)
    heavy_dir = names.namespace_dir("enginetest", tmp_path)
    e = Engine(str(tmp_path / "j"), fsync="never", recipes=str(recipe), heavy_dir=str(heavy_dir))
    e.register("p", [], ["heavy.x"])
    good = alloc.alloc((1000,))
    good[:] = np.linspace(0, 10, 1000)
    bad = alloc.alloc((1000,))
    bad[:] = 1.0
    bad[999] = np.nan
    descs = [alloc.export(good), alloc.export(bad), alloc.export(np.array([11.0]))]
    assert "inline" in descs[2] and descs[0]["off"] >= 4096
    ups = [update(f"t{i}", {"heavy.x": 0}, {}, heavy={"heavy.x": d}) for i, d in enumerate(descs)]
    batch = e.apply_batch([frame(*ups)], {msgpack.packb(d): None for d in descs})
    assert [(d.status, d.rule) for d in batch] == [
        ("committed", None), ("rejected", "x-range"), ("rejected", "x-range")]
    e.close()
    alloc.close()


def test_scan_f64_reads_any_contiguous_buffer() -> None:
    import numpy as np

    from pipeline._engine import scan_f64

    a = np.arange(1_000_000, dtype=np.float64) - 5
    assert scan_f64(a) == (True, -5.0, 999_994.0)
    assert scan_f64(memoryview(a.tobytes())) == (True, -5.0, 999_994.0)
    a[7] = np.inf
    assert scan_f64(a)[0] is False
    with pytest.raises(ValueError):
        scan_f64(a[::2])
    with pytest.raises(ValueError):
        scan_f64(b"abc")


def outbox_update(task: str, read: int) -> dict:
    return update(task, {"a": read}, {"a": read + 1},
                  signals=[{"topic": "t", "payload": b"x"}],
                  tasks=[{"process": "q", "args": {"n": 1}}])


def test_outbox_followups_and_release_across_a_restart(tmp_path: Path) -> None:
    path = str(tmp_path / "j")
    e = Engine(path, fsync="always")
    e.register("p", [], ["a"])
    batch = e.apply_batch([frame(outbox_update("t1", 0), outbox_update("t2", 0))])
    assert [d.status for d in batch] == ["committed", "conflict"]
    assert [unpack(t) for t in batch.followups] == [
        {"id": "t1/0", "process": "q", "args": {"n": 1}}]
    e.mark_released(e.version)
    with pytest.raises(errors.EngineError):
        e.mark_released(99)
    e.apply_batch([frame(outbox_update("t3", 1))])
    del e  # as if killed between the journal write and the publish
    again = Engine(path)
    upto, events, tasks = again.unreleased()
    assert upto == 2
    assert [ev["task"] for ev in unpack(events)["events"]] == ["t3"]
    assert unpack(events)["events"][0]["signals"] == [{"topic": "t", "payload": b"x"}]
    assert [unpack(t)["id"] for t in tasks] == ["t3/0"]
    again.mark_released(upto)
    again.close()
    assert Engine(path).unreleased() == (2, None, [])
