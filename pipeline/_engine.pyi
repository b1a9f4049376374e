"""Type stub for the Rust extension `pipeline._engine` (hand-written; keep the surface small).

Only modules of the sink side import this extension; workers never do.
Errors raised are the classes of `pipeline.errors` (JournalError, JournalCorrupt,
RecipeError, EngineError), never a bare Exception.
"""

from collections.abc import Mapping, Sequence
from typing import Literal, final

__all__ = ["Batch", "Decision", "Engine", "__version__", "scan_f64", "verify_journal"]
__version__: str

# Private: a typing-only alias (the extension has no such attribute).
_Status = Literal["committed", "rejected", "conflict", "duplicate", "blocked", "failed", "expired"]

# Every class is a frozen #[pyclass]: it cannot be subclassed (hence @final).
@final
class Decision:
    """One typed decision (see docs/PROTOCOL.md, Decision)."""

    @property
    def task(self) -> str: ...
    @property
    def status(self) -> _Status: ...
    @property
    def process(self) -> str: ...
    @property
    def attempt(self) -> int: ...
    @property
    def version(self) -> int: ...
    @property
    def reason(self) -> str: ...
    @property
    def rule(self) -> str | None: ...
    @property
    def level(self) -> str | None: ...
    @property
    def retry_after_ms(self) -> int: ...
    @property
    def blocked(self) -> bool: ...
    @property
    def error_type(self) -> str | None: ...
    @property
    def error_message(self) -> str | None: ...

@final
class Batch:
    """The outcome of one `Engine.apply_batch` call."""

    @property
    def decisions(self) -> bytes:
        """msgpack DECISION header: `{"decisions": [Decision map, ...]}`, in input order."""
    @property
    def events(self) -> bytes | None:
        """msgpack COMMIT header `{"events": [Event, ...]}` for the commits, or None."""
    @property
    def commit_index(self) -> bytes | None:
        """The DECISION's commit index frame (docs/PROTOCOL.md, "The commit index"),
        `[ids, attempts, first_version]` as `protocol.pack_commit_index` writes it, when
        every decision is a plain commit (status committed, empty reason, nil rule and level,
        no error, not blocked) at consecutive versions and no process became blocked and
        nothing stopped the pipeline in the batch; otherwise None."""
    @property
    def event_index(self) -> bytes | None:
        """The COMMIT's event index frame ("The event index"), `[first_version, count,
        keys]` as `protocol.pack_event_index` writes it, when something committed at
        consecutive versions: `keys` is the sorted union of the outputs registered for the
        processes that committed (the contract refused any other write). None otherwise."""
    @property
    def commits(self) -> int: ...
    @property
    def stop(self) -> str | None:
        """Set when an S-level rule fired: the reason the pipeline must stop."""
    @property
    def newly_blocked(self) -> list[tuple[str, str]]:
        """(process, reason) for every process that became blocked in this batch."""
    @property
    def malformed(self) -> list[str]:
        """A short reason for every update that could not be decoded (it has no decision)."""
    @property
    def followups(self) -> list[bytes]:
        """The follow-up tasks of this batch's commits (never of any other decision), each a
        msgpack Task map `{id, process, args}`; `id` is `"<parent task id>/<index>"`, so a
        task released again after a restart is the same task to the broker."""
    @property
    def heavy_committed(self) -> list[tuple[str, bytes]]:
        """(key, descriptor msgpack bytes) of every heavy write committed, in commit order:
        the sink takes ownership of these segments."""
    @property
    def heavy_dropped(self) -> list[bytes]:
        """Descriptor bytes of the heavy writes of updates that did not commit (rejected,
        failed, conflict, blocked, duplicate), for the sink to free. A descriptor that is a
        key's committed value is never listed."""
    def __len__(self) -> int: ...
    def __getitem__(self, index: int, /) -> Decision: ...

