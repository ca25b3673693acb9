"""faust-streaming with two measured fixes; `App` is a drop-in `faust.App`.

1. faust's aiokafka driver hard-codes `fetch_max_wait_ms=1500`: a fetch that includes a quiet
   partition (a changelog, the labels topic) may hold back records of a busy one for 1.5 s.
   `FETCH_MAX_WAIT_MS` bounds that wait.
2. faust's Monitor sensor keeps per-message statistics for its own web UI; the service exports
   Prometheus metrics instead, so `App` leaves the Monitor out of the sensors (~15 µs per record).

faust-streaming is pinned (0.15.3); tests/unit/test_features_runtime.py fails if a replaced
method changes upstream. What else was measured and not kept is in the README (Features).
"""
from __future__ import annotations

from typing import Any

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka


FETCH_MAX_WAIT_MS = 20


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read by the fetcher created in start()
        return consumer


class Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Transport(faust_aiokafka.Transport):
    Consumer = Consumer


class App(faust.App):
    def _new_transport(self) -> Transport:
        return Transport(self.conf.broker_consumer, self)

    def on_init_dependencies(self) -> Any:
        dependencies = super().on_init_dependencies()  # adds the Monitor to the sensors
        self.sensors.remove(self.monitor)
        return dependencies
