"""How much credit a worker grants the broker: about 20 ms of its recent pace.

Credit is the number of tasks the broker may send a worker ahead of their running. Too little
and the worker runs dry whenever the broker is late to answer its READY: on a busy two-core
machine the broker may not run for a few milliseconds, in which a worker of small tasks
finishes hundreds. Too much and a slow worker hoards tasks that another could run, and a
worker that dies strands more of them until their leases expire.

`CreditWindow` keeps a worker's credit near WINDOW_S of its pace, never below the configured
`credit` (the floor) nor above `max_credit` (the ceiling). The pace is tasks per second of
the time spent running them, not of the wall clock: a worker that runs dry for want of credit
(the broker was late) still measures what it can do, and grows; one left idle for want of
tasks keeps its credit. A worker of 100 ms tasks keeps its configured credit; one that runs
75,000 small tasks a second grows to 1,500 within a few tenths of a second, and shrinks back
when its tasks get slower.

The broker only ever adds what a READY carries (docs/PROTOCOL.md), so the window grows by
returning more than the tasks that ran, and shrinks by returning fewer.
"""

from __future__ import annotations

import math

WINDOW_S = 0.02  # the credit covers this much of the worker's recent pace
MEASURE_S = 0.1  # the pace is measured over periods at least this long


class CreditWindow:
    """The credit a worker has granted, what it owes back, and the size it aims for."""

    __slots__ = ("_busy", "_done", "_since", "ceiling", "floor", "granted", "owed", "target")

    def __init__(self, floor: int, ceiling: int, now: float) -> None:
        self.floor = max(1, floor)
        self.ceiling = max(self.floor, ceiling)
        self.granted = self.target = self.floor  # at the broker, or dispatched and unreturned
        self.owed = 0  # tasks run whose credit has not gone back yet
        self._done = 0  # tasks run in this period, and the seconds spent running them
        self._busy = 0.0
        self._since = now

    def register(self, now: float) -> int:
        """A fresh registration: the whole floor credit, nothing owed. Returns the credit
        the READY carries."""
        self.granted = self.target = self.floor
        self.owed = self._done = 0
        self._busy = 0.0
        self._since = now
        return self.floor

    def ran(self, n: int, now: float, busy_s: float) -> bool:
        """`n` tasks ran, in `busy_s` seconds. True when credit should go back now: a quarter
        of it is owed (so the broker always holds at least three quarters, and a lone task
        does not cost the broker a wake-up for one READY)."""
        self.owed += n
        self._done += n
        self._busy += busy_s
        if now - self._since >= MEASURE_S:
            pace = self._done / max(self._busy, 1e-6)
            self.target = min(self.ceiling, max(self.floor, math.ceil(pace * WINDOW_S)))
            self._done = 0
            self._busy = 0.0
            self._since = now
        return self.owed * 4 >= self.granted

    def dropped(self, n: int) -> None:
        """`n` dispatched tasks were dropped unrun (malformed): their credit is owed all the
        same, or the broker would hold less than the window counts."""
        self.owed += n

    def take(self) -> int:
        """The credit to send back now (0: none, the window shrinks by what was owed):
        everything owed, plus or minus the way to the target."""
        give = max(0, self.owed + self.target - self.granted)
        self.granted += give - self.owed
        self.owed = 0
        return give
