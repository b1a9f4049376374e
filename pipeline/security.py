"""CurveZMQ for tcp:// deployments (filled in by the security step)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import zmq

from pipeline.config import Settings


def client_defaults(ctx: zmq.Context[Any], settings: Settings) -> None:
    """Make every socket `ctx` creates a CURVE client of the deployment's server key."""
    return None


@contextlib.contextmanager
def server_context(settings: Settings, role: str) -> Iterator[zmq.Context[Any]]:
    ctx: zmq.Context[Any] = zmq.Context()
    try:
        yield ctx
    finally:
        ctx.term()


@contextlib.contextmanager
def worker_context(settings: Settings) -> Iterator[zmq.Context[Any]]:
    ctx: zmq.Context[Any] = zmq.Context()
    try:
        client_defaults(ctx, settings)
        yield ctx
    finally:
        ctx.term()
