"""Answers the broker holds back: those that must follow an fsync, and ACCEPTEDs.

Two kinds wait, each in its own queue of loop passes (a pass's answers share the sequence
number of that pass's journal write, see brokers/journal.py):

* answers that say something is on disk (a DLQ change's reply): sent once the fsync that
  covers the pass is done (a SUBMIT's REJECTEDs say nothing of the disk: they leave at once);
* ACCEPTEDs: sent once that fsync is done *and* `accepted_delay_ms` has passed since their
  SUBMIT. An ACCEPTED whose every task was decided meanwhile is left out: the RESULTs ended
  those tasks for the producer, and the ACCEPTED would only cost a send and a wake-up (a
  lone task's usual case, decided in about a millisecond). Nothing else changes for the
  producer: an ACCEPTED means what it meant ("on the broker's disk" with a journal), later.

The loop calls `end_pass` and, while anything is held, `release` after every pass; this
answers with the sequence number the loop must be woken for (the fsync thread writes to the
journal's wake pipe once it is durable) or None, and `next_due` tells the poll timeout when
the first held ACCEPTED falls due. So a lone task costs the broker no wake-up of its own for
the fsync, none for the ACCEPTED.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Collection
from typing import Any

import zmq

from pipeline.protocol import Cmd, encode

Send = Callable[[zmq.Socket[Any], bytes, list[Any]], object]


class Accepted:
    """An ACCEPTED that waits: its task ids, and those that must be answered whatever
    happens (resubmits of tasks decided before the SUBMIT: their RESULT went first)."""

    __slots__ = ("identity", "ids", "keep", "sock")

    def __init__(self, sock: zmq.Socket[Any], identity: bytes, ids: list[str],
                 keep: Collection[str]) -> None:
        self.sock = sock
        self.identity = identity
        self.ids = ids
        self.keep = keep

    def settled(self, entries: Collection[str]) -> bool:
        """Every task decided (none left in `entries`): the ACCEPTED can be left out."""
        ids = self.ids
        if not ids or self.keep or ids[-1] in entries:  # the last: the usual undecided one
            return False
        return not any(tid in entries for tid in ids)


Answer = tuple[zmq.Socket[Any], bytes, list[Any]]


class HeldAnswers:
    """The two queues (see the module docstring) and the rules that release them."""

    __slots__ = ("_accepted", "_answers", "_delay_s", "_held", "_send", "_waiting", "next_due")

    def __init__(self, send: Send, delay_ms: int) -> None:
        self._send = send
        self._delay_s = delay_ms / 1000
        self._answers: list[Answer] = []  # this pass's answers that follow the fsync
        self._accepted: list[Accepted] = []  # this pass's ACCEPTEDs
        self._waiting: deque[tuple[int, list[Answer]]] = deque()  # (write seq, answers)
        self._held: deque[tuple[int, float, list[Accepted]]] = deque()  # (seq, due, ...)
        self.next_due: float | None = None  # when the first held ACCEPTED falls due

    def add(self, sock: zmq.Socket[Any], identity: bytes, frames: list[Any]) -> None:
        """An answer of this pass that leaves once the pass's journal write is durable."""
        self._answers.append((sock, identity, frames))

    def accepted(self, answer: Accepted) -> None:
        """An ACCEPTED of this pass (see the module docstring)."""
        self._accepted.append(answer)

    def end_pass(self, seq: int, now: float) -> bool:
        """This pass's answers belong to journal write `seq` (0: no journal). Whether any
        answer is held (the loop then calls `release`)."""
        if self._answers:
            self._waiting.append((seq, self._answers))
            self._answers = []
        if self._accepted:
            self._held.append((seq, now + self._delay_s, self._accepted))
            self._accepted = []
        return bool(self._waiting or self._held)

    def release(self, durable: int, now: float, entries: Collection[str],
                force: bool = False) -> int | None:
        """Send what may leave (everything durable with `force`: closing); return the
        sequence number the first answer still waits on the fsync for, or None."""
        waiting = self._waiting
        while waiting and waiting[0][0] <= durable:
            for sock, identity, frames in waiting.popleft()[1]:
                self._send(sock, identity, frames)
        need = self._release_accepted(durable, now, entries, force) if self._held else None
        if waiting and (need is None or waiting[0][0] < need):
            need = waiting[0][0]
        return need

    def _release_accepted(self, durable: int, now: float, entries: Collection[str],
                          force: bool) -> int | None:
        held = self._held
        self.next_due = None
        while held:
            seq, due, group = held[0]
            for a in group:
                if not a.settled(entries):
                    break
            else:
                held.popleft()  # decided meanwhile: nothing to say (and no timer to wait)
                continue
            if due > now and not force:
                self.next_due = due
                return None
            if seq > durable:
                return seq
            held.popleft()
            for a in group:
                if not a.settled(entries):
                    self._send(a.sock, a.identity, encode(Cmd.ACCEPTED, {"ids": a.ids}))
        return None
