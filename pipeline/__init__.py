"""pipeline: an audited task pipeline for Python.

Producers publish tasks to a ZeroMQ broker; pure-Python workers run your processes against a
replica of the state; one sink supervisor audits every update with a Rust engine, commits it
to a hash-chained journal and publishes it to subscribers.
"""

from pipeline.api import (
    Decision,
    FollowUp,
    ProcessSpec,
    Signal,
    StateUpdate,
    Status,
    TaskFailed,
    load_app,
    process,
)
from pipeline.errors import PipelineError
from pipeline.producer import Producer, TaskHandle
from pipeline.subscriber import Change, Subscriber

__all__ = [
    "Change",
    "Decision",
    "FollowUp",
    "PipelineError",
    "ProcessSpec",
    "Producer",
    "Signal",
    "StateUpdate",
    "Status",
    "Subscriber",
    "TaskFailed",
    "TaskHandle",
    "load_app",
    "process",
]
__version__ = "0.1.0"
