"""A worker's (or subscriber's) replica of the committed state.

Built from a SNAPSHOT, then kept current by the sink's COMMIT events. A worker keeps current
only the keys its processes declare (the only ones its tasks can read or write): events
that write none of them only advance the version (`advance`). Global versions grow
by exactly one per commit, so an event whose version is not `version + 1` reveals a gap; the
owner then asks for a fresh snapshot (events at or below the snapshot's version are skipped).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

_MISSING = object()


class StateReplica:
    """Versioned key/value state, read-only to processes."""

    __slots__ = ("_values", "_versions", "synced", "version")

    def __init__(self) -> None:
        self._values: dict[str, Any] = {}
        self._versions: dict[str, int] = {}
        self.version = 0
        self.synced = False

    def load_snapshot(self, header: Mapping[str, Any]) -> None:
        """Replace the state with a SNAPSHOT header `{version, state: {key: [ver, value]}}`."""
        state = header["state"]
        self._values = {k: v[1] for k, v in state.items()}
        self._versions = {k: int(v[0]) for k, v in state.items()}
        self.version = int(header["version"])
        self.synced = True

    def apply(self, events: Iterable[Mapping[str, Any]]) -> bool:
        """Apply COMMIT events in order. False on a gap (the caller must resync)."""
        for event in events:
            version = event["version"]
            if version <= self.version:
                continue
            if version != self.version + 1:
                self.synced = False
                return False
            for key, value in event["writes"].items():
                self._values[key] = value
                self._versions[key] = version
            self.version = version
        return True

    def advance(self, first: int, count: int) -> bool:
        """Take the versions `first` .. `first + count - 1` of events that write no key this
        replica keeps current (the owner checked their event index). False, with nothing
        changed, unless they follow the replica's version: the owner then applies the
        events themselves (which skips old ones and detects a gap)."""
        if not self.synced or first != self.version + 1:
            return False
        self.version = first + count - 1
        return True

    def get(self, key: str, default: Any = None) -> Any:
        return self._values.get(key, default)

    def has(self, key: str) -> bool:
        return key in self._values

    def key_version(self, key: str) -> int:
        return self._versions.get(key, 0)

    def keys(self) -> list[str]:
        return list(self._values)
