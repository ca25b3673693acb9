"""services/features/runtime.py replaces a few faust-streaming methods: fail loudly when faust changes them."""
from __future__ import annotations

import hashlib
import inspect

import faust
from faust.app.base import App
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

from services.features import runtime

# sha256 (first 16 hex digits) of the faust-streaming 0.15.3 source each override was written against
REVIEWED = {
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
