"""The ZeroMQ broker: per-process queues, credit-based dispatch, heartbeats, redelivery.

`serve(config, ready, stop)` is what `pipeline broker` calls; tests build a `Broker` and step
it with `run_once`. Behaviour beyond docs/PROTOCOL.md, for clients and operators:

- SUBMIT answers ACCEPTED {ids} for new and already-known ids (a known id is not queued
  again; a recently decided one gets its stored decision again in a RESULT), then one
  REJECTED per problem: code "busy" (with retry_after_ms) or "invalid" (reason = the check
  that failed, ids = the nameable ones).
- ERROR codes: "malformed", "version", "unknown-worker" (register with READY {credit,
  processes} first), "unsupported" (SUBMIT blobs), "internal".
- A task that ends `max_attempts` (or `max_attempts_per_process[process]`) dispatches in a
  conflict, on a lost worker or past its lease comes back as a broker-made decision
  {status: "failed", rule: "max_attempts"} and stays in the dead-letter queue with its
  reason: DLQ_LIST / DLQ_REQUEUE / DLQ_PURGE on the control socket (`pipeline dlq`).
- With `journal_dir`, intake is durable: ACCEPTED only after the pass's group commit; a
  restarted broker queues its undecided tasks again (their RESULT goes to whichever producer
  resubmits them) and keeps its dead letters. See brokers/journal.py.
- STATUS {role: "broker", queues, parked, delayed, in_flight, tasks, workers, counters,
  blocked: [{process, reason}], recent_decided, dead_letters, dead_by_process, sink,
  journal: {writes, fsyncs, compactions, records, file_records} or nil}.
"""

from brokers.broker import Broker, serve
from brokers.config import BrokerConfig

__all__ = ["Broker", "BrokerConfig", "serve"]
