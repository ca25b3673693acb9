"""services/features/runtime.py replaces a few faust-streaming methods: fail loudly when faust changes them."""
from __future__ import annotations

import hashlib
import inspect

import faust
from faust.app.base import App
from faust.tables.table import Table
from faust.transport.consumer import Consumer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

from services.features import runtime

# sha256 (first 16 hex digits) of the faust-streaming 0.15.3 source each override was written against
REVIEWED = {
    Consumer._drain_messages: "44a2500309e83c63",
    Table.on_key_set: "a370e35ca55c2c7e",
    Table.on_key_del: "4f2900b2f9d24a08",
    App.on_init_dependencies: "7621a70a9b01f93f",
}


def test_faust_is_the_reviewed_version():
    assert faust.__version__ == "0.15.3"
    for fn, digest in REVIEWED.items():
        got = hashlib.sha256(inspect.getsource(fn).encode()).hexdigest()[:16]
        assert got == digest, f"{fn.__qualname__} changed in faust: review services/features/runtime.py"


def test_fetch_wait_is_still_hard_coded_in_faust():
    # the reason for runtime.ConsumerThread; drop it once faust makes this configurable
    assert "fetch_max_wait_ms=1500" in inspect.getsource(AIOKafkaConsumerThread._create_worker_consumer)


def test_the_app_uses_the_patched_transport():
    app = runtime.App("runtime-test", broker="kafka://localhost:9", web_enabled=False)
    assert isinstance(app.transport, runtime.Transport)
    assert app.transport.Consumer is runtime.Consumer


def test_table_holds_bytes_only():
    app = runtime.App("runtime-test-2", broker="kafka://localhost:9", web_enabled=False)
    try:
        runtime.Table(app, name="t", key_type=str, value_type=bytes)
    except TypeError as exc:
        assert "bytes" in str(exc)
    else:
        raise AssertionError("a str-keyed runtime.Table was accepted")
