"""Sending and receiving a multipart message on a ZeroMQ socket, with less Python per frame.

`Socket.send_multipart` checks every frame's type and combines enum flags for each one; a
message of four small frames costs about 6.4 us that way against 2.5 us sent frame by frame
with plain int flags (measured in the broker). `recv_multipart` asks the socket whether more
frames follow (a Python-level getsockopt) after each one, where a received Frame already
says so: 4.7 -> 2.9 us per 4-frame message. Every role's hot path goes through here.
"""

from __future__ import annotations

from typing import Any

import zmq

MORE = int(zmq.SNDMORE)
NOBLOCK = int(zmq.NOBLOCK)


def send_frames(sock: zmq.Socket[Any], frames: list[Any], flags: int = 0,
                copy: bool = True) -> None:
    """`sock.send_multipart(frames, flags, copy=copy)` for frames that are bytes or buffers
    (every caller's are): the same frames and the same ZeroMQ errors (`zmq.Again` on a full
    pipe with NOBLOCK; a ROUTER refuses at the first frame, never midway). Unlike
    `send_multipart` it does not check the frames' types first: a frame that is not a buffer
    raises TypeError after the frames before it were queued. `flags` are plain ints
    (`NOBLOCK`); SNDMORE is added to all but the last."""
    send = sock.send
    more = flags | MORE
    for frame in frames[:-1]:
        send(frame, more, copy=copy)
    send(frames[-1], flags, copy=copy)


def recv_frames(sock: zmq.Socket[Any], flags: int = NOBLOCK) -> list[zmq.Frame]:
    """One multipart message as zmq.Frames (`zmq.Again` when none waits, with NOBLOCK).
    The rest of a message is there once its first frame is (delivery is atomic)."""
    recv = sock.recv
    frame = recv(flags, copy=False)
    frames = [frame]
    while frame.more:
        frame = recv(flags, copy=False)
        frames.append(frame)
    return frames
