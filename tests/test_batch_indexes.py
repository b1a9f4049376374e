"""The index frames the engine builds for each batch (`Batch.commit_index`,
`Batch.event_index`; docs/PROTOCOL.md, "The commit index" and "The event index") are byte
for byte what the Python encoders of pipeline.protocol make from the batch's decisions,
under the rules written there (`reference` below states them from the decisions)."""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import msgpack
import pytest

from pipeline._engine import Batch, Engine
from pipeline.protocol import pack_commit_index, pack_event_index

OUTPUTS = {"p": ("b", "a", "heavy.x"), "q": ("c", "b"), "r": (), "s" * 40: ("é", "z" * 40)}
RECIPE = """
[process.p]
max_threshold = 3
rules = [{ name = "a-small", field = "output.a", max = 100 }]
[process.q]
rules = [{ name = "c-never-13", field = "output.c", neq = 13, level = "I" }]
[process.r]
rules = [{ name = "stop-on-666", field = "input.n", neq = 666, level = "S" }]
"""


def reference(batch: Batch, outputs: Mapping[str, Sequence[str]]
              ) -> tuple[bytes | None, bytes | None]:
    """The two frames from the decisions themselves: the commit index when every decision
    is a plain commit at consecutive versions and nothing was blocked or stopped; the event
    index when the commits ran at consecutive versions, naming the sorted declared outputs
    of the processes that committed (none when one of them has no declared outputs)."""
    decisions = [batch[i] for i in range(len(batch))]
    commits = [d for d in decisions if d.status == "committed"]
    assert len(commits) == batch.commits
    if not commits:
        return None, None
    first = commits[0].version
    if [d.version for d in commits] != list(range(first, first + len(commits))):
        return None, None
    plain = len(commits) == len(decisions) and not batch.newly_blocked and batch.stop is None \
        and all(not d.reason and d.rule is None and d.level is None and not d.blocked
                and d.error_type is None for d in decisions)
    commit_index = pack_commit_index([d.task for d in decisions],
                                     [d.attempt for d in decisions], first) if plain else None
    keys: set[str] = set()
    for process in {d.process for d in commits}:
        if process not in outputs:
            return commit_index, None
        keys.update(outputs[process])
    return commit_index, pack_event_index(first, len(commits), sorted(keys))


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    recipe = tmp_path / "audit.toml"
    recipe.write_text(RECIPE)
    e = Engine(str(tmp_path / "j"), fsync="never", recipes=str(recipe))
    for name, outs in OUTPUTS.items():
        e.register(name, ["n"], list(outs))
    yield e
    e.close()


class Updates:
    """Updates that read each key they write at its current version (so they commit)
    unless told otherwise; keys' versions follow the commits."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.n = 0

    def __call__(self, process: str, data: dict[str, Any] | None = None, *, stale: bool = False,
                 task: str | None = None, attempt: int = 1, n: int = 0,
                 error: bool = False) -> dict[str, Any]:
        self.n += 1
        data = data or {}
        reads = {k: 0 if stale else self._version(k) for k in data}
        update = {"task": task or f"task-{self.n}", "process": process, "attempt": attempt,
                  "worker": "w", "reads": reads, "data": data, "args": {"n": n}}
        if error:
            update["error"] = {"type": "ValueError", "message": "boom", "traceback": ""}
        return update

    def _version(self, key: str) -> int:
        got = self.engine.get(key)
        return got[0] if got is not None else 0

    def apply(self, *updates: dict[str, Any]) -> Batch:
        batch = self.engine.apply_batch([msgpack.packb({"updates": list(updates)})])
        assert not batch.malformed
        return batch


def check(batch: Batch) -> tuple[bytes | None, bytes | None]:
    got = (batch.commit_index, batch.event_index)
    assert got == reference(batch, OUTPUTS)
    return got


def test_plain_commits_give_both_frames(engine: Engine) -> None:
    u = Updates(engine)
    commit_index, event_index = check(u.apply(u("p", {"a": 1}), u("q", {"c": 2}), u("r")))
    assert commit_index is not None and event_index is not None
    assert msgpack.unpackb(event_index) == [1, 3, ["a", "b", "c", "heavy.x"]]
    # One process (its outputs sorted once, at register), long names, more than 15 items,
    # attempts and versions past one byte, a level-I finding (it commits, plainly).
    many = [u("s" * 40, task="t" * 40 + str(i), attempt=300 + i)
            for i in range(20)]
    commit_index, event_index = check(u.apply(*many))
    assert commit_index is not None and msgpack.unpackb(commit_index)[2] == 4
    assert event_index is not None and msgpack.unpackb(event_index)[2] == ["z" * 40, "é"]
    for _ in range(250):
        check(u.apply(u("q", {"c": 13})))
    assert engine.version > 256


def test_any_other_decision_leaves_out_the_commit_index(engine: Engine) -> None:
    u = Updates(engine)
    check(u.apply(u("p", {"a": 1}, task="t0")))
    others = {
        "conflict": u("p", {"a": 2}, stale=True),
        "undeclared write": u("q", {"a": 2}),
        "unknown process": u("nobody", {"a": 2}),
        "failed": u("q", error=True),
        "duplicate": u("p", {"a": 1}, task="t0"),
        "audit reject": u("p", {"a": 1000}),
    }
    for case, other in others.items():
        batch = u.apply(u("q", {"c": 1}), other, u("r"))
        assert (batch.commits, len(batch)) == (2, 3), case
        commit_index, event_index = check(batch)
        assert commit_index is None and event_index is not None, case
    batch = u.apply(u("p", {"a": 2}, stale=True), u("nobody"))
    assert (batch.commits, check(batch)) == (0, (None, None))


def test_blocked_and_stopped_batches(engine: Engine) -> None:
    u = Updates(engine)
    blocking = u.apply(u("q", {"c": 1}), *(u("p", {"a": 1000 + i}) for i in range(3)))
    assert blocking.newly_blocked and blocking.commits == 1
    assert check(blocking)[0] is None
    blocked = u.apply(u("p", {"a": 1}), u("q", {"c": 2}))
    assert blocked[0].status == "blocked" and check(blocked)[1] is not None
    stopping = u.apply(u("q", {"c": 3}), u("r", n=666))
    assert stopping.stop is not None and check(stopping)[0] is None
    assert check(u.apply(u("q", {"c": 4}))) == (None, None)  # stopped: nothing commits


def test_random_batches_match_the_reference(engine: Engine) -> None:
    u, rng = Updates(engine), random.Random(6)
    for _ in range(200):
        updates = []
        for _ in range(rng.randint(1, 24)):
            process = rng.choice(["p", "q", "r", "s" * 40, "nobody"])
            key = rng.choice(["a", "b", "c", "z" * 40])
            updates.append(u(process, {key: rng.randint(0, 120)}, stale=rng.random() < 0.1,
                             attempt=rng.randint(1, 200), error=rng.random() < 0.05))
        check(u.apply(*updates))
        if engine.blocked():
            engine.unblock("p")
