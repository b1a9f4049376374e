"""The ZeroMQ broker: queues, credit-based dispatch, heartbeats, redelivery.

`serve(config)` is the entry point `pipeline broker` calls; tests step a `Broker` with
`run_once`.
"""

from brokers.broker import Broker, serve
from brokers.config import BrokerConfig

__all__ = ["Broker", "BrokerConfig", "serve"]
