"""The ZeroMQ broker: per-process queues, credit-based dispatch, heartbeats, redelivery.

`serve(config, ready, stop)` is what `pipeline broker` calls; tests build a `Broker` and step
it with `run_once`. Behaviour beyond docs/PROTOCOL.md, for clients and operators:

- SUBMIT answers ACCEPTED {ids} for new and already-known ids (a known id is not queued
  again; a recently decided one gets its stored decision again in a RESULT), then one
  REJECTED per problem: code "busy" (with retry_after_ms) or "invalid" (reason = the check
  that failed, ids = the nameable ones).
- ERROR codes: "malformed", "version", "unknown-worker" (register with READY {credit,
  processes} first), "unsupported" (SUBMIT blobs), "internal".
- A task that ends `max_attempts` dispatches in a conflict or on a lost worker comes back as
  a broker-made decision {status: "failed", rule: "max_attempts"} (a dead letter).
- STATUS {role: "broker", queues, parked, delayed, in_flight, tasks, workers, counters,
  blocked: [{process, reason}], recent_decided, dead_letters, sink}.
"""

from brokers.broker import Broker, serve
from brokers.config import BrokerConfig

__all__ = ["Broker", "BrokerConfig", "serve"]
