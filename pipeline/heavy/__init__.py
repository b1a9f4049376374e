"""The heavy zone: large numpy arrays shared between processes of one host through /dev/shm.

Pure Python (mmap + numpy): workers need no extension. Design note: docs/HEAVY.md.

* `HeavyAllocator` (worker): `alloc`, `export`, `open`.
* `HeavyReader` / `open_array` (any process): descriptors to read-only zero-copy arrays.
* `HeavyStore` (sink): `validate`, `commit`, `reject`, `collect`, `reclaim`, `reattach`.
* `doctor`: preflight of /dev/shm.
"""

from pipeline.heavy.allocator import INLINE_THRESHOLD, HeavyAllocator
from pipeline.heavy.doctor import Finding, doctor
from pipeline.heavy.reader import HeavyReader, close_readers, open_array
from pipeline.heavy.store import HeavyStore, purge_namespace

__all__ = [
    "INLINE_THRESHOLD",
    "Finding",
    "HeavyAllocator",
    "HeavyReader",
    "HeavyStore",
    "close_readers",
    "doctor",
    "open_array",
    "purge_namespace",
]