@final
class Engine:
    def __new__(
        cls,
        journal_dir: str,
        *,
        fsync: Literal["always", "interval", "never"] = "interval",
        fsync_interval_ms: int = 10,
        strict: bool = False,
        recipes: str | None = None,
        heavy_dir: str | None = None,
        dedup_window_ms: int = 0,
        dedup_max_entries: int = 0,
    ) -> Engine:
        """Open (or create) the journal in `journal_dir`, verify it, truncate a torn tail and
        replay it to rebuild the state and the de-duplication table.

        `dedup_window_ms` and `dedup_max_entries` bound the de-duplication table (0: no
        bound): it forgets decisions whose stamp is more than the window behind the newest
        `born_ms` seen, or beyond the entry count, oldest first. An update whose `born_ms` is
        at or before the horizon (the newest stamp forgotten) is decided "expired" (rule
        "dedup_horizon"), not committed and not journalled.

        `heavy_dir` is the heavy namespace directory (`/dev/shm/pipeline-<ns>`): for a process
        whose rules read array bytes (finite, min, max, checksum) the engine maps each vetted
        segment read-only from there, re-checking name, header, generation and bounds; without
        it such rules reject segment arrays (rule "heavy"). Inline arrays need no directory."""
    def register(self, process: str, inputs: Sequence[str], outputs: Sequence[str]) -> None:
        """Declare a process's contract (keys it may read and write); registering a process
        again replaces its contract. Its outputs are the keys of its event indexes."""
    def apply_batch(
        self, frames: Sequence[bytes], vetted: Mapping[bytes, str | None] | None = None
    ) -> Batch:
        """Decide every update in `frames` (each an UPDATE header `{"updates": [...]}`):
        decode, de-duplicate, check contract, vet heavy descriptors, audit, compare-and-swap,
        commit, journal. Runs without the GIL.

        `vetted` maps the exact msgpack bytes of each heavy descriptor (as it appears as a
        value of an update's `heavy` map) to None (the sink found it valid) or the reason it
        is not. An update with a heavy descriptor missing from `vetted` (or any, when
        `vetted` is None) or vetted with a reason is rejected with rule "heavy" (counted as
        a contract failure)."""
    def snapshot(self) -> bytes:
        """msgpack SNAPSHOT header `{"version": int, "state": {key: [version, value]}}`."""
    def get(self, key: str) -> tuple[int, bytes] | None:
        """(version, msgpack-encoded value) of one key, or None."""
    @property
    def version(self) -> int: ...
    def dedup_stats(self) -> dict[str, int]:
        """The de-duplication table: entries, clock_ms (newest born_ms), horizon_ms (tasks
        born at or before it are refused as expired; 0 until something is forgotten),
        forgotten, clamped (born_ms values far ahead of the sink's clock)."""
    def blocked(self) -> list[str]:
        """Blocked (or half-open) processes; blocks are journalled and survive a restart."""
    def unblock(self, process: str) -> bool:
        """Lift a block (journalled with the next write); True if there was one."""
    def unreleased(self) -> tuple[int, bytes | None, list[bytes]]:
        """The outbox after a restart: `(upto, events, followups)` for the commits the
        journal holds after its last release mark (those committed before a crash but maybe
        never published): `events` a COMMIT header `{"events": [...]}` (or None), the
        follow-up Task maps, and the version to pass to `mark_released` once they are
        published. Call it after opening, before the first `apply_batch`."""
    def mark_released(self, upto_version: int) -> None:
        """The events and follow-ups of every commit up to `upto_version` are published;
        journalled with the next batch's record (or by `tick` after a second, or `flush`),
        so a restart re-releases only later ones. EngineError past the current version."""
    def flush(self) -> None:
        """Write and fsync everything appended so far."""
    def tick(self) -> None:
        """Housekeeping: write a pending unblock (or a release mark pending for a second);
        fsync if the interval policy is due."""
    def close(self) -> None: ...

def scan_f64(buffer: object) -> tuple[bool, float, float]:
    """(finite, min, max) of a C-contiguous buffer of float64 (any object with the buffer
    protocol), scanned in one pass split across cores without the GIL. min and max skip NaN
    (NaN for an empty buffer); ValueError for a strided buffer or a byte length that is not
    a multiple of 8."""

def verify_journal(journal_dir: str) -> tuple[int, int | None, str | None]:
    """Check a journal's checksums and hash chain. Returns (records_ok, first_bad_index,
    reason); first_bad_index is None when the whole journal is sound."""
