"""CurveZMQ for tcp:// deployments (filled in by the security step)."""

from __future__ import annotations

from typing import Any

import zmq

from pipeline.config import Settings


def client_defaults(ctx: zmq.Context[Any], settings: Settings) -> None:
    """Make every socket `ctx` creates a CURVE client of the deployment's server key."""
    return None
